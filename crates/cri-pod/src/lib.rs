//! Running Kubernetes pod manifests over CRI without a kubelet.
pub mod cli;
