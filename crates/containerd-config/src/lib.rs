//! Editing containerd configs to add the flox runtime; install, uninstall, doctor.
//!
//! - [`edit`]: pure text edits (TOML via `toml_edit`, Go templates as text).
//! - [`install`]: which file containerd really reads, binaries, backup, record, restart, verify.
//! - [`doctor`]: the node checklist.
pub mod cli;
pub mod doctor;
pub mod edit;
pub mod install;
