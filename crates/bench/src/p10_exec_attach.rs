//! P10 exec into a running container (issue 14): CRI ExecSync `true` into a pod of an
//! environment with a `hook.on-activate` (`flox/attach`) vs the same image and runtime with an
//! environment without a hook (`flox/echoip`), interleaved so that load hits both alike. Exec
//! processes attach to the main process's recorded activation, so the hook adds nothing here:
//! target ≤ 2 ms added, estimated as P6 does: rounds pair one exec of each (who goes first
//! alternates), and the figure is Yuen's 20 % trimmed mean of the per-round differences with
//! its standard error (a median of 100 moved by more than the 2 ms target between runs on
//! this VM; the medians stay as context). Also checked: the hook ran once in all those execs.
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use imageless_e2e::flox_node::env_pod;
use imageless_e2e::{PodManifest, RunningPod, BUSYBOX_IMAGE};

use crate::context::Bench;
use crate::report::{figure, Results};
use crate::stats::{ms, paired_difference, summarize, Target};

const EXECS: usize = 100;
const HOOK_ENV: &str = "flox/attach";
const PLAIN_ENV: &str = "flox/echoip";

pub async fn run(bench: &Bench, results: &mut Results) -> anyhow::Result<()> {
    bench.say(&format!("P10: {EXECS} ExecSync each into {HOOK_ENV} (hook) and {PLAIN_ENV} (no hook), interleaved"));
    let runner = bench.runner().await?;
    let opts = bench.run_options();
    let mut pods = Vec::new();
    for (name, env) in [("p10-hook", HOOK_ENV), ("p10-plain", PLAIN_ENV)] {
        let yaml = env_pod(name, env, BUSYBOX_IMAGE, &["sleep", "600"]);
        let manifest = PodManifest::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("bad manifest: {e}"))?;
        pods.push(runner.run(&manifest, &opts).await.with_context(|| format!("starting {name}"))?);
    }
    let outcome = measure(&pods).await;
    for pod in pods {
        pod.remove().await?;
    }
    let [hook, plain] = outcome?;
    results.samples("P10.hook", &hook);
    results.samples("P10.no_hook", &plain);
    let (h, p) = (summarize(&hook).context("samples")?, summarize(&plain).context("samples")?);
    let paired = paired_difference(&hook, &plain).context("paired samples")?;
    results.add(figure(
        "P10.exec_sync.paired",
        &format!(
            "P10 ExecSync `true`, hook env ({HOOK_ENV}) vs no hook ({PLAIN_ENV}) in the same round: trimmed mean of {} rounds (difference {:+.2} ± {:.2} ms SE)",
            paired.n, paired.difference, paired.standard_error
        ),
        "ms",
        paired.ours(),
        Some(paired.baseline),
        "same image, env without hook",
        Target::AddedAtMost(2.0),
    ));
    results.add(figure(
        "P10.exec_sync.median",
        &format!("P10 context: ExecSync `true`, hook env vs no hook, median of {EXECS}"),
        "ms",
        h.median,
        Some(p.median),
        "same image, env without hook",
        Target::None,
    ));
    results.add(figure(
        "P10.exec_sync.p90",
        "P10 ExecSync `true`, hook env vs no hook, p90",
        "ms",
        h.p90,
        Some(p.p90),
        "same image, env without hook",
        Target::None,
    ));
    Ok(())
}

async fn exec_true(pod: &RunningPod) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let out = pod.exec_sync(None, vec!["true".into()], Some(Duration::from_secs(10))).await?;
    let took = t0.elapsed();
    if out.exit_code != 0 {
        bail!("exec `true` in {} exited {}: {}", pod.name, out.exit_code, String::from_utf8_lossy(&out.stderr));
    }
    Ok(ms(took))
}

/// ExecSync times of pods[0] and pods[1], one of each per round (after 5 unmeasured rounds), and a check
/// that the hook ran once, in the main process.
async fn measure(pods: &[RunningPod]) -> anyhow::Result<[Vec<f64>; 2]> {
    let mut times = [Vec::new(), Vec::new()];
    for round in 0..EXECS + 5 {
        // Who goes first alternates, so an order effect cancels in the paired difference.
        let mut order = [0, 1];
        if round % 2 == 1 {
            order.reverse();
        }
        let mut took = [0.0; 2];
        for i in order {
            took[i] = exec_true(&pods[i]).await?;
        }
        if round >= 5 {
            times[0].push(took[0]);
            times[1].push(took[1]);
        }
    }
    let runs = pods[0].exec_sync(None, vec!["cat".into(), "/run/flox/cache/hook-runs".into()], None).await?;
    let count = String::from_utf8_lossy(&runs.stdout).lines().count();
    if count != 1 {
        bail!("{HOOK_ENV}'s hook ran {count} times over {} execs; attach should leave it at 1", EXECS + 5);
    }
    Ok(times)
}
