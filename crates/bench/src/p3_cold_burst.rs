//! P3 a burst of cold pods: 20 pods of one cold environment started at once on the flox
//! handler vs 20 runc + busybox pods at once (what containerd itself costs for a burst),
//! in alternating rounds; the hub's access log shows the 20 made one realization. Context:
//! the burst vs one cold flox pod, and 20 runc pods vs one.
use std::time::{Duration, Instant};

use anyhow::bail;
use imageless_e2e::flox_node::{env_pod, runc_pod};
use imageless_e2e::{BUSYBOX_IMAGE, FLOX_EMPTY_IMAGE};

use crate::context::Bench;
use crate::p1_warm_start::HELLO_TEXT;
use crate::report::{figure, Results};
use crate::stats::{ms, summarize, Target};
use crate::timing::{start_many, start_timed, Burst, Settle};

const PODS: usize = 20;
/// Bursts of each kind, alternating which goes first.
const ROUNDS: usize = 9;

/// What the bursts measured.
#[derive(Default)]
struct Bursts {
    flox: Vec<f64>,
    runc: Vec<f64>,
    /// Each pod's own times within the bursts (from the burst's start): [flox, runc].
    running: [Vec<f64>; 2],
    first_output: [Vec<f64>; 2],
    /// The machine's busy CPU seconds during each burst (until every pod had printed): [flox, runc].
    cpu: [Vec<f64>; 2],
    /// NAR GETs of each flox burst.
    flox_nars: Vec<usize>,
    /// CPU seconds the hub (and the git processes it reaped) used during each flox burst.
    hub_cpu: Vec<f64>,
}

impl Bursts {
    /// Records a burst of side `side` (0 flox, 1 runc).
    fn add(&mut self, side: usize, burst: &Burst) {
        [&mut self.flox, &mut self.runc][side].push(ms(burst.wall));
        self.running[side].extend(burst.running.iter().map(|d| ms(*d)));
        self.first_output[side].extend(burst.first_output.iter().map(|d| ms(*d)));
        self.cpu[side].push(burst.cpu_busy_s);
    }
}

/// User + system CPU seconds of process `pid` and its reaped children (/proc/PID/stat
/// fields 14–17, in clock ticks of 1/100 s on Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; the fields after it are space-separated.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let ticks: u64 = after_name.split_whitespace().skip(11).take(4).filter_map(|f| f.parse::<u64>().ok()).sum();
    ticks as f64 / 100.0
}

pub async fn run(bench: &Bench, env: &str, closure: &[String], results: &mut Results) -> anyhow::Result<()> {
    let flox = |name: &str| env_pod(name, env, FLOX_EMPTY_IMAGE, &["hello"]);
    let plain = |name: &str| runc_pod(name, BUSYBOX_IMAGE, &["echo", HELLO_TEXT]);
    let runner = bench.runner().await?;
    let opts = bench.run_options();
    // Every burst starts on a node done with the previous one's teardown (and make_cold).
    let settle = Settle::now(Duration::from_secs(1));

    bench.say(&format!("P3: one cold pod of {env}, one runc pod"));
    bench.make_cold(closure)?;
    let mark = bench.node.hub.log_mark();
    let one = start_timed(&runner, &flox("p3-single"), &opts, Instant::now()).await?;
    let single = one.first_output;
    let out = one.pod.stdout(None)?;
    one.pod.remove().await?;
    if !out.contains("Hello, world!") {
        bail!("P3 pod printed {out:?}");
    }
    let (_, single_nar) = bench.node.hub.cache_gets_since(mark);
    if single_nar == 0 {
        bail!("the cold pod fetched no NAR from the hub: the environment was not cold");
    }
    let one = start_timed(&runner, &plain("p3-runc-single"), &opts, Instant::now()).await?;
    let runc_single = one.first_output;
    one.pod.remove().await?;

    let mut b = Bursts::default();
    let endpoint = bench.node.containerd.endpoint();
    for round in 0..ROUNDS {
        bench.say(&format!(
            "P3: round {} of {ROUNDS}: {PODS} cold flox pods at once, {PODS} runc pods at once",
            round + 1
        ));
        for flox_turn in if round % 2 == 0 { [true, false] } else { [false, true] } {
            if flox_turn {
                bench.make_cold(closure)?;
                settle.wait().await;
                let mark = bench.node.hub.log_mark();
                let cpu = cpu_seconds(bench.node.hub.pid());
                let yamls = (0..PODS).map(|i| flox(&format!("p3-{round}-{i}"))).collect();
                let burst = start_many(&endpoint, &opts, yamls).await?;
                b.add(0, &burst);
                b.hub_cpu.push(cpu_seconds(bench.node.hub.pid()) - cpu);
                b.flox_nars.push(bench.node.hub.cache_gets_since(mark).1);
            } else {
                settle.wait().await;
                let yamls = (0..PODS).map(|i| plain(&format!("p3-runc-{round}-{i}"))).collect();
                let burst = start_many(&endpoint, &opts, yamls).await?;
                b.add(1, &burst);
            }
        }
    }
    add_figures(results, &b, single_nar, single, runc_single);
    Ok(())
}

fn add_figures(results: &mut Results, b: &Bursts, single_nar: usize, single: Duration, runc_single: Duration) {
    results.samples("P3.single_cold_ms", &[ms(single)]);
    results.samples("P3.single_runc_ms", &[ms(runc_single)]);
    results.samples("P3.many_cold_wall_ms", &b.flox);
    results.samples("P3.many_runc_wall_ms", &b.runc);
    results.samples("P3.hub_cpu_s_per_burst", &b.hub_cpu);
    for (side, name) in ["flox", "runc"].into_iter().enumerate() {
        results.samples(&format!("P3.pod_running_ms.{name}"), &b.running[side]);
        results.samples(&format!("P3.pod_first_output_ms.{name}"), &b.first_output[side]);
    }
    results.samples("P3.cpu_busy_s.flox", &b.cpu[0]);
    results.samples("P3.cpu_busy_s.runc", &b.cpu[1]);
    results.samples("P3.nar_gets_per_burst", &b.flox_nars.iter().map(|n| *n as f64).collect::<Vec<_>>());
    let worst = b.flox_nars.iter().copied().max().unwrap_or(0);
    let flox = summarize(&b.flox).expect("samples").median / 1000.0;
    let runc = summarize(&b.runc).expect("samples").median / 1000.0;
    results.add(figure(
        "P3.realizations",
        &format!(
            "P3 realizations for {PODS} cold pods at once (most NAR GETs of {ROUNDS} bursts {worst} / {single_nar} of one cold pod)"
        ),
        "count",
        worst as f64 / single_nar as f64,
        None,
        "",
        Target::Exactly(1.0),
    ));
    results.add(figure(
        "P3.wall",
        &format!("P3 {PODS} cold flox pods at once vs {PODS} runc pods at once: wall to all first outputs, median of {ROUNDS}"),
        "s",
        flox,
        Some(runc),
        &format!("{PODS} runc pods at once"),
        Target::RatioAtMost(1.05),
    ));
    results.add(figure(
        "P3.context.vs_one_cold_pod",
        &format!("P3 context: {PODS} cold flox pods at once vs one cold flox pod"),
        "s",
        flox,
        Some(single.as_secs_f64()),
        "1 cold pod",
        Target::None,
    ));
    // Where in a burst the flox pods lose time: each pod's own running and first output (from
    // the burst's start), over all pods of all bursts, at the median and the 90th percentile.
    for (id, what, samples) in [("running", "running", &b.running), ("first_output", "first output", &b.first_output)] {
        let (Some(f), Some(r)) = (summarize(&samples[0]), summarize(&samples[1])) else { continue };
        for (pct, of) in [("median", (f.median, r.median)), ("p90", (f.p90, r.p90))] {
            results.add(figure(
                &format!("P3.context.pod_{id}.{pct}"),
                &format!("P3 context: a pod's own time to {what} within its burst, {pct} over all pods of all bursts"),
                "s",
                of.0 / 1000.0,
                Some(of.1 / 1000.0),
                "runc pods in their bursts",
                Target::None,
            ));
        }
    }
    if let (Some(f), Some(r)) = (summarize(&b.cpu[0]), summarize(&b.cpu[1])) {
        results.add(figure(
            "P3.context.cpu",
            &format!(
                "P3 context: CPU the whole machine used from a burst's start until all {PODS} pods had printed (both \
                 cores are busy through a burst), median of {ROUNDS}"
            ),
            "s",
            f.median,
            Some(r.median),
            "runc bursts",
            Target::None,
        ));
    }
    results.add(figure(
        "P3.context.hub_cpu",
        &format!(
            "P3 context: CPU the hub used per flox burst, on the same 2 cores as the pods (a hub elsewhere in \
             production), median of {ROUNDS}"
        ),
        "s",
        summarize(&b.hub_cpu).map(|s| s.median).unwrap_or(0.0),
        None,
        "",
        Target::None,
    ));
    results.add(figure(
        "P3.context.runc",
        &format!("P3 context: {PODS} runc pods at once vs one (containerd's own cost)"),
        "s",
        runc,
        Some(runc_single.as_secs_f64()),
        "1 runc pod",
        Target::None,
    ));
}
