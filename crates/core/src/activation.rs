//! What the activator needs to know about a rendered environment, written by the node when it
//! renders and read by the activator inside the container (`activate.d/imageless.json`).
use serde::{Deserialize, Serialize};

/// `run` gives the environment's packages only; `dev` also the development variables
/// (CPATH, PKG_CONFIG_PATH, ...) and propagated build inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Run,
    Dev,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Run => "run",
            Mode::Dev => "dev",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The activation data of one rendered environment. Content-keyed like the tree it sits in:
/// nothing pod-specific (name, metrics choice) lives here — those come from the container env.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationData {
    /// Format version of this file; the activator refuses versions it does not know.
    pub version: u32,
    pub mode: Mode,
    /// `[vars]` in emission order (flox's varsOrder: alphabetical, a var after the vars it
    /// references). Values are bash double-quoted strings: `$NAME` and `${NAME:-x}` expand.
    pub vars: Vec<(String, String)>,
    /// `hook.on-activate`, outdented; run by bash with stdout sent to stderr.
    pub hook_on_activate: Option<String>,
    /// `[profile]` scripts are kept for interactive shells but never run for a command,
    /// as flox does for `flox activate -- CMD`.
    pub profile: Profile,
    /// `options.cuda-detection` (default true in flox; the activator ignores it without /dev/nvidia*).
    pub cuda_detection: bool,
    /// `options.activate.add-sbin` (default false): `$FLOX_ENV/sbin` goes on PATH after
    /// `$FLOX_ENV/bin`, and the env dir into `_FLOX_ENV_DIRS_ADD_SBIN`. Absent in data written
    /// before it existed, which means false.
    #[serde(default)]
    pub add_sbin: bool,
}

/// `[profile]` scripts, outdented ([`crate::lockfile::Lockfile::profile`]).
pub use crate::lockfile::Profile;

impl ActivationData {
    pub const VERSION: u32 = 1;
}
