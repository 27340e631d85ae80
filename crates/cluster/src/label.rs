//! The node label that marks a node as ready for flox pods: set after install, removed before
//! uninstall, as a JSON merge patch of the Node object.
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};

/// The label `RuntimeClass flox` selects (deploy/runtimeclass.yaml).
pub const ENABLED_LABEL: &str = "flox.dev/enabled";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no in-cluster Kubernetes config ({0}); `imageless node` runs in a pod with a service account (deploy/)")]
    Config(#[from] kube::config::InClusterError),
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] Box<kube::Error>),
    #[error("--node is empty: pass the node's name (the DaemonSet sets NODE_NAME from spec.nodeName)")]
    NoNodeName,
    #[error("patching node {node} (label {ENABLED_LABEL}): {source}")]
    Patch { node: String, source: Box<kube::Error> },
    #[error("{what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    #[error("node agent: {0}")]
    Agent(Box<crate::agent::AgentError>),
}

/// The merge patch that sets (`true`) or removes (`null`) the label.
pub fn label_patch(enabled: bool) -> serde_json::Value {
    let value = if enabled { serde_json::Value::from("true") } else { serde_json::Value::Null };
    serde_json::json!({ "metadata": { "labels": { ENABLED_LABEL: value } } })
}

/// Sets or removes the label on `node`.
pub async fn set_label(client: kube::Client, node: &str, enabled: bool) -> Result<(), ClusterError> {
    if node.is_empty() {
        return Err(ClusterError::NoNodeName);
    }
    let nodes: Api<Node> = Api::all(client);
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&label_patch(enabled)))
        .await
        .map_err(|source| ClusterError::Patch { node: node.to_owned(), source: Box::new(source) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_sets_and_removes_the_label() {
        assert_eq!(label_patch(true).to_string(), r#"{"metadata":{"labels":{"flox.dev/enabled":"true"}}}"#);
        // null in a merge patch deletes the key.
        assert_eq!(label_patch(false).to_string(), r#"{"metadata":{"labels":{"flox.dev/enabled":null}}}"#);
    }
}
