//! Editing containerd configs to add the flox runtime; install, uninstall, doctor.
//!
//! - [`edit`]: pure text edits (TOML via `toml_edit`, Go templates as text).
//! - [`install`]: which file containerd really reads, binaries, backup, record, restart, verify.
//! - [`target`]: which file containerd reads and which one gets the runtime.
//! - [`containerd`]: the node's containerd binary, `config dump`, socket and restart.
//! - [`journal`]: atomic writes, and putting files back when an install fails.
//! - [`doctor`]: the node checklist.
pub mod cli;
pub mod containerd;
pub mod doctor;
pub mod edit;
pub mod install;
pub mod journal;
pub mod target;
