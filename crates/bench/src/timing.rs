//! Timing commands and pod starts: a command's wall time (with a stall deadline), one pod's
//! start to running and to its first output, and many pods started at once.
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use imageless_e2e::{CriClient, PodManifest, PodRunner, RunOptions, RunningPod};

/// A run longer than this is a stall, not a measurement (see `timed_with_deadline`).
pub const STALL: Duration = Duration::from_secs(10);

/// Runs `cmd` to completion; its wall time and trimmed stdout.
pub fn timed(cmd: &mut Command) -> anyhow::Result<(Duration, String)> {
    match timed_with_deadline(cmd, Duration::from_secs(600))? {
        Some(r) => Ok(r),
        None => bail!("{:?} did not finish within 600 s", cmd.get_program()),
    }
}

/// Like `timed`, but kills the command after `deadline` and returns None (a stall). A hub
/// has been seen to leave one of several concurrent HEAD requests unanswered until the
/// client gives up (Nix waits `stalled-download-timeout`, 300 s): such a run measures the
/// stall, not the copy, so callers retry it and report how often it happened.
pub fn timed_with_deadline(cmd: &mut Command, deadline: Duration) -> anyhow::Result<Option<(Duration, String)>> {
    let out_file = tempfile::tempfile()?;
    let err_file = tempfile::tempfile()?;
    cmd.stdin(Stdio::null()).stdout(out_file.try_clone()?).stderr(err_file.try_clone()?);
    let t0 = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("running {:?}", cmd.get_program()))?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if t0.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    let took = t0.elapsed();
    let read = |mut f: std::fs::File| -> String {
        use std::io::{Read, Seek};
        let mut s = String::new();
        let _ = f.rewind().and_then(|_| f.read_to_string(&mut s));
        s.trim().to_string()
    };
    if !status.success() {
        bail!("{:?} {:?} failed ({status}): {}", cmd.get_program(), cmd.get_args().collect::<Vec<_>>(), read(err_file));
    }
    Ok(Some((took, read(out_file))))
}

/// One timed pod start.
pub struct TimedStart {
    pub pod: RunningPod,
    /// RunPodSandbox … StartContainer returned (the container is running).
    pub running: Duration,
    /// Until the container's first log bytes (its first output) appeared.
    pub first_output: Duration,
}

/// How often the log file is looked at: small next to a pod start, so it adds little error.
const LOG_POLL: Duration = Duration::from_millis(1);

/// Runs `yaml` and waits for its first output; times measured from `t0`.
pub async fn start_timed(runner: &PodRunner, yaml: &str, opts: &RunOptions, t0: Instant) -> anyhow::Result<TimedStart> {
    let manifest = PodManifest::from_yaml(yaml).map_err(|e| anyhow::anyhow!("bad manifest: {e}\n{yaml}"))?;
    let pod =
        runner.run(&manifest, opts).await.map_err(|e| anyhow::anyhow!("pod {} failed to start: {e}", manifest.name))?;
    let running = t0.elapsed();
    let log = pod.container(None)?.log_path.clone();
    let deadline = Duration::from_secs(120);
    loop {
        if std::fs::metadata(&log).is_ok_and(|m| m.len() > 0) {
            break;
        }
        if t0.elapsed() > deadline {
            let _ = pod.remove().await;
            bail!("pod {} wrote no output within {deadline:?}", manifest.name);
        }
        tokio::time::sleep(LOG_POLL).await;
    }
    Ok(TimedStart { first_output: t0.elapsed(), running, pod })
}

/// Starts `yaml`, waits for its first whole line of output, removes it and checks the line
/// is `want` (a warm-up start that also proves the pod does what the figure assumes). Returns
/// the time to its first output.
pub async fn start_and_check(
    runner: &PodRunner,
    yaml: &str,
    opts: &RunOptions,
    want: &str,
) -> anyhow::Result<Duration> {
    let t = start_timed(runner, yaml, opts, Instant::now()).await?;
    // The first line may take a moment longer than the first bytes; wait for it.
    let mut out = String::new();
    for _ in 0..100 {
        out = t.pod.stdout(None)?;
        if out.contains('\n') {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.pod.remove().await?;
    if out.trim() != want {
        bail!("warm-up pod printed {out:?}, expected {want:?}");
    }
    Ok(t.first_output)
}

/// Starts all pods at once; the wall time until every one has printed. Removes them after.
/// One burst of pod starts: the wall time to all first outputs, and each pod's own times (from
/// the burst's start) to running and to its first output.
pub struct Burst {
    pub wall: Duration,
    pub running: Vec<Duration>,
    pub first_output: Vec<Duration>,
    /// CPU seconds the whole machine was busy (user, system, interrupts) from the burst's
    /// start until every pod had printed: what a burst on 2 saturated cores really compares.
    pub cpu_busy_s: f64,
}

/// The machine's busy CPU time so far (/proc/stat's first line: user, nice, system, irq,
/// softirq, steal; in clock ticks of 1/100 s), in seconds.
pub fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal …
    [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| ticks.get(i)).sum::<u64>() as f64 / 100.0
}

pub async fn start_many(endpoint: &str, opts: &RunOptions, yamls: Vec<String>) -> anyhow::Result<Burst> {
    // One CRI connection per pod, as separate kubelet workers would have; connected first.
    let mut runners = Vec::new();
    for _ in &yamls {
        runners.push(PodRunner::new(CriClient::connect(endpoint).await?));
    }
    let cpu0 = machine_busy_seconds();
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (yaml, runner) in yamls.into_iter().zip(runners) {
        let opts = opts.clone();
        set.spawn(async move { start_timed(&runner, &yaml, &opts, t0).await });
    }
    let mut pods = Vec::new();
    let mut first_error = None;
    while let Some(r) = set.join_next().await {
        match r.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(t) => pods.push(t),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let cpu_busy_s = machine_busy_seconds() - cpu0;
    let burst = Burst {
        cpu_busy_s,
        wall: pods.iter().map(|t| t.first_output).max().unwrap_or_default(),
        running: pods.iter().map(|t| t.running).collect(),
        first_output: pods.iter().map(|t| t.first_output).collect(),
    };
    let mut removals = tokio::task::JoinSet::new();
    for t in pods {
        removals.spawn(async move { t.pod.remove().await });
    }
    while let Some(r) = removals.join_next().await {
        r??;
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(burst),
    }
}

/// Start times of some kinds of pod, measured in turns.
pub struct StartSamples {
    /// Per kind, ms until running.
    pub running: Vec<Vec<f64>>,
    /// Per kind, ms until the first output.
    pub first_output: Vec<Vec<f64>>,
}

/// `n` starts of each manifest in `yamls`, one after the other, rotating the order each round
/// so no kind always runs right after another's teardown. Each start begins on a settled
/// node (see [`Settle`]).
pub async fn rotating_starts(
    runner: &PodRunner,
    opts: &RunOptions,
    yamls: &[&str],
    n: usize,
) -> anyhow::Result<StartSamples> {
    let mut s = StartSamples { running: vec![vec![]; yamls.len()], first_output: vec![vec![]; yamls.len()] };
    let settle = Settle::now(Duration::from_millis(150));
    for i in 0..n {
        for k in 0..yamls.len() {
            let idx = (k + i) % yamls.len();
            settle.wait().await;
            let t = start_timed(runner, yamls[idx], opts, Instant::now()).await?;
            s.running[idx].push(crate::stats::ms(t.running));
            s.first_output[idx].push(crate::stats::ms(t.first_output));
            t.pod.remove().await?;
        }
    }
    Ok(s)
}

/// Lets the previous pod's teardown finish before the next measurement. Removing a pod
/// returns before its shim has exited and before containerd's garbage collector has removed
/// its snapshots; a start made right then shares the CPU with that work, which adds noise of
/// the size of the differences being measured. So: wait until no more shims run than when the
/// measurement began (at most 10 s), then a short quiet period.
pub struct Settle {
    shims: usize,
    /// How long the node is left alone after the last shim has gone.
    quiet: Duration,
}

impl Settle {
    /// Takes the number of shims running now as the settled state; `quiet` after each wait.
    pub fn now(quiet: Duration) -> Settle {
        Settle { shims: shim_count(), quiet }
    }

    pub async fn wait(&self) {
        settle_to(self.shims, self.quiet).await
    }
}

/// Waits until at most `shims` shims run (at most 10 s), then `quiet`.
pub async fn settle_to(shims: usize, quiet: Duration) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while shim_count() > shims && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(quiet).await;
}

/// Processes named like a containerd shim (`containerd-shim-runc-v2` shows as
/// `containerd-shim` in /proc/PID/comm, which keeps 15 bytes).
pub fn shim_count() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    dir.flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter(|e| std::fs::read(e.path().join("comm")).is_ok_and(|c| c.starts_with(b"containerd-shim")))
        .count()
}
