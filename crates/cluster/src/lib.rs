//! `imageless node …`: what the installer DaemonSet does through the Kubernetes API, with the
//! pod's service account (in-cluster config, rustls; no shell, curl or OpenSSL in the image).
//!
//! - [`label`]: the `flox.dev/enabled` node label the RuntimeClass selects.
//! - [`cli`]: argument parsing, the async runtime, waiting for termination.
pub mod cli;
pub mod label;
