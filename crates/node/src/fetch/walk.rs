//! Phase 1 of a fetch: from the wanted paths to the verified narinfo of every missing path
//! of their closure. Paths already in the node store contribute their recorded references
//! (no network); each missing path's narinfo is found by a [`Finder`]. All lookups run
//! concurrently, so the walk costs about one round trip per closure level. Nothing is written
//! until every narinfo of the closure is verified.
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use imageless_core::store_path::StorePath;
use tokio::task::JoinSet;

use super::error::{Attempt, Attempts, FetchError, SourceError};
use super::http::Http;
use super::narinfo::{Compression, NarInfo};
use super::signature::{SigError, TrustedKeys};
use super::sources::{Sources, Standing};
use super::store::NodeStore;

/// A missing path to download, from the substituter `source` (an index into [`Sources`]).
#[derive(Debug)]
pub struct Planned {
    pub info: NarInfo,
    pub source: usize,
    pub substituter: String,
    pub compression: Compression,
    /// What the substituters asked before this one said (404, down, unsigned…): the start
    /// of the error if no substituter can deliver the path.
    pub attempts: Vec<Attempt>,
    /// Every substituter asked for this path so far, this one included.
    pub asked: BTreeSet<usize>,
}

/// What the walk found: the whole closure and what of it must be downloaded.
pub struct Plan {
    pub closure: Vec<StorePath>,
    pub missing: Vec<Planned>,
}

/// Finds a path's narinfo among the substituters, best first: asks every usable one at once
/// and takes the answer of the best-ranked that has a valid, trusted narinfo. Substituters
/// that fail are marked in [`Sources`]; those whose check is still running are asked last.
#[derive(Clone)]
pub struct Finder {
    pub http: Http,
    pub sources: Arc<Sources>,
    pub keys: Arc<TrustedKeys>,
    /// Bounds the narinfo lookups in flight (each asks every substituter), so a closure of
    /// a thousand paths reuses a few connections instead of opening a thousand.
    pub lookup_permits: Arc<tokio::sync::Semaphore>,
}

/// Narinfo lookups in flight at once.
pub const LOOKUPS_IN_FLIGHT: usize = 16;

impl Finder {
    /// The narinfo of `path` from the best substituter not in `asked`; on failure, every
    /// substituter's story (after `earlier`).
    pub async fn find(
        &self,
        path: &StorePath,
        mut asked: BTreeSet<usize>,
        mut attempts: Vec<Attempt>,
    ) -> Result<Planned, FetchError> {
        let _permit = self.lookup_permits.acquire().await.expect("semaphore is never closed");
        let rel = format!("{}.narinfo", path.hash_part());
        // Ready ones by rank, then those still checking, in config order.
        let mut ready = Vec::new();
        let mut pending = Vec::new();
        let unasked: Vec<usize> = (0..self.sources.len()).filter(|i| !asked.contains(i)).collect();
        for i in unasked {
            match self.sources.standing(i) {
                Standing::Ready { rank } => ready.push((rank, i)),
                Standing::Pending => pending.push(i),
                Standing::Down { reason, retry_in_secs, earlier } => {
                    asked.insert(i);
                    attempts.push(self.attempt(i, down(reason, retry_in_secs, earlier)));
                }
            }
        }
        ready.sort();
        let ready: Vec<usize> = ready.into_iter().map(|(_, i)| i).collect();
        if let Some(found) = self.first_hit(path, &rel, &ready, &mut asked, &mut attempts).await {
            return Ok(Planned { attempts, asked, ..found });
        }
        for i in pending {
            match self.sources.wait_checked(i).await {
                Standing::Ready { .. } => {
                    if let Some(found) = self.first_hit(path, &rel, &[i], &mut asked, &mut attempts).await {
                        return Ok(Planned { attempts, asked, ..found });
                    }
                }
                Standing::Down { reason, retry_in_secs, earlier } => {
                    asked.insert(i);
                    attempts.push(self.attempt(i, down(reason, retry_in_secs, earlier)));
                }
                Standing::Pending => unreachable!("wait_checked returns once the check ended"),
            }
        }
        Err(FetchError::Undeliverable { path: path.to_string(), attempts: Attempts(attempts) })
    }

    fn attempt(&self, i: usize, error: SourceError) -> Attempt {
        Attempt { substituter: self.sources.url(i).to_string(), error }
    }

    /// Asks `order` at once; the first in that order with a good narinfo wins.
    async fn first_hit(
        &self,
        path: &StorePath,
        rel: &str,
        order: &[usize],
        asked: &mut BTreeSet<usize>,
        attempts: &mut Vec<Attempt>,
    ) -> Option<Planned> {
        let mut asks: Vec<_> = order
            .iter()
            .map(|&i| {
                let (http, sub, rel) = (self.http.clone(), self.sources.url(i).to_string(), rel.to_string());
                tokio::spawn(async move { http.get_text(&sub, &rel).await })
            })
            .collect();
        for (n, &i) in order.iter().enumerate() {
            asked.insert(i);
            let sub = self.sources.url(i);
            let answer = (&mut asks[n]).await.expect("narinfo request task panicked");
            let verified = match answer {
                Ok(None) => Err(SourceError::NotFound { url: self.http.url(sub, rel) }),
                Ok(Some(text)) => verify(&text, &self.keys, path),
                Err(e) => Err(e),
            };
            match verified {
                Ok((info, compression)) => {
                    for later in &asks[n + 1..] {
                        later.abort();
                    }
                    let planned = Planned {
                        info,
                        source: i,
                        substituter: sub.to_string(),
                        compression,
                        attempts: Vec::new(),
                        asked: BTreeSet::new(),
                    };
                    return Some(planned);
                }
                Err(e) => {
                    self.sources.failed(i, path.as_str(), &e);
                    attempts.push(self.attempt(i, e));
                }
            }
        }
        None
    }
}

pub struct Walker {
    pub finder: Finder,
    pub store: NodeStore,
}

impl Walker {
    pub async fn plan(&self, wanted: &[StorePath], stall: std::time::Duration) -> Result<Plan, FetchError> {
        let mut seen: HashSet<String> = HashSet::new();
        let mut closure = BTreeMap::new();
        let mut missing = Vec::new();
        let mut lookups: JoinSet<Result<Planned, FetchError>> = JoinSet::new();
        let mut settled = false;
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
                if !settled {
                    // The order of the substituters is known once their checks are in.
                    settled = true;
                    self.finder.sources.settle(stall).await;
                }
                let finder = self.finder.clone();
                lookups.spawn(async move { finder.find(&p, BTreeSet::new(), Vec::new()).await });
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
}

/// Why a substituter marked down is not asked: the failure itself when this pull found it,
/// else that it failed earlier and when it is asked again.
fn down(reason: String, retry_in_secs: u64, earlier: bool) -> SourceError {
    if earlier {
        SourceError::Unavailable { reason, retry_in_secs }
    } else {
        SourceError::Down { reason }
    }
}

/// A narinfo served for `path`, parsed, signed by a trusted key, in a known compression.
fn verify(text: &str, keys: &TrustedKeys, path: &StorePath) -> Result<(NarInfo, Compression), SourceError> {
    let info = NarInfo::parse(text, path).map_err(|detail| SourceError::BadNarinfo { detail })?;
    keys.verify(&info).map_err(|e| match e {
        SigError::UnknownKey { signers } => SourceError::UntrustedKey {
            signers: if signers.is_empty() { "no signature".into() } else { signers.join(", ") },
            trusted: keys.names().join(", "),
        },
        SigError::BadSignature { key } => SourceError::BadSignature { key },
    })?;
    let compression = Compression::parse(&info.compression)
        .ok_or_else(|| SourceError::UnsupportedCompression { compression: info.compression.clone() })?;
    Ok((info, compression))
}
