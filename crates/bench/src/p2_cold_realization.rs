//! P2 cold realization of the largest small world environment (flox/large has its own
//! figures): `imageless pull` vs `nix copy --from` the hub, and the `nix-store --realise`
//! step the node runs, each from an empty store, 5 times in rotating order.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::bail;

use crate::context::Bench;
use crate::nixns;
use crate::report::{figure, Results};
use crate::stats::{ms, summarize, Target};
use crate::timing::{timed_with_deadline, STALL};

const REPS: usize = 5;

/// The three ways to fill the store, measured in turns.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    /// `imageless pull`: NodeCache::ensure (hub git, realization, closure, render).
    Ours,
    /// The baseline.
    NixCopy,
    /// `nix-store --realise` of the closure: what the node ran before it had its own store
    /// (context).
    Realise,
}
const SIDES: [Side; 3] = [Side::Ours, Side::NixCopy, Side::Realise];

/// The store's GC roots of P2's own pulls.
fn gcroots() -> PathBuf {
    PathBuf::from("/nix/var/nix/gcroots/imageless-bench-p2")
}

pub fn run(bench: &Bench, env: &str, closure: &[String], results: &mut Results) -> anyhow::Result<()> {
    bench.say(&format!("P2: cold realization of {env}, {REPS} times each: imageless pull vs nix copy"));
    let mut samples: [Vec<f64>; 3] = Default::default();
    let mut stalls = [0usize; 3];
    for rep in 0..REPS {
        // Rotate who goes first, so drift and cache warmth favour nobody.
        for k in 0..SIDES.len() {
            let idx = (k + rep) % SIDES.len();
            samples[idx].push(one_cold_run(bench, SIDES[idx], env, closure, rep, &mut stalls[idx])?);
            // `imageless pull` fills its own node store (checked by its rendered bin/), the
            // Nix sides the private /nix.
            let missing = closure.len() - nixns::valid_paths(closure)?.len();
            if SIDES[idx] != Side::Ours && missing > 0 {
                bail!("after a cold realization {missing} paths of {env} are still missing");
            }
        }
    }
    // Leave nothing rooted for the next figures' cold starts.
    nixns::delete_closure(closure, &[&gcroots()])?;
    results.samples("P2.ours", &samples[0]);
    results.samples("P2.nix_copy", &samples[1]);
    results.samples("P2.realise_step", &samples[2]);
    results.samples("P2.stalled_runs_ours_nixcopy_realise", &stalls.map(|n| n as f64));
    add_figures(results, env, closure.len(), &samples, &stalls);
    Ok(())
}

/// One cold run of `side` (retried up to 3 times when it stalls): its wall time in ms.
fn one_cold_run(
    bench: &Bench,
    side: Side,
    env: &str,
    closure: &[String],
    rep: usize,
    stalls: &mut usize,
) -> anyhow::Result<f64> {
    let cache_url = format!("{}/cache", bench.node.hub.url);
    let key = bench.node.hub.public_key()?;
    for _attempt in 0..3 {
        nixns::delete_closure(closure, &[&gcroots()])?;
        let state = bench.dir.join(format!("p2-state-{rep}"));
        let mut cmd = match side {
            Side::Ours => {
                let config = bench.dir.join(format!("p2-node-{rep}.toml"));
                std::fs::write(&config, bench.node_config(&state, "")?)?;
                let mut c = Command::new(bench.bins.imageless());
                c.args(["pull", env, "--config"]).arg(&config);
                c
            }
            Side::Realise => {
                let mut c = Command::new("nix-store");
                c.arg("--realise").args(closure);
                c.args(["--option", "substituters", &cache_url]).args(["--option", "trusted-public-keys", &key]);
                c.args(["--option", "narinfo-cache-negative-ttl", "0", "--option", "max-jobs", "0"]);
                c
            }
            Side::NixCopy => {
                let mut c = Command::new("nix");
                c.args(["copy", "--from", &cache_url]).args(["--option", "trusted-public-keys", &key]).args(closure);
                c
            }
        };
        let result = timed_with_deadline(&mut cmd, STALL)?;
        let rendered = result.as_ref().is_some_and(|(_, stdout)| Path::new(stdout).join("bin").is_dir());
        let _ = std::fs::remove_dir_all(&state);
        match result {
            Some((_, stdout)) if side == Side::Ours && !rendered => {
                bail!("imageless pull printed {stdout:?}, which has no bin/")
            }
            Some((took, _)) => return Ok(ms(took)),
            None => {
                *stalls += 1;
                bench.say(&format!("P2: a run stalled for {STALL:?} and was killed; retrying"));
            }
        }
    }
    bail!("P2: 3 runs in a row stalled")
}

fn add_figures(results: &mut Results, env: &str, paths: usize, samples: &[Vec<f64>; 3], stalls: &[usize; 3]) {
    let med = |i: usize| summarize(&samples[i]).expect("samples").median / 1000.0;
    let stall_note = |i: usize| {
        if stalls[i] > 0 {
            format!(", {} stalled run(s) retried", stalls[i])
        } else {
            String::new()
        }
    };
    results.add(figure(
        "P2.cold_realization.median",
        &format!("P2 cold realization of {env} ({paths} paths), median of {REPS}{}", stall_note(0)),
        "s",
        med(0),
        Some(med(1)),
        &format!("nix copy --from hub{}", stall_note(1)),
        Target::RatioAtMost(1.0),
    ));
    results.add(figure(
        "P2.context.realise_step",
        "P2 context: its nix-store --realise step alone vs nix copy",
        "s",
        med(2),
        Some(med(1)),
        "nix copy --from hub",
        Target::None,
    ));
}
