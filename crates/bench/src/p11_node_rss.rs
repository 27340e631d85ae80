//! The node's memory while it pulls (P11): the resident set of every process running one of
//! the flox binaries (the per-pod shim proxy and the prefetch it spawns, both
//! `containerd-shim-flox-v2`; `flox-runc` where it runs), summed, sampled every 5 ms from
//! /proc; the peak of that sum, and the largest process's own peak (the kernel's VmHWM, which
//! no sampling misses). The stock runc shim is not counted: a runc pod has one too.
//!
//! The sampler shares the 2 cores with the start it measures, so each sample is cheap: a
//! process's executable is looked at once (new PIDs only), and only the few flox processes'
//! `status` files are read. Reading every process's `exe` link every 5 ms took about a tenth of
//! a core, time the flox side's start paid and the image side's did not.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Samples between two looks at every PID's executable (100 ms).
const RECHECK_EVERY: u64 = 20;

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
            let mut seen = HashMap::new();
            for sample in 0u64.. {
                let done = flag.load(Ordering::Relaxed);
                if sample % RECHECK_EVERY == 0 {
                    // A PID first seen between its fork and its exec shows its parent's
                    // executable: every PID is looked at again now and then.
                    seen.clear();
                }
                let memory = memory_of(&exes, &mut seen);
                peak.sum = peak.sum.max(memory.iter().map(|m| m.rss).sum());
                peak.largest = peak.largest.max(memory.iter().map(|m| m.hwm).max().unwrap_or(0));
                if done {
                    return peak;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            unreachable!("the sampling loop returns")
        });
        RssSampler { stop, thread }
    }

    /// Stops sampling: the peaks.
    pub fn stop(self) -> Peak {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// Resident memory of one process, bytes: now (VmRSS) and its peak so far (VmHWM).
struct Memory {
    rss: u64,
    hwm: u64,
}

/// The memory of each process running one of `exes`; `seen` remembers, per PID, whether it
/// does (a PID's executable is read once).
fn memory_of(exes: &[PathBuf], seen: &mut HashMap<u32, bool>) -> Vec<Memory> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let pids: std::collections::HashSet<u32> =
        dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    seen.retain(|pid, _| pids.contains(pid));
    let mut found = Vec::new();
    for pid in pids {
        let ours = *seen
            .entry(pid)
            .or_insert_with(|| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|x| exes.contains(&x)));
        if !ours {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { continue };
        let kb = |key: &str| -> Option<u64> {
            status.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
        };
        if let (Some(rss), Some(hwm)) = (kb("VmRSS:"), kb("VmHWM:")) {
            found.push(Memory { rss: rss * 1024, hwm: hwm * 1024 });
        }
    }
    found
}
