//! The benchmark's node and its parts: the release binaries under test, one e2e
//! [`FloxNode`] (hub, node config, containerd 1.7.24) whose `flox` runtime runs flox-runc
//! through a symlink (so the RSS probe and strace can be slipped in and out), and progress
//! lines on stderr.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use imageless_e2e::flox_node::{FloxNode, NodeSetup};
use imageless_e2e::{repo_root, ContainerdVersion, FloxBinaries, PodRunner, RunOptions};

use crate::nixns;

/// The containerd every figure runs on.
pub const VERSION: ContainerdVersion = ContainerdVersion::V1_7;

/// The measured binaries and the world they serve.
pub struct Binaries {
    /// Release `flox-runc`, `containerd-shim-flox-v2` and `imageless`.
    pub release_dir: PathBuf,
    pub activator: PathBuf,
    pub world_root: PathBuf,
}

fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| repo_root().join(default))
}

impl Binaries {
    /// IMAGELESS_BENCH_BIN_DIR (default target/image/bin, the static binaries `cargo xtask bench`
    /// builds for the image), IMAGELESS_ACTIVATOR, IMAGELESS_HUB_ROOT.
    pub fn from_env() -> Binaries {
        Binaries {
            release_dir: env_path("IMAGELESS_BENCH_BIN_DIR", "target/image/bin"),
            activator: env_path("IMAGELESS_ACTIVATOR", "target/x86_64-unknown-linux-gnu/release/flox-activate"),
            world_root: env_path("IMAGELESS_HUB_ROOT", ".work/hub"),
        }
    }
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

/// Progress lines with the time since the benchmark started.
pub struct Progress(pub Instant);

impl Progress {
    pub fn say(&self, what: &str) {
        eprintln!("bench [{:6.1}s] {what}", self.0.elapsed().as_secs_f64());
    }
}

/// The real runc (the node config's `runc`).
pub const REAL_RUNC: &str = "/usr/bin/runc";

/// Everything a figure needs.
pub struct Bench {
    pub node: FloxNode,
    pub bins: Binaries,
    /// The symlink the runtime's `BinaryName` names; points at flox-runc or a probe.
    pub wrapper_link: PathBuf,
    /// Scratch space (inside the node's temp dir).
    pub dir: PathBuf,
    pub progress: Progress,
}

impl Bench {
    /// Starts the node in `work` (already the private /nix's parent, see nixns).
    pub fn start(bins: Binaries, work: &Path, progress: Progress) -> anyhow::Result<Bench> {
        let wrapper_dir = work.join("bin");
        std::fs::create_dir_all(&wrapper_dir)?;
        let wrapper_link = wrapper_dir.join("flox-runc");
        std::os::unix::fs::symlink(bins.flox_runc(), &wrapper_link)?;
        let setup = NodeSetup {
            imageless: bins.imageless(),
            activator: bins.activator.clone(),
            world: bins.world_root.clone(),
            flox: FloxBinaries {
                runc_wrapper: wrapper_link.clone(),
                shim_launcher: bins.release_dir.join("containerd-shim-flox-v2"),
            },
            extra_config: String::new(),
            // CRI pulls from plain-HTTP registries listed in `<daemon dir>/certs.d` (P11, P12
            // add theirs when they start one); nothing else of the node changes.
            hook: Some(imageless_e2e::config::registry_hook(VERSION, Vec::new())),
        };
        let node = FloxNode::start_setup(VERSION, setup).context("starting the benchmark's node")?;
        let dir = node.dir.path().join("bench");
        std::fs::create_dir_all(&dir)?;
        Ok(Bench { node, bins, wrapper_link, dir, progress })
    }

    pub fn say(&self, what: &str) {
        self.progress.say(what)
    }

    /// The containerd's registry hosts directory (`config_path`, see `registry_hook`).
    pub fn registry_hosts_dir(&self) -> PathBuf {
        self.node.containerd.dir().join("certs.d")
    }

    pub async fn runner(&self) -> anyhow::Result<PodRunner> {
        Ok(PodRunner::new(self.node.containerd.client().await?))
    }

    /// CRI options of every benchmark pod (host network: no CNI here).
    pub fn run_options(&self) -> RunOptions {
        let mut opts = self.node.containerd.run_options();
        opts.force_host_network = true;
        opts
    }

    /// Node config text for another state root (and GC roots), e.g. for `imageless pull`.
    pub fn node_config(&self, state_root: &Path, extra: &str) -> anyhow::Result<String> {
        imageless_e2e::flox_node::node_config(&self.node.hub, &self.bins.activator, state_root, extra)
    }

    /// Points the runtime's `BinaryName` at `target` (atomically: a new link renamed over).
    pub fn set_wrapper(&self, target: &Path) -> anyhow::Result<()> {
        let tmp = self.wrapper_link.with_extension("new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp)?;
        std::fs::rename(&tmp, &self.wrapper_link)?;
        Ok(())
    }

    /// Rewrites the node config's `runc` (where the shim proxy points the runc shim) and
    /// `shim_proxy` (off: the `BinaryName` link, flox-runc, in front of every runc call, as on
    /// containerd 1.6). Atomic: shim launchers and proxies read the file at any time.
    pub fn set_node_runc(&self, runc: &Path, shim_proxy: bool) -> anyhow::Result<()> {
        let path = &self.node.config_path;
        let text = std::fs::read_to_string(path)?;
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with("runc =") && !l.starts_with("shim_proxy ="))
            .map(str::to_owned)
            .collect();
        lines.push(format!("runc = {:?}", runc.display().to_string()));
        lines.push(format!("shim_proxy = {shim_proxy}"));
        let tmp = path.with_extension("toml.new");
        std::fs::write(&tmp, lines.join("\n") + "\n")?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// The node config as the benchmark's figures expect it between passes.
    pub fn reset_node_runc(&self) -> anyhow::Result<()> {
        self.set_node_runc(Path::new(REAL_RUNC), true)
    }

    /// Forgets every rendered environment and fetched floxmeta of the node (no pod may be
    /// running) and deletes `closure` from the store: the next pod of it starts cold.
    pub fn make_cold(&self, closure: &[String]) -> anyhow::Result<()> {
        let state_root = &self.node.state_root;
        if state_root.exists() {
            // The last cold start's prefetch may still be making the store's entries of what
            // it fetched (after its pod started, holding the store lock shared): wait for it.
            let settled = imageless_node::gc::StoreLock::exclusive(state_root)
                .map_err(|e| anyhow::anyhow!("waiting for the node store's lock: {e}"))?;
            std::fs::remove_dir_all(state_root).with_context(|| format!("removing {}", state_root.display()))?;
            drop(settled);
        }
        // The node's store is under its state root; what a `nix copy` baseline put in the
        // private /nix goes too.
        nixns::delete_closure(closure, &[])
    }
}
