//! The node cache: from `owner/name[:N]` + token to a rendered environment on disk.
//!
//! Layout under the state root:
//! - `meta/<owner>.git` bare floxmeta cache, `meta/<owner>.lock` serializes fetches per owner,
//!   `refs/<owner>/<name>.json` what the hub said last: the resolve step's (see [`crate::resolve`]);
//! - `envs/<key>/` rendered environments keyed by content (lock + system + mode), published
//!   by renaming a finished temp dir, so a killed pull never leaves a half-visible one;
//! - `views/<key>/` the closure view of `envs/<key>` (see [`crate::view`]), built on first use;
//! - `locks/<key>.lock` one realization (and one view build) per key: concurrent pods wait and
//!   reuse.
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fs4::fs_std::FileExt;
use imageless_core::activation::{ActivationData, Mode};
use imageless_core::container_paths::ACTIVATION_DATA_REL;
use imageless_core::env_ref::EnvRef;
use imageless_core::lockfile::Lockfile;
use imageless_core::store_path::StorePath;
use imageless_core::system::System;
use imageless_core::token::Token;

use crate::config::NodeConfig;
use crate::realize::{self, Nix, RealizeError};
use crate::render::{self, LinkSource, RenderError};
use crate::resolve::{self, GitRemote, Remote, ResolveError, Resolver};
use crate::view::{self, ViewError};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Realize(#[from] RealizeError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    View(#[from] ViewError),
    #[error("flox: {env} generation {generation}: manifest.lock is not valid: {message}")]
    Lockfile { env: String, generation: u32, message: String },
    #[error("flox: node cache {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("flox: no space left on the node's state root {state_root} while pulling {env}; free space there (`imageless gc` drops environments no container uses) and retry")]
    NoSpace { state_root: String, env: String },
}

impl NodeError {
    /// Whether the state root (not the Nix store: realization errors are its own) ran out of
    /// space or quota: an `io::Error` somewhere in the chain (gix's errors carry theirs as
    /// text only, so their texts are checked too).
    fn is_state_root_full(&self) -> bool {
        let full = |e: &std::io::Error| {
            let errno = e.raw_os_error().map(rustix::io::Errno::from_raw_os_error);
            matches!(errno, Some(rustix::io::Errno::NOSPC | rustix::io::Errno::DQUOT))
        };
        if matches!(self, NodeError::Realize(_)) {
            return false;
        }
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
    /// Store paths this call had to realize (0 when the cache or the store had everything).
    pub realized: usize,
    /// A warning for the user (e.g. hub unreachable, last known generation used).
    pub warning: Option<String>,
}

pub struct NodeCache {
    pub config: NodeConfig,
    remote: Box<dyn Remote + Send + Sync>,
    system: System,
}

fn lock_file(path: &Path) -> Result<File, NodeError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let f = File::options().create(true).truncate(false).write(true).open(path).map_err(io(path))?;
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
        NodeCache { config, remote, system }
    }

    fn root(&self) -> &Path {
        &self.config.state_root
    }

    pub fn envs_dir(&self) -> PathBuf {
        self.root().join("envs")
    }

    /// Fetches (if needed), realizes and renders `env` for `mode`.
    pub fn ensure(&self, env: &EnvRef, mode: Mode, token: Option<&Token>) -> Result<Rendered, NodeError> {
        self.ensure_uncategorized(env, mode, token).map_err(|e| {
            if e.is_state_root_full() {
                tracing::warn!("{e}");
                NodeError::NoSpace { state_root: self.root().display().to_string(), env: env.full_name() }
            } else {
                e
            }
        })
    }

    fn ensure_uncategorized(&self, env: &EnvRef, mode: Mode, token: Option<&Token>) -> Result<Rendered, NodeError> {
        let resolver = Resolver {
            remote: &*self.remote,
            state_root: self.root(),
            answer_ttl_secs: self.config.hub_answer_ttl_secs,
            system: self.system,
        };
        let mut resolved = resolver.resolve(env, mode, token, &|key| self.lookup(key).is_some())?;
        let lock = match resolved.lock.take() {
            Some(lock) => lock,
            None => {
                // Warm path: rendered before, nothing read from git.
                if let Some(mut rendered) = self.lookup(&resolved.key) {
                    touch(&rendered.dir);
                    rendered.warning = resolved.warning;
                    return Ok(rendered);
                }
                // Removed (gc) since resolve looked: read the lock after all.
                resolved = resolver.resolve(env, mode, token, &|_| false)?;
                resolved.lock.take().expect("resolve reads the lock when nothing is rendered")
            }
        };
        let mut rendered = self.ensure_rendered(&env.full_name(), resolved.generation, &lock, mode, &resolved.key)?;
        rendered.warning = resolved.warning;
        Ok(rendered)
    }

    /// Looks up a rendered environment by key.
    pub fn lookup(&self, key: &str) -> Option<Rendered> {
        let dir = self.envs_dir().join(key);
        let closure = std::fs::read_to_string(dir.join("closure")).ok()?;
        let generation =
            std::fs::read_to_string(dir.join("generation")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        Some(Rendered {
            key: key.to_string(),
            env_dir: dir.join("env"),
            dir,
            closure: closure.lines().filter_map(|l| StorePath::parse(l).ok()).collect(),
            generation,
            realized: 0,
            warning: None,
        })
    }

    fn ensure_rendered(
        &self,
        env: &str,
        generation: u32,
        lock_bytes: &[u8],
        mode: Mode,
        key: &str,
    ) -> Result<Rendered, NodeError> {
        if let Some(r) = self.lookup(key) {
            touch(&r.dir);
            return Ok(r);
        }
        let _guard = lock_file(&self.root().join("locks").join(format!("{key}.lock")))?;
        if let Some(r) = self.lookup(key) {
            touch(&r.dir);
            return Ok(r);
        }
        let lock_err = |message: String| NodeError::Lockfile { env: env.to_string(), generation, message };
        let lockfile = Lockfile::parse(lock_bytes).map_err(|e| lock_err(e.to_string()))?;
        let selection = lockfile.select(self.system).map_err(|e| lock_err(e.to_string()))?;
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
        let nix = Nix { config: &self.config };
        let realized = nix.realize(env, &wanted)?;

        let envs = self.envs_dir();
        std::fs::create_dir_all(&envs).map_err(io(&envs))?;
        clean_stale_temps(&envs, key);
        let tmp = envs.join(format!(".tmp-{key}-{}", std::process::id()));
        // A render that fails (a full disk, a bad lock) takes its half-made tree with it.
        let mut tmp_guard = RemoveOnDrop(Some(tmp.clone()));
        let tree = tmp.join("env");
        let linked = render::render_tree(&sources, mode, &tree)?;
        let data = ActivationData {
            version: ActivationData::VERSION,
            mode,
            vars: lockfile.vars_in_order().map_err(|e| lock_err(e.to_string()))?,
            hook_on_activate: lockfile.hook_on_activate(),
            profile: lockfile.profile(),
            cuda_detection: lockfile.cuda_detection(),
            add_sbin: lockfile.add_sbin(),
        };
        render::write_generated(&tree, ACTIVATION_DATA_REL, &serde_json::to_vec_pretty(&data).expect("serializable"))?;
        render::write_generated(&tree, "manifest.lock", lock_bytes)?;
        let closure = nix.closure(&linked)?;
        let closure_text: String = closure.iter().map(|p| format!("{p}\n")).collect();
        std::fs::write(tmp.join("closure"), closure_text).map_err(io(&tmp))?;
        std::fs::write(tmp.join("generation"), format!("{generation}\n")).map_err(io(&tmp))?;
        std::fs::write(tmp.join("source"), format!("{env}:{generation} {mode}\n")).map_err(io(&tmp))?;
        realize::add_gc_roots(&self.config.gcroots_dir, key, &linked)?;
        let dir = envs.join(key);
        std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
        tmp_guard.0 = None;
        touch(&dir);
        tracing::info!(env, generation, %mode, key, realized, "environment rendered");
        Ok(Rendered {
            key: key.to_string(),
            env_dir: dir.join("env"),
            dir,
            closure,
            generation,
            realized,
            warning: None,
        })
    }

    /// The closure view of `rendered` (built now if needed), for one read-only bind at
    /// /nix/store. `store_dir` holds the store paths' contents. The caller records the key in
    /// its container state before calling, so a concurrent gc (which re-reads the container
    /// states under the key's lock) never removes a view that is about to be mounted.
    pub fn ensure_view(&self, rendered: &Rendered, store_dir: &Path) -> Result<PathBuf, NodeError> {
        let key = &rendered.key;
        let dir = view::view_dir(self.root(), key);
        // Under the key's lock even when it exists: gc removes views under the same lock.
        let _guard = lock_file(&self.root().join("locks").join(format!("{key}.lock")))?;
        if dir.is_dir() {
            return Ok(dir);
        }
        let views = view::views_dir(self.root());
        std::fs::create_dir_all(&views).map_err(io(&views))?;
        let prefix = format!(".tmp-{key}-");
        view::clean_leftovers(self.root(), |k| k != key);
        let tmp = views.join(format!("{prefix}{}", std::process::id()));
        let started = std::time::Instant::now();
        let stats = match view::build(store_dir, &rendered.closure, &tmp) {
            Ok(stats) => stats,
            Err(e) => {
                let _ = view::remove_tree(&tmp);
                return Err(e.into());
            }
        };
        if let Err(e) = std::fs::rename(&tmp, &dir) {
            let _ = view::remove_tree(&tmp);
            return Err(io(&dir)(e));
        }
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

    /// Removes a view under the key's lock unless a container uses the key now.
    fn remove_view_if_unused(&self, key: &str) -> Result<bool, NodeError> {
        let _guard = lock_file(&self.root().join("locks").join(format!("{key}.lock")))?;
        if crate::containers::keys_in_use(self.root()).contains(key) {
            return Ok(false);
        }
        self.remove_view(key)?;
        Ok(true)
    }

    /// Removes `views/<key>` (the caller holds the key's lock): renamed away first, so a
    /// removal killed half-way leaves a dot-dir for the next gc, never a partial view.
    fn remove_view(&self, key: &str) -> Result<(), NodeError> {
        let dir = view::view_dir(self.root(), key);
        if !dir.exists() {
            return Ok(());
        }
        let trash = view::views_dir(self.root()).join(format!(".gc-{key}-{}", std::process::id()));
        std::fs::rename(&dir, &trash).map_err(io(&trash))?;
        view::remove_tree(&trash).map_err(io(&trash))
    }

    /// Removes cached environments (and their closure views) not in `in_use` and unused for
    /// `older_than`, views whose environment is gone and no container uses, and leftovers of
    /// killed view builds.
    pub fn gc(
        &self,
        in_use: &std::collections::HashSet<String>,
        older_than: Duration,
    ) -> Result<Vec<String>, NodeError> {
        let envs = self.envs_dir();
        let mut removed = Vec::new();
        let entries: Vec<std::fs::DirEntry> =
            std::fs::read_dir(&envs).map(|d| d.flatten().collect()).unwrap_or_default();
        for entry in entries {
            let key = entry.file_name().to_string_lossy().into_owned();
            if key.starts_with('.') || in_use.contains(&key) {
                continue;
            }
            let last_used = std::fs::metadata(entry.path().join("last-used")).and_then(|m| m.modified()).ok();
            if last_used.is_some_and(|t| t.elapsed().unwrap_or_default() < older_than) {
                continue;
            }
            let _guard = lock_file(&self.root().join("locks").join(format!("{key}.lock")))?;
            // A container may have been created since `in_use` was read.
            if crate::containers::keys_in_use(self.root()).contains(&key) {
                continue;
            }
            self.remove_view(&key)?;
            let trash = envs.join(format!(".gc-{key}-{}", std::process::id()));
            std::fs::rename(entry.path(), &trash).map_err(io(&trash))?;
            std::fs::remove_dir_all(&trash).map_err(io(&trash))?;
            realize::remove_gc_roots(&self.config.gcroots_dir, &key).map_err(io(&self.config.gcroots_dir))?;
            removed.push(key);
        }
        for key in view::orphans(self.root(), in_use, |k| envs.join(k).is_dir()) {
            if self.remove_view_if_unused(&key)? {
                tracing::info!(key, "orphan closure view removed");
            }
        }
        view::clean_leftovers(self.root(), |k| self.key_busy(k));
        Ok(removed)
    }

    /// Whether someone holds the key's lock (a realization or a view build in progress).
    fn key_busy(&self, key: &str) -> bool {
        let path = self.root().join("locks").join(format!("{key}.lock"));
        match File::options().write(true).open(&path) {
            Ok(f) => f.try_lock_exclusive().map(|locked| !locked).unwrap_or(true),
            Err(_) => false,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containers::ContainerState;

    fn fake_store(store: &Path, names: &[&str]) -> Vec<StorePath> {
        names
            .iter()
            .map(|n| {
                std::fs::create_dir_all(store.join(n).join("bin")).unwrap();
                std::fs::write(store.join(n).join("bin/tool"), n.as_bytes()).unwrap();
                StorePath::parse(&format!("/nix/store/{n}")).unwrap()
            })
            .collect()
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

    /// A view is built once, kept while a container uses its key, removed by gc once unused.
    #[test]
    fn view_lifecycle() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        let closure =
            fake_store(&store, &["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a-1.0", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b-1.0"]);
        let config = NodeConfig {
            state_root: tmp.path().join("state"),
            gcroots_dir: tmp.path().join("gcroots"),
            ..NodeConfig::default()
        };
        let root = config.state_root.clone();
        let cache = NodeCache::new(config, System::X86_64Linux);
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
        let dir = cache.ensure_view(&rendered, &store).unwrap();
        assert_eq!(dir, root.join("views/k1"));
        assert!(dir.join("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a-1.0/bin/tool").is_file());
        assert_eq!(view::list(&root), vec!["k1"]);
        assert!(!root.join("views/.tmp-k1-999999").exists(), "stale temp removed");
        // Built once: a second call reuses the same directory.
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let first = ino(&dir);
        assert_eq!(cache.ensure_view(&rendered, &store).unwrap(), dir);
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
        assert!(store.join("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a-1.0/bin/tool").is_file(), "store untouched");
    }
}
