//! Realizing store paths without Nix: the binary-cache client and the node's own store.
//!
//! [`Fetcher::realize`] makes the closure of some store paths present in the node store
//! (`store_dir`, laid out as /nix/store): a [`walk`] finds and verifies the narinfo of every
//! missing path of the closure (all substituters asked at once, configured order wins), then
//! bounded parallel [`job`]s download, decompress, check and unpack each NAR, one process per
//! path at a time (flock), publishing by rename. Files, one idea each: [`narinfo`] (format),
//! [`signature`] (trust), [`http`] (the network edge), [`cache_info`] (is it a cache for /nix/store), [`pipe`] (download → blocking unpack),
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
pub mod store;
pub mod walk;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use imageless_core::store_path::StorePath;
use tokio::task::JoinSet;

pub use error::FetchError;
pub use progress::Progress;
pub use store::NodeStore;

use crate::config::NodeConfig;
use http::Http;
use signature::TrustedKeys;
use walk::Walker;

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
}

pub struct Fetcher {
    substituters: Arc<Vec<String>>,
    keys: Arc<TrustedKeys>,
    pub store: NodeStore,
    jobs: usize,
    progress: Option<Arc<dyn Progress>>,
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
        let http = Http::new()?;
        let walker = Walker {
            http: http.clone(),
            substituters: self.substituters.clone(),
            keys: self.keys.clone(),
            store: self.store.clone(),
            lookup_permits: Arc::new(tokio::sync::Semaphore::new(walk::LOOKUPS_IN_FLIGHT)),
        };
        let plan = walker.plan(wanted).await?;
        let mut report = FetchReport { closure: plan.closure, ..FetchReport::default() };
        if let Some(p) = &self.progress {
            p.planned(plan.missing.len(), plan.missing.iter().map(|m| m.info.nar_size).sum());
        }
        let permits = Arc::new(tokio::sync::Semaphore::new(self.jobs));
        let cancel = Arc::new(AtomicBool::new(false));
        let mut jobs = JoinSet::new();
        for planned in plan.missing {
            let (http, store, permits, cancel) = (http.clone(), self.store.clone(), permits.clone(), cancel.clone());
            let progress = self.progress.clone();
            jobs.spawn(async move {
                let _permit = permits.acquire_owned().await.expect("semaphore is never closed");
                let path = planned.info.store_path.clone();
                let done = job::fetch_one(&http, &store, planned, &cancel, progress.clone()).await;
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
