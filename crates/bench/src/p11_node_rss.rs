//! The node's memory while it pulls (P11): the resident set of every process running one of
//! the flox binaries (the per-pod shim proxy and the prefetch it spawns, both
//! `containerd-shim-flox-v2`; `flox-runc` where it runs), summed, sampled every 5 ms from
//! /proc; the peak of that sum. The stock runc shim is not counted: a runc pod has one too.
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Peak>,
}

/// Peaks of a sampling: the summed RSS and the largest single process's RSS, bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peak {
    pub sum: u64,
    pub largest: u64,
}

impl RssSampler {
    /// Starts sampling processes whose executable is one of `exes`.
    pub fn start(exes: Vec<PathBuf>) -> RssSampler {
        let exes: Vec<PathBuf> = exes.into_iter().map(|p| p.canonicalize().unwrap_or(p)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = Peak::default();
            loop {
                let done = flag.load(Ordering::Relaxed);
                let rss = rss_of(&exes);
                peak.sum = peak.sum.max(rss.iter().sum());
                peak.largest = peak.largest.max(rss.iter().copied().max().unwrap_or(0));
                if done {
                    return peak;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        RssSampler { stop, thread }
    }

    /// Stops sampling: the peaks.
    pub fn stop(self) -> Peak {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// VmRSS (bytes) of each process running one of `exes`.
fn rss_of(exes: &[PathBuf]) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter(|e| std::fs::read_link(e.path().join("exe")).is_ok_and(|x| exes.contains(&x)))
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter_map(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map(|kb| kb * 1024)
        .collect()
}
