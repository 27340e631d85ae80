//! P1's breakdown: where a warm flox pod start spends its time next to a runc one.
//! - CRI: RunPodSandbox, CreateContainer and StartContainer as containerd logs them, over
//!   P1's own measured starts (no probe in the way), median per pod kind.
//! - runc calls: a separate pass with the step probe (probe.rs) as the node config's `runc`,
//!   which the shim proxy points the runc shim at: the wall time of each call the shim makes
//!   (sandbox create/start, container create/start, teardown), flox pods vs runc + busybox
//!   pods on the same handler, alternating. (The proxy does the flox work outside these calls;
//!   containerd's CRI rows above hold it.)
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use imageless_e2e::flox_node::{env_pod, pod_yaml};
use imageless_e2e::{BUSYBOX_IMAGE, FLOX_EMPTY_IMAGE};

use crate::context::Bench;
use crate::cri_steps;
use crate::p1_warm_start::{HELLO_TEXT, WARM_ENV};
use crate::probe;
use crate::report::{figure, Results};
use crate::stats::{summarize, Target};
use crate::timing::start_timed;

const PROBED_STARTS: usize = 10;

fn median(v: &[f64]) -> Option<f64> {
    summarize(v).map(|s| s.median)
}

/// Reads one step of a pod's CRI steps.
type StepOf = fn(&cri_steps::PodSteps) -> Option<f64>;

/// CRI step figures from the containerd log text written during P1's starts.
pub fn cri_figures(log_since: &str, results: &mut Results) {
    let sides = [("p1-flox", "flox"), ("p1-runc", "runc")];
    cri_step_figures(log_since, results, "P1", WARM_ENV, sides, "runc + busybox");
}

/// Per CRI step, the median of pods named `sides[0].0` against those named `sides[1].0` (the
/// baseline, called `base_name`), as figures `{prefix}.breakdown.cri.<step>` (no target), and
/// the samples as `{prefix}.cri.<step>.<side label>`.
pub fn cri_step_figures(
    log_since: &str,
    results: &mut Results,
    prefix: &str,
    what: &str,
    sides: [(&str, &str); 2],
    base_name: &str,
) {
    let steps = cri_steps::parse(log_since);
    let of = |pod: &str, f: StepOf| -> Vec<f64> { steps.iter().filter(|s| s.pod == pod).filter_map(f).collect() };
    let rows: [(&str, &str, StepOf); 3] = [
        ("run_sandbox", "RunPodSandbox", |s| s.run_sandbox),
        ("create_container", "CreateContainer", |s| s.create_container),
        ("start_container", "StartContainer", |s| s.start_container),
    ];
    for (key, cri, f) in rows {
        let (ours, base) = (of(sides[0].0, f), of(sides[1].0, f));
        results.samples(&format!("{prefix}.cri.{key}.{}", sides[0].1), &ours);
        results.samples(&format!("{prefix}.cri.{key}.{}", sides[1].1), &base);
        if let (Some(a), Some(b)) = (median(&ours), median(&base)) {
            results.add(figure(
                &format!("{prefix}.breakdown.cri.{key}"),
                &format!("{prefix} breakdown: {cri} as containerd logs it, median ({what})"),
                "ms",
                a,
                Some(b),
                base_name,
                Target::None,
            ));
        }
    }
}

/// The probe pass: per runc call of the shim, flox pod vs runc + busybox pod.
pub async fn probe_pass(bench: &Bench, results: &mut Results) -> anyhow::Result<()> {
    bench.say(&format!("P1 breakdown: {PROBED_STARTS} starts each with the step probe between shim and runtime"));
    let runner = bench.runner().await?;
    let opts = bench.run_options();
    let flox = env_pod("p1s-flox", WARM_ENV, FLOX_EMPTY_IMAGE, &["hello"]);
    // On the flox handler too (same shim, proxy and calls), its container passed through.
    let plain = pod_yaml(
        "p1s-runc",
        Some("flox"),
        &[("flox.dev/environment", WARM_ENV), ("flox.dev/skip-containers", "main")],
        BUSYBOX_IMAGE,
        &["echo", HELLO_TEXT],
    );
    let mut calls: [BTreeMap<String, Vec<f64>>; 2] = Default::default();
    // flox-runc's steps ([sandbox create, container create]) when it is in the path (not with
    // the proxy, which this pass uses: then these stay empty).
    let mut flox_steps: [BTreeMap<String, Vec<f64>>; 2] = Default::default();
    let runc = Path::new(crate::context::REAL_RUNC);
    let outcome = async {
        for i in 0..PROBED_STARTS * 2 {
            let side = i % 2;
            let log = bench.dir.join(format!("step-probe-{i}.log"));
            let script = probe::write_script(&bench.dir, probe::STEP_PROBE_ARG, &log, runc)?;
            bench.set_node_runc(&script, true)?;
            let t = start_timed(&runner, if side == 0 { &flox } else { &plain }, &opts, Instant::now()).await?;
            t.pod.remove().await?;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            parse_probe_log(&text, &mut calls[side], if side == 0 { Some(&mut flox_steps) } else { None });
        }
        anyhow::Ok(())
    }
    .await;
    bench.reset_node_runc()?;
    outcome?;
    add_probe_figures(&calls, &flox_steps, results);
    Ok(())
}

/// One pod start's probe log: `call` lines in order (the first create/start are the
/// sandbox's, the second the container's) and flox-runc's `create` step lines (sandbox,
/// container).
fn parse_probe_log(
    text: &str,
    calls: &mut BTreeMap<String, Vec<f64>>,
    steps: Option<&mut [BTreeMap<String, Vec<f64>>; 2]>,
) {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("call ") else { continue };
        let Some((what, us)) = rest.split_once(' ') else { continue };
        let Ok(us) = us.trim().parse::<f64>() else { continue };
        let n = seen.entry(what.to_string()).or_default();
        // A pod's teardown stops its container before its sandbox; other calls by order.
        let who = match (what, *n) {
            ("create" | "start", 0) | ("kill", 1) => "sandbox",
            ("create" | "start", 1) | ("kill", 0) => "container",
            (_, 0) => "first",
            (_, 1) => "second",
            _ => "later",
        };
        *n += 1;
        calls.entry(format!("{what} ({who})")).or_default().push(us / 1000.0);
    }
    let Some(steps) = steps else { return };
    // The container's create is the one with an `ensure` step.
    let plain = strip_ansi(text);
    for line in plain.lines().filter(|l| l.contains("flox_runc::timing") && l.contains(": create ")) {
        let of = &mut steps[usize::from(line.contains(" ensure="))];
        for (name, us) in line.split_whitespace().filter_map(|w| w.split_once('=')) {
            if let Ok(us) = us.parse::<f64>() {
                of.entry(name.to_string()).or_default().push(us / 1000.0);
            }
        }
    }
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn add_probe_figures(
    calls: &[BTreeMap<String, Vec<f64>>; 2],
    steps: &[BTreeMap<String, Vec<f64>>; 2],
    results: &mut Results,
) {
    // The start's calls in their order, then the teardown's (whatever the shim made).
    let start = ["create (sandbox)", "start (sandbox)", "create (container)", "start (container)"];
    let teardown: std::collections::BTreeSet<&str> =
        calls[0].keys().chain(calls[1].keys()).map(String::as_str).filter(|k| !start.contains(k)).collect();
    for key in start.into_iter().chain(teardown) {
        let (flox, runc) = (calls[0].get(key), calls[1].get(key));
        let id = key.replace([' ', '(', ')'], "_").replace("__", "_").trim_end_matches('_').to_string();
        results.samples(&format!("P1.runc_call.{id}.flox"), flox.map(Vec::as_slice).unwrap_or(&[]));
        results.samples(&format!("P1.runc_call.{id}.runc"), runc.map(Vec::as_slice).unwrap_or(&[]));
        if let (Some(a), Some(b)) = (flox.and_then(|v| median(v)), runc.and_then(|v| median(v))) {
            results.add(figure(
                &format!("P1.breakdown.runc_call.{id}"),
                &format!(
                    "P1 breakdown: `{key}` runc call from the shim, flox pod vs runc pod, median of {PROBED_STARTS}"
                ),
                "ms",
                a,
                Some(b),
                "runc",
                Target::None,
            ));
        }
    }
    for ((id, what), steps) in [("sandbox_", "sandbox"), ("", "container")].into_iter().zip(steps) {
        add_step_figures(id, what, steps, results);
    }
}

/// flox-runc's steps of one kind of create; `id` prefixes the figure ids.
fn add_step_figures(id: &str, what: &str, steps: &BTreeMap<String, Vec<f64>>, results: &mut Results) {
    for (name, v) in steps {
        results.samples(&format!("P1.flox_runc_step.{id}{name}"), v);
        if let Some(m) = median(v) {
            results.add(figure(
                &format!("P1.breakdown.flox_runc.{id}{name}"),
                &format!("P1 breakdown: flox-runc {what} create, step `{name}`, median"),
                "ms",
                m,
                None,
                "",
                Target::None,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_log_calls_and_steps() {
        let log = "\x1b[2m2026\x1b[0m DEBUG flox_runc::timing: create s1: config=90 read_spec=300 warm_no_prefetch=700\ncall create 30000\ncall start 5000\n\x1b[2m2026\x1b[0m \x1b[34mDEBUG\x1b[0m flox_runc::timing: create c1: config=100 read_spec=200 ensure=1500 runc_create=25000\ncall create 41000\ncall start 6000\ncall state 1000\n";
        let mut calls = BTreeMap::new();
        let mut steps: [BTreeMap<String, Vec<f64>>; 2] = Default::default();
        parse_probe_log(log, &mut calls, Some(&mut steps));
        assert_eq!(calls["create (sandbox)"], vec![30.0]);
        assert_eq!(calls["create (container)"], vec![41.0]);
        assert_eq!(calls["start (container)"], vec![6.0]);
        assert_eq!(calls["state (first)"], vec![1.0]);
        assert_eq!(steps[1]["ensure"], vec![1.5]);
        assert_eq!(steps[1]["runc_create"], vec![25.0]);
        assert_eq!(steps[0]["warm_no_prefetch"], vec![0.7]);
        assert_eq!(steps[0]["read_spec"], vec![0.3]);
        assert!(!steps[0].contains_key("ensure"));
    }
}
