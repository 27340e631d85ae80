//! `imageless node …`: what the installer DaemonSet does through the Kubernetes API, with the
//! pod's service account (in-cluster config, rustls; no shell, curl or OpenSSL in the image).
//!
//! - [`label`]: the `flox.dev/enabled` node label the RuntimeClass selects.
//! - [`cli`]: argument parsing, the async runtime, waiting for termination.
//! - [`agent`]: `imageless node agent`, the node agent (disk-pressure gc, pre-pull, metrics,
//!   pod events).
pub mod agent;
pub mod cli;
pub mod label;
