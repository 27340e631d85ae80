//! The pull-through cache (`hub serve --upstream URL[,URL…]`): a narinfo or NAR missing from the
//! hub's cache is fetched from the upstream binary caches, stored atomically (a temp file
//! renamed into place) exactly as served, and then served like any other file. Keeping the
//! narinfo byte for byte keeps the upstream's signatures, so nodes verify against the upstream's
//! key. Concurrent requests for one file share one upstream fetch. Misses are not remembered:
//! a file that appears upstream later is found by the next request.
//!
//! The upstreams follow the node's rules for substituters (crates/node/src/fetch/sources.rs):
//! - asked in the order of their `nix-cache-info` `Priority:` (lower first), config order
//!   breaking ties; each one's `nix-cache-info` is asked once, all at once, and one still
//!   silent [`HEDGE`] after the first answer is asked after the others until it answers;
//! - a refused connection, a stall ([`CONNECT_TIMEOUT`], then [`STALL_TIMEOUT`] of silence
//!   before the head or within the body) or a 5xx marks an upstream down for [`RETRY_AFTER`]
//!   (as Nix disables a failing cache for a minute): requests skip it meanwhile, so one dead
//!   upstream costs one failure a minute, not one per file;
//! - a NAR whose name is its FileHash (as `nix copy` names them) is checked against it while it
//!   streams: a truncated or corrupt one is discarded and the next upstream asked.
//!
//! With the cache on S3 ([`PullThrough::store_in`]), a fetched file is staged under a dot name
//! in the local cache directory and PUT into the bucket, and a narinfo is put only once the NAR
//! it names is there (pulled first if needed): a reader of the bucket never finds a narinfo
//! whose NAR is missing. With fill peers ([`crate::fill_peers`]), a miss of a file another
//! replica owns is filled by that replica.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::OnceCell;

use crate::error::HubServerError;
use crate::fill_peers::{FillPeers, FILL_HERE};
use crate::s3_cache::S3Cache;
use crate::upstream_http::error_chain;

/// The longest an upstream may take to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest an upstream may stay silent: before its answer's head, and within its body.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an upstream found down is skipped.
pub const RETRY_AFTER: Duration = Duration::from_secs(60);
/// How long past the first `nix-cache-info` answer the others are waited for.
pub const HEDGE: Duration = Duration::from_millis(250);
/// Nix's priority of a cache whose `nix-cache-info` has none.
const DEFAULT_PRIORITY: u32 = 50;
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

/// What the hub knows of one upstream.
#[derive(Debug, Clone)]
enum Health {
    /// Its `nix-cache-info` was not asked yet (or it is due to be asked again).
    Unknown,
    /// Its `nix-cache-info` is being asked.
    Checking,
    Ready {
        priority: u32,
    },
    Down {
        until: Instant,
        reason: String,
    },
}

struct Upstream {
    url: String,
    health: Mutex<Health>,
}

/// Why one upstream could not deliver one file.
#[derive(Debug)]
struct UpstreamError {
    message: String,
    /// Refused, stalled or a 5xx: the upstream is skipped for [`RETRY_AFTER`].
    down: bool,
}

impl UpstreamError {
    fn down(message: String) -> UpstreamError {
        UpstreamError { message, down: true }
    }

    fn file(message: String) -> UpstreamError {
        UpstreamError { message, down: false }
    }
}

/// The upstream caches and the fetches in flight.
pub struct PullThrough {
    upstreams: Vec<Arc<Upstream>>,
    cache_dir: PathBuf,
    client: HttpsClient,
    in_flight: Mutex<HashMap<String, Arc<OnceCell<Pulled>>>>,
    /// Woken whenever an upstream's health changes.
    checked: Arc<tokio::sync::Notify>,
    /// Set when the cache is in a bucket: fetched files are put there.
    s3: Option<Arc<S3Cache>>,
    /// Set when replicas share the bucket: who fills which file.
    peers: Option<FillPeers>,
}

/// How long the owner of a file may take to fill it for another replica (a NAR of a few GB).
const OWNER_TIMEOUT: Duration = Duration::from_secs(900);

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
        let upstreams = upstreams
            .iter()
            .map(|u| Ok(Arc::new(Upstream { url: parse_upstream(u)?, health: Mutex::new(Health::Unknown) })))
            .collect::<Result<Vec<_>, HubServerError>>()?;
        let connector = crate::upstream_http::connector_with(Some(CONNECT_TIMEOUT))?;
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        Ok(Some(PullThrough {
            upstreams,
            cache_dir,
            client,
            in_flight: Mutex::new(HashMap::new()),
            checked: Arc::new(tokio::sync::Notify::new()),
            s3: None,
            peers: None,
        }))
    }

    /// Puts fetched files into `s3` instead of the cache directory (which then only stages
    /// them); with `peers`, files another replica owns are filled by that replica.
    pub fn store_in(&mut self, s3: Arc<S3Cache>, peers: Option<FillPeers>) {
        self.s3 = Some(s3);
        self.peers = peers;
    }

    /// Which cache paths are pulled: narinfos and NARs (never `nix-cache-info`, which is the hub's own).
    pub fn pulls(rel: &str) -> bool {
        (rel.ends_with(".narinfo") && !rel.contains('/')) || rel.strip_prefix("nar/").is_some_and(|n| !n.contains('/'))
    }

    /// Fetches `rel` (a path below the cache, already validated) unless a fetch is in flight, in
    /// which case this waits for that one's result.
    pub async fn pull(&self, rel: &str) -> Pulled {
        self.pull_from(rel, false).await
    }

    /// [`Self::pull`]; `fill_here`: asked by another replica ([`FILL_HERE`]), so never passed on
    /// to an owner.
    /// Boxed, with its type spelled out: a narinfo's pull pulls its NAR through this again.
    pub fn pull_from<'a>(
        &'a self,
        rel: &'a str,
        fill_here: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Pulled> + Send + 'a>> {
        Box::pin(self.pull_flight(rel, fill_here))
    }

    async fn pull_flight(&self, rel: &str, fill_here: bool) -> Pulled {
        // Fills done here and fills passed to an owner are separate flights: a replica asked to
        // fill a file never waits on its own request to another replica for it.
        let owner = match (&self.peers, fill_here) {
            (Some(peers), false) => Some(peers.owner(rel).await).filter(|o| o != peers.this()),
            _ => None,
        };
        let flight = match &owner {
            Some(_) => format!("owner:{rel}"),
            None => rel.to_owned(),
        };
        let cell = {
            let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(flight.clone()).or_default().clone()
        };
        let result = *cell
            .get_or_init(|| async {
                match &owner {
                    Some(owner) => match self.ask_owner(owner, rel).await {
                        Some(pulled) => pulled,
                        None => self.fetch_first(rel).await,
                    },
                    None => self.fetch_first(rel).await,
                }
            })
            .await;
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&flight).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            map.remove(&flight);
        }
        result
    }

    /// Asks the replica that owns `rel` to fill it (a HEAD that it answers once the file is in
    /// the bucket). None when it cannot be asked: this replica fills it then.
    async fn ask_owner(&self, owner: &str, rel: &str) -> Option<Pulled> {
        let uri: Uri = format!("{owner}/cache/{rel}").parse().ok()?;
        let request = hyper::Request::head(uri)
            .header(FILL_HERE, "1")
            .header(hyper::header::USER_AGENT, concat!("imageless-hub/", env!("CARGO_PKG_VERSION")))
            .body(Empty::new())
            .ok()?;
        let answer = tokio::time::timeout(OWNER_TIMEOUT, self.client.request(request)).await;
        let pulled = match answer {
            Ok(Ok(response)) => match response.status() {
                StatusCode::OK => Some(Pulled::Stored),
                StatusCode::NOT_FOUND => Some(Pulled::NotFound),
                StatusCode::BAD_GATEWAY => Some(Pulled::Unavailable),
                other => {
                    tracing::warn!(target: "imageless_hub::pull", "fill owner {owner}: {rel}: answered {other}; filling it here");
                    None
                }
            },
            Ok(Err(e)) => {
                tracing::warn!(target: "imageless_hub::pull", "fill owner {owner}: {rel}: {}; filling it here", error_chain(&e));
                None
            }
            Err(_) => {
                tracing::warn!(target: "imageless_hub::pull", "fill owner {owner}: {rel}: no answer; filling it here");
                None
            }
        };
        if pulled.is_some() {
            tracing::debug!(target: "imageless_hub::pull", "{rel} filled by its owner {owner}");
        }
        pulled
    }

    /// Whether `rel` is already stored (by a fetch that finished just before this one began,
    /// or by another replica); Err when the bucket cannot say.
    async fn stored(&self, rel: &str, dest: &Path) -> Result<bool, String> {
        match &self.s3 {
            None => Ok(tokio::fs::metadata(dest).await.is_ok_and(|m| m.is_file())),
            Some(s3) => s3.exists(rel).await.map_err(|e| e.to_string()),
        }
    }

    async fn fetch_first(&self, rel: &str) -> Pulled {
        let dest = rel.split('/').fold(self.cache_dir.clone(), |p, s| p.join(s));
        match self.stored(rel, &dest).await {
            Ok(true) => return Pulled::Stored,
            Ok(false) => {}
            Err(e) => {
                tracing::error!(target: "imageless_hub::pull", "{rel}: {e}");
                return Pulled::Unavailable;
            }
        }
        let mut unavailable = false;
        for upstream in self.order().await {
            match self.fetch_one(&upstream.url, rel, &dest).await {
                Ok(true) => {
                    tracing::info!(target: "imageless_hub::pull", "pulled {rel} from {}", upstream.url);
                    return Pulled::Stored;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(target: "imageless_hub::pull", "upstream {}: {rel}: {}", upstream.url, e.message);
                    if e.down {
                        self.mark_down(&upstream, e.message);
                    }
                    unavailable = true;
                }
            }
        }
        if unavailable || self.upstreams.iter().any(|u| matches!(health(u), Health::Down { .. })) {
            Pulled::Unavailable
        } else {
            Pulled::NotFound
        }
    }

    fn mark_down(&self, upstream: &Upstream, reason: String) {
        let until = Instant::now() + RETRY_AFTER;
        let mut h = upstream.health.lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(*h, Health::Down { .. }) {
            tracing::warn!(
                target: "imageless_hub::pull",
                "upstream {} is down ({reason}); skipped for {} s",
                upstream.url,
                RETRY_AFTER.as_secs()
            );
        }
        *h = Health::Down { until, reason };
        drop(h);
        self.checked.notify_waiters();
    }

    /// The upstreams to ask, best first: checked ones by (priority, config order), then those
    /// whose check is still running past the hedge; down ones left out.
    async fn order(&self) -> Vec<Arc<Upstream>> {
        let now = Instant::now();
        for upstream in &self.upstreams {
            let mut h = upstream.health.lock().unwrap_or_else(|e| e.into_inner());
            let due = match &*h {
                Health::Unknown => true,
                Health::Down { until, .. } => *until <= now,
                _ => false,
            };
            if due {
                *h = Health::Checking;
                drop(h);
                tokio::spawn(check(self.client.clone(), upstream.clone(), self.checked.clone()));
            }
        }
        // Wait for the checks: all of them, or the hedge past the first good one.
        let mut first_ready: Option<Instant> = None;
        loop {
            let notified = self.checked.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let states: Vec<Health> = self.upstreams.iter().map(|u| health(u)).collect();
            if !states.iter().any(|h| matches!(h, Health::Checking)) {
                break;
            }
            if first_ready.is_none() && states.iter().any(|h| matches!(h, Health::Ready { .. })) {
                first_ready = Some(Instant::now());
            }
            let deadline = first_ready.map_or(now + STALL_TIMEOUT + CONNECT_TIMEOUT, |at| at + HEDGE);
            if tokio::time::timeout_at(deadline.into(), notified).await.is_err() {
                break;
            }
        }
        let mut ranked: Vec<(u32, usize, Arc<Upstream>)> = Vec::new();
        for (i, upstream) in self.upstreams.iter().enumerate() {
            match health(upstream) {
                Health::Ready { priority } => ranked.push((priority, i, upstream.clone())),
                Health::Checking | Health::Unknown => ranked.push((u32::MAX, i, upstream.clone())),
                Health::Down { reason, .. } => {
                    tracing::debug!(target: "imageless_hub::pull", "upstream {} skipped: down ({reason})", upstream.url)
                }
            }
        }
        ranked.sort_by_key(|(priority, i, _)| (*priority, *i));
        ranked.into_iter().map(|(_, _, u)| u).collect()
    }

    /// Ok(true): stored; Ok(false): the upstream does not have it; Err: it could not deliver it.
    async fn fetch_one(&self, upstream: &str, rel: &str, dest: &Path) -> Result<bool, UpstreamError> {
        let response = match request(&self.client, &format!("{upstream}/{rel}")).await? {
            Some(response) => response,
            None => return Ok(false),
        };
        let expected = response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let limit = rel.ends_with(".narinfo").then_some(MAX_NARINFO);
        if let (Some(limit), Some(len)) = (limit, expected) {
            if len > limit {
                return Err(UpstreamError::file(format!("a narinfo of {len} bytes (more than {limit})")));
            }
        }
        let parent = dest.parent().expect("cache files have a parent");
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| UpstreamError::file(format!("{}: {e}", parent.display())))?;
        // A dot name: resolve_cache_path never serves it, so a half-written file is never seen.
        let tmp = parent.join(format!(".pull-{}-{}", std::process::id(), unique()));
        let written = self.write_body(response.into_body(), &tmp, expected, limit, file_hash_of(rel)).await;
        let kept = match written {
            Ok(()) => self.keep(rel, &tmp, dest).await,
            Err(e) => Err(e),
        };
        if kept.is_err() || self.s3.is_some() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        kept.map(|()| true)
    }

    /// Moves a fetched file into the cache: renamed into place, or put into the bucket (a
    /// narinfo only after its NAR).
    async fn keep(&self, rel: &str, tmp: &Path, dest: &Path) -> Result<(), UpstreamError> {
        let Some(s3) = &self.s3 else {
            return tokio::fs::rename(tmp, dest)
                .await
                .map_err(|e| UpstreamError::file(format!("{}: {e}", dest.display())));
        };
        if rel.ends_with(".narinfo") {
            let text = tokio::fs::read_to_string(tmp)
                .await
                .map_err(|e| UpstreamError::file(format!("{}: {e}", tmp.display())))?;
            let nar =
                narinfo_nar(&text).ok_or_else(|| UpstreamError::file("a narinfo without a URL: nar/… line".into()))?;
            // Boxed: pulling the NAR goes through the same code as this narinfo's pull.
            let pulled = self.pull_from(&nar, false).await;
            if pulled != Pulled::Stored {
                return Err(UpstreamError::file(format!("its NAR {nar} could not be pulled ({pulled:?})")));
            }
        }
        s3.put_file(rel, tmp).await.map_err(|e| UpstreamError::file(e.to_string()))
    }

    async fn write_body(
        &self,
        mut body: hyper::body::Incoming,
        tmp: &Path,
        expected: Option<u64>,
        limit: Option<u64>,
        file_hash: Option<[u8; 32]>,
    ) -> Result<(), UpstreamError> {
        let local = |e: std::io::Error| UpstreamError::file(format!("{}: {e}", tmp.display()));
        let mut file = tokio::fs::File::create(tmp).await.map_err(local)?;
        let mut written: u64 = 0;
        let mut hasher = file_hash.map(|_| Sha256::new());
        while let Some(data) = next_data(&mut body).await? {
            written += data.len() as u64;
            if limit.is_some_and(|l| written > l) {
                return Err(UpstreamError::file("a narinfo larger than any narinfo".into()));
            }
            if let Some(h) = hasher.as_mut() {
                h.update(&data);
            }
            file.write_all(&data).await.map_err(local)?;
        }
        if expected.is_some_and(|e| e != written) {
            return Err(UpstreamError::file(format!("body ended after {written} of {} bytes", expected.unwrap_or(0))));
        }
        if let (Some(want), Some(h)) = (file_hash, hasher) {
            let got: [u8; 32] = h.finalize().into();
            if got != want {
                return Err(UpstreamError::file(format!(
                    "corrupt NAR: its {written} bytes hash to sha256:{}, not the FileHash its name says",
                    nix_base32::to_nix_base32(&got)
                )));
            }
        }
        file.sync_all().await.map_err(local)?;
        Ok(())
    }
}

/// How an upstream's health reads now.
fn health(upstream: &Upstream) -> Health {
    upstream.health.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Asks `upstream` for its `nix-cache-info` and records what it says of itself.
async fn check(client: HttpsClient, upstream: Arc<Upstream>, checked: Arc<tokio::sync::Notify>) {
    let result = match request(&client, &format!("{}/nix-cache-info", upstream.url)).await {
        Ok(Some(response)) => read_small(response.into_body()).await,
        Ok(None) => Err(UpstreamError::down("it has no nix-cache-info (HTTP 404): not a binary cache".into())),
        Err(e) => Err(e),
    };
    let health = match result {
        Ok(text) => Health::Ready { priority: priority(&text) },
        Err(e) => {
            tracing::warn!(
                target: "imageless_hub::pull",
                "upstream {} is down ({}); skipped for {} s",
                upstream.url,
                e.message,
                RETRY_AFTER.as_secs()
            );
            Health::Down { until: Instant::now() + RETRY_AFTER, reason: e.message }
        }
    };
    *upstream.health.lock().unwrap_or_else(|e| e.into_inner()) = health;
    checked.notify_waiters();
}

/// GET `url` up to its answer's head: None on 404/403/410 (not there), an error that marks
/// the upstream down when it cannot be asked (refused, silent, a 5xx).
async fn request(
    client: &HttpsClient,
    url: &str,
) -> Result<Option<hyper::Response<hyper::body::Incoming>>, UpstreamError> {
    let uri: Uri = url.parse().map_err(|e| UpstreamError::file(format!("bad URL: {e}")))?;
    let request = hyper::Request::get(uri)
        .header(hyper::header::USER_AGENT, concat!("imageless-hub/", env!("CARGO_PKG_VERSION")))
        .body(Empty::new())
        .map_err(|e| UpstreamError::file(e.to_string()))?;
    let response = tokio::time::timeout(CONNECT_TIMEOUT + STALL_TIMEOUT, client.request(request))
        .await
        .map_err(|_| {
            UpstreamError::down(format!("no answer within {} s", (CONNECT_TIMEOUT + STALL_TIMEOUT).as_secs()))
        })?
        .map_err(|e| UpstreamError::down(format!("request failed: {}", error_chain(&e))))?;
    match response.status() {
        StatusCode::OK => Ok(Some(response)),
        StatusCode::NOT_FOUND | StatusCode::FORBIDDEN | StatusCode::GONE => Ok(None),
        other if other.is_server_error() => Err(UpstreamError::down(format!("answered {other}"))),
        other => Err(UpstreamError::file(format!("answered {other}"))),
    }
}

/// The next data of an upstream's body (None at its end), bounded in silence: a body that
/// stalls marks its upstream down.
async fn next_data(body: &mut hyper::body::Incoming) -> Result<Option<Bytes>, UpstreamError> {
    loop {
        let frame = tokio::time::timeout(STALL_TIMEOUT, body.frame()).await.map_err(|_| {
            UpstreamError::down(format!("the body stalled (no data for {} s)", STALL_TIMEOUT.as_secs()))
        })?;
        let Some(frame) = frame else { return Ok(None) };
        let frame = frame.map_err(|e| UpstreamError::down(format!("reading the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            return Ok(Some(data));
        }
    }
}

/// A small body (nix-cache-info), bounded in size and silence.
async fn read_small(mut body: hyper::body::Incoming) -> Result<String, UpstreamError> {
    let mut bytes = Vec::new();
    while let Some(data) = next_data(&mut body).await? {
        bytes.extend_from_slice(&data);
        if bytes.len() as u64 > MAX_NARINFO {
            return Err(UpstreamError::file("a nix-cache-info over 1 MiB".into()));
        }
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `Priority:` of a `nix-cache-info` (Nix's 50 when absent or not a number).
fn priority(text: &str) -> u32 {
    text.lines()
        .find_map(|l| l.strip_prefix("Priority:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_PRIORITY)
}

/// The FileHash a NAR's name carries (`nar/<52 nix32 digits>.nar[.ext]`, as `nix copy` names
/// them), if it does.
fn file_hash_of(rel: &str) -> Option<[u8; 32]> {
    let name = rel.strip_prefix("nar/")?;
    let digits = name.split_once(".nar").map(|(d, _)| d)?;
    if digits.len() != 52 {
        return None;
    }
    nix_base32::from_nix_base32(digits)?.try_into().ok()
}

/// The NAR a narinfo's `URL:` names (`nar/<file>`), when it is one the pull-through pulls.
fn narinfo_nar(text: &str) -> Option<String> {
    let url = text.lines().find_map(|l| l.strip_prefix("URL:"))?.trim();
    (PullThrough::pulls(url)
        && url.starts_with("nar/")
        && crate::cache::resolve_cache_path(Path::new("/"), url).is_some())
    .then(|| url.to_owned())
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
    fn the_nar_a_narinfo_names() {
        let n = "StorePath: /nix/store/x\nURL: nar/0abc.nar.zst\nCompression: zstd\n";
        assert_eq!(narinfo_nar(n).as_deref(), Some("nar/0abc.nar.zst"));
        for bad in ["StorePath: x\n", "URL: ../x.nar\n", "URL: nar/../../x\n", "URL: http://x/nar/a.nar\n"] {
            assert_eq!(narinfo_nar(bad), None, "{bad}");
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
