//! Realizing store paths without Nix: the binary-cache client and the node's own store.
//!
//! [`Fetcher::realize`] makes the closure of some store paths present in the node store
//! (`store_dir`, laid out as /nix/store): [`sources`] asks every substituter's
//! `nix-cache-info` at once and ranks them (Priority, then config order; down, slow or corrupt
//! ones last or not at all), a [`walk`] finds and verifies the narinfo of every missing path of
//! the closure (the usable substituters asked at once, the best-ranked that has it wins), then
//! bounded parallel [`job`]s download, decompress, check and unpack each NAR, one process per
//! path at a time (flock), publishing by rename; a NAR that fails is fetched from the next
//! substituter. Files, one idea each: [`narinfo`] (format),
//! [`signature`] (trust), [`http`] (the network edge and its deadlines), [`cache_info`] (is it a cache for /nix/store, its priority), [`pipe`] (download → blocking unpack),
//! [`malloc_tuning`], [`decompress`], [`hashing`] (NarHash/NarSize while streaming), [`nar`] (unpacking),
//! [`store`] (layout, records, locks), [`progress`] (the observer a caller may pass),
//! [`error`].
pub mod cache_info;
pub mod catalog;
pub mod decompress;
pub mod error;
pub mod hashing;
pub mod http;
pub mod job;
pub mod malloc_tuning;
pub mod nar;
pub mod narinfo;
pub mod pipe;
pub mod progress;
pub mod signature;
pub mod sources;
pub mod store;
pub mod walk;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use imageless_core::store_path::StorePath;
use tokio::task::JoinSet;

pub use error::{Attempt, FetchError, SourceError, SourceFault};
pub use http::Deadlines;
pub use progress::Progress;
pub use sources::{Health, SourceReport};
pub use store::NodeStore;

use crate::config::NodeConfig;
use http::Http;
use signature::TrustedKeys;
use sources::Sources;
use walk::{Finder, Walker};

/// NARs downloaded and unpacked at once.
pub const DEFAULT_JOBS: usize = 8;

/// Uncompressed NAR bytes (KiB) decompressed at once, across jobs. A decompressor holds a
/// window as large as the NAR it reads (zstd: up to 8 MB, xz up to its dictionary), so large
/// NARs bound the pull's memory, not the job count: eight 2 MB NARs in flight took a pull of
/// `flox/xlarge` (1,045 paths, 1.6 GB) to 60 MB peak RSS. Small NARs (most of a closure)
/// still go eight at a time; a NAR larger than the budget goes alone.
pub const WINDOW_BUDGET_KIB: u32 = 8 * 1024;

/// What a realization did.
#[derive(Debug, Clone, Default)]
pub struct FetchReport {
    /// The closure of the wanted paths, sorted; all valid in the node store.
    pub closure: Vec<StorePath>,
    /// Uncompressed NAR bytes this call unpacked.
    pub nar_bytes: u64,
    /// The records of the paths this call downloaded and published (none when the store had
    /// everything), for [`store::Records::with_published`].
    pub published: Vec<narinfo::NarInfo>,
    /// Per substituter: what was fetched there, and corrupt NARs it served.
    pub sources: std::collections::BTreeMap<String, SourceReport>,
    /// What a user should know: substituters skipped (down, slow), corrupt NARs discarded.
    pub warnings: Vec<String>,
}

impl FetchReport {
    /// Paths this call downloaded (0 when the store had everything).
    pub fn downloaded(&self) -> usize {
        self.published.len()
    }
}

pub struct Fetcher {
    substituters: Arc<Vec<String>>,
    /// `trusted_public_keys` as configured (catalog keys may join them for one pull).
    trusted: Vec<String>,
    /// The `s3://` substituters' stores (credentials resolved when the fetcher is made).
    s3: Vec<(String, imageless_s3::S3Store)>,
    keys: Arc<TrustedKeys>,
    pub store: NodeStore,
    jobs: usize,
    progress: Option<Arc<dyn Progress>>,
    deadlines: Deadlines,
    health: Health,
    /// The pull's custom-catalog packages, located through the catalog service.
    catalog: Option<catalog::CatalogPull>,
    /// Where each fetched path is also linked as it is unpacked (a closure view being built).
    link_sink: Option<Arc<job::LinkSink>>,
    /// With a sink that defers the store's entries: the paths unpacked there alone.
    deferred: std::sync::Mutex<Vec<DeferredPath>>,
}

/// A path verified and unpacked only into a [`Fetcher::deferring_store_into`] directory: its
/// record is written, its store entry is not (the path is not valid yet), and its lock is
/// held while this lives (see [`crate::deferred_store`], which makes it valid).
pub struct DeferredPath {
    pub info: narinfo::NarInfo,
    _lock: store::PathLock,
}

impl DeferredPath {
    /// `info`'s path, its `lock` held.
    pub(crate) fn new(info: narinfo::NarInfo, lock: store::PathLock) -> DeferredPath {
        DeferredPath { info, _lock: lock }
    }
}

impl Fetcher {
    /// From the node config's `substituters`, `trusted_public_keys` and `store_dir`.
    pub fn from_config(config: &NodeConfig) -> Result<Fetcher, FetchError> {
        let s3 = s3_stores(config)?;
        for (field, value) in [
            ("substituter_connect_timeout_ms", config.substituter_connect_timeout_ms),
            ("substituter_stall_timeout_ms", config.substituter_stall_timeout_ms),
        ] {
            if value == 0 {
                return Err(FetchError::Config {
                    field,
                    value: value.to_string(),
                    accepted: "a number of milliseconds, at least 1",
                });
            }
        }
        let keys = TrustedKeys::parse(&config.trusted_public_keys).map_err(|value| FetchError::Config {
            field: "trusted_public_keys",
            value,
            accepted: "<key-name>:<base64 of a 32-byte ed25519 public key>",
        })?;
        Ok(Fetcher {
            substituters: Arc::new(config.substituters.clone()),
            trusted: config.trusted_public_keys.clone(),
            s3,
            keys: Arc::new(keys),
            store: NodeStore::new(config.store_dir(), &config.state_root),
            jobs: DEFAULT_JOBS,
            progress: None,
            deadlines: Deadlines {
                connect: std::time::Duration::from_millis(config.substituter_connect_timeout_ms),
                stall: std::time::Duration::from_millis(config.substituter_stall_timeout_ms),
            },
            health: Health { retry_after: std::time::Duration::from_secs(config.substituter_retry_after_secs) },
            catalog: None,
            link_sink: None,
            deferred: std::sync::Mutex::new(Vec::new()),
        })
    }

    pub fn with_jobs(mut self, jobs: usize) -> Fetcher {
        self.jobs = jobs.max(1);
        self
    }

    /// Locates `pull`'s packages through the catalog service (when any of their outputs is
    /// missing) and fetches from the stores it answers too.
    pub fn with_catalog(mut self, pull: catalog::CatalogPull) -> Fetcher {
        self.catalog = (!pull.packages.is_empty()).then_some(pull);
        self
    }

    /// Also links each path it fetches into `dir` while unpacking it (`dir/<hash>-<name>`: the
    /// same tree, files and symlinks hard-linked), and reports those paths with
    /// [`Progress::path_linked`]. For a closure view built during the pull.
    pub fn linking_into(mut self, dir: std::path::PathBuf) -> Fetcher {
        self.link_sink = Some(Arc::new(job::LinkSink::new(dir)));
        self
    }

    /// Unpacks each path it fetches into `dir` only (`dir/<hash>-<name>`, reported with
    /// [`Progress::path_linked`]) and writes its record, but leaves its store entry for later:
    /// the paths are in [`Fetcher::take_deferred`], locked, and not valid until made so. For
    /// a closure view built during the pull by a caller that can make the store's entries
    /// after its pod started (the sandbox's prefetch).
    pub fn deferring_store_into(mut self, dir: std::path::PathBuf) -> Fetcher {
        self.link_sink = Some(Arc::new(job::LinkSink::deferring_store(dir)));
        self
    }

    /// The paths of the last [`Fetcher::realize`] whose store entries are still to be made
    /// (see [`Fetcher::deferring_store_into`]); empty otherwise.
    pub fn take_deferred(&self) -> Vec<DeferredPath> {
        std::mem::take(&mut *self.deferred.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Reports the fetch to `progress`.
    pub fn with_progress(mut self, progress: Arc<dyn Progress>) -> Fetcher {
        self.progress = Some(progress);
        self
    }

    /// Makes the closure of `wanted` valid in the node store. On error, no path that failed
    /// a check is visible, and when any narinfo of the closure fails, nothing was written.
    pub fn realize(&self, wanted: &[StorePath]) -> Result<FetchReport, FetchError> {
        malloc_tuning::tune();
        // A runtime of our own on a thread of our own: callers are synchronous, and this
        // works even when one of them runs inside another runtime.
        let result = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .map_err(FetchError::store(&self.store.dir, "starting the fetch runtime"))?;
                    runtime.block_on(self.realize_async(wanted))
                })
                .join()
                .expect("fetch thread panicked")
        });
        malloc_tuning::release();
        result
    }

    async fn realize_async(&self, wanted: &[StorePath]) -> Result<FetchReport, FetchError> {
        self.store.create_dirs()?;
        let http =
            Http::new(self.deadlines).map_err(|source| FetchError::Substituter { substituter: "-".into(), source })?;
        for (name, store) in &self.s3 {
            http.add_s3(name, store.clone());
        }
        let (extra, keys) = self.catalog_sources(&http).await?;
        let mut substituters = self.substituters.to_vec();
        substituters.extend(extra);
        let finder = Finder {
            sources: Sources::start(&http, &substituters, self.health),
            http,
            keys,
            lookup_permits: Arc::new(tokio::sync::Semaphore::new(walk::LOOKUPS_IN_FLIGHT)),
        };
        let walker = Walker { finder: finder.clone(), store: self.store.clone() };
        let result = self.fetch_plan(&walker, wanted).await;
        let warnings = finder.sources.warnings();
        for w in &warnings {
            tracing::warn!("{w}");
        }
        let result = result.map_err(|e| self.name_package(e));
        result.map(|mut report| {
            report.sources = finder.sources.report();
            report.warnings = warnings;
            report
        })
    }

    /// The stores the catalog answers for this pull's custom-catalog packages, registered
    /// with `http` (their credentials, the token where allowed), and the keys to trust.
    async fn catalog_sources(&self, http: &Http) -> Result<(Vec<String>, Arc<TrustedKeys>), FetchError> {
        let Some(pull) = &self.catalog else { return Ok((Vec::new(), self.keys.clone())) };
        let missing: Vec<StorePath> = pull.output_paths().into_iter().filter(|p| !self.store.is_valid(p)).collect();
        if missing.is_empty() {
            return Ok((Vec::new(), self.keys.clone()));
        }
        let answer = catalog::locate(http, pull, &missing).await?;
        catalog::require_locations(pull, &answer)?;
        let mut urls = Vec::new();
        let mut returned_keys = Vec::new();
        for (url, (info, package)) in catalog::stores(&answer) {
            let bad = |detail: String| catalog::CatalogError::BadStore {
                package: package.clone(),
                url: pull.url.clone(),
                store: url.clone(),
                detail,
            };
            if url.starts_with("s3://") {
                let s3_url = imageless_s3::S3Url::parse(&url).map_err(|e| bad(e.to_string()))?;
                let credentials = match info.aws_envs().map_err(bad)? {
                    Some(envs) => Some(imageless_s3::Credentials {
                        access_key_id: envs.access_key_id,
                        secret_access_key: envs.secret_access_key,
                        session_token: envs.session_token,
                    }),
                    None => imageless_s3::Credentials::resolve(None, s3_url.profile.as_deref())
                        .map_err(|e| bad(e.to_string()))?,
                };
                let store = imageless_s3::S3Store::new(s3_url, credentials.as_ref()).map_err(|e| bad(e.to_string()))?;
                http.add_s3(&url, store);
            } else if url.starts_with("http://") || url.starts_with("https://") {
                if let Some(token) = &pull.token {
                    if catalog::token_may_go_to(&url, &pull.token_hosts) {
                        http.add_basic(&url, token.expose());
                    }
                }
            } else {
                return Err(bad("accepted: http(s):// or s3:// binary caches".into()).into());
            }
            if pull.trust_returned_keys {
                returned_keys.extend(info.public_keys.clone().unwrap_or_default());
            }
            tracing::info!(store = %url, package = %package, "the catalog's store for a private package");
            urls.push(url);
        }
        if returned_keys.is_empty() {
            return Ok((urls, self.keys.clone()));
        }
        let mut all = self.trusted.clone();
        all.extend(returned_keys);
        let keys = TrustedKeys::parse(&all).map_err(|value| FetchError::Config {
            field: "catalog public_keys",
            value,
            accepted: "<key-name>:<base64 of a 32-byte ed25519 public key>",
        })?;
        Ok((urls, Arc::new(keys)))
    }

    /// An undeliverable path of a custom-catalog package names the package.
    fn name_package(&self, e: FetchError) -> FetchError {
        let Some(pull) = &self.catalog else { return e };
        let FetchError::Undeliverable { path, .. } = &e else { return e };
        let package = match pull.package_of(path) {
            Some(p) => p.pkg_path.clone(),
            None => return e,
        };
        let detail = e.to_string().trim_start_matches("flox: ").to_string();
        FetchError::Package { package, detail }
    }

    async fn fetch_plan(&self, walker: &Walker, wanted: &[StorePath]) -> Result<FetchReport, FetchError> {
        let plan = walker.plan(wanted, self.deadlines.stall).await?;
        let mut report = FetchReport { closure: plan.closure, ..FetchReport::default() };
        if let Some(p) = &self.progress {
            let (paths, bytes) = (plan.missing.len(), plan.missing.iter().map(|m| m.info.nar_size).sum());
            p.planned(paths, bytes);
            p.admit(paths, bytes).map_err(|reason| FetchError::Refused { reason })?;
        }
        let permits = Arc::new(tokio::sync::Semaphore::new(self.jobs));
        let cancel = Arc::new(AtomicBool::new(false));
        let decoding = Arc::new(decompress::Decoding::new(WINDOW_BUDGET_KIB, self.jobs));
        let mut jobs = JoinSet::new();
        for planned in plan.missing {
            let (finder, store, permits, cancel) =
                (walker.finder.clone(), self.store.clone(), permits.clone(), cancel.clone());
            let (progress, decoding, sink) = (self.progress.clone(), decoding.clone(), self.link_sink.clone());
            jobs.spawn(async move {
                let _permit = permits.acquire_owned().await.expect("semaphore is never closed");
                let _admitted = decoding.admit(planned.info.nar_size).await;
                let path = planned.info.store_path.clone();
                let done =
                    job::fetch_one(&finder, &store, planned, &cancel, progress.clone(), &decoding, sink.as_ref()).await;
                match (&done, &progress) {
                    (Ok(done), Some(p)) if done.linked => p.path_linked(&path),
                    (Ok(_), Some(p)) => p.path_done(&path),
                    _ => {}
                }
                done
            });
        }
        // The first error wins. The other jobs are told to stop and awaited (not aborted),
        // so when this returns every temporary tree is gone and every lock released.
        let mut first_error = None;
        while let Some(joined) = jobs.join_next().await {
            match joined.expect("fetch job panicked") {
                Ok(done) => {
                    report.nar_bytes += done.nar_bytes;
                    if let (Some(info), Some(lock)) = (&done.published, done.held) {
                        let deferred = DeferredPath::new(info.clone(), lock);
                        self.deferred.lock().unwrap_or_else(|p| p.into_inner()).push(deferred);
                    }
                    report.published.extend(done.published);
                }
                Err(e) => {
                    cancel.store(true, Ordering::SeqCst);
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }
}

/// The `s3://` substituters of `config` as stores, with the node's credentials (the node
/// config's `s3_credentials_file`, else the AWS environment and shared-credentials file); any
/// other substituter must be an http(s) URL.
pub fn s3_stores(config: &NodeConfig) -> Result<Vec<(String, imageless_s3::S3Store)>, FetchError> {
    let mut stores = Vec::new();
    for s in &config.substituters {
        if s.starts_with("http://") || s.starts_with("https://") {
            continue;
        }
        if !s.starts_with("s3://") {
            return Err(FetchError::Config {
                field: "substituters",
                value: s.clone(),
                accepted: "http:// or https:// URLs of Nix binary caches, or s3://BUCKET?region=…&endpoint=…&scheme=…&profile=…&addressing-style=…",
            });
        }
        let url = imageless_s3::S3Url::parse(s).map_err(|e| FetchError::S3Config { detail: e.to_string() })?;
        let credentials =
            imageless_s3::Credentials::resolve(config.s3_credentials_file.as_deref(), url.profile.as_deref())
                .map_err(|e| FetchError::S3Config { detail: e.to_string() })?;
        let store = imageless_s3::S3Store::new(url, credentials.as_ref())
            .map_err(|e| FetchError::S3Config { detail: e.to_string() })?;
        stores.push((s.clone(), store));
    }
    Ok(stores)
}
