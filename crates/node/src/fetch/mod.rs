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
//! [`decompress`], [`hashing`] (NarHash/NarSize while streaming), [`nar`] (unpacking),
//! [`store`] (layout, records, locks), [`progress`] (the observer a caller may pass),
//! [`error`].
pub mod cache_info;
pub mod decompress;
pub mod error;
pub mod hashing;
pub mod http;
pub mod job;
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

/// What a realization did.
#[derive(Debug, Clone, Default)]
pub struct FetchReport {
    /// The closure of the wanted paths, sorted; all valid in the node store.
    pub closure: Vec<StorePath>,
    /// Paths this call downloaded (0 when the store had everything).
    pub downloaded: usize,
    /// Uncompressed NAR bytes this call unpacked.
    pub nar_bytes: u64,
    /// Per substituter: what was fetched there, and corrupt NARs it served.
    pub sources: std::collections::BTreeMap<String, SourceReport>,
    /// What a user should know: substituters skipped (down, slow), corrupt NARs discarded.
    pub warnings: Vec<String>,
}

pub struct Fetcher {
    substituters: Arc<Vec<String>>,
    keys: Arc<TrustedKeys>,
    pub store: NodeStore,
    jobs: usize,
    progress: Option<Arc<dyn Progress>>,
    deadlines: Deadlines,
    health: Health,
}

impl Fetcher {
    /// From the node config's `substituters`, `trusted_public_keys` and `store_dir`.
    pub fn from_config(config: &NodeConfig) -> Result<Fetcher, FetchError> {
        for s in &config.substituters {
            if !(s.starts_with("http://") || s.starts_with("https://")) {
                return Err(FetchError::Config {
                    field: "substituters",
                    value: s.clone(),
                    accepted: "http:// or https:// URLs of Nix binary caches",
                });
            }
        }
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
            keys: Arc::new(keys),
            store: NodeStore::new(config.store_dir(), &config.state_root),
            jobs: DEFAULT_JOBS,
            progress: None,
            deadlines: Deadlines {
                connect: std::time::Duration::from_millis(config.substituter_connect_timeout_ms),
                stall: std::time::Duration::from_millis(config.substituter_stall_timeout_ms),
            },
            health: Health { retry_after: std::time::Duration::from_secs(config.substituter_retry_after_secs) },
        })
    }

    pub fn with_jobs(mut self, jobs: usize) -> Fetcher {
        self.jobs = jobs.max(1);
        self
    }

    /// Reports the fetch to `progress`.
    pub fn with_progress(mut self, progress: Arc<dyn Progress>) -> Fetcher {
        self.progress = Some(progress);
        self
    }

    /// Makes the closure of `wanted` valid in the node store. On error, no path that failed
    /// a check is visible, and when any narinfo of the closure fails, nothing was written.
    pub fn realize(&self, wanted: &[StorePath]) -> Result<FetchReport, FetchError> {
        // A runtime of our own on a thread of our own: callers are synchronous, and this
        // works even when one of them runs inside another runtime.
        std::thread::scope(|scope| {
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
        })
    }

    async fn realize_async(&self, wanted: &[StorePath]) -> Result<FetchReport, FetchError> {
        self.store.create_dirs()?;
        let http =
            Http::new(self.deadlines).map_err(|source| FetchError::Substituter { substituter: "-".into(), source })?;
        let finder = Finder {
            sources: Sources::start(&http, &self.substituters, self.health),
            http,
            keys: self.keys.clone(),
            lookup_permits: Arc::new(tokio::sync::Semaphore::new(walk::LOOKUPS_IN_FLIGHT)),
        };
        let walker = Walker { finder: finder.clone(), store: self.store.clone() };
        let result = self.fetch_plan(&walker, wanted).await;
        let warnings = finder.sources.warnings();
        for w in &warnings {
            tracing::warn!("{w}");
        }
        result.map(|mut report| {
            report.sources = finder.sources.report();
            report.warnings = warnings;
            report
        })
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
        let mut jobs = JoinSet::new();
        for planned in plan.missing {
            let (finder, store, permits, cancel) =
                (walker.finder.clone(), self.store.clone(), permits.clone(), cancel.clone());
            let progress = self.progress.clone();
            jobs.spawn(async move {
                let _permit = permits.acquire_owned().await.expect("semaphore is never closed");
                let path = planned.info.store_path.clone();
                let done = job::fetch_one(&finder, &store, planned, &cancel, progress.clone()).await;
                if let (Ok(_), Some(p)) = (&done, &progress) {
                    p.path_done(&path);
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
                    report.downloaded += usize::from(done.downloaded);
                    report.nar_bytes += done.nar_bytes;
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
