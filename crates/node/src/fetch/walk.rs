//! Phase 1 of a fetch: from the wanted paths to the verified narinfo of every missing path
//! of their closure. Paths already in the node store contribute their recorded references
//! (no network); each missing path's narinfo is asked of every substituter at once, and the
//! answer of the first one in configured order that has it is used (404 → the next one).
//! All lookups run concurrently, so the walk costs about one round trip per closure level.
//! Nothing is written until every narinfo of the closure is verified. A substituter's
//! `Priority` is ignored: the node config's order decides. Any answer but 200 or 404 (a 500,
//! a refused connection, a bad or untrusted narinfo) is an error, never skipped silently.
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use imageless_core::store_path::StorePath;
use tokio::task::JoinSet;

use super::error::FetchError;
use super::http::Http;
use super::narinfo::{Compression, NarInfo};
use super::signature::{SigError, TrustedKeys};
use super::store::NodeStore;

/// A missing path to download, from the substituter at `substituter`.
#[derive(Debug, Clone)]
pub struct Planned {
    pub info: NarInfo,
    pub substituter: String,
    pub compression: Compression,
}

/// What the walk found: the whole closure and what of it must be downloaded.
pub struct Plan {
    pub closure: Vec<StorePath>,
    pub missing: Vec<Planned>,
}

pub struct Walker {
    pub http: Http,
    pub substituters: Arc<Vec<String>>,
    pub keys: Arc<TrustedKeys>,
    pub store: NodeStore,
    /// Bounds the narinfo lookups in flight (each asks every substituter), so a closure of
    /// a thousand paths reuses a few connections instead of opening a thousand.
    pub lookup_permits: Arc<tokio::sync::Semaphore>,
}

/// Narinfo lookups in flight at once.
pub const LOOKUPS_IN_FLIGHT: usize = 16;

impl Walker {
    pub async fn plan(&self, wanted: &[StorePath]) -> Result<Plan, FetchError> {
        let mut seen: HashSet<String> = HashSet::new();
        let mut closure = BTreeMap::new();
        let mut missing = Vec::new();
        let mut lookups: JoinSet<Result<Planned, FetchError>> = JoinSet::new();
        let mut cache_info_checked = false;
        let mut todo: Vec<StorePath> = wanted.to_vec();
        loop {
            while let Some(p) = todo.pop() {
                if !seen.insert(p.as_str().to_string()) {
                    continue;
                }
                closure.insert(p.as_str().to_string(), p.clone());
                if self.store.is_valid(&p) {
                    todo.extend(self.store.record(&p)?.references);
                    continue;
                }
                if !cache_info_checked {
                    cache_info_checked = true;
                    self.check_cache_infos().await?;
                }
                let (http, subs, keys) = (self.http.clone(), self.substituters.clone(), self.keys.clone());
                let permits = self.lookup_permits.clone();
                lookups.spawn(async move {
                    let _permit = permits.acquire_owned().await.expect("semaphore is never closed");
                    lookup(&http, &subs, &keys, p).await
                });
            }
            match lookups.join_next().await {
                None => break,
                Some(joined) => {
                    let planned = joined.expect("narinfo lookup task panicked")?;
                    todo.extend(planned.info.references.iter().cloned());
                    missing.push(planned);
                }
            }
        }
        Ok(Plan { closure: closure.into_values().collect(), missing })
    }

    /// Every substituter must be a binary cache for /nix/store (asked concurrently).
    async fn check_cache_infos(&self) -> Result<(), FetchError> {
        super::cache_info::check_all(&self.http, &self.substituters).await
    }
}

/// Asks every substituter at once; the first in configured order that has the path wins.
async fn lookup(
    http: &Http,
    substituters: &[String],
    keys: &TrustedKeys,
    path: StorePath,
) -> Result<Planned, FetchError> {
    let rel = format!("{}.narinfo", path.hash_part());
    let mut asks: Vec<_> = substituters
        .iter()
        .map(|sub| {
            let (http, sub, rel) = (http.clone(), sub.clone(), rel.clone());
            tokio::spawn(async move { http.get_text(&sub, &rel).await })
        })
        .collect();
    for (i, sub) in substituters.iter().enumerate() {
        let answer = (&mut asks[i]).await.expect("narinfo request task panicked");
        match answer {
            Ok(None) => continue,
            Ok(Some(text)) => {
                for later in &asks[i + 1..] {
                    later.abort();
                }
                return verify(text, sub, keys, &path);
            }
            Err(e) => {
                for later in &asks[i + 1..] {
                    later.abort();
                }
                return Err(e);
            }
        }
    }
    Err(FetchError::NotFound { path: path.to_string(), tried: substituters.join(", ") })
}

fn verify(text: String, sub: &str, keys: &TrustedKeys, path: &StorePath) -> Result<Planned, FetchError> {
    let info = NarInfo::parse(&text, path).map_err(|detail| FetchError::BadNarinfo {
        substituter: sub.to_string(),
        path: path.to_string(),
        detail,
    })?;
    keys.verify(&info).map_err(|e| match e {
        SigError::UnknownKey { signers } => FetchError::UntrustedKey {
            substituter: sub.to_string(),
            path: path.to_string(),
            signers: if signers.is_empty() { "no signature".into() } else { signers.join(", ") },
            trusted: keys.names().join(", "),
        },
        SigError::BadSignature { key } => {
            FetchError::BadSignature { substituter: sub.to_string(), path: path.to_string(), key }
        }
    })?;
    let compression = Compression::parse(&info.compression).ok_or_else(|| FetchError::UnsupportedCompression {
        substituter: sub.to_string(),
        path: path.to_string(),
        compression: info.compression.clone(),
    })?;
    Ok(Planned { info, substituter: sub.to_string(), compression })
}
