//! Editing containerd configs to add the flox runtime; install, uninstall, doctor.
pub mod cli;
pub mod edit;
