//! A replica's disk tier in front of its bucket: a narinfo or NAR read from the bucket once is
//! kept in the replica's own cache directory (an emptyDir in a pod) and served from there
//! through the hub's file fast path (`sendfile`), so hot files do not cross the store again for
//! every client. The bucket stays the one source of truth shared by the replicas; the tier is
//! private to a replica, may be lost at any time, and holds nothing the bucket does not.
//!
//! Files are immutable once in the bucket (NARs are named by their hash; a narinfo is written
//! after its NAR and not rewritten), so a kept copy never goes stale. The tier fills in the
//! background after a full GET from the bucket (a second GET of the object into a temporary
//! name, renamed into place once whole), one fill per file at a time, and stops filling at its
//! byte budget (`cache_store_local_bytes` in hub.json; 0 turns it off). Nothing is evicted: a
//! replica that fills its budget serves the rest from the bucket, as without a tier.
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use crate::s3_cache::S3Cache;

/// The default budget: enough for a cluster's working set of environments, small enough for an
/// emptyDir on a node's root disk.
pub const DEFAULT_BYTES: u64 = 4 << 30;

pub struct Tier {
    dir: PathBuf,
    budget: u64,
    used: AtomicU64,
    in_flight: Mutex<HashSet<String>>,
}

impl Tier {
    /// A tier in `dir` (the replica's cache directory), `budget` bytes at most; None when 0.
    pub fn new(dir: PathBuf, budget: u64) -> Option<Arc<Tier>> {
        (budget > 0).then(|| Arc::new(Tier { dir, budget, used: AtomicU64::new(0), in_flight: Mutex::default() }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `rel` (already checked to be a narinfo or NAR name) is kept here.
    pub fn has(&self, rel: &str) -> bool {
        std::fs::symlink_metadata(self.dir.join(rel)).is_ok_and(|m| m.is_file())
    }

    /// Keeps `rel` from the bucket, in the background, unless it is kept or being kept, or the
    /// budget is spent.
    pub fn fill(self: &Arc<Self>, s3: Arc<S3Cache>, rel: &str) {
        if self.used.load(Ordering::Relaxed) >= self.budget || self.has(rel) {
            return;
        }
        if !self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).insert(rel.to_string()) {
            return;
        }
        let (tier, rel) = (self.clone(), rel.to_string());
        tokio::spawn(async move {
            match tier.fetch(&s3, &rel).await {
                Ok(bytes) => {
                    tier.used.fetch_add(bytes, Ordering::Relaxed);
                }
                Err(e) => tracing::debug!(target: "imageless_hub::s3", "disk tier: {rel} not kept: {e}"),
            }
            tier.in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(&rel);
        });
    }

    async fn fetch(&self, s3: &S3Cache, rel: &str) -> Result<u64, String> {
        let dest = self.dir.join(rel);
        let parent = dest.parent().ok_or("no parent")?;
        tokio::fs::create_dir_all(parent).await.map_err(|e| e.to_string())?;
        // A dot name: the file fast path never serves it, so a half-written copy is never seen.
        let tmp = parent.join(format!(".tier-{}-{}", std::process::id(), unique()));
        let result = async {
            let response = s3.get_whole(rel).await.map_err(|e| e.to_string())?;
            let mut body = response.into_body();
            let mut file = tokio::fs::File::create(&tmp).await.map_err(|e| e.to_string())?;
            let mut written = 0u64;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| e.to_string())?;
                if let Ok(data) = frame.into_data() {
                    written += data.len() as u64;
                    file.write_all(&data).await.map_err(|e| e.to_string())?;
                }
            }
            file.flush().await.map_err(|e| e.to_string())?;
            tokio::fs::rename(&tmp, &dest).await.map_err(|e| e.to_string())?;
            Ok::<u64, String>(written)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }
}

fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
