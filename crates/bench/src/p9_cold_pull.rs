//! P9 cold realization by the node vs by Nix: `imageless pull ENV` with a node config whose
//! `store_dir` (and state root) is a fresh empty directory vs `nix copy --from <the hub's
//! cache> --to <a fresh empty Nix store>` of the same closure, in alternating turns; for
//! `flox/large` (target ratio ≤ 0.5) and the largest small environment (reported). Context:
//! the node's binary-cache client alone (`imageless_node::fetch`), same cache, same store kind.
//!
//! Every turn also makes the node cold and deletes the closure from the benchmark's private /nix, so a pull that
//! realizes through `nix-store` (older nodes) starts as cold as one into `store_dir`.
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use imageless_core::store_path::StorePath;
use imageless_node::config::NodeConfig;
use imageless_node::fetch::Fetcher;

use crate::context::Bench;
use crate::report::{figure, Results};
use crate::stats::{ms, summarize, Target};
use crate::timing::timed;

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Pull,
    NixCopy,
    FetchOnly,
}

/// Removes a directory tree that Nix left read-only.
fn remove(dir: &Path) {
    let _ = Command::new("chmod").arg("-R").arg("u+w").arg(dir).status();
    let _ = std::fs::remove_dir_all(dir);
}

fn one_run(bench: &Bench, side: Side, env: &str, closure: &[String], turn: usize) -> anyhow::Result<Duration> {
    let own_roots = bench.dir.join("p9-gcroots");
    if own_roots.exists() {
        std::fs::remove_dir_all(&own_roots)?;
    }
    // The node's rendered environments root shared paths (e.g. busybox-static) too. Best
    // effort: Nix also counts any process on the machine naming a path as a root (another
    // user's test), and a pull into `store_dir` does not read /nix anyway.
    if let Err(e) = bench.make_cold(closure) {
        bench.say(&format!("P9: could not empty /nix of {env}'s closure (a pull via nix-store may be warm): {e:#}"));
    }
    let scratch = bench.dir.join(format!("p9-{turn}"));
    std::fs::create_dir_all(&scratch)?;
    let store_line = format!("store_dir = {:?}", scratch.join("store"));
    let config_text = bench.node_config(&scratch.join("state"), &store_line)?;
    let cache_url = format!("{}/cache", bench.node.hub.url);
    let took = match side {
        Side::Pull => {
            let config = scratch.join("node.toml");
            std::fs::write(&config, &config_text)?;
            let (took, out) = timed(Command::new(bench.bins.imageless()).args(["pull", env, "--config"]).arg(&config))?;
            if !Path::new(&out).join("bin").is_dir() {
                bail!("imageless pull {env} printed {out:?}, which has no bin/");
            }
            took
        }
        Side::NixCopy => {
            let cache_home = scratch.join("xdg-cache");
            let mut cmd = Command::new("nix");
            cmd.args(["copy", "--from", &cache_url, "--to"])
                .arg(scratch.join("nix-store"))
                .args(["--option", "trusted-public-keys", &bench.node.hub.public_key()?])
                .args(["--option", "narinfo-cache-negative-ttl", "0", "--option", "narinfo-cache-positive-ttl", "0"])
                .args(closure)
                .env("XDG_CACHE_HOME", cache_home);
            timed(&mut cmd)?.0
        }
        Side::FetchOnly => {
            let config = NodeConfig::parse(&config_text).map_err(|e| anyhow::anyhow!("node config: {e}"))?;
            let fetcher = Fetcher::from_config(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            let wanted: Vec<StorePath> = closure
                .iter()
                .map(|p| StorePath::parse(p).map_err(|e| anyhow::anyhow!("{p}: {e}")))
                .collect::<Result<_, _>>()?;
            let t0 = Instant::now();
            let report = fetcher.realize(&wanted).context("fetching the closure")?;
            let took = t0.elapsed();
            if report.closure.len() != closure.len() {
                bail!("fetch realized {} of {} paths", report.closure.len(), closure.len());
            }
            took
        }
    };
    remove(&scratch);
    Ok(took)
}

/// Median seconds of `reps` alternating runs of each side in `sides`.
fn measure(bench: &Bench, env: &str, closure: &[String], sides: &[Side], reps: usize) -> anyhow::Result<Vec<Vec<f64>>> {
    let mut samples = vec![Vec::new(); sides.len()];
    let mut turn = 0;
    for rep in 0..reps {
        for k in 0..sides.len() {
            let idx = (k + rep) % sides.len();
            samples[idx].push(ms(one_run(bench, sides[idx], env, closure, turn)?));
            turn += 1;
        }
    }
    Ok(samples)
}

pub fn run(
    bench: &Bench,
    (large, large_closure): (&str, &[String]),
    (small, small_closure): (&str, &[String]),
    results: &mut Results,
) -> anyhow::Result<()> {
    for (env, closure, reps, target) in
        [(large, large_closure, 3, Target::RatioAtMost(0.5)), (small, small_closure, 5, Target::None)]
    {
        bench.say(&format!(
            "P9: cold {env} ({} paths): imageless pull vs nix copy vs fetch alone, {reps} each",
            closure.len()
        ));
        let s = measure(bench, env, closure, &[Side::Pull, Side::NixCopy, Side::FetchOnly], reps)?;
        let key = env.replace('/', "_");
        results.samples(&format!("P9.{key}.pull"), &s[0]);
        results.samples(&format!("P9.{key}.nix_copy"), &s[1]);
        results.samples(&format!("P9.{key}.fetch"), &s[2]);
        let med = |i: usize| summarize(&s[i]).expect("samples").median / 1000.0;
        let base = "nix copy --from the hub into an empty store";
        results.add(figure(
            &format!("P9.{key}.cold_pull"),
            &format!(
                "P9 cold realization of {env} ({} paths): imageless pull into an empty store_dir, median of {reps}",
                closure.len()
            ),
            "s",
            med(0),
            Some(med(1)),
            base,
            target,
        ));
        results.add(figure(
            &format!("P9.{key}.context.fetch"),
            &format!("P9 context: {env}, the node's fetch client alone (no hub git, no render)"),
            "s",
            med(2),
            Some(med(1)),
            base,
            Target::None,
        ));
    }
    // Leave nothing of flox/large rooted for later figures' cold starts.
    let _ = std::fs::remove_dir_all(bench.dir.join("p9-gcroots"));
    if let Err(e) = bench.make_cold(large_closure) {
        bench.say(&format!("P9: could not empty /nix of {large}'s closure: {e:#}"));
    }
    Ok(())
}
