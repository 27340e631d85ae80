//! Running Kubernetes pod manifests over CRI without a kubelet.
//!
//! The pure parts (reading a manifest, translating it into CRI requests, parsing CRI log lines)
//! are separate from the parts that talk to a runtime (`client`, `runner`, `images`) so they can
//! be unit-tested without containerd.
pub mod cli;
pub mod client;
pub mod error;
pub mod images;
pub mod logs;
pub mod manifest;
pub mod plan;
pub mod runner;
pub mod stream_exec;

pub use client::CriClient;
pub use error::{KubeEvent, PodError};
pub use manifest::PodManifest;
pub use plan::{PlanOptions, PodPlan};
pub use runner::{ExecOutput, PodRunner, RunOptions, RunningPod};
