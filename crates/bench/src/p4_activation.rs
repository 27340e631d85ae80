//! P4 activation: `flox-activate --env E --cache C -- true` vs `true` alone, without a hook
//! (`flox/echoip`) and with one (`flox/hooks`), 200 runs each, interleaved.
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::bail;

use crate::context::Bench;
use crate::p1_warm_start::WARM_ENV;
use crate::report::{figure, Results};
use crate::stats::{ms, summarize, Target};
use crate::timing::timed;

const RUNS: usize = 200;
const HOOK_ENV: &str = "flox/hooks";

pub fn run(bench: &Bench, results: &mut Results) -> anyhow::Result<()> {
    bench.say(&format!("P4: activation, {RUNS} runs each of true, activate (no hook), activate ({HOOK_ENV} hook)"));
    let pull = |env: &str| -> anyhow::Result<String> {
        Ok(timed(Command::new(bench.bins.imageless()).args(["pull", env, "--config"]).arg(&bench.node.config_path))?.1)
    };
    let plain_env = pull(WARM_ENV)?;
    let hook_env = pull(HOOK_ENV)?;
    let cache = bench.dir.join("p4-cache");
    std::fs::create_dir_all(&cache)?;
    let run = |env: Option<&str>| -> anyhow::Result<f64> {
        let mut cmd = match env {
            None => Command::new("true"),
            Some(env) => {
                let mut c = Command::new(&bench.bins.activator);
                c.arg("--env").arg(env).arg("--cache").arg(&cache).args(["--", "true"]);
                c
            }
        };
        cmd.env_clear().env("PATH", "/usr/bin:/bin").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let t0 = Instant::now();
        let status = cmd.status()?;
        let took = t0.elapsed();
        if !status.success() {
            bail!("activation of {env:?} -- true failed ({status})");
        }
        Ok(ms(took))
    };
    let (mut bare, mut plain, mut hook) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        bare.push(run(None)?);
        plain.push(run(Some(&plain_env))?);
        hook.push(run(Some(&hook_env))?);
    }
    results.samples("P4.true", &bare);
    results.samples("P4.activate", &plain);
    results.samples("P4.activate_hook", &hook);
    let (b, p, h) = (summarize(&bare).unwrap(), summarize(&plain).unwrap(), summarize(&hook).unwrap());
    results.add(figure(
        "P4.no_hook",
        &format!("P4 activation → exec, no hook ({WARM_ENV}), median of {RUNS}"),
        "ms",
        p.median,
        Some(b.median),
        "true alone",
        Target::AddedAtMost(5.0),
    ));
    results.add(figure(
        "P4.hook",
        &format!("P4 activation → exec, with hook ({HOOK_ENV}), median of {RUNS}"),
        "ms",
        h.median,
        Some(b.median),
        "true alone",
        Target::None,
    ));
    Ok(())
}
