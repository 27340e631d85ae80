//! The benchmark's node: a private copy of the world hub served by the release `imageless`,
//! a node config pointing at it, and a private containerd 1.7.24 whose `flox` runtime runs
//! the release flox-runc through a symlink (so the RSS probe can be slipped in and out).
//! Like `flox_node::FloxNode`, but with the measured binaries chosen by the benchmark.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use imageless_e2e::{
    Containerd, ContainerdOptions, ContainerdVersion, FloxBinaries, PodManifest, PodRunner, RunningPod,
};

pub struct Binaries {
    /// Release `flox-runc`, `containerd-shim-flox-v2` and `imageless`.
    pub release_dir: PathBuf,
    pub activator: PathBuf,
    pub world_root: PathBuf,
}

impl Binaries {
    pub fn flox_runc(&self) -> PathBuf {
        self.release_dir.join("flox-runc")
    }
    pub fn imageless(&self) -> PathBuf {
        self.release_dir.join("imageless")
    }
    pub fn check(&self) -> anyhow::Result<()> {
        for p in [
            self.flox_runc(),
            self.release_dir.join("containerd-shim-flox-v2"),
            self.imageless(),
            self.activator.clone(),
        ] {
            if !p.is_file() {
                bail!("{} is missing: run `cargo xtask bench` (it builds the release binaries first)", p.display());
            }
        }
        if !self.world_root.join("world.json").is_file() {
            bail!("no world hub at {}: run `cargo xtask world`", self.world_root.display());
        }
        Ok(())
    }
}

pub struct Hub {
    child: Child,
    pub root: PathBuf,
    pub url: String,
    pub log: PathBuf,
}

impl Hub {
    fn start(bins: &Binaries, dir: &Path) -> anyhow::Result<Hub> {
        let root = dir.join("hub");
        let status = Command::new("cp").arg("-a").arg(&bins.world_root).arg(&root).status()?;
        if !status.success() {
            bail!("copying {} failed", bins.world_root.display());
        }
        let log = dir.join("hub.log");
        let mut child = Command::new(bins.imageless())
            .args(["hub", "serve", "--root"])
            .arg(&root)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting the hub")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        let Some(url) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            bail!("the hub said {line:?}; log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        };
        Ok(Hub { url: url.to_string(), child, root, log })
    }

    /// Length of the access log now, to count requests made after this mark.
    pub fn log_mark(&self) -> usize {
        std::fs::read(&self.log).map(|b| b.len()).unwrap_or(0)
    }

    /// (narinfo GETs, NAR GETs) logged since `mark`.
    pub fn cache_gets_since(&self, mark: usize) -> (usize, usize) {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes[mark.min(bytes.len())..]).into_owned();
        let narinfo = text.lines().filter(|l| l.contains("GET /cache/") && l.contains(".narinfo ")).count();
        let nar = text.lines().filter(|l| l.contains("GET /cache/nar/")).count();
        (narinfo, nar)
    }

    pub fn public_key(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.root.join("cache-key.pub"))?.trim().to_string())
    }

    pub fn world(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_slice(&std::fs::read(self.root.join("world.json"))?)?)
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Node config text for `state_root` and `gcroots_dir`.
pub fn node_config(hub: &Hub, activator: &Path, state_root: &Path, gcroots: &Path) -> anyhow::Result<String> {
    Ok(format!(
        "state_root = {state:?}\nhub_url = {url:?}\nsubstituters = [\"{url}/cache\"]\ntrusted_public_keys = [{key:?}]\nactivator = {act:?}\nrunc = \"/usr/bin/runc\"\ngcroots_dir = {gc:?}\nhub_timeout_secs = 10\n",
        state = state_root.display().to_string(),
        url = hub.url,
        key = hub.public_key()?,
        act = activator.display().to_string(),
        gc = gcroots.display().to_string(),
    ))
}

pub struct BenchNode {
    pub containerd: Containerd,
    pub hub: Hub,
    pub state_root: PathBuf,
    pub gcroots: PathBuf,
    pub config_path: PathBuf,
    /// The symlink containerd's `BinaryName` names; points at flox-runc or the RSS probe.
    pub wrapper_link: PathBuf,
    pub dir: PathBuf,
}

pub const VERSION: ContainerdVersion = ContainerdVersion::V1_7;

impl BenchNode {
    pub fn start(bins: &Binaries, dir: &Path) -> anyhow::Result<BenchNode> {
        VERSION.ensure_available()?;
        let hub = Hub::start(bins, dir)?;
        let state_root = dir.join("state");
        // In the private /nix (see nixns), so no root outlives the benchmark.
        let gcroots = PathBuf::from("/nix/var/nix/gcroots/imageless-bench");
        let config_path = dir.join("node.toml");
        std::fs::write(&config_path, node_config(&hub, &bins.activator, &state_root, &gcroots)?)?;
        let wrapper_dir = dir.join("bin");
        std::fs::create_dir_all(&wrapper_dir)?;
        let wrapper_link = wrapper_dir.join("flox-runc");
        std::os::unix::fs::symlink(bins.flox_runc(), &wrapper_link)?;
        let mut env = BTreeMap::new();
        env.insert("IMAGELESS_CONFIG".to_string(), config_path.display().to_string());
        let flox = FloxBinaries {
            runc_wrapper: wrapper_link.clone(),
            shim_launcher: bins.release_dir.join("containerd-shim-flox-v2"),
        };
        let containerd =
            Containerd::start(VERSION, ContainerdOptions { env, flox: Some(flox), ..ContainerdOptions::default() })?;
        Ok(BenchNode { containerd, hub, state_root, gcroots, config_path, wrapper_link, dir: dir.to_path_buf() })
    }

    /// Points the runtime's `BinaryName` at `target` (atomically: a new link renamed over).
    pub fn set_wrapper(&self, target: &Path) -> anyhow::Result<()> {
        let tmp = self.wrapper_link.with_extension("new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp)?;
        std::fs::rename(&tmp, &self.wrapper_link)?;
        Ok(())
    }

    pub async fn runner(&self) -> anyhow::Result<PodRunner> {
        Ok(PodRunner::new(self.containerd.client().await?))
    }

    /// Forgets every rendered environment and fetched floxmeta of the node (no pod may be
    /// running) and deletes `closure` from the store: the next pod of it starts cold.
    pub fn make_cold(&self, closure: &[String]) -> anyhow::Result<()> {
        if self.state_root.exists() {
            std::fs::remove_dir_all(&self.state_root)
                .with_context(|| format!("removing {}", self.state_root.display()))?;
        }
        super::nixns::delete_closure(closure, &[&self.gcroots])
    }
}

/// A one-container pod manifest; `runtime` None = the default runc handler.
pub fn pod_yaml(name: &str, runtime: Option<&str>, env: Option<&str>, image: &str, command: &[&str]) -> String {
    let ann = env.map(|e| format!("  annotations:\n    flox.dev/environment: {e:?}\n")).unwrap_or_default();
    let rc = runtime.map(|r| format!("  runtimeClassName: {r}\n")).unwrap_or_default();
    let cmd = serde_json::to_string(command).expect("strings");
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n{ann}spec:\n{rc}  containers:\n  - name: main\n    image: {image}\n    command: {cmd}\n")
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
pub async fn start_timed(
    runner: &PodRunner,
    yaml: &str,
    opts: &imageless_e2e::RunOptions,
    t0: Instant,
) -> anyhow::Result<TimedStart> {
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
