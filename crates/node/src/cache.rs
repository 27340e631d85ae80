//! The node cache: from `owner/name[:N]` + token to a rendered environment on disk.
//!
//! Layout under the state root:
//! - `meta/<owner>.git` bare floxmeta cache, `meta/<owner>.lock` serializes fetches per owner,
//!   `refs/<owner>/<name>.json` what the hub said last: the resolve step's (see [`crate::resolve`]);
//! - `envs/<key>/` rendered environments keyed by content (lock + system + mode), published
//!   by renaming a finished temp dir, so a killed pull never leaves a half-visible one;
//! - `store/` (or `store_dir`), `store-info/` the node store the closures are fetched into
//!   ([`crate::fetch`]); no Nix and no /nix on the node;
//! - `views/<key>/` what a container of `envs/<key>` mounts (see [`crate::view`]): `store/`
//!   (the closure, bound at /nix/store) and `var/nix/db` (its Nix registration, for
//!   nix-mutable's overlay at /nix, see [`crate::registration`]), built on first use;
//! - `locks/<key>.lock` one realization (and one view build) per key: concurrent pods wait and
//!   reuse; `store.lock` keeps pulls and creates (shared) apart from gc's sweep (exclusive),
//!   see [`crate::gc`].
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fs4::fs_std::FileExt;
use imageless_core::activation::{ActivationData, Mode};
use imageless_core::container_paths::ACTIVATION_DATA_REL;
use imageless_core::env_ref::EnvRef;
use imageless_core::lockfile::{Lockfile, LockfileError, SelectError};
use imageless_core::sbom::Subject;
use imageless_core::store_path::StorePath;
use imageless_core::system::System;
use imageless_core::token::Token;

use crate::catalog_access;
use crate::config::{NodeConfig, StoreView};
use crate::deferred_store::{self, DeferredStore};
use crate::early_view::EarlyView;
use crate::fetch::store::Records;
use crate::fetch::{DeferredPath, FetchError, Fetcher, NodeStore, Progress};
use crate::gc::StoreLock;
use crate::pull_record::{self, PodRef};
use crate::registration::{self, RegistrationError};
use crate::render::{self, LinkSource, RenderError};
use crate::resolve::{self, AnonymousPull, GitRemote, Remote, ResolveError, Resolver};
use crate::store_read::StoreRead;
use crate::view::{self, ViewError};

/// Why a generation's manifest.lock cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LockProblem {
    #[error(transparent)]
    Parse(#[from] LockfileError),
    #[error(transparent)]
    Select(#[from] SelectError),
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// Boxed: a fetch error names substituter, path and URL, and would make every
    /// `Result<_, NodeError>` that large.
    #[error(transparent)]
    Fetch(Box<FetchError>),
    #[error(transparent)]
    Registration(Box<RegistrationError>),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    View(#[from] ViewError),
    /// Boxed: an SBOM error names environment, system and paths.
    #[error("flox: {0}")]
    Sbom(Box<imageless_core::sbom::SbomError>),
    #[error("flox: {env} generation {generation}: manifest.lock is not valid: {source}")]
    Lockfile {
        env: String,
        generation: u32,
        #[source]
        source: Box<LockProblem>,
    },
    #[error("flox: node cache {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("flox: no space left on the node's state root {state_root} while pulling {env}; free space there (`imageless gc` drops environments no container uses) and retry")]
    NoSpace { state_root: String, env: String },
}

impl From<FetchError> for NodeError {
    fn from(e: FetchError) -> NodeError {
        NodeError::Fetch(Box::new(e))
    }
}

impl From<RegistrationError> for NodeError {
    fn from(e: RegistrationError) -> NodeError {
        NodeError::Registration(Box::new(e))
    }
}

impl NodeError {
    /// A short name of what went wrong, for the pull records and the agent's error counts.
    pub fn kind(&self) -> &'static str {
        match self {
            NodeError::Resolve(_) => "hub",
            NodeError::Fetch(e) if matches!(**e, FetchError::Refused { .. }) => "no-room",
            NodeError::Fetch(_) => "fetch",
            NodeError::NoSpace { .. } => "no-space",
            NodeError::Lockfile { .. } => "lockfile",
            NodeError::Render(_) | NodeError::View(_) | NodeError::Registration(_) | NodeError::Sbom(_) => "render",
            NodeError::Io { .. } => "io",
        }
    }

    /// Whether the state root (or the node store) ran out of space or quota: an `io::Error`
    /// somewhere in the chain (gix's errors carry theirs as text only, so their texts are
    /// checked too).
    fn is_state_root_full(&self) -> bool {
        let full = |e: &std::io::Error| {
            let errno = e.raw_os_error().map(rustix::io::Errno::from_raw_os_error);
            matches!(errno, Some(rustix::io::Errno::NOSPC | rustix::io::Errno::DQUOT))
        };
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = source {
            let text = e.to_string();
            if e.downcast_ref::<std::io::Error>().is_some_and(full)
                || text.contains("No space left on device")
                || text.contains("Disk quota exceeded")
            {
                return true;
            }
            source = e.source();
        }
        false
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io { path: path.display().to_string(), source }
}

/// A rendered environment in the cache.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub key: String,
    /// `envs/<key>`.
    pub dir: PathBuf,
    /// `envs/<key>/env`: what is mounted at /run/flox/env.
    pub env_dir: PathBuf,
    pub closure: Vec<StorePath>,
    pub generation: u32,
    /// Store paths this call downloaded into the node store (0 when the cache or the store
    /// had everything).
    pub realized: usize,
    /// A warning for the user (e.g. hub unreachable, last known generation used).
    pub warning: Option<String>,
}

/// In every environment rendered against the node store (`envs/<key>/node-store`).
const NODE_STORE_MARKER: &str = "node-store";
/// Beside a rendered environment whose fetch had something to say (substituters skipped,
/// corrupt NARs discarded): one warning a line.
const PULL_WARNINGS: &str = "pull-warnings";
/// How long after its pull the pull's warnings are shown to the containers that use the
/// environment (the sandbox's prefetch often pulls before the container create looks).
const PULL_WARNINGS_SHOWN_FOR: std::time::Duration = std::time::Duration::from_secs(600);

pub struct NodeCache {
    pub config: NodeConfig,
    remote: Box<dyn Remote + Send + Sync>,
    system: System,
    /// Told how a fetch into the node store goes (`imageless pull`'s progress bar).
    progress: Option<std::sync::Arc<dyn Progress>>,
    /// The pod this cache pulls for, named in the pull records (see [`crate::pull_record`]).
    pod: Option<PodRef>,
    /// A pull also builds the closure view, path by path while it fetches (see
    /// [`crate::early_view`]): set by those who mount views (container create, prefetch).
    views_while_pulling: bool,
    /// Such a pull unpacks into the view alone and leaves the store's entries for
    /// [`NodeCache::settle_deferred`] (see [`crate::deferred_store`]): set by the prefetch.
    defer_store: bool,
    /// Store entries still to make, of the environments this cache published.
    deferred: std::sync::Mutex<Vec<DeferredStore>>,
}

/// Opens (creating it and its directory) a lock file, without locking it.
fn open_lock(path: &Path) -> Result<File, NodeError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    File::options().create(true).truncate(false).write(true).open(path).map_err(io(path))
}

pub(crate) fn lock_file(path: &Path) -> Result<File, NodeError> {
    let f = open_lock(path)?;
    f.lock_exclusive().map_err(io(path))?;
    Ok(f)
}

impl NodeCache {
    pub fn new(config: NodeConfig, system: System) -> NodeCache {
        let git_url = config.git_url.clone().unwrap_or_else(|| resolve::git_url_for_hub(&config.hub_url));
        let remote = GitRemote::new(git_url, Duration::from_secs(config.hub_timeout_secs));
        NodeCache::with_remote(config, system, Box::new(remote))
    }

    /// A cache that asks `remote` for floxmeta (a test double in unit tests).
    pub fn with_remote(config: NodeConfig, system: System, remote: Box<dyn Remote + Send + Sync>) -> NodeCache {
        NodeCache {
            config,
            remote,
            system,
            progress: None,
            pod: None,
            views_while_pulling: false,
            defer_store: false,
            deferred: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Names `pod` in the pull records of this cache's pulls (the node agent's pod events).
    pub fn with_pod(mut self, pod: Option<PodRef>) -> NodeCache {
        self.pod = pod;
        self
    }

    /// Builds a pulled environment's closure view while its closure is fetched, for a caller
    /// that will [`NodeCache::ensure_view`] it next.
    pub fn building_views(mut self) -> NodeCache {
        self.views_while_pulling = true;
        self
    }

    /// Builds views while pulling (see [`NodeCache::building_views`]) and has a cold pull
    /// unpack into the view alone: the store's entries of what it fetched are made by
    /// [`NodeCache::settle_deferred`] (or when this cache is dropped), once the environment
    /// and its view are published. For a caller whose pod can start meanwhile (the sandbox's
    /// prefetch), see [`crate::deferred_store`].
    pub fn deferring_store(mut self) -> NodeCache {
        self.views_while_pulling = true;
        self.defer_store = true;
        self
    }

    /// Makes the store entries this cache's pulls left for later (see
    /// [`NodeCache::deferring_store`]), at the lowest CPU priority. A failure is logged: the
    /// next lookup of the environment completes them.
    pub fn settle_deferred(&self) {
        let pending = std::mem::take(&mut *self.deferred.lock().unwrap_or_else(|p| p.into_inner()));
        if pending.is_empty() {
            return;
        }
        // Runs while the pod's container is created and started: behind them for the CPU.
        let _ = rustix::process::setpriority_process(None, 19);
        for deferred in pending {
            let marker = deferred.marker.clone();
            if let Err(e) = deferred.settle() {
                tracing::warn!(marker = %marker.display(), "store entries not made from the view: {e}");
            }
        }
    }

    /// Reports fetch progress to `progress`.
    pub fn with_progress(mut self, progress: std::sync::Arc<dyn Progress>) -> NodeCache {
        self.progress = Some(progress);
        self
    }

    pub(crate) fn root(&self) -> &Path {
        &self.config.state_root
    }

    /// The node store (`store_dir`, records and locks under the state root).
    pub fn store(&self) -> NodeStore {
        NodeStore::new(self.config.store_dir(), self.root())
    }

    /// A shared hold on the node store: gc's sweep waits until it is dropped. A container
    /// create holds one from `ensure` until its state is saved and its view built, so nothing
    /// it is about to mount can be swept in between.
    pub fn store_use(&self) -> Result<StoreLock, NodeError> {
        StoreLock::shared(self.root())
    }

    pub fn envs_dir(&self) -> PathBuf {
        self.root().join("envs")
    }

    /// Fetches (if needed), realizes and renders `env` for `mode`.
    /// Appends its pull records (start, end or failed, or hit) for the node agent.
    pub fn ensure(&self, env: &EnvRef, mode: Mode, token: Option<&Token>) -> Result<Rendered, NodeError> {
        let log = PullLog::new(self, env, mode);
        let result = self.ensure_uncategorized(env, mode, token, &log).map_err(|e| {
            if e.is_state_root_full() {
                tracing::warn!("{e}");
                NodeError::NoSpace { state_root: self.root().display().to_string(), env: env.full_name() }
            } else {
                e
            }
        });
        log.finish(&result);
        result
    }

    fn ensure_uncategorized(
        &self,
        env: &EnvRef,
        mode: Mode,
        token: Option<&Token>,
        log: &PullLog,
    ) -> Result<Rendered, NodeError> {
        let resolver = self.resolver();
        let mut resolved = resolver.resolve(env, mode, token, &|key| self.is_rendered(key))?;
        let lock = match resolved.lock.take() {
            Some(lock) => lock,
            None => {
                // Warm path: rendered before, nothing read from git.
                if let Some(mut rendered) = self.lookup(&resolved.key) {
                    catalog_access::check(&self.config, &rendered.dir, token)?;
                    touch(&rendered.dir);
                    rendered.warning = join_warnings(resolved.warning, rendered.warning);
                    return Ok(rendered);
                }
                // Removed (gc) since resolve looked: read the lock after all.
                resolved = resolver.resolve(env, mode, token, &|_| false)?;
                resolved.lock.take().expect("resolve reads the lock when nothing is rendered")
            }
        };
        let mut rendered = self.ensure_rendered(
            &env.full_name(),
            resolved.generation,
            &lock,
            mode,
            &resolved.key,
            resolved.created,
            token,
            log,
        )?;
        // Rendered before for another pod, or just now from paths already in the store: the
        // catalog decides whether this token may use its private packages.
        catalog_access::check(&self.config, &rendered.dir, token)?;
        rendered.warning = join_warnings(resolved.warning, rendered.warning);
        Ok(rendered)
    }

    /// Whether a sandbox's anonymous background pull of `env` would do anything: not when the
    /// environment is warm (the record needs no hub answer, it is rendered, and its closure view
    /// is built when containers get closure views), nor when only a token can see it. Reads the
    /// ref record and stats two directories; takes no lock and writes nothing.
    pub fn prefetch_useful(&self, env: &EnvRef, mode: Mode) -> bool {
        let resolver = self.resolver();
        let needs_view = self.config.store_view == StoreView::Closure;
        match resolver.anonymous_pull(env, mode, &|key| self.is_rendered(key)) {
            AnonymousPull::Warm { key } => needs_view && !view::view_dir(self.root(), &key).is_dir(),
            AnonymousPull::Private => false,
            AnonymousPull::Needed => true,
        }
    }

    /// The lock a sandbox's background prefetch of `env` holds while it runs (owner and name
    /// allow only `[A-Za-z0-9._-]`, so `@` keeps the file names apart).
    fn prefetch_lock_path(&self, env: &EnvRef, mode: Mode) -> PathBuf {
        self.root().join("locks").join(format!("prefetch@{}@{}@{}.lock", env.owner, env.name, mode.as_str()))
    }

    /// Takes the prefetch lock of `env` for this process: `Ok(None)` when another prefetch of it
    /// holds it (a second one would only wait on the first's locks, then find it done).
    pub fn hold_prefetch(&self, env: &EnvRef, mode: Mode) -> Result<Option<File>, NodeError> {
        let path = self.prefetch_lock_path(env, mode);
        let f = open_lock(&path)?;
        let locked = FileExt::try_lock_exclusive(&f).map_err(io(&path))?;
        Ok(locked.then_some(f))
    }

    /// Whether a prefetch of `env` is running now (its lock is held). Only a hint: it may end
    /// right after; creates never rely on it.
    pub fn prefetch_running(&self, env: &EnvRef, mode: Mode) -> bool {
        matches!(self.hold_prefetch(env, mode), Ok(None))
    }

    /// The system this cache renders for.
    pub fn system(&self) -> System {
        self.system
    }

    /// The resolve step as this node is configured.
    pub(crate) fn resolver(&self) -> Resolver<'_> {
        Resolver {
            remote: &*self.remote,
            state_root: self.root(),
            answer_ttl_secs: self.config.hub_answer_ttl_secs,
            system: self.system,
        }
    }

    /// Whether an environment is rendered under `key` and served: two stats, no file read
    /// (resolve asks this before [`Self::lookup`] reads the closure).
    fn is_rendered(&self, key: &str) -> bool {
        let dir = self.envs_dir().join(key);
        // Rendered before the node store (its paths in a host /nix/store): not served, so a
        // ref record written then re-renders it into the node store; gc drops the old one.
        dir.join(NODE_STORE_MARKER).exists() && dir.join("closure").is_file()
    }

    /// Looks up a rendered environment by key.
    pub fn lookup(&self, key: &str) -> Option<Rendered> {
        if !self.is_rendered(key) {
            return None;
        }
        let dir = self.envs_dir().join(key);
        if dir.join(deferred_store::MARKER).exists() {
            // Published before the store's entries of its closure were made: by a process
            // that is still making them (then this waits for nothing: the view has every
            // path), or by one that died meanwhile (then they are made now, from the view).
            let from = view::view_dir(self.root(), key).join("store");
            let recovered = self.store_use().and_then(|_use| deferred_store::recover(&self.store(), &dir, &from));
            if let Err(e) = recovered {
                tracing::warn!(key, "store entries of an interrupted pull not made: {e}");
            }
        }
        let closure = std::fs::read_to_string(dir.join("closure")).ok()?;
        let warning = recent_pull_warnings(&dir);
        let generation =
            std::fs::read_to_string(dir.join("generation")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        Some(Rendered {
            key: key.to_string(),
            env_dir: dir.join("env"),
            dir,
            closure: closure.lines().filter_map(|l| StorePath::parse(l).ok()).collect(),
            generation,
            realized: 0,
            warning,
        })
    }

    /// `created`: the generation's creation time (`metadata.json`), the SBOMs' creation time.
    #[allow(clippy::too_many_arguments)]
    fn ensure_rendered(
        &self,
        env: &str,
        generation: u32,
        lock_bytes: &[u8],
        mode: Mode,
        key: &str,
        created: Option<u64>,
        token: Option<&Token>,
        log: &PullLog,
    ) -> Result<Rendered, NodeError> {
        log.generation.set(Some(generation));
        if let Some(r) = self.lookup(key) {
            touch(&r.dir);
            return Ok(r);
        }
        // Store first, key second (gc takes them in the same order): the fetched paths stay
        // until the environment that references them is published.
        let _store = self.store_use()?;
        let _guard = lock_file(&self.root().join("locks").join(format!("{key}.lock")))?;
        if let Some(r) = self.lookup(key) {
            touch(&r.dir);
            return Ok(r);
        }
        let lock_err =
            |source: LockProblem| NodeError::Lockfile { env: env.to_string(), generation, source: Box::new(source) };
        let lockfile = Lockfile::parse(lock_bytes).map_err(|e| lock_err(e.into()))?;
        let selection = lockfile.select(self.system).map_err(|e| lock_err(e.into()))?;
        let sources: Vec<LinkSource> = selection
            .outputs
            .iter()
            .map(|o| LinkSource {
                install_id: o.install_id.clone(),
                output: o.output.clone(),
                store_path: o.store_path.clone(),
                priority: o.priority,
            })
            .collect();
        let mut wanted: Vec<StorePath> = sources.iter().map(|s| s.store_path.clone()).collect();
        wanted.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        wanted.dedup();
        // Records the pull's start and refuses one that does not fit, before any download.
        let catalog = catalog_access::pull_for(&self.config, &lockfile, self.system, token);
        let early_view = self.start_early_view(key);
        let progress = log.recorder(self.progress.clone());
        let progress = match &early_view {
            Some(view) => view.progress(progress),
            None => progress,
        };
        let mut fetcher = Fetcher::from_config(&self.config)?.with_progress(progress).with_catalog(catalog.clone());
        if let Some(view) = &early_view {
            fetcher = if self.defer_store {
                // The fetched paths go into the view alone; the store's entries come later.
                fetcher.deferring_store_into(view.store_dir())
            } else {
                // The fetched paths go into the view in the same pass as into the store.
                fetcher.linking_into(view.store_dir())
            };
        }
        let report = fetcher.realize(&wanted)?;
        let mut deferred = fetcher.take_deferred();
        if report.downloaded() > 0 {
            fetcher.store.commit_metadata_in_background();
        }
        log.pulled(&report);
        let realized = report.downloaded();
        let pull_warning = (!report.warnings.is_empty())
            .then(|| format!("while pulling this environment: {}", report.warnings.join("; ")));
        let mut store = StoreRead::new(fetcher.store.dir.clone());
        if let (Some(view), false) = (&early_view, deferred.is_empty()) {
            let names = deferred.iter().map(|p| p.info.store_path.base_name().to_string()).collect();
            store = store.with_paths_in(view.store_dir(), names);
        }

        let envs = self.envs_dir();
        std::fs::create_dir_all(&envs).map_err(io(&envs))?;
        clean_stale_temps(&envs, key);
        let tmp = envs.join(format!(".tmp-{key}-{}", std::process::id()));
        // A render that fails (a full disk, a bad lock) takes its half-made tree with it.
        let mut tmp_guard = RemoveOnDrop(Some(tmp.clone()));
        let tree = tmp.join("env");
        // The SBOMs need only the lock and the fetch's records, not the tree: gathered and
        // serialized on a thread of their own while the tree renders (for a large closure they
        // are the longest step between the fetch's end and the environment's publication).
        let subject =
            Subject { environment: env.to_string(), generation, created: created.unwrap_or(0), system: self.system };
        // From the records of the fetched narinfos (References): no Nix involved. The SBOM
        // thread borrows them and hands them back for the closure below.
        let records = Records::with_published(&fetcher.store, &report.published);
        let (linked, (sbom, records)) = std::thread::scope(|scope| {
            let lockfile = &lockfile;
            let sbom = scope.spawn(move || {
                let documents = crate::sbom::gather(lockfile, subject, &records).map(|s| crate::sbom::documents(&s));
                (documents, records)
            });
            let linked = render::render_tree(&sources, mode, &tree, &store);
            (linked, sbom.join().expect("the SBOM thread panicked"))
        });
        let linked = linked?;
        let data = ActivationData {
            version: ActivationData::VERSION,
            mode,
            vars: lockfile.vars_in_order().map_err(|e| lock_err(e.into()))?,
            hook_on_activate: lockfile.hook_on_activate(),
            profile: lockfile.profile(),
            cuda_detection: lockfile.cuda_detection(),
            add_sbin: lockfile.add_sbin(),
        };
        let activation = serde_json::to_vec_pretty(&data).expect("serializable");
        render::write_generated(&tree, ACTIVATION_DATA_REL, &activation, &store)?;
        render::write_generated(&tree, "manifest.lock", lock_bytes, &store)?;
        let closure = records.closure(&linked)?;
        // The SBOMs beside the activation data: /run/flox/env/sbom.{spdx,cdx}.json in a container.
        crate::sbom::write_into(&tree, &sbom?, &store)?;
        let closure_text: String = closure.iter().map(|p| format!("{p}\n")).collect();
        std::fs::write(tmp.join("closure"), closure_text).map_err(io(&tmp))?;
        std::fs::write(tmp.join("generation"), format!("{generation}\n")).map_err(io(&tmp))?;
        std::fs::write(tmp.join("source"), format!("{env}:{generation} {mode}\n")).map_err(io(&tmp))?;
        std::fs::write(tmp.join(NODE_STORE_MARKER), b"").map_err(io(&tmp))?;
        catalog_access::write_record(&tmp, &catalog).map_err(io(&tmp))?;
        if !report.warnings.is_empty() {
            let text: String = report.warnings.iter().map(|w| format!("{w}\n")).collect();
            std::fs::write(tmp.join(PULL_WARNINGS), text).map_err(io(&tmp))?;
        }
        // The view before the environment: paths unpacked only into the view are made valid
        // from wherever it ends up (see deferred_store), and an environment that lists them
        // is published only with its view there, or with them valid.
        let view = match early_view {
            Some(view) => self.finish_early_view(key, &closure, view, &records, &mut deferred)?,
            None => None,
        };
        let marker = match (&view, deferred.is_empty()) {
            // Taken while this pull's own hold on the store is still on: no gc in between.
            (Some(_), false) => Some((deferred_store::write_marker(&tmp, &deferred)?, self.store_use()?)),
            _ => None,
        };
        let dir = envs.join(key);
        std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
        tmp_guard.0 = None;
        touch(&dir);
        tracing::info!(env, generation, %mode, key, realized, deferred = deferred.len(), "environment rendered");
        if let (Some(view), Some((marker_file, store_use))) = (view, marker) {
            let later = DeferredStore {
                store: fetcher.store.clone(),
                from: view.join("store"),
                paths: deferred,
                marker: dir.join(deferred_store::MARKER),
                marker_file,
                store_use,
            };
            self.deferred.lock().unwrap_or_else(|p| p.into_inner()).push(later);
        }
        Ok(Rendered {
            key: key.to_string(),
            env_dir: dir.join("env"),
            dir,
            closure,
            generation,
            realized,
            warning: pull_warning,
        })
    }

    /// The view of `rendered` (built now if needed) from the node store: `<view>/store` is
    /// bound read-only at /nix/store, `<view>` is the lower layer of nix-mutable's overlay at
    /// /nix. The caller records the key in its container state before calling, so a
    /// concurrent gc (which re-reads the container states under the key's lock) never removes
    /// a view that is about to be mounted.
    pub fn ensure_view(&self, rendered: &Rendered) -> Result<PathBuf, NodeError> {
        let key = &rendered.key;
        let dir = view::view_dir(self.root(), key);
        // Store first (gc sweeps under it), then the key's lock even when the view exists:
        // gc removes views under the same lock.
        let _store = self.store_use()?;
        let _guard = lock_file(&self.root().join("locks").join(format!("{key}.lock")))?;
        if dir.is_dir() {
            return Ok(dir);
        }
        let tmp = self.view_temp(key)?;
        let started = std::time::Instant::now();
        let stats = match self.build_view(&rendered.closure, &tmp) {
            Ok(stats) => stats,
            Err(e) => {
                let _ = view::remove_tree(&tmp);
                return Err(e);
            }
        };
        let store = self.store();
        let published = self.publish_view(key, &tmp, &rendered.closure, stats, started, &Records::new(&store));
        if published.is_err() {
            let _ = view::remove_tree(&tmp);
        }
        published
    }

    /// Where this process builds `key`'s view (`views/.tmp-<key>-<pid>`, not created), once
    /// the leftovers of killed builds of that key are gone. Call under the key's lock.
    fn view_temp(&self, key: &str) -> Result<PathBuf, NodeError> {
        let views = view::views_dir(self.root());
        std::fs::create_dir_all(&views).map_err(io(&views))?;
        view::clean_leftovers(self.root(), |k| k != key);
        Ok(views.join(format!(".tmp-{key}-{}", std::process::id())))
    }

    /// `<dest>/store`: the closure's paths, hard links into the node store (its registration
    /// is added by [`NodeCache::publish_view`]).
    fn build_view(&self, closure: &[StorePath], dest: &Path) -> Result<view::ViewStats, NodeError> {
        let store = self.store();
        std::fs::create_dir(dest).map_err(io(dest))?;
        view::build(&store.dir, closure, &dest.join("store")).map_err(NodeError::from)
    }

    /// Registers `closure` under `tmp` (see [`crate::registration`]) and renames the finished
    /// view into place. Call under the key's lock; on an error `tmp` stays (the caller
    /// removes it).
    fn publish_view(
        &self,
        key: &str,
        tmp: &Path,
        closure: &[StorePath],
        stats: view::ViewStats,
        started: std::time::Instant,
        records: &Records<'_>,
    ) -> Result<PathBuf, NodeError> {
        let dir = view::view_dir(self.root(), key);
        let registered = closure
            .iter()
            .map(|p| records.record(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(NodeError::from)
            .and_then(|infos| registration::write(tmp, &infos, resolve::now() as i64).map_err(NodeError::from))
            .and_then(|()| std::fs::rename(tmp, &dir).map_err(io(&dir)));
        registered?;
        tracing::info!(
            key,
            paths = stats.paths,
            files = stats.files,
            dirs = stats.dirs,
            copied = stats.copied,
            ms = started.elapsed().as_millis() as u64,
            "closure view built"
        );
        Ok(dir)
    }

    /// A view built while the pull runs, when this cache builds views and `key` has none yet.
    /// Called under the key's lock. A view that cannot be started is left to
    /// [`NodeCache::ensure_view`], which reports why.
    fn start_early_view(&self, key: &str) -> Option<EarlyView> {
        if !self.views_while_pulling || view::view_dir(self.root(), key).is_dir() {
            return None;
        }
        let started =
            self.view_temp(key).and_then(|tmp| EarlyView::start(&self.store().dir, &tmp).map_err(NodeError::from));
        match started {
            Ok(view) => Some(view),
            Err(e) => {
                tracing::info!(key, "closure view not built during the pull: {e}");
                None
            }
        }
    }

    /// Completes and publishes a view started with the pull: its directory, or None when it
    /// failed. Its failure is not the pull's ([`NodeCache::ensure_view`] builds it again and
    /// reports what goes wrong), but the paths unpacked only into it (`deferred`) are made
    /// valid from it first, before it goes; an error doing that is the pull's.
    fn finish_early_view(
        &self,
        key: &str,
        closure: &[StorePath],
        mut view: EarlyView,
        records: &Records<'_>,
        deferred: &mut Vec<DeferredPath>,
    ) -> Result<Option<PathBuf>, NodeError> {
        let started = std::time::Instant::now();
        let tmp = view.dir().to_path_buf();
        let published = view
            .finish(closure)
            .map_err(NodeError::from)
            .and_then(|stats| self.publish_view(key, &tmp, closure, stats, started, records));
        match published {
            Ok(dir) => {
                view.published();
                Ok(Some(dir))
            }
            Err(e) => {
                tracing::info!(key, "closure view built during the pull not used: {e}");
                let store = self.store();
                for path in std::mem::take(deferred) {
                    let p = &path.info.store_path;
                    if !deferred_store::make_valid(&store, p, &view.store_dir())? && closure.contains(p) {
                        let store = view.store_dir().display().to_string();
                        return Err(ViewError::MissingPath { path: p.to_string(), store }.into());
                    }
                }
                Ok(None)
            }
        }
    }
}

/// Store entries left for later are made before the cache goes (a caller that did not
/// settle them itself).
impl Drop for NodeCache {
    fn drop(&mut self) {
        self.settle_deferred();
    }
}

/// Removes a directory when dropped, unless disarmed by taking the path out.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn touch(dir: &Path) {
    let _ = std::fs::write(dir.join("last-used"), b"");
}

/// Leftovers of a pull killed mid-way (we hold the key's lock, so none is in progress).
fn clean_stale_temps(envs: &Path, key: &str) {
    let prefix = format!(".tmp-{key}-");
    if let Ok(entries) = std::fs::read_dir(envs) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// The warnings of the pull that made the environment at `dir`, while they are recent.
fn recent_pull_warnings(dir: &Path) -> Option<String> {
    use std::io::Read;
    let file = std::fs::File::open(dir.join(PULL_WARNINGS)).ok()?;
    let age = file.metadata().ok()?.modified().ok()?.elapsed().unwrap_or_default();
    if age > PULL_WARNINGS_SHOWN_FOR {
        return None;
    }
    let mut text = String::new();
    file.take(64 * 1024).read_to_string(&mut text).ok()?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    (!lines.is_empty()).then(|| format!("while pulling this environment: {}", lines.join("; ")))
}

/// Two optional warnings as one.
fn join_warnings(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    }
}

/// One `ensure`'s pull records (see [`crate::pull_record`]): never fails the pull.
struct PullLog {
    state_root: PathBuf,
    store_dir: PathBuf,
    id: String,
    env: String,
    mode: Mode,
    pod: Option<PodRef>,
    started: std::time::Instant,
    generation: std::cell::Cell<Option<u32>>,
    /// Whether this call fetched and rendered (an `end` record was written).
    done: std::cell::Cell<bool>,
}

impl PullLog {
    fn new(cache: &NodeCache, env: &EnvRef, mode: Mode) -> PullLog {
        PullLog {
            state_root: cache.root().to_path_buf(),
            store_dir: cache.config.store_dir(),
            id: pull_record::next_pull_id(),
            env: env.full_name(),
            mode,
            pod: cache.pod.clone(),
            started: std::time::Instant::now(),
            generation: std::cell::Cell::new(None),
            done: std::cell::Cell::new(false),
        }
    }

    fn record(&self, phase: pull_record::Phase) -> pull_record::PullRecord {
        pull_record::PullRecord {
            v: pull_record::VERSION,
            time_ms: pull_record::now_ms(),
            pull: self.id.clone(),
            env: self.env.clone(),
            generation: self.generation.get(),
            mode: self.mode.as_str().to_string(),
            pod: self.pod.clone(),
            phase,
        }
    }

    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The fetch's observer: writes `start` once the closure is planned and refuses a fetch
    /// that does not fit (forwarding everything to `inner`, the caller's progress).
    fn recorder(&self, inner: Option<std::sync::Arc<dyn Progress>>) -> std::sync::Arc<dyn Progress> {
        std::sync::Arc::new(Recorder {
            inner,
            start: self.record(pull_record::Phase::Start { paths: 0, bytes: 0 }),
            state_root: self.state_root.clone(),
            store_dir: self.store_dir.clone(),
        })
    }

    fn pulled(&self, report: &crate::fetch::FetchReport) {
        let sources = report
            .sources
            .iter()
            .filter(|(_, s)| s.paths > 0 || s.corrupt > 0 || s.skipped.is_some())
            .map(|(url, s)| {
                let got = pull_record::SourceBytes {
                    paths: s.paths,
                    bytes: s.bytes,
                    corrupt: s.corrupt,
                    skipped: s.skipped.map(str::to_string),
                };
                (pull_record::url_without_userinfo(url), got)
            })
            .collect();
        let phase = pull_record::Phase::End {
            duration_ms: self.elapsed_ms(),
            paths: report.downloaded(),
            bytes: report.nar_bytes,
            sources,
            warnings: report.warnings.clone(),
        };
        pull_record::append(&self.state_root, &self.record(phase));
        self.done.set(true);
    }

    fn finish(&self, result: &Result<Rendered, NodeError>) {
        let phase = match result {
            Ok(_) if self.done.get() => return,
            Ok(rendered) => {
                self.generation.set(Some(rendered.generation));
                pull_record::Phase::Hit
            }
            Err(e) => pull_record::Phase::Failed {
                duration_ms: self.elapsed_ms(),
                kind: e.kind().to_string(),
                message: pull_record::bounded_message(&e.to_string()),
            },
        };
        pull_record::append(&self.state_root, &self.record(phase));
    }
}

struct Recorder {
    inner: Option<std::sync::Arc<dyn Progress>>,
    start: pull_record::PullRecord,
    state_root: PathBuf,
    store_dir: PathBuf,
}

impl Progress for Recorder {
    fn planned(&self, paths: usize, nar_bytes: u64) {
        let mut start = self.start.clone();
        start.time_ms = pull_record::now_ms();
        start.phase = pull_record::Phase::Start { paths, bytes: nar_bytes };
        pull_record::append(&self.state_root, &start);
        if let Some(p) = &self.inner {
            p.planned(paths, nar_bytes);
        }
    }
    fn advanced(&self, bytes: u64) {
        if let Some(p) = &self.inner {
            p.advanced(bytes);
        }
    }
    fn path_done(&self, path: &StorePath) {
        if let Some(p) = &self.inner {
            p.path_done(path);
        }
    }
    fn rewound(&self, bytes: u64) {
        if let Some(p) = &self.inner {
            p.rewound(bytes);
        }
    }
    fn admit(&self, paths: usize, nar_bytes: u64) -> Result<(), String> {
        crate::pressure::room_for(&self.store_dir, &self.start.env, paths, nar_bytes).map_err(|e| e.to_string())?;
        match &self.inner {
            Some(p) => p.admit(paths, nar_bytes),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containers::ContainerState;

    /// Publishes `names` (a closure: A references B) into the node store.
    fn fake_store(store: &NodeStore, names: &[&str]) -> Vec<StorePath> {
        store.create_dirs().unwrap();
        let paths: Vec<StorePath> =
            names.iter().map(|n| StorePath::parse(&format!("/nix/store/{n}")).unwrap()).collect();
        for (i, p) in paths.iter().enumerate() {
            let unpacked = store.dir.join(format!(".tmp-{}-1", p.base_name()));
            std::fs::create_dir_all(unpacked.join("bin")).unwrap();
            std::fs::write(unpacked.join("bin/tool"), p.base_name().as_bytes()).unwrap();
            let info = crate::fetch::narinfo::NarInfo {
                store_path: p.clone(),
                url: "nar/x.nar".into(),
                compression: "none".into(),
                nar_hash: crate::fetch::narinfo::NarHash([1; 32]),
                nar_size: 1,
                references: paths[i..].to_vec(),
                deriver: None,
                sigs: vec![],
            };
            store.publish(&info, &unpacked).unwrap();
        }
        paths
    }

    fn container(id: &str, key: &str) -> ContainerState {
        ContainerState {
            id: id.into(),
            env_key: key.into(),
            env_dir: String::new(),
            activator: String::new(),
            description: String::new(),
            disable_metrics: false,
            skip_exec: false,
            overlay_dir: None,
            attach: true,
        }
    }

    /// An environment rendered before the node store (no marker) is not served.
    #[test]
    fn environments_from_before_the_node_store_are_not_served() {
        let tmp = tempfile::tempdir().unwrap();
        let config = NodeConfig { state_root: tmp.path().join("state"), ..NodeConfig::default() };
        let cache = NodeCache::new(config, System::X86_64Linux);
        let dir = cache.envs_dir().join("k9");
        std::fs::create_dir_all(dir.join("env")).unwrap();
        std::fs::write(dir.join("closure"), "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a-1.0\n").unwrap();
        assert!(cache.lookup("k9").is_none(), "realized into a host /nix/store: render again");
        std::fs::write(dir.join(NODE_STORE_MARKER), b"").unwrap();
        assert_eq!(cache.lookup("k9").unwrap().closure.len(), 1);
    }

    /// A view is built once, kept while a container uses its key, removed by gc once unused.
    #[test]
    fn one_prefetch_per_environment_and_mode_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let config = NodeConfig { state_root: tmp.path().join("state"), ..NodeConfig::default() };
        let cache = NodeCache::new(config, System::X86_64Linux);
        let app = EnvRef::parse("acme/app").unwrap();
        assert!(!cache.prefetch_running(&app, Mode::Run));
        let held = cache.hold_prefetch(&app, Mode::Run).unwrap().expect("free");
        assert!(cache.prefetch_running(&app, Mode::Run));
        assert!(cache.hold_prefetch(&app, Mode::Run).unwrap().is_none(), "a second prefetch stays away");
        // Other modes and environments (even with look-alike names) have locks of their own.
        assert!(!cache.prefetch_running(&app, Mode::Dev));
        assert!(!cache.prefetch_running(&EnvRef::parse("acme-app/x").unwrap(), Mode::Run));
        drop(held);
        assert!(!cache.prefetch_running(&app, Mode::Run), "released when the prefetch ends");
    }

    /// A cache on a fresh state root whose store holds two paths (a references b).
    fn cache_with_two_paths() -> (tempfile::TempDir, PathBuf, NodeCache, NodeStore, Vec<StorePath>) {
        let tmp = tempfile::tempdir().unwrap();
        let config = NodeConfig { state_root: tmp.path().join("state"), ..NodeConfig::default() };
        let root = config.state_root.clone();
        let cache = NodeCache::new(config, System::X86_64Linux);
        let store = cache.store();
        let closure =
            fake_store(&store, &["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a-1.0", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b-1.0"]);
        (tmp, root, cache, store, closure)
    }

    /// An environment published by a prefetch that died before it made the store's entries of
    /// what it unpacked into the view alone: the next lookup makes them from the view (the
    /// same inodes) and removes the marker; with the marker still held, it leaves them be.
    #[test]
    fn a_lookup_completes_the_store_entries_an_interrupted_prefetch_left() {
        let (_tmp, root, cache, store, closure) = cache_with_two_paths();
        let (a, b) = (closure[0].base_name(), closure[1].base_name());
        let dir = root.join("envs/k1");
        std::fs::create_dir_all(dir.join("env")).unwrap();
        std::fs::write(dir.join("closure"), format!("/nix/store/{a}\n/nix/store/{b}\n")).unwrap();
        std::fs::write(dir.join(NODE_STORE_MARKER), b"").unwrap();
        let rendered = cache.lookup("k1").unwrap();
        assert_eq!(rendered.closure, closure);
        let view = cache.ensure_view(&rendered).unwrap();
        // As the prefetch leaves it: b only in the view, listed in the marker.
        crate::fetch::nar::remove_tree(&store.dir.join(b)).unwrap();
        let marker = dir.join(deferred_store::MARKER);
        std::fs::write(&marker, format!("/nix/store/{b}\n")).unwrap();
        let held = File::open(&marker).unwrap();
        FileExt::lock_exclusive(&held).unwrap();
        assert!(cache.lookup("k1").is_some(), "served meanwhile: the view has every path");
        assert!(!store.is_valid(&closure[1]) && marker.exists(), "left to the process holding the marker");
        drop(held);
        assert!(cache.lookup("k1").is_some());
        assert!(store.is_valid(&closure[1]), "made valid by the lookup");
        assert!(!marker.exists());
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        assert_eq!(ino(&store.dir.join(b).join("bin/tool")), ino(&view.join("store").join(b).join("bin/tool")));
    }

    #[test]
    fn view_lifecycle() {
        let (_tmp, root, cache, store, closure) = cache_with_two_paths();
        let rendered = Rendered {
            key: "k1".into(),
            dir: root.join("envs/k1"),
            env_dir: root.join("envs/k1/env"),
            closure,
            generation: 1,
            realized: 0,
            warning: None,
        };
        // A build killed half-way left a temp dir behind.
        std::fs::create_dir_all(root.join("views/.tmp-k1-999999/junk")).unwrap();
        let dir = cache.ensure_view(&rendered).unwrap();
        assert_eq!(dir, root.join("views/k1"));
        assert!(dir.join("store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a-1.0/bin/tool").is_file());
        assert!(dir.join("var/nix/db/db.sqlite").is_file(), "the closure's Nix registration");
        let registration = std::fs::read_to_string(dir.join("var/nix/registration")).unwrap();
        assert!(registration.contains("/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b-1.0\n"), "{registration}");
        assert_eq!(view::list(&root), vec!["k1"]);
        assert!(!root.join("views/.tmp-k1-999999").exists(), "stale temp removed");
        // Built once: a second call reuses the same directory.
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let first = ino(&dir);
        assert_eq!(cache.ensure_view(&rendered).unwrap(), dir);
        assert_eq!(ino(&dir), first);

        // In use by a container: gc keeps it (the environment dir is gone, so it is an orphan).
        container("c1", "k1").save(&root).unwrap();
        let in_use = crate::containers::keys_in_use(&root);
        cache.gc(&in_use, Duration::ZERO).unwrap();
        assert!(dir.is_dir(), "never removed under a container");
        // A container created after gc read `in_use` still protects it (gc re-reads under the lock).
        ContainerState::remove(&root, "c1");
        let stale_in_use = crate::containers::keys_in_use(&root);
        container("c2", "k1").save(&root).unwrap();
        cache.gc(&stale_in_use, Duration::ZERO).unwrap();
        assert!(dir.is_dir(), "protected by a container that appeared meanwhile");
        ContainerState::remove(&root, "c2");
        cache.gc(&crate::containers::keys_in_use(&root), Duration::ZERO).unwrap();
        assert!(!dir.exists(), "removed once unused");
        assert!(view::list(&root).is_empty());
        let left: Vec<_> = std::fs::read_dir(root.join("views")).unwrap().collect();
        assert!(left.is_empty(), "no trash left: {left:?}");
        // No environment references the store paths any more: the sweep took them.
        assert!(!store.dir.join("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a-1.0").exists(), "store swept");
    }
}
