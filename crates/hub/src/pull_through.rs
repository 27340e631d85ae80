//! The pull-through cache (`hub serve --upstream URL[,URL…]`): a narinfo or NAR missing from the
//! hub's cache is fetched from the upstream binary caches, in order, stored atomically (a temp
//! file renamed into place) exactly as served, and then served like any other file. Keeping the
//! narinfo byte for byte keeps the upstream's signatures, so nodes verify against the upstream's
//! key. Concurrent requests for one file share one upstream fetch. Misses are not remembered:
//! a file that appears upstream later is found by the next request.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncWriteExt;
use tokio::sync::OnceCell;

use crate::error::HubServerError;

/// The longest an upstream may take to answer with a response head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest an upstream body may stay silent.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A narinfo is a few hundred bytes; anything far larger is not one.
const MAX_NARINFO: u64 = 1024 * 1024;

/// What pulling one file came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pulled {
    /// The file is now in the local cache.
    Stored,
    /// Every upstream answered that it does not have it.
    NotFound,
    /// No upstream had it and at least one could not be asked (down, timed out, 5xx).
    Unavailable,
}

type HttpsClient = Client<crate::upstream_http::Connector, Empty<Bytes>>;

/// The upstream caches and the fetches in flight.
pub struct PullThrough {
    upstreams: Vec<String>,
    cache_dir: PathBuf,
    client: HttpsClient,
    in_flight: Mutex<HashMap<String, Arc<OnceCell<Pulled>>>>,
}

/// Checks one `--upstream` value: an absolute http(s) URL without query; the trailing `/` is dropped.
pub fn parse_upstream(url: &str) -> Result<String, HubServerError> {
    crate::upstream_http::parse_url(
        url,
        "upstream cache URL",
        "http://HOST[:PORT][/PATH] or https://HOST[:PORT][/PATH] (a Nix binary cache), no query",
    )
}

impl PullThrough {
    /// None when there are no upstreams.
    pub fn new(upstreams: &[String], cache_dir: PathBuf) -> Result<Option<PullThrough>, HubServerError> {
        if upstreams.is_empty() {
            return Ok(None);
        }
        let upstreams = upstreams.iter().map(|u| parse_upstream(u)).collect::<Result<Vec<_>, _>>()?;
        let connector = crate::upstream_http::connector()?;
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        Ok(Some(PullThrough { upstreams, cache_dir, client, in_flight: Mutex::new(HashMap::new()) }))
    }

    /// Which cache paths are pulled: narinfos and NARs (never `nix-cache-info`, which is the hub's own).
    pub fn pulls(rel: &str) -> bool {
        (rel.ends_with(".narinfo") && !rel.contains('/')) || rel.strip_prefix("nar/").is_some_and(|n| !n.contains('/'))
    }

    /// Fetches `rel` (a path below the cache, already validated) unless a fetch is in flight, in
    /// which case this waits for that one's result.
    pub async fn pull(&self, rel: &str) -> Pulled {
        let cell = {
            let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(rel.to_owned()).or_default().clone()
        };
        let result = *cell.get_or_init(|| self.fetch_first(rel)).await;
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(rel).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            map.remove(rel);
        }
        result
    }

    async fn fetch_first(&self, rel: &str) -> Pulled {
        let dest = rel.split('/').fold(self.cache_dir.clone(), |p, s| p.join(s));
        if tokio::fs::metadata(&dest).await.is_ok_and(|m| m.is_file()) {
            // Stored by a fetch that finished just before this one began.
            return Pulled::Stored;
        }
        let mut unavailable = false;
        for upstream in &self.upstreams {
            match self.fetch_one(upstream, rel, &dest).await {
                Ok(true) => {
                    tracing::info!(target: "imageless_hub::pull", "pulled {rel} from {upstream}");
                    return Pulled::Stored;
                }
                Ok(false) => {}
                Err(message) => {
                    tracing::warn!(target: "imageless_hub::pull", "upstream {upstream}: {rel}: {message}");
                    unavailable = true;
                }
            }
        }
        if unavailable {
            Pulled::Unavailable
        } else {
            Pulled::NotFound
        }
    }

    /// Ok(true): stored; Ok(false): the upstream does not have it; Err: it could not be asked.
    async fn fetch_one(&self, upstream: &str, rel: &str, dest: &Path) -> Result<bool, String> {
        let uri: Uri = format!("{upstream}/{rel}").parse().map_err(|e| format!("bad URL: {e}"))?;
        let request = hyper::Request::get(uri)
            .header(hyper::header::USER_AGENT, concat!("imageless-hub/", env!("CARGO_PKG_VERSION")))
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(HEAD_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| format!("no answer within {HEAD_TIMEOUT:?}"))?
            .map_err(|e| format!("request failed: {e}"))?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN | StatusCode::GONE => return Ok(false),
            other => return Err(format!("answered {other}")),
        }
        let expected = response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let limit = rel.ends_with(".narinfo").then_some(MAX_NARINFO);
        if let (Some(limit), Some(len)) = (limit, expected) {
            if len > limit {
                return Err(format!("a narinfo of {len} bytes (more than {limit})"));
            }
        }
        let parent = dest.parent().expect("cache files have a parent");
        tokio::fs::create_dir_all(parent).await.map_err(|e| format!("{}: {e}", parent.display()))?;
        // A dot name: resolve_cache_path never serves it, so a half-written file is never seen.
        let tmp = parent.join(format!(".pull-{}-{}", std::process::id(), unique()));
        let written = self.write_body(response.into_body(), &tmp, expected, limit).await;
        let renamed = match written {
            Ok(()) => tokio::fs::rename(&tmp, dest).await.map_err(|e| format!("{}: {e}", dest.display())),
            Err(e) => Err(e),
        };
        if renamed.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        renamed.map(|()| true)
    }

    async fn write_body(
        &self,
        mut body: hyper::body::Incoming,
        tmp: &Path,
        expected: Option<u64>,
        limit: Option<u64>,
    ) -> Result<(), String> {
        let mut file = tokio::fs::File::create(tmp).await.map_err(|e| format!("{}: {e}", tmp.display()))?;
        let mut written: u64 = 0;
        loop {
            let frame = tokio::time::timeout(IDLE_TIMEOUT, body.frame())
                .await
                .map_err(|_| format!("the body stalled for {IDLE_TIMEOUT:?}"))?;
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| format!("reading the body: {e}"))?;
            if let Ok(data) = frame.into_data() {
                written += data.len() as u64;
                if limit.is_some_and(|l| written > l) {
                    return Err("a narinfo larger than any narinfo".into());
                }
                file.write_all(&data).await.map_err(|e| format!("{}: {e}", tmp.display()))?;
            }
        }
        if expected.is_some_and(|e| e != written) {
            return Err(format!("body ended after {written} of {} bytes", expected.unwrap_or(0)));
        }
        file.sync_all().await.map_err(|e| format!("{}: {e}", tmp.display()))?;
        Ok(())
    }
}

/// A number unique within this process, for temp file names.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        assert_eq!(parse_upstream("http://10.0.0.1:8080/cache/").unwrap(), "http://10.0.0.1:8080/cache");
        assert_eq!(parse_upstream("https://cache.example.invalid").unwrap(), "https://cache.example.invalid");
        for bad in ["ftp://x/cache", "cache", "http://x/cache?a=b", "http://user:pw@x/cache", ""] {
            let err = parse_upstream(bad).unwrap_err().to_string();
            assert!(err.contains("upstream cache URL") && err.contains("http://HOST[:PORT]"), "{bad}: {err}");
        }
    }

    #[test]
    fn only_narinfos_and_nars_are_pulled() {
        assert!(PullThrough::pulls("0123.narinfo"));
        assert!(PullThrough::pulls("nar/abc.nar"));
        assert!(PullThrough::pulls("nar/abc.nar.xz"));
        assert!(!PullThrough::pulls("nix-cache-info"));
        assert!(!PullThrough::pulls("abc.ls"));
        assert!(!PullThrough::pulls("log/abc"));
    }
}
