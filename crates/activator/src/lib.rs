//! `flox-activate`: runs as a flox container's `process.args[0]` and execs the pod's command
//! inside the activated Flox environment, without the Flox CLI.
//!
//! The crate is split so the part that decides *what* the environment is stays pure:
//! - [`env_vars`]: the variables flox sets for `flox activate -- CMD` (fixed ones and the
//!   interpreter's profile.d effects), computed from the inherited environment and a few facts
//!   about the environment tree (pure).
//! - [`probe`]: gathers those facts from the tree and the container (file-system reads only),
//!   including CUDA detection, which reads the container's ld.so.cache through [`ld_cache`].
//! - [`start_script`]: `[vars]`, plugin profile.d scripts and `hook.on-activate`: whether bash
//!   is needed, the script bash runs, and reading back what it exported (pure).
//! - [`attach`]: what the main process's start changed, as a record exec processes replay
//!   onto their own environment instead of running the hook again (pure).
//! - [`state`]: the per-container directory that record lives in (I/O).
//! - [`lookup`]: finding a program on the new `PATH` like `execvp` does.
//! - [`run`]: the whole activation, used by `main.rs`.

pub mod attach;
pub mod env_vars;
pub mod ld_cache;
pub mod lookup;
pub mod probe;
pub mod run;
pub mod start_script;
pub mod state;

use std::collections::BTreeMap;
use std::ffi::OsString;

/// A process environment. Keys and values are kept as raw OS strings so that variables the
/// activator does not touch pass through byte for byte, even when they are not UTF-8.
pub type EnvMap = BTreeMap<OsString, OsString>;

/// Builds an [`EnvMap`] from string pairs; handy in tests and for literal values.
pub fn env_map<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> EnvMap {
    pairs.into_iter().map(|(name, value)| (OsString::from(name), OsString::from(value))).collect()
}
