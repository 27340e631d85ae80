//! Errors of the pod runner, and the `kubectl describe`-style event a failure is shown as.
use std::fmt;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("cannot read manifest {path}: {source}")]
    ReadManifest { path: PathBuf, source: std::io::Error },
    #[error("manifest {path}: {message}")]
    ParseManifest { path: PathBuf, message: String },
    /// A manifest field holds something this runner does not accept.
    #[error("{field}: {value:?} is not accepted; {accepted}")]
    InvalidField { field: String, value: String, accepted: String },
    #[error("CRI endpoint {endpoint:?}: {message}")]
    Connect { endpoint: String, message: String },
    /// A CRI call failed; `message` is the runtime's status message, verbatim.
    #[error("{op} failed: {message}")]
    Cri { op: &'static str, code: tonic::Code, message: String },
    #[error("image {image:?} is not present in the runtime and could not be pulled: {message} (import a local archive with --image-archive)")]
    ImageMissing { image: String, message: String },
    #[error("importing image archive {file}: {message}")]
    ImageImport { file: PathBuf, message: String },
    #[error("init container {container} exited with code {exit_code}{}", reason_suffix(reason, message))]
    InitContainerFailed { container: String, exit_code: i32, reason: String, message: String },
    /// Like kubelet, pods on the pod network are not started while the runtime's network
    /// (CNI) is not ready.
    #[error("network is not ready: container runtime network not ready: NetworkReady=false reason:{reason} message:{message} (no CNI here? run with --host-network or set hostNetwork: true)")]
    NetworkNotReady { reason: String, message: String },
    #[error("no pod {namespace}/{name} found on this runtime")]
    PodNotFound { namespace: String, name: String },
    #[error("pod {pod} has no container {container:?} (containers: {known})")]
    ContainerNotFound { pod: String, container: String, known: String },
    /// The streams of an `Exec` (the URL without its one-time token).
    #[error("exec streams at {url}: {message}")]
    Stream { url: String, message: String },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("timed out after {} waiting for {what}", humantime::format_duration(*after))]
    Timeout { what: String, after: std::time::Duration },
}

fn reason_suffix(reason: &str, message: &str) -> String {
    match (reason.is_empty(), message.is_empty()) {
        (true, true) => String::new(),
        (false, true) => format!(" ({reason})"),
        (_, false) => format!(" ({reason}: {message})"),
    }
}

impl PodError {
    pub(crate) fn cri(op: &'static str, status: tonic::Status) -> Self {
        PodError::Cri { op, code: status.code(), message: status.message().to_string() }
    }

    /// The CRI status message when this error came from the runtime.
    pub fn cri_message(&self) -> Option<&str> {
        match self {
            PodError::Cri { message, .. } | PodError::ImageMissing { message, .. } => Some(message),
            _ => None,
        }
    }

    /// How kubelet would report this failure as a pod event, if it is a runtime failure.
    pub fn event(&self) -> Option<KubeEvent> {
        match self {
            PodError::Cri { op: "RunPodSandbox", code, message } => Some(KubeEvent::warning(
                "FailedCreatePodSandBox",
                format!("Failed to create pod sandbox: rpc error: code = {code:?} desc = {message}"),
            )),
            PodError::Cri { op: "CreateContainer" | "StartContainer", message, .. } => {
                Some(KubeEvent::warning("Failed", format!("Error: {message}")))
            }
            PodError::NetworkNotReady { reason, message } => Some(KubeEvent::warning(
                "NetworkNotReady",
                format!("network is not ready: container runtime network not ready: NetworkReady=false reason:{reason} message:{message}"),
            )),
            PodError::ImageMissing { image, message } => {
                Some(KubeEvent::warning("Failed", format!("Failed to pull image {image:?}: {message}")))
            }
            _ => None,
        }
    }
}

/// One line of a pod's event list, as `kubectl describe pod` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeEvent {
    pub kind: &'static str,
    pub reason: String,
    pub message: String,
}

impl KubeEvent {
    pub fn warning(reason: impl Into<String>, message: impl Into<String>) -> Self {
        KubeEvent { kind: "Warning", reason: reason.into(), message: message.into() }
    }
    pub fn normal(reason: impl Into<String>, message: impl Into<String>) -> Self {
        KubeEvent { kind: "Normal", reason: reason.into(), message: message.into() }
    }
}

impl fmt::Display for KubeEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // kubectl's Type, Reason and Message columns (Age and From mean nothing here).
        write!(f, "{:<7}  {:<8}  {}", self.kind, self.reason, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_start_failure_reads_like_kubectl_describe() {
        let err = PodError::Cri {
            op: "StartContainer",
            code: tonic::Code::Unknown,
            message: "failed to create containerd task: boom".into(),
        };
        let line = err.event().unwrap().to_string();
        assert!(line.starts_with("Warning  Failed "), "{line}");
        assert!(line.ends_with("Error: failed to create containerd task: boom"), "{line}");
        assert_eq!(err.cri_message(), Some("failed to create containerd task: boom"));
    }

    #[test]
    fn sandbox_failure_keeps_the_rpc_prefix_like_kubelet() {
        let err = PodError::Cri { op: "RunPodSandbox", code: tonic::Code::Unknown, message: "no cni".into() };
        let ev = err.event().unwrap();
        assert_eq!(ev.reason, "FailedCreatePodSandBox");
        assert_eq!(ev.message, "Failed to create pod sandbox: rpc error: code = Unknown desc = no cni");
    }
}
