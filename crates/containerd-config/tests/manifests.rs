//! The deploy/ manifests parse as their Kubernetes types and say what the install relies on.
use std::path::Path;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Deserialize;

fn documents(name: &str) -> Vec<serde_yaml::Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml::Deserializer::from_str(&text).map(|d| serde_yaml::Value::deserialize(d).unwrap()).collect()
}

fn parse<T: serde::de::DeserializeOwned>(v: &serde_yaml::Value) -> T {
    serde_yaml::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v:?}"))
}

#[test]
fn runtime_class() {
    let docs = documents("runtimeclass.yaml");
    let rc: RuntimeClass = parse(&docs[0]);
    assert_eq!(rc.metadata.name.as_deref(), Some("flox"));
    assert_eq!(rc.handler, "flox");
    let selector = rc.scheduling.unwrap().node_selector.unwrap();
    assert_eq!(selector.get("flox.dev/enabled").map(String::as_str), Some("true"));
}

#[test]
fn rbac() {
    let docs = documents("rbac.yaml");
    assert_eq!(docs.len(), 4);
    let _: Namespace = parse(&docs[0]);
    let sa: ServiceAccount = parse(&docs[1]);
    let role: ClusterRole = parse(&docs[2]);
    let binding: ClusterRoleBinding = parse(&docs[3]);
    let rule = &role.rules.unwrap()[0];
    assert_eq!(rule.resources.as_deref(), Some(&["nodes".to_owned()][..]));
    assert!(rule.verbs.contains(&"patch".to_owned()));
    assert_eq!(binding.role_ref.name, role.metadata.name.unwrap());
    assert_eq!(binding.subjects.unwrap()[0].name, sa.metadata.name.unwrap());
}

#[test]
fn installer_daemonset() {
    let docs = documents("installer-daemonset.yaml");
    let ds: DaemonSet = parse(&docs[0]);
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.host_pid, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("imageless-installer"));
    let install = &pod.init_containers.unwrap()[0];
    let cmd = install.command.clone().unwrap();
    assert!(cmd.windows(3).any(|w| w == ["install", "--host-root", "/host"]), "{cmd:?}");
    assert_eq!(install.security_context.as_ref().unwrap().privileged, Some(true));
    assert_eq!(install.volume_mounts.as_ref().unwrap()[0].mount_path, "/host");
    let host = &pod.volumes.unwrap()[0];
    assert_eq!(host.host_path.as_ref().unwrap().path, "/");
    let label = &pod.containers[0];
    assert!(label.command.as_ref().unwrap().join(" ").contains("flox.dev/enabled"));
}
