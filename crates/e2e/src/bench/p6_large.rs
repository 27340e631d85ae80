//! P6: an environment of a realistic size. `flox/large` (300+ store paths, 200+ MB) reaches
//! its containers through one closure view mount, so its warm start, its host mounts and its
//! delete time must not depend on the closure's size:
//! - warm start of a `flox/large` pod vs a `flox/hello` pod (6 paths) and vs runc + busybox,
//!   20 starts each in rotating order;
//! - host mounts added by 50 running `flox/large` pods vs 50 running runc + busybox pods;
//! - deleting those 50 pods, one after the other: median per pod, flox vs runc.
use std::time::{Duration, Instant};

use anyhow::bail;
use imageless_e2e::{RunningPod, BUSYBOX_IMAGE, FLOX_EMPTY_IMAGE};

use super::{figure, Progress, Results};
use crate::node::{pod_yaml, start_timed, BenchNode};
use crate::stats::{ms, summarize, Target};

pub const LARGE_ENV: &str = "flox/large";
const SMALL_ENV: &str = "flox/hello";
const STARTS: usize = 20;
const RUNNING: usize = 50;
const TEXT: &str = "Hello, world! (hello 2.12)";
/// Runs until SIGTERM and then exits at once (a bare `sleep` as PID 1 ignores SIGTERM, and
/// the delete would measure the stop grace period instead).
const SLEEPER: &str = "trap 'exit 0' TERM; sleep 600 & wait";

fn mount_count() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo").map(|t| t.lines().count()).unwrap_or(0)
}

pub async fn p6_large(progress: &Progress, node: &BenchNode, results: &mut Results) -> anyhow::Result<()> {
    let runner = node.runner().await?;
    let mut opts = node.containerd.run_options();
    opts.force_host_network = true;
    // Both flox pods print the same line: coreutils' echo in flox/large, hello in flox/hello.
    let large = pod_yaml("p6-large", Some("flox"), Some(LARGE_ENV), FLOX_EMPTY_IMAGE, &["echo", TEXT]);
    let small = pod_yaml("p6-hello", Some("flox"), Some(SMALL_ENV), FLOX_EMPTY_IMAGE, &["hello"]);
    let plain = pod_yaml("p6-runc", None, None, BUSYBOX_IMAGE, &["echo", TEXT]);
    progress.say(&format!("P6: cold start of {LARGE_ENV} (realization + closure view), warming {SMALL_ENV} and runc"));
    for (i, yaml) in [&large, &small, &plain].into_iter().enumerate() {
        let t = start_timed(&runner, yaml, &opts, Instant::now()).await?;
        let mut out = String::new();
        for _ in 0..100 {
            out = t.pod.stdout(None)?;
            if out.contains('\n') {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        t.pod.remove().await?;
        if out.trim() != TEXT {
            bail!("P6 warm-up pod printed {out:?}, expected {TEXT:?}");
        }
        if i == 0 {
            results.add(figure(
                "P6.large.cold_start",
                &format!("P6 cold start of {LARGE_ENV} → first output (realize + view)"),
                "ms",
                ms(t.first_output),
                None,
                "",
                Target::None,
            ));
        }
    }

    progress.say(&format!("P6: {STARTS} warm starts each: {LARGE_ENV}, {SMALL_ENV}, runc"));
    let kinds = [("large", &large), ("hello", &small), ("runc", &plain)];
    let mut running: [Vec<f64>; 3] = Default::default();
    let mut first: [Vec<f64>; 3] = Default::default();
    for i in 0..STARTS {
        for k in 0..kinds.len() {
            let idx = (k + i) % kinds.len();
            let t = start_timed(&runner, kinds[idx].1, &opts, Instant::now()).await?;
            running[idx].push(ms(t.running));
            first[idx].push(ms(t.first_output));
            t.pod.remove().await?;
        }
    }
    for (idx, (kind, _)) in kinds.iter().enumerate() {
        results.samples(&format!("P6.{kind}.running"), &running[idx]);
        results.samples(&format!("P6.{kind}.first_output"), &first[idx]);
    }
    let s = |v: &Vec<f64>| summarize(v).expect("samples");
    let (lr, hr, rr) = (s(&running[0]), s(&running[1]), s(&running[2]));
    let (lf, hf, rf) = (s(&first[0]), s(&first[1]), s(&first[2]));
    let vs_small = Target::RatioAtMost(1.02);
    let vs_runc = Target::RatioAtMost(1.05);
    let small_name = format!("{SMALL_ENV} pod");
    results.add(figure(
        "P6.large_vs_hello.running.median",
        &format!("P6 warm start {LARGE_ENV} → running, median of {STARTS}"),
        "ms",
        lr.median,
        Some(hr.median),
        &small_name,
        vs_small,
    ));
    results.add(figure(
        "P6.large_vs_hello.first_output.median",
        &format!("P6 warm start {LARGE_ENV} → first output, median"),
        "ms",
        lf.median,
        Some(hf.median),
        &small_name,
        vs_small,
    ));
    results.add(figure(
        "P6.large_vs_runc.running.median",
        &format!("P6 warm start {LARGE_ENV} → running, median"),
        "ms",
        lr.median,
        Some(rr.median),
        "runc + busybox",
        vs_runc,
    ));
    results.add(figure(
        "P6.large_vs_runc.first_output.median",
        &format!("P6 warm start {LARGE_ENV} → first output, median"),
        "ms",
        lf.median,
        Some(rf.median),
        "runc + busybox",
        vs_runc,
    ));

    progress.say(&format!("P6: {RUNNING} running pods each: {LARGE_ENV}, then runc + busybox"));
    let (flox_mounts, flox_deletes) = run_many(&runner, &opts, Some(LARGE_ENV)).await?;
    let (runc_mounts, runc_deletes) = run_many(&runner, &opts, None).await?;
    results.samples("P6.large.delete", &flox_deletes);
    results.samples("P6.runc.delete", &runc_deletes);
    results.add(figure(
        "P6.host_mounts",
        &format!("P6 host mounts added by {RUNNING} running {LARGE_ENV} pods"),
        "mounts",
        flox_mounts as f64,
        Some(runc_mounts as f64),
        &format!("{RUNNING} runc + busybox pods"),
        Target::RatioAtMost(1.0),
    ));
    let (fd, rd) = (s(&flox_deletes), s(&runc_deletes));
    results.add(figure(
        "P6.delete.median",
        &format!("P6 delete of a running {LARGE_ENV} pod, median of {RUNNING}"),
        "ms",
        fd.median,
        Some(rd.median),
        "runc + busybox pod",
        Target::RatioAtMost(1.05),
    ));
    Ok(())
}

/// Starts RUNNING sleeping pods (flox with `env`, or runc + busybox), counts the host mounts
/// they add, then deletes them one by one: (mounts added, delete times in ms).
async fn run_many(
    runner: &imageless_e2e::PodRunner,
    opts: &imageless_e2e::RunOptions,
    env: Option<&str>,
) -> anyhow::Result<(usize, Vec<f64>)> {
    let before = mount_count();
    let mut pods: Vec<RunningPod> = Vec::new();
    for i in 0..RUNNING {
        let yaml = match env {
            Some(e) => {
                pod_yaml(&format!("p6-many-{i}"), Some("flox"), Some(e), FLOX_EMPTY_IMAGE, &["bash", "-c", SLEEPER])
            }
            None => pod_yaml(&format!("p6-many-runc-{i}"), None, None, BUSYBOX_IMAGE, &["sh", "-c", SLEEPER]),
        };
        let manifest = imageless_e2e::PodManifest::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
        match runner.run(&manifest, opts).await {
            Ok(p) => pods.push(p),
            Err(e) => {
                for p in pods {
                    let _ = p.remove().await;
                }
                bail!("P6: pod {i} of {RUNNING} failed to start: {e}");
            }
        }
    }
    let added = mount_count().saturating_sub(before);
    let mut deletes = Vec::new();
    for p in pods {
        let t = Instant::now();
        p.remove().await?;
        deletes.push(ms(t.elapsed()));
    }
    Ok((added, deletes))
}
