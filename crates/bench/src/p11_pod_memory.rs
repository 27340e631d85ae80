//! P11 context for the cold-start comparison: the node's memory per running pod. 50 running
//! `flox/large` pods (the stock runc shim plus our per-pod shim proxy each) against 50 running
//! runc + busybox pods (the stock shim alone), one side at a time: the proportional set size
//! (/proc/PID/smaps_rollup `Pss`, so pages the shims share are split between them) summed over
//! every process running the flox shim launcher or the stock runc shim, divided by 50.
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::context::{Bench, VERSION};
use crate::p6_large::start_many_sleepers;
use crate::report::{figure, Results};
use crate::stats::Target;

const PODS: usize = 50;
pub async fn run(bench: &Bench, env: &str, results: &mut Results) -> anyhow::Result<()> {
    let runner = bench.runner().await?;
    let opts = bench.run_options();
    let exes =
        vec![bench.bins.release_dir.join("containerd-shim-flox-v2"), VERSION.bin_dir().join("containerd-shim-runc-v2")];
    bench.say(&format!("P11: memory per running pod: {PODS} {env} pods, then {PODS} runc + busybox pods"));
    let mut per_pod = Vec::new();
    for flox in [true, false] {
        let pods = start_many_sleepers(&runner, &opts, flox.then_some(env), Vec::new(), "p11-mem", PODS).await?;
        // Let the starts' transient allocations settle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pss = pss_of(&exes);
        for p in pods {
            p.remove().await?;
        }
        per_pod.push(pss as f64 / PODS as f64 / 1e6);
    }
    results.add(figure(
        &format!("P11.{}.memory_per_pod", env.replace('/', "_")),
        &format!(
            "P11 node memory per running pod: {env} (stock runc shim + our per-pod proxy), Pss summed over {PODS} pods ÷ {PODS}"
        ),
        "MB",
        per_pod[0],
        Some(per_pod[1]),
        "runc + busybox pod (the stock runc shim)",
        Target::RatioAtMost(1.2),
    ));
    Ok(())
}

/// Summed Pss (bytes) of the processes running one of `exes`.
fn pss_of(exes: &[PathBuf]) -> u64 {
    let exes: Vec<PathBuf> = exes.iter().map(|p| p.canonicalize().unwrap_or_else(|_| p.clone())).collect();
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    dir.flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter(|e| std::fs::read_link(e.path().join("exe")).is_ok_and(|x| exes.contains(&x)))
        .filter_map(|e| pss_kb(&e.path()))
        .map(|kb| kb * 1024)
        .sum()
}

fn pss_kb(proc_dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(proc_dir.join("smaps_rollup")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Pss:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
