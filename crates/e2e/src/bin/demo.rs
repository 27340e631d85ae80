//! `cargo xtask demo`: the docs' echoip pod, unchanged, on this machine. Starts the local hub
//! (a copy of the package world), a private containerd whose config `imageless install`
//! edited, runs the pod over CRI with the `flox` runtime, queries it, prints the answer, and
//! tears everything down again — `imageless uninstall` included.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use imageless_e2e::flox_node::{activator, bin_dir, block_on, imageless, wait_for_answer, Hub};
use imageless_e2e::{ConfigHook, Containerd, ContainerdOptions, ContainerdVersion, PodManifest, PodRunner};

/// The pod from the product docs (../shared/seeds), word for word.
const DOCS_POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: flox-containerd-demo
  annotations:
    flox.dev/environment: "flox/echoip"
    # Disable telemetry
    flox.dev/disable-metrics: "true"
spec:
  runtimeClassName: flox
  containers:
    - name: empty
      image: flox/empty:1.0.0
      command: ["echoip"]
"#;

fn step(msg: &str) {
    eprintln!("\n==> {msg}");
}

fn run_imageless(args: &[&str]) -> Result<()> {
    let status = Command::new(imageless()).args(args).status().context("running imageless")?;
    if !status.success() {
        bail!("imageless {} failed", args.join(" "));
    }
    Ok(())
}

/// The binaries `imageless install` copies: the debug builds, with the static activator.
fn stage_binaries(dir: &Path) -> Result<PathBuf> {
    let stage = dir.join("bin-stage");
    std::fs::create_dir_all(&stage)?;
    for name in ["flox-runc", "containerd-shim-flox-v2", "imageless"] {
        std::fs::copy(bin_dir().join(name), stage.join(name)).with_context(|| format!("staging {name}"))?;
    }
    std::fs::copy(activator(), stage.join("flox-activate")).context("staging the static activator")?;
    Ok(stage)
}

fn main() -> Result<()> {
    let started = Instant::now();
    let dir = tempfile::Builder::new().prefix("imageless-demo-").tempdir()?;
    let version = ContainerdVersion::V1_7;
    version.ensure_available()?;

    step("local hub with the package world (flox/echoip and friends)");
    let hub = Hub::start(dir.path());
    eprintln!("hub: {}", hub.url);

    let prefix = dir.path().join("prefix");
    let install_state = dir.path().join("install-state");
    let stage = stage_binaries(dir.path())?;
    let node_config = dir.path().join("node.toml");
    let key = std::fs::read_to_string(hub.root.join("cache-key.pub"))?;
    std::fs::write(
        &node_config,
        format!(
            "state_root = {:?}\nhub_url = {:?}\nsubstituters = [\"{}/cache\"]\ntrusted_public_keys = [{:?}]\nactivator = {:?}\n",
            dir.path().join("state").display().to_string(),
            hub.url,
            hub.url,
            key.trim(),
            prefix.join("bin/flox-activate").display().to_string(),
        ),
    )?;

    step(&format!("private containerd {version}, flox runtime added by `imageless install`"));
    let install = {
        let (prefix, install_state, stage) = (prefix.clone(), install_state.clone(), stage.clone());
        ConfigHook(Arc::new(move |config: &Path, _base: &Path| {
            run_imageless(&[
                "install",
                "--containerd-config",
                &config.display().to_string(),
                "--prefix",
                &prefix.display().to_string(),
                "--state-dir",
                &install_state.display().to_string(),
                "--bin-dir",
                &stage.display().to_string(),
                "--containerd-bin",
                &version.containerd().display().to_string(),
                "--restart",
                "none",
            ])
        }))
    };
    let mut env = std::collections::BTreeMap::new();
    env.insert("IMAGELESS_CONFIG".to_string(), node_config.display().to_string());
    let containerd = Containerd::start(
        version,
        ContainerdOptions { env, flox: None, before_start: Some(install), ..ContainerdOptions::default() },
    )?;

    step("the docs' pod: flox.dev/environment: flox/echoip, image flox/empty:1.0.0, command echoip");
    println!("{DOCS_POD}");
    let result = block_on(async {
        let pod = PodManifest::from_yaml(DOCS_POD).map_err(anyhow::Error::msg)?;
        let mut opts = containerd.run_options();
        opts.force_host_network = true; // no CNI on this machine
        let runner = PodRunner::new(containerd.client().await?);
        let t = Instant::now();
        let running = runner.run(&pod, &opts).await?;
        let answer = wait_for_answer("127.0.0.1:8080", Duration::from_secs(5));
        let elapsed = t.elapsed();
        let logs = running.logs(None)?;
        running.remove().await?;
        anyhow::Ok((answer, elapsed, logs))
    });
    let outcome = match result {
        Ok((answer, elapsed, logs)) => {
            for l in logs {
                eprintln!("[empty] {}", l.text);
            }
            if answer.trim().is_empty() {
                Err(anyhow::anyhow!("echoip did not answer on 127.0.0.1:8080"))
            } else {
                step(&format!("echoip answered in {:.2}s after RunPodSandbox", elapsed.as_secs_f64()));
                println!("$ curl http://127.0.0.1:8080/\n{}", answer.trim());
                Ok(())
            }
        }
        Err(e) => Err(e),
    };

    // The node state (store, environments, views) lives in the demo's temp dir and goes with it.
    step("tearing down: `imageless uninstall`, containerd, hub, node state");
    run_imageless(&["uninstall", "--state-dir", &install_state.display().to_string(), "--restart", "none"])?;
    containerd.stop()?;
    drop(hub);
    drop(dir);
    outcome?;
    eprintln!("demo finished in {:.1}s; nothing left running", started.elapsed().as_secs_f64());
    Ok(())
}
