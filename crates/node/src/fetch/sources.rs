//! The substituters of one pull and how far each can be trusted to answer: the order they are
//! asked in and their health.
//!
//! - **Order**: `Priority:` from each `nix-cache-info` (lower first), then the node config's
//!   order, as in Nix.
//! - **Checks**: every substituter's `nix-cache-info` is asked at once when the pull starts.
//!   The pull waits for all of them, but for at most [`hedge`] past the first good answer: a
//!   substituter still silent then is *slow* and asked only for paths no other one has (its
//!   check goes on meanwhile, bounded by the stall deadline). So a cache that accepts and never
//!   answers costs a fraction of a second, once per pull.
//! - **Down**: a refused connection, a stall or a 5xx marks a substituter unavailable for
//!   [`Health::retry_after`] (60 s by default, as Nix disables a failing cache for a minute):
//!   long enough that a pull of hundreds of paths pays for the failure once, short enough
//!   that a cache that is back is used again by the next pods. The mark is kept in the
//!   process (the shim proxy serves every pod of its sandbox), so later pulls skip the
//!   substituter from the start.
//! - **Corrupt**: a substituter that served [`DEMOTE_AFTER_CORRUPT`] NARs failing their checks
//!   is asked after the sound ones for the rest of the pull.
//!
//! Everything noteworthy becomes one warning per substituter at the end of the pull.
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::cache_info::{self, CacheInfo};
use super::error::SourceError;
use super::http::Http;

/// Corrupt NARs after which a substituter is asked last for the rest of a pull.
pub const DEMOTE_AFTER_CORRUPT: u64 = 2;
/// The least a pull waits for slower `nix-cache-info` answers once one has come.
pub const HEDGE_MIN: Duration = Duration::from_millis(250);

/// How long the pull waits past the first good `nix-cache-info` for the others: three times
/// what the first one took (a slower but working cache is still ranked by its priority), at
/// least [`HEDGE_MIN`], at most the stall deadline.
pub fn hedge(first_answer_after: Duration, stall: Duration) -> Duration {
    (first_answer_after * 3).clamp(HEDGE_MIN, stall.max(HEDGE_MIN))
}

/// How long a failing substituter is left alone.
#[derive(Debug, Clone, Copy)]
pub struct Health {
    pub retry_after: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Health { retry_after: Duration::from_secs(60) }
    }
}

/// Substituters found down by this process: URL → (asked again after, why).
fn remembered() -> &'static Mutex<HashMap<String, (Instant, String)>> {
    static DOWN: OnceLock<Mutex<HashMap<String, (Instant, String)>>> = OnceLock::new();
    DOWN.get_or_init(Default::default)
}

#[derive(Debug, Clone)]
enum State {
    Checking,
    Ready(CacheInfo),
    /// `earlier`: known before this pull started (from another pull of this process).
    Down {
        reason: String,
        until: Instant,
        earlier: bool,
    },
}

#[derive(Debug, Default)]
struct Counters {
    paths: AtomicU64,
    bytes: AtomicU64,
    corrupt: AtomicU64,
}

struct Source {
    url: String,
    state: Mutex<State>,
    /// Still checking this many ms after the pull started, when it stopped waiting (0: not
    /// slow): asked only for paths no other substituter has.
    slow_after_ms: AtomicU64,
    counters: Counters,
    /// The last corrupt NAR's story, for the warning.
    last_corrupt: Mutex<Option<String>>,
}

/// Where one pull may look for store paths, best first.
pub struct Sources {
    sources: Vec<Source>,
    health: Health,
    changed: Notify,
    started: Instant,
}

/// A substituter as a lookup sees it: its index (config order) and whether it can be asked
/// right away or only once its check ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Checked, in this rank.
    Ready { rank: (u8, u32, usize) },
    /// Its check is still running (slow): ask after waiting for it.
    Pending,
    /// Not to be asked: why.
    Down { reason: String, retry_in_secs: u64, earlier: bool },
}

/// What a pull fetched from one substituter, and what went wrong there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceReport {
    pub paths: u64,
    pub bytes: u64,
    pub corrupt: u64,
    /// Why the pull did not use it first: `down` (refused, stalled, 5xx, now or earlier in
    /// this process), `slow` (no nix-cache-info within the hedge), `invalid` (not a cache for
    /// /nix/store); None when it was asked as ranked.
    pub skipped: Option<&'static str>,
}

impl Sources {
    /// Starts the checks of every substituter not known to be down (on the current runtime).
    pub fn start(http: &Http, urls: &[String], health: Health) -> Arc<Sources> {
        let now = Instant::now();
        let known_down: HashMap<String, (Instant, String)> = {
            let mut map = remembered().lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, (until, _)| *until > now);
            // When every substituter is known to be down there is nothing to lose by asking.
            if urls.iter().all(|u| map.contains_key(u)) {
                HashMap::new()
            } else {
                map.clone()
            }
        };
        let sources = urls
            .iter()
            .map(|url| Source {
                url: url.clone(),
                state: Mutex::new(match known_down.get(url) {
                    Some((until, reason)) => State::Down { reason: reason.clone(), until: *until, earlier: true },
                    None => State::Checking,
                }),
                slow_after_ms: AtomicU64::new(0),
                counters: Counters::default(),
                last_corrupt: Mutex::new(None),
            })
            .collect();
        let this = Arc::new(Sources { sources, health, changed: Notify::new(), started: now });
        for (i, url) in urls.iter().enumerate() {
            if known_down.contains_key(url) {
                tracing::debug!(substituter = %url, "known to be down; not asked");
                continue;
            }
            let (this, http, url) = (this.clone(), http.clone(), url.clone());
            tokio::spawn(async move {
                let result = cache_info::check(&http, &url).await;
                this.checked(i, result);
            });
        }
        this
    }

    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    pub fn url(&self, i: usize) -> &str {
        &self.sources[i].url
    }

    fn checked(&self, i: usize, result: Result<CacheInfo, SourceError>) {
        match result {
            Ok(info) => {
                *self.sources[i].state.lock().unwrap_or_else(|e| e.into_inner()) = State::Ready(info);
            }
            Err(e) if e.marks_down() => self.mark_down(i, &e),
            Err(e) => {
                // Not a cache for /nix/store (or not a cache at all): useless for this pull,
                // but not an outage to remember.
                let reason = e.to_string();
                *self.sources[i].state.lock().unwrap_or_else(|e| e.into_inner()) =
                    State::Down { reason, until: Instant::now(), earlier: false };
            }
        }
        self.changed.notify_waiters();
    }

    /// Marks substituter `i` unavailable for this pull and, in this process, for
    /// `retry_after`.
    pub fn mark_down(&self, i: usize, why: &SourceError) {
        let source = &self.sources[i];
        let until = Instant::now() + self.health.retry_after;
        let reason = why.to_string();
        {
            let mut state = source.state.lock().unwrap_or_else(|e| e.into_inner());
            if matches!(*state, State::Down { .. }) {
                return;
            }
            *state = State::Down { reason: reason.clone(), until, earlier: false };
        }
        tracing::warn!(substituter = %source.url, "unavailable for {} s: {reason}", self.health.retry_after.as_secs());
        remembered().lock().unwrap_or_else(|e| e.into_inner()).insert(source.url.clone(), (until, reason));
        self.changed.notify_waiters();
    }

    /// Waits until every check has ended, or the hedge past the first good one has passed;
    /// those still checking then are slow.
    pub async fn settle(&self, stall: Duration) {
        let mut first_ready: Option<Instant> = None;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let states: Vec<State> = self.sources.iter().map(|s| self.state(s)).collect();
            if !states.iter().any(|s| matches!(s, State::Checking)) {
                return;
            }
            if first_ready.is_none() && states.iter().any(|s| matches!(s, State::Ready(_))) {
                first_ready = Some(Instant::now());
            }
            match first_ready {
                None => notified.await,
                Some(at) => {
                    let deadline = at + hedge(at - self.started, stall);
                    if tokio::time::timeout_at(deadline.into(), notified).await.is_err() {
                        for (s, state) in self.sources.iter().zip(&states) {
                            if matches!(state, State::Checking) {
                                let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX).max(1);
                                s.slow_after_ms.store(ms, Ordering::SeqCst);
                                tracing::warn!(substituter = %s.url, "slow: no nix-cache-info yet; asked last");
                            }
                        }
                        return;
                    }
                }
            }
        }
    }

    fn state(&self, s: &Source) -> State {
        s.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How substituter `i` stands now.
    pub fn standing(&self, i: usize) -> Standing {
        let s = &self.sources[i];
        match self.state(s) {
            State::Ready(info) => {
                let demoted = s.slow_after_ms.load(Ordering::SeqCst) > 0
                    || s.counters.corrupt.load(Ordering::SeqCst) >= DEMOTE_AFTER_CORRUPT;
                Standing::Ready { rank: (u8::from(demoted), info.priority, i) }
            }
            State::Checking => Standing::Pending,
            State::Down { reason, until, earlier } => Standing::Down {
                reason,
                retry_in_secs: until.saturating_duration_since(Instant::now()).as_secs(),
                earlier,
            },
        }
    }

    /// Whether substituter `i` lost its standing since a path was planned from it (down, or
    /// demoted for corrupt NARs): such a path is looked up again before its download.
    pub fn lost_standing(&self, i: usize) -> bool {
        match self.standing(i) {
            Standing::Ready { rank: (demoted, _, _) } => {
                demoted > 0 && self.sources[i].slow_after_ms.load(Ordering::SeqCst) == 0
            }
            Standing::Pending => false,
            Standing::Down { .. } => true,
        }
    }

    /// Waits for the check of a pending substituter to end, then says how it stands.
    pub async fn wait_checked(&self, i: usize) -> Standing {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.standing(i) {
                Standing::Pending => notified.await,
                other => return other,
            }
        }
    }

    /// A NAR of `bytes` (uncompressed) from substituter `i` is in the store.
    pub fn served(&self, i: usize, bytes: u64) {
        let c = &self.sources[i].counters;
        c.paths.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Substituter `i` failed a request for `path`: a corrupt NAR is counted, an outage
    /// marks it down.
    pub fn failed(&self, i: usize, path: &str, error: &SourceError) {
        if error.marks_down() {
            self.mark_down(i, error);
        } else if error.fault() == super::error::SourceFault::Corrupt {
            let s = &self.sources[i];
            let n = s.counters.corrupt.fetch_add(1, Ordering::SeqCst) + 1;
            tracing::warn!(substituter = %s.url, corrupt = n, "{path}: {error}; discarded");
            *s.last_corrupt.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{path}: {error}"));
        }
    }

    /// Per substituter (by URL): what the pull fetched there and how many corrupt NARs it got.
    pub fn report(&self) -> BTreeMap<String, SourceReport> {
        self.sources
            .iter()
            .map(|s| {
                let c = &s.counters;
                let skipped = match self.state(s) {
                    State::Down { reason, .. } if reason.starts_with("nix-cache-info says StoreDir") => Some("invalid"),
                    State::Down { .. } => Some("down"),
                    _ if s.slow_after_ms.load(Ordering::SeqCst) > 0 => Some("slow"),
                    _ => None,
                };
                let r = SourceReport {
                    paths: c.paths.load(Ordering::Relaxed),
                    bytes: c.bytes.load(Ordering::Relaxed),
                    corrupt: c.corrupt.load(Ordering::Relaxed),
                    skipped,
                };
                (s.url.clone(), r)
            })
            .collect()
    }

    /// One line per substituter that was skipped, slow or served corrupt NARs, in config order.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.sources {
            match self.state(s) {
                State::Down { reason, earlier: false, .. } => {
                    out.push(format!("substituter {} skipped: {reason}", s.url))
                }
                State::Down { reason, until, earlier: true } => out.push(format!(
                    "substituter {} skipped: unavailable since an earlier failure ({reason}); asked again after {} s",
                    s.url,
                    until.saturating_duration_since(Instant::now()).as_secs()
                )),
                _ if s.slow_after_ms.load(Ordering::SeqCst) > 0 => out.push(format!(
                    "substituter {} skipped: no answer to nix-cache-info within {} ms, while another substituter answered; asked only for paths no other one has",
                    s.url,
                    s.slow_after_ms.load(Ordering::SeqCst)
                )),
                _ => {}
            }
            let corrupt = s.counters.corrupt.load(Ordering::Relaxed);
            if corrupt > 0 {
                let last = s.last_corrupt.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default();
                out.push(format!(
                    "substituter {} served {corrupt} corrupt NAR{} (discarded, fetched from another substituter; last: {last})",
                    s.url,
                    if corrupt == 1 { "" } else { "s" }
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hedge_is_three_times_the_first_answer_within_bounds() {
        let stall = Duration::from_secs(10);
        assert_eq!(hedge(Duration::from_millis(1), stall), HEDGE_MIN);
        assert_eq!(hedge(Duration::from_millis(200), stall), Duration::from_millis(600));
        assert_eq!(hedge(Duration::from_secs(9), stall), stall);
        assert_eq!(hedge(Duration::from_secs(1), Duration::from_millis(10)), HEDGE_MIN);
    }
}
