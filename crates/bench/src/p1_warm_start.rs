//! P1 warm start: pod starts of a cached environment on the flox handler (unpinned, as in
//! the docs, so each start asks the hub for the live generation; and pinned) vs the runc
//! handler with busybox, 40 each in rotating order, each on a settled node: time to running
//! and to first output.
use imageless_e2e::flox_node::{env_pod, runc_pod};
use imageless_e2e::{BUSYBOX_IMAGE, FLOX_EMPTY_IMAGE};

use crate::context::Bench;
use crate::report::{figure, Results};
use crate::stats::{summarize, Summary, Target};
use crate::timing::{rotating_starts, start_and_check};
use crate::{p1_breakdown, p1_ladder};

const STARTS: usize = 40;
/// The docs' environment (unpinned) and its `hello`.
pub const WARM_ENV: &str = "flox/echoip";
pub const WARM_ENV_PINNED: &str = "flox/echoip:2";
pub const HELLO_TEXT: &str = "Hello, world! (hello 2.12)";
const KINDS: [&str; 3] = ["flox", "pinned", "runc"];

pub async fn run(bench: &Bench, results: &mut Results) -> anyhow::Result<()> {
    let runner = bench.runner().await?;
    let opts = bench.run_options();
    let flox = env_pod("p1-flox", WARM_ENV, FLOX_EMPTY_IMAGE, &["hello"]);
    let pinned = env_pod("p1-flox-pinned", WARM_ENV_PINNED, FLOX_EMPTY_IMAGE, &["hello"]);
    let plain = runc_pod("p1-runc", BUSYBOX_IMAGE, &["echo", HELLO_TEXT]);
    bench.say(&format!("P1: warming {WARM_ENV} and the runc path"));
    for yaml in [&flox, &pinned, &plain] {
        start_and_check(&runner, yaml, &opts, HELLO_TEXT).await?;
    }
    bench.say(&format!("P1: {STARTS} warm starts each: flox ({WARM_ENV}), flox pinned ({WARM_ENV_PINNED}), runc"));
    let log_mark = bench.node.containerd.log_mark();
    let s = rotating_starts(&runner, &opts, &[&flox, &pinned, &plain], STARTS).await?;
    let log_since = bench.node.containerd.log_since(log_mark);
    for (idx, kind) in KINDS.iter().enumerate() {
        results.samples(&format!("P1.{kind}.running"), &s.running[idx]);
        results.samples(&format!("P1.{kind}.first_output"), &s.first_output[idx]);
    }
    let sum = |v: &Vec<f64>| summarize(v).expect("samples");
    let running: Vec<Summary> = s.running.iter().map(sum).collect();
    let first: Vec<Summary> = s.first_output.iter().map(sum).collect();
    add_figures(results, &running, &first);
    p1_breakdown::cri_figures(&log_since, results);
    p1_breakdown::probe_pass(bench, results).await?;
    p1_ladder::run(bench, results).await
}

/// `running` and `first`: summaries of flox, pinned, runc.
fn add_figures(results: &mut Results, running: &[Summary], first: &[Summary]) {
    let (fr, pr, rr) = (running[0], running[1], running[2]);
    let (ff, pf, rf) = (first[0], first[1], first[2]);
    let base = "runc + busybox";
    let t = Target::RatioAtMost(1.05);
    let rows = [
        (
            "P1.running.median",
            format!("P1 warm start → running, median of {STARTS} ({WARM_ENV})"),
            fr.median,
            rr.median,
        ),
        ("P1.running.p90", "P1 warm start → running, p90".to_string(), fr.p90, rr.p90),
        ("P1.first_output.median", "P1 warm start → first output, median".to_string(), ff.median, rf.median),
        ("P1.first_output.p90", "P1 warm start → first output, p90".to_string(), ff.p90, rf.p90),
        (
            "P1.pinned.running.median",
            format!("P1 pinned {WARM_ENV_PINNED} (no hub check) → running, median"),
            pr.median,
            rr.median,
        ),
        (
            "P1.pinned.first_output.median",
            format!("P1 pinned {WARM_ENV_PINNED} → first output, median"),
            pf.median,
            rf.median,
        ),
    ];
    for (id, name, ours, baseline) in rows {
        results.add(figure(id, &name, "ms", ours, Some(baseline), base, t));
    }
}
