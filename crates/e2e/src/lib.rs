//! Harness for end-to-end tests over real containerd: private daemons of each supported
//! version, local OCI images, and pods run through `imageless_cri_pod`.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use imageless_e2e::{Containerd, ContainerdOptions, ContainerdVersion};
//! let ctrd = Containerd::start(ContainerdVersion::V1_6, ContainerdOptions::default())?;
//! let client = ctrd.client().await?;
//! # Ok(()) }
//! ```
//! Everything a `Containerd` started (sandboxes, shims, mounts, its temp dir) goes away on drop.
//! The harness is test support (not shipped), so it reports with `anyhow`.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
pub use containerd::{mounts_below, signal, Containerd};
pub use imageless_cri_pod::stream_exec::{ExecExit, ExecStreams};
pub use imageless_cri_pod::{CriClient, PodError, PodManifest, PodRunner, RunOptions, RunningPod};
use toml_edit::{DocumentMut, Item, Value};

pub mod bad_peers;
pub mod config;
mod containerd;
pub mod docs;
pub mod flox_node;
pub mod garage;
pub mod oci_image;
pub mod registry;
pub mod static_server;
pub mod store_tree;
pub mod without_nix;

/// The repository root (this crate lives in `<root>/crates/e2e`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root")
}

/// Cargo's target profile directory holding the workspace binaries (target/debug).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target")).join("debug")
}

/// The containerd versions the suite runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContainerdVersion {
    /// Debian bookworm's /usr/bin/containerd.
    V1_6,
    /// Debian trixie's, unpacked by scripts/fetch-containerd.sh.
    V1_7,
    /// Debian sid's (config version 3), unpacked by scripts/fetch-containerd.sh.
    V2_1,
}

impl ContainerdVersion {
    pub const ALL: [ContainerdVersion; 3] = [Self::V1_6, Self::V1_7, Self::V2_1];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1_6 => "1.6.20",
            Self::V1_7 => "1.7.24",
            Self::V2_1 => "2.1.9",
        }
    }

    /// Directory with `containerd`, `ctr` and `containerd-shim-runc-v2` of this version.
    pub fn bin_dir(self) -> PathBuf {
        match self {
            Self::V1_6 => PathBuf::from("/usr/bin"),
            v => repo_root().join(".work/containerd").join(v.as_str()).join("usr/bin"),
        }
    }

    pub fn containerd(self) -> PathBuf {
        self.bin_dir().join("containerd")
    }

    pub fn ctr(self) -> PathBuf {
        self.bin_dir().join("ctr")
    }

    /// containerd config schema version: 2 for 1.x, 3 for 2.x.
    pub fn config_version(self) -> u8 {
        if self == Self::V2_1 {
            3
        } else {
            2
        }
    }

    pub fn is_available(self) -> bool {
        self.containerd().is_file() && self.bin_dir().join("containerd-shim-runc-v2").is_file()
    }

    /// Makes the binaries present: runs scripts/fetch-containerd.sh for 1.7/2.1 when missing.
    /// Err says why the version cannot be used (tests skip with that message).
    pub fn ensure_available(self) -> anyhow::Result<()> {
        static FETCH: Mutex<()> = Mutex::new(());
        let _one_at_a_time = FETCH.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_available() {
            return Ok(());
        }
        if self == Self::V1_6 {
            bail!(
                "containerd {} is missing at {}: run scripts/setup-machine.sh",
                self.as_str(),
                self.bin_dir().display()
            );
        }
        let script = repo_root().join("scripts/fetch-containerd.sh");
        let out = Command::new(&script)
            .arg(self.as_str())
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        if !out.status.success() || !self.is_available() {
            bail!(
                "containerd {} binaries absent and {} failed ({}): {}",
                self.as_str(),
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl std::fmt::Display for ContainerdVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Paths of the two flox binaries the `flox` runtime points at.
#[derive(Debug, Clone)]
pub struct FloxBinaries {
    pub runc_wrapper: PathBuf,
    pub shim_launcher: PathBuf,
}

impl Default for FloxBinaries {
    fn default() -> Self {
        FloxBinaries {
            runc_wrapper: target_dir().join("flox-runc"),
            shim_launcher: target_dir().join("containerd-shim-flox-v2"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ContainerdOptions {
    /// Extra environment for the daemon (and so its shims and runc), e.g. `IMAGELESS_CONFIG`.
    pub env: BTreeMap<String, String>,
    /// Adds runtime handler `flox`; `None` leaves only the default `runc`.
    pub flox: Option<FloxBinaries>,
    /// Import `flox/empty:1.0.0`, `busybox:local` and the pause image after start.
    pub import_local_images: bool,
    /// How long to wait for the CRI socket to answer.
    pub start_timeout: Duration,
    /// Runs on the written config before the daemon starts (e.g. `imageless install
    /// --containerd-config`, as the demo does): `(config path, daemon dir)`.
    pub before_start: Option<ConfigHook>,
    /// `(source, target)` pairs: the daemon runs in its own mount namespace (private
    /// propagation) in which each source directory is bind-mounted over its target, so it, its
    /// shims, runc and the runtime see e.g. a prepared node root's /usr/local/bin at
    /// /usr/local/bin while the machine's own stays as it is. The mounts go away with the last
    /// process of that namespace.
    pub bind_mounts: Vec<(PathBuf, PathBuf)>,
}

/// A step that edits a daemon's config file before it starts.
#[derive(Clone)]
pub struct ConfigHook(pub std::sync::Arc<ConfigEdit>);

/// `(config path, daemon dir)` → the config edited in place.
pub type ConfigEdit = dyn Fn(&Path, &Path) -> anyhow::Result<()> + Send + Sync;

impl std::fmt::Debug for ConfigHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigHook")
    }
}

impl Default for ContainerdOptions {
    fn default() -> Self {
        ContainerdOptions {
            env: BTreeMap::new(),
            flox: Some(FloxBinaries::default()),
            import_local_images: true,
            start_timeout: Duration::from_secs(60),
            before_start: None,
            bind_mounts: Vec::new(),
        }
    }
}

/// The locally built image archives (scripts/images/build.sh).
#[derive(Debug, Clone)]
pub struct LocalImages {
    /// `docker.io/flox/empty:1.0.0`
    pub flox_empty: PathBuf,
    /// `docker.io/library/busybox:local`
    pub busybox: PathBuf,
    /// `docker.io/library/pause:local`, the sandbox image of every harness containerd.
    pub pause: PathBuf,
}

pub const FLOX_EMPTY_IMAGE: &str = "docker.io/flox/empty:1.0.0";
pub const BUSYBOX_IMAGE: &str = "docker.io/library/busybox:local";
pub const PAUSE_IMAGE: &str = "docker.io/library/pause:local";

impl LocalImages {
    pub fn all(&self) -> [&Path; 3] {
        [&self.pause, &self.busybox, &self.flox_empty]
    }
}

/// Builds the image archives into `<repo>/.work/images` once per test process.
pub fn local_images() -> anyhow::Result<LocalImages> {
    static BUILT: OnceLock<Result<LocalImages, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = repo_root().join(".work/images");
            let script = repo_root().join("scripts/images/build.sh");
            let out =
                Command::new(&script).arg(&dir).output().map_err(|e| format!("running {}: {e}", script.display()))?;
            if !out.status.success() {
                return Err(format!("{} failed: {}", script.display(), String::from_utf8_lossy(&out.stderr).trim()));
            }
            Ok(LocalImages {
                flox_empty: dir.join("flox-empty.tar"),
                busybox: dir.join("busybox.tar"),
                pause: dir.join("pause.tar"),
            })
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Value helper for config edits.
pub(crate) fn str_value(s: &str) -> Item {
    Item::Value(Value::from(s))
}

pub(crate) fn parse_doc(text: &str) -> anyhow::Result<DocumentMut> {
    text.parse::<DocumentMut>().context("containerd config is not valid TOML")
}
