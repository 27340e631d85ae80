//! P1's ladder: a warm start's extra time taken apart in place, one part at a time. Four kinds
//! of pod start in rotating order on a settled node, each adding one part of the flox path to
//! the one before:
//! 1. runc + busybox on the runc handler (P1's baseline);
//! 2. the same pod on the flox handler, annotated with the (warm) environment but its
//!    container in `flox.dev/skip-containers`: adds the shim launcher and its proxy (a second
//!    process per pod, a hop on every ttrpc call) and the proxy's decisions (the sandbox
//!    create's warm check, the container passed through untouched);
//! 3. a pinned flox pod on the busybox image: adds the environment (spec edit, its mounts, the
//!    activator, the environment's `hello`);
//! 4. the same pinned flox pod on `flox/empty` (P1's flox pod): adds the near-empty image.
use std::time::Instant;

use imageless_e2e::flox_node::{env_pod, pod_yaml, runc_pod};
use imageless_e2e::{BUSYBOX_IMAGE, FLOX_EMPTY_IMAGE};

use crate::context::Bench;
use crate::p1_warm_start::{HELLO_TEXT, WARM_ENV_PINNED};
use crate::report::{figure, Results};
use crate::stats::{ms, summarize, Target};
use crate::timing::{start_and_check, start_timed, Settle};

const STARTS: usize = 20;

/// (figure id, what the rung adds, pod manifest)
type Rung = (&'static str, &'static str, String);

pub async fn run(bench: &Bench, results: &mut Results) -> anyhow::Result<()> {
    let echo = ["echo", HELLO_TEXT];
    let rungs: [Rung; 4] = [
        ("runc_handler", "runc + busybox on the runc handler", runc_pod("p1l-runc", BUSYBOX_IMAGE, &echo)),
        (
            "annotated",
            "same pod on the flox handler, its container in skip-containers (adds the shim launcher, its proxy and its decisions: the sandbox's warm check, the container passed through)",
            pod_yaml(
                "p1l-annotated",
                Some("flox"),
                &[("flox.dev/environment", WARM_ENV_PINNED), ("flox.dev/skip-containers", "main")],
                BUSYBOX_IMAGE,
                &echo,
            ),
        ),
        (
            "environment",
            "pinned flox pod on the busybox image (adds the environment: edit, mounts, activator, its hello)",
            env_pod("p1l-env", WARM_ENV_PINNED, BUSYBOX_IMAGE, &["hello"]),
        ),
        (
            "empty_image",
            "pinned flox pod on flox/empty (P1's flox pod: adds the near-empty image)",
            env_pod("p1l-empty", WARM_ENV_PINNED, FLOX_EMPTY_IMAGE, &["hello"]),
        ),
    ];
    bench.say(&format!(
        "P1 ladder: {STARTS} starts each of {} kinds, each adding one part of the flox path",
        rungs.len()
    ));
    let runner = bench.runner().await?;
    let opts = bench.run_options();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); rungs.len()];
    for (_, _, yaml) in &rungs {
        start_and_check(&runner, yaml, &opts, HELLO_TEXT).await?;
    }
    let settle = Settle::now(std::time::Duration::from_millis(150));
    for i in 0..STARTS {
        for k in 0..rungs.len() {
            let idx = (k + i) % rungs.len();
            let (_, _, yaml) = &rungs[idx];
            settle.wait().await;
            let t = start_timed(&runner, yaml, &opts, Instant::now()).await?;
            samples[idx].push(ms(t.running));
            t.pod.remove().await?;
        }
    }
    for (idx, (id, what, _)) in rungs.iter().enumerate() {
        results.samples(&format!("P1.ladder.{id}"), &samples[idx]);
        let median = |i: usize| summarize(&samples[i]).map(|s| s.median);
        let (Some(ours), previous) = (median(idx), idx.checked_sub(1).and_then(median)) else { continue };
        let base = if idx == 0 { "" } else { "the rung before" };
        results.add(figure(
            &format!("P1.ladder.{id}"),
            &format!("P1 ladder {}: {what} → running, median of {STARTS}", idx + 1),
            "ms",
            ours,
            previous,
            base,
            Target::None,
        ));
    }
    Ok(())
}
