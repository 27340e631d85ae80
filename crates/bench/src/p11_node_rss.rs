//! The node's memory while it pulls (P11): the resident set of every process running one of
//! the flox binaries (the per-pod shim proxy and the prefetch it spawns, both
//! `containerd-shim-flox-v2`; `flox-runc` where it runs), summed, sampled every 5 ms from
//! /proc; the peak of that sum, and the largest process's own peak (the kernel's VmHWM, which
//! no sampling misses). The stock runc shim is not counted: a runc pod has one too.
//!
//! The sampler shares the 2 cores with the start it measures, so it does little per sample:
//! the known flox processes' `status` files every 5 ms; the PID list every 20 ms, with a new
//! PID's executable looked at once, and again for 100 ms after it appeared (a PID caught
//! between its fork and its exec shows its parent's executable: containerd's, for a shim it is
//! starting). Its own CPU time is reported with the peaks (context row `rss_sampler_cpu`):
//! listing /proc every 5 ms took 146 ms of CPU during a 2.7 s cold start, and reading every
//! process's `exe` link every 5 ms about a tenth of a core, time the flox side's start paid and
//! the image side's did not.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Samples between two listings of /proc (20 ms).
const LIST_EVERY: u64 = 4;
/// Samples during which a PID that is not ours is looked at again (100 ms).
const YOUNG_FOR: u64 = 20;

pub struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Peak>,
}

/// Peaks of a sampling: the summed RSS and the largest single process's RSS, bytes; and the
/// CPU time the sampler itself took (ns), which the start it measured had to share the cores
/// with.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peak {
    pub sum: u64,
    pub largest: u64,
    pub sampler_cpu_ns: u64,
}

impl RssSampler {
    /// Starts sampling processes whose executable is one of `exes`.
    pub fn start(exes: Vec<PathBuf>) -> RssSampler {
        let exes: Vec<PathBuf> = exes.into_iter().map(|p| p.canonicalize().unwrap_or(p)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = Peak::default();
            let mut pids = Pids::default();
            for sample in 0u64.. {
                let done = flag.load(Ordering::Relaxed);
                if sample % LIST_EVERY == 0 {
                    pids.list(&exes, sample);
                }
                let memory = pids.memory();
                peak.sum = peak.sum.max(memory.iter().map(|m| m.rss).sum());
                peak.largest = peak.largest.max(memory.iter().map(|m| m.hwm).max().unwrap_or(0));
                if done {
                    peak.sampler_cpu_ns = own_cpu_ns();
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

/// The calling thread's CPU time so far, ns (the first field of its schedstat); 0 when the
/// kernel does not keep it.
fn own_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Resident memory of one process, bytes: now (VmRSS) and its peak so far (VmHWM).
struct Memory {
    rss: u64,
    hwm: u64,
}

/// The PIDs seen so far: ours (running one of the executables), and the others with the
/// sample they were first seen at.
#[derive(Default)]
struct Pids {
    ours: std::collections::HashSet<u32>,
    others: HashMap<u32, u64>,
}

impl Pids {
    /// Lists /proc: looks at each new PID's executable, and again at those that were not ours
    /// while they are young.
    fn list(&mut self, exes: &[PathBuf], sample: u64) {
        let Ok(dir) = std::fs::read_dir("/proc") else { return };
        let live: std::collections::HashSet<u32> =
            dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
        self.ours.retain(|pid| live.contains(pid));
        self.others.retain(|pid, _| live.contains(pid));
        let is_ours = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|x| exes.contains(&x));
        for pid in live {
            if self.ours.contains(&pid) {
                continue;
            }
            let first_seen = *self.others.entry(pid).or_insert(sample);
            if sample - first_seen <= YOUNG_FOR && is_ours(pid) {
                self.others.remove(&pid);
                self.ours.insert(pid);
            }
        }
    }

    /// The memory of each of our processes still running.
    fn memory(&mut self) -> Vec<Memory> {
        let mut found = Vec::new();
        self.ours.retain(|pid| {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return false };
            let kb = |key: &str| -> Option<u64> {
                status.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
            };
            if let (Some(rss), Some(hwm)) = (kb("VmRSS:"), kb("VmHWM:")) {
                found.push(Memory { rss: rss * 1024, hwm: hwm * 1024 });
            }
            true
        });
        found
    }
}
