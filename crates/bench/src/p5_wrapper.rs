//! P5 the wrapper's own cost: `flox-runc state` vs `runc state` on a running flox container
//! (200 runs each, alternating), and flox-runc's peak RSS during the creates of a warm pod
//! (through the RSS probe, see probe.rs).
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use imageless_e2e::flox_node::env_pod;
use imageless_e2e::{PodManifest, PodRunner, BUSYBOX_IMAGE, FLOX_EMPTY_IMAGE};

use crate::context::Bench;
use crate::p1_warm_start::WARM_ENV;
use crate::probe;
use crate::report::{figure, Results};
use crate::stats::{ms, summarize, Target};
use crate::timing::start_timed;

const RUNS: usize = 200;

/// The runc root (`--root`) under which the shim created container `id`.
fn runc_root_of(id: &str) -> anyhow::Result<PathBuf> {
    let base = Path::new("/run/containerd/runc");
    for entry in std::fs::read_dir(base).with_context(|| format!("reading {}", base.display()))?.flatten() {
        if entry.path().join(id).join("state.json").is_file() {
            return Ok(entry.path());
        }
    }
    bail!("no runc state of container {id} under {}/*", base.display())
}

pub async fn run(bench: &Bench, results: &mut Results) -> anyhow::Result<()> {
    let runner = bench.runner().await?;
    state_times(bench, &runner, results).await?;
    create_rss(bench, &runner, results).await
}

async fn state_times(bench: &Bench, runner: &PodRunner, results: &mut Results) -> anyhow::Result<()> {
    bench.say(&format!("P5: flox-runc state vs runc state, {RUNS} runs each"));
    let yaml = env_pod("p5-sleeper", WARM_ENV, BUSYBOX_IMAGE, &["sleep", "3600"]);
    let manifest = PodManifest::from_yaml(&yaml).map_err(anyhow::Error::msg)?;
    let pod = runner.run(&manifest, &bench.run_options()).await?;
    let id = pod.container(None)?.id.clone();
    let root = runc_root_of(&id)?;
    let state = |program: &Path| -> anyhow::Result<f64> {
        let mut cmd = Command::new(program);
        cmd.arg("--root")
            .arg(&root)
            .args(["state", &id])
            .env("IMAGELESS_CONFIG", &bench.node.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let t0 = Instant::now();
        let status = cmd.status()?;
        let took = t0.elapsed();
        if !status.success() {
            bail!("{} state {id} failed ({status})", program.display());
        }
        Ok(ms(took))
    };
    let (mut wrapped, mut real) = (Vec::new(), Vec::new());
    let runc = Path::new(crate::context::REAL_RUNC);
    for i in 0..RUNS {
        if i % 2 == 0 {
            wrapped.push(state(&bench.bins.flox_runc())?);
            real.push(state(runc)?);
        } else {
            real.push(state(runc)?);
            wrapped.push(state(&bench.bins.flox_runc())?);
        }
    }
    pod.remove().await?;
    results.samples("P5.flox_runc_state", &wrapped);
    results.samples("P5.runc_state", &real);
    let (w, r) = (summarize(&wrapped).unwrap(), summarize(&real).unwrap());
    results.add(figure(
        "P5.state",
        &format!("P5 `flox-runc state` vs `runc state`, median of {RUNS}"),
        "ms",
        w.median,
        Some(r.median),
        "runc state",
        Target::AddedAtMost(3.0),
    ));
    Ok(())
}

async fn create_rss(bench: &Bench, runner: &PodRunner, results: &mut Results) -> anyhow::Result<()> {
    bench.say("P5: peak RSS of flox-runc during the creates of a warm flox pod");
    let log = bench.dir.join("rss-probe.log");
    let script = probe::write_script(&bench.dir, probe::PROBE_ARG, &log, &bench.bins.flox_runc())?;
    bench.set_wrapper(&script)?;
    // flox-runc runs for each runc call only without the shim proxy (containerd 1.6's path).
    bench.set_node_runc(Path::new(crate::context::REAL_RUNC), false)?;
    let yaml = env_pod("p5-rss", WARM_ENV, FLOX_EMPTY_IMAGE, &["hello"]);
    let measured = start_timed(runner, &yaml, &bench.run_options(), Instant::now()).await;
    bench.set_wrapper(&bench.bins.flox_runc())?;
    bench.reset_node_runc()?;
    measured?.pod.remove().await?;
    let peaks = probe::read_log(&log);
    // Two creates: the sandbox's and the container's.
    if peaks.len() < 2 {
        bail!(
            "the RSS probe logged {} creates (want 2: sandbox and container); log: {:?}",
            peaks.len(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    results.samples("P5.create_vmhwm_kb", &peaks.iter().map(|k| *k as f64).collect::<Vec<_>>());
    let peak_mb = *peaks.iter().max().expect("non-empty") as f64 / 1024.0;
    results.add(figure(
        "P5.create_rss",
        "P5 peak RSS of flox-runc during create (VmHWM, max of sandbox + container)",
        "MB",
        peak_mb,
        None,
        "",
        Target::AtMost(10.0),
    ));
    Ok(())
}
