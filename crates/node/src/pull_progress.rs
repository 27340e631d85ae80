//! What `imageless pull` shows while it fetches: a progress bar on a terminal (paths and
//! bytes done of the total, rate, ETA), one plain line per fetched path otherwise (logs, CI).
//! Bytes are uncompressed NAR bytes: every narinfo gives NarSize, not every one FileSize.
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use imageless_core::store_path::StorePath;
use indicatif::{HumanBytes, HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::fetch::Progress;

pub struct PullProgress {
    what: String,
    /// None when stderr is not a terminal: plain lines instead.
    bar: Option<ProgressBar>,
    totals: Mutex<(usize, u64)>,
    done_paths: AtomicUsize,
    done_bytes: AtomicU64,
    started: Mutex<Option<Instant>>,
}

impl PullProgress {
    /// A spinner for `what` (e.g. `flox/hello (run)`) until the fetch knows its totals.
    pub fn new(what: String) -> PullProgress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
            bar.set_message(format!("pulling {what}"));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        PullProgress {
            what,
            bar,
            totals: Mutex::new((0, 0)),
            done_paths: AtomicUsize::new(0),
            done_bytes: AtomicU64::new(0),
            started: Mutex::new(None),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    fn paths_message(&self, done: usize) -> String {
        let (paths, _) = *self.totals.lock().unwrap_or_else(|e| e.into_inner());
        format!("{}: {done}/{paths} paths", self.what)
    }
}

/// `<done>/<total>, <rate>/s, ETA <eta>` from what is known so far.
pub fn plain_status(done: u64, total: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let eta = if rate > 0.0 && total > done {
        HumanDuration(Duration::from_secs_f64((total - done) as f64 / rate)).to_string()
    } else {
        "0 seconds".into()
    };
    format!("{}/{}, {}/s, ETA {eta}", HumanBytes(done), HumanBytes(total), HumanBytes(rate as u64))
}

impl Progress for PullProgress {
    fn planned(&self, paths: usize, nar_bytes: u64) {
        *self.totals.lock().unwrap_or_else(|e| e.into_inner()) = (paths, nar_bytes);
        *self.started.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        if paths == 0 {
            return;
        }
        match &self.bar {
            Some(bar) => {
                bar.set_length(nar_bytes);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                bar.set_message(self.paths_message(0));
                bar.reset_elapsed();
            }
            None => eprintln!("{}: fetching {paths} store paths, {}", self.what, HumanBytes(nar_bytes)),
        }
    }

    fn advanced(&self, bytes: u64) {
        self.done_bytes.fetch_add(bytes, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    fn rewound(&self, bytes: u64) {
        let _ = self.done_bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some(b.saturating_sub(bytes)));
        if let Some(bar) = &self.bar {
            bar.set_position(bar.position().saturating_sub(bytes));
        }
    }

    fn path_done(&self, path: &StorePath) {
        let done = self.done_paths.fetch_add(1, Ordering::Relaxed) + 1;
        match &self.bar {
            Some(bar) => bar.set_message(self.paths_message(done)),
            None => {
                let (paths, total) = *self.totals.lock().unwrap_or_else(|e| e.into_inner());
                let started = self.started.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or_else(Instant::now);
                let status = plain_status(self.done_bytes.load(Ordering::Relaxed), total, started.elapsed());
                eprintln!("{}: [{done}/{paths}] {status}: {path}", self.what);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_status_says_done_total_rate_and_eta() {
        let s = plain_status(2 * 1024 * 1024, 6 * 1024 * 1024, Duration::from_secs(2));
        assert_eq!(s, "2.00 MiB/6.00 MiB, 1.00 MiB/s, ETA 4 seconds");
        assert_eq!(plain_status(0, 10, Duration::ZERO), "0 B/10 B, 0 B/s, ETA 0 seconds");
    }
}
