//! Reading a pod from a Kubernetes manifest: a `Pod`, or the pod template of a workload
//! (`Deployment`, `ReplicaSet`, `StatefulSet`, `DaemonSet`, `Job`). Pure: no I/O but the read.
use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use crate::error::PodError;

const WORKLOAD_KINDS: &[&str] = &["Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job"];

/// The pod to run: its identity, metadata and spec.
#[derive(Debug, Clone)]
pub struct PodManifest {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub spec: PodSpec,
}

impl PodManifest {
    pub fn from_file(path: &Path) -> Result<Self, PodError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| PodError::ReadManifest { path: path.to_owned(), source })?;
        Self::from_yaml(&text).map_err(|message| PodError::ParseManifest { path: path.to_owned(), message })
    }

    /// The first pod (or workload's pod template) in a possibly multi-document YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let mut kinds_seen = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value = serde_yaml::Value::deserialize(doc).map_err(|e| e.to_string())?;
            if value.is_null() {
                continue;
            }
            let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("").to_string();
            if kind == "Pod" {
                let pod: Pod = serde_yaml::from_value(value).map_err(|e| format!("kind Pod: {e}"))?;
                return Self::from_parts(pod.metadata, None, pod.spec);
            }
            if WORKLOAD_KINDS.contains(&kind.as_str()) {
                let owner: ObjectMeta = value
                    .get("metadata")
                    .cloned()
                    .map(serde_yaml::from_value)
                    .transpose()
                    .map_err(|e| format!("kind {kind} metadata: {e}"))?
                    .unwrap_or_default();
                let template =
                    value.get("spec").and_then(|s| s.get("template")).cloned().ok_or_else(|| {
                        format!("kind {kind}: spec.template is missing; a workload needs a pod template")
                    })?;
                let template: PodTemplateSpec =
                    serde_yaml::from_value(template).map_err(|e| format!("kind {kind} spec.template: {e}"))?;
                return Self::from_parts(template.metadata.unwrap_or_default(), Some(owner), template.spec);
            }
            kinds_seen.push(if kind.is_empty() { "<no kind>".to_string() } else { kind });
        }
        Err(format!(
            "no Pod found (kinds in file: {}); accepted kinds: Pod, {}",
            if kinds_seen.is_empty() { "none".to_string() } else { kinds_seen.join(", ") },
            WORKLOAD_KINDS.join(", ")
        ))
    }

    fn from_parts(meta: ObjectMeta, owner: Option<ObjectMeta>, spec: Option<PodSpec>) -> Result<Self, String> {
        let spec = spec.ok_or("spec is missing")?;
        if spec.containers.is_empty() {
            return Err("spec.containers is empty; a pod needs at least one container".into());
        }
        // A template's pods are named after their owner, as the controllers do (minus the suffix).
        let name = meta
            .name
            .clone()
            .or_else(|| owner.as_ref().and_then(|o| o.name.clone()))
            .ok_or("metadata.name is missing")?;
        let namespace = meta
            .namespace
            .clone()
            .or_else(|| owner.as_ref().and_then(|o| o.namespace.clone()))
            .unwrap_or_else(|| "default".into());
        Ok(PodManifest {
            name,
            namespace,
            labels: meta.labels.unwrap_or_default(),
            annotations: meta.annotations.unwrap_or_default(),
            spec,
        })
    }

    /// Init containers first, then the app containers, in manifest order.
    pub fn main_container(&self) -> &str {
        &self.spec.containers[0].name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_pod() {
        let pod = PodManifest::from_yaml(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {flox.dev/environment: a/b}\nspec:\n  runtimeClassName: flox\n  containers:\n  - name: c\n    image: flox/empty:1.0.0\n",
        )
        .unwrap();
        assert_eq!(pod.name, "p");
        assert_eq!(pod.namespace, "default");
        assert_eq!(pod.annotations["flox.dev/environment"], "a/b");
        assert_eq!(pod.spec.runtime_class_name.as_deref(), Some("flox"));
        assert_eq!(pod.main_container(), "c");
    }

    #[test]
    fn reads_a_deployment_template_after_other_documents() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: prod}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata:\n      labels: {app: web}\n      annotations: {x: y}\n    spec:\n      containers:\n      - {name: c, image: busybox:local}\n";
        let pod = PodManifest::from_yaml(text).unwrap();
        assert_eq!((pod.name.as_str(), pod.namespace.as_str()), ("web", "prod"));
        assert_eq!(pod.labels["app"], "web");
        assert_eq!(pod.annotations["x"], "y");
    }

    #[test]
    fn names_the_kinds_it_saw_when_there_is_no_pod() {
        let err = PodManifest::from_yaml("kind: Service\nmetadata: {name: s}\n").unwrap_err();
        assert!(err.contains("kinds in file: Service"), "{err}");
        assert!(err.contains("accepted kinds: Pod, Deployment"), "{err}");
    }

    #[test]
    fn rejects_a_pod_without_containers() {
        let err = PodManifest::from_yaml("kind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n").unwrap_err();
        assert!(err.contains("spec.containers is empty"), "{err}");
    }
}
