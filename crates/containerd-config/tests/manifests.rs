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
    // The uninstaller's account (4 objects), then the node agent's (5; checked rule by rule
    // against what the agent calls in crates/cluster/tests/deploy_rbac.rs).
    assert_eq!(docs.len(), 9);
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
    assert_eq!(pod.service_account_name.as_deref(), Some("imageless-agent"));
    let install = &pod.init_containers.unwrap()[0];
    let cmd = install.command.clone().unwrap();
    assert!(cmd.windows(3).any(|w| w == ["install", "--host-root", "/host"]), "{cmd:?}");
    assert_eq!(install.security_context.as_ref().unwrap().privileged, Some(true));
    assert_eq!(install.volume_mounts.as_ref().unwrap()[0].mount_path, "/host");
    let host = &pod.volumes.unwrap()[0];
    assert_eq!(host.host_path.as_ref().unwrap().path, "/");
    let agent = &pod.containers[0];
    // The node agent labels the node itself (service account, no shell or curl in the image).
    assert_eq!(agent.command.as_deref().unwrap(), ["/opt/imageless/bin/imageless", "node", "agent"]);
    assert_eq!(agent.env.as_ref().unwrap()[0].name, "NODE_NAME");
    assert!(agent.security_context.is_none(), "the agent is not privileged");
}

/// kubectl 1.20 (Debian bookworm's kubernetes-client), unpacked by scripts/fetch-kubectl.sh.
fn kubectl_1_20() -> std::path::PathBuf {
    let kubectl = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.work/kubernetes-client/usr/bin/kubectl");
    assert!(kubectl.exists(), "{} is missing: run scripts/fetch-kubectl.sh", kubectl.display());
    kubectl
}

/// `kubectl kustomize DIR` with kubectl 1.20's built-in kustomize: the oldest one users have.
fn kustomize(dir: &str) -> Vec<serde_yaml::Value> {
    kustomize_path(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy").join(dir))
}

fn kustomize_path(dir: &Path) -> Vec<serde_yaml::Value> {
    let out = std::process::Command::new(kubectl_1_20()).arg("kustomize").arg(dir).output().unwrap();
    assert!(out.status.success(), "kubectl 1.20 kustomize {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text).map(|d| serde_yaml::Value::deserialize(d).unwrap()).collect()
}

/// Every rendered object parses as the k8s-openapi type of its kind (unknown fields refused), and
/// every container image is the one `images:` in the kustomization sets.
fn parse_all(docs: &[serde_yaml::Value]) -> Vec<String> {
    use k8s_openapi::api::batch::v1::Job;
    let mut kinds = Vec::new();
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_else(|| panic!("no kind: {doc:?}")).to_owned();
        match kind.as_str() {
            "Namespace" => drop(strict::<Namespace>(doc)),
            "ServiceAccount" => drop(strict::<ServiceAccount>(doc)),
            "ClusterRole" => drop(strict::<ClusterRole>(doc)),
            "ClusterRoleBinding" => drop(strict::<ClusterRoleBinding>(doc)),
            "Role" => drop(strict::<k8s_openapi::api::rbac::v1::Role>(doc)),
            "RoleBinding" => drop(strict::<k8s_openapi::api::rbac::v1::RoleBinding>(doc)),
            "RuntimeClass" => drop(strict::<RuntimeClass>(doc)),
            "DaemonSet" => {
                let ds = strict::<DaemonSet>(doc);
                check_images(ds.spec.unwrap().template.spec.unwrap());
            }
            "Job" => check_images(strict::<Job>(doc).spec.unwrap().template.spec.unwrap()),
            "Deployment" => {
                check_images(strict::<k8s_openapi::api::apps::v1::Deployment>(doc).spec.unwrap().template.spec.unwrap())
            }
            "Service" => drop(strict::<k8s_openapi::api::core::v1::Service>(doc)),
            "PersistentVolumeClaim" => drop(strict::<k8s_openapi::api::core::v1::PersistentVolumeClaim>(doc)),
            "PodDisruptionBudget" => drop(strict::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(doc)),
            other => panic!("deploy/ renders a {other}, which this test does not know"),
        }
        kinds.push(kind);
    }
    kinds
}

fn check_images(pod: k8s_openapi::api::core::v1::PodSpec) {
    for image in images_of(&pod) {
        assert_eq!(image, "imageless-installer:0.1.0");
    }
}

fn images_of(pod: &k8s_openapi::api::core::v1::PodSpec) -> Vec<String> {
    let containers = pod.containers.iter().chain(pod.init_containers.iter().flatten());
    containers.map(|c| c.image.clone().unwrap_or_else(|| panic!("container {} has no image", c.name))).collect()
}

/// Parses `doc` as `T`, refusing fields `T` does not have (a typo would be dropped silently by a
/// lenient parse, and by the API server).
fn strict<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &serde_yaml::Value) -> T {
    let parsed: T = parse(doc);
    let back = serde_yaml::to_value(&parsed).unwrap();
    assert_eq!(prune_nulls(doc.clone()), prune_nulls(back), "fields lost parsing {doc:?}");
    parsed
}

fn prune_nulls(v: serde_yaml::Value) -> serde_yaml::Value {
    match v {
        serde_yaml::Value::Mapping(m) => serde_yaml::Value::Mapping(
            m.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, prune_nulls(v))).collect(),
        ),
        serde_yaml::Value::Sequence(s) => serde_yaml::Value::Sequence(s.into_iter().map(prune_nulls).collect()),
        other => other,
    }
}

#[test]
fn kustomization_renders_with_kubectl_1_20_and_parses() {
    let kinds = parse_all(&kustomize("."));
    let mut sorted = kinds.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterRoleBinding",
            "DaemonSet",
            "Namespace",
            "Role",
            "RoleBinding",
            "RuntimeClass",
            "ServiceAccount",
            "ServiceAccount"
        ],
        "{kinds:?}"
    );
}

#[test]
fn uninstall_kustomization_renders_and_runs_uninstall_on_the_host() {
    let docs = kustomize("uninstall");
    assert_eq!(parse_all(&docs), ["DaemonSet"]);
    let ds: DaemonSet = parse(&docs[0]);
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let init = pod.init_containers.unwrap();
    let uninstall = init.iter().find(|c| c.name == "uninstall").unwrap();
    assert_eq!(
        uninstall.command.as_deref().unwrap(),
        ["/opt/imageless/bin/imageless", "uninstall", "--host-root", "/host"]
    );
    assert_eq!(uninstall.security_context.as_ref().unwrap().privileged, Some(true));
    assert_eq!(pod.volumes.unwrap()[0].host_path.as_ref().unwrap().path, "/");
    // The label goes first, so no flox pod is scheduled onto a node being uninstalled.
    assert_eq!(init[0].command.as_deref().unwrap(), ["/opt/imageless/bin/imageless", "node", "label", "--remove"]);
}

#[test]
fn hub_cache_kustomization_renders_and_serves_from_the_installer_image() {
    let docs = kustomize("hub-cache");
    let kinds = parse_all(&docs);
    assert!(kinds.contains(&"Deployment".to_string()) && kinds.contains(&"Service".to_string()), "{kinds:?}");
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let hub = &pod["containers"][0];
    assert_eq!(hub["image"], "imageless-installer:0.1.0", "one image for the installer and the hub");
    assert_eq!(hub["command"][0], "/opt/imageless/bin/imageless");
    assert_eq!(hub["command"][1], "hub");
    assert_eq!(hub["command"][2], "serve");
}

/// The replicas on object storage: a Deployment of N hub replicas whose cache is the bucket (no
/// volume for it), credentials from the Secret, a Service, a headless Service for the fill
/// peers, and a PodDisruptionBudget.
#[test]
fn hub_cache_s3_kustomization_renders_replicas_without_a_cache_volume() {
    let docs = kustomize("hub-cache/s3");
    let kinds = parse_all(&docs);
    for kind in ["Deployment", "Service", "PodDisruptionBudget"] {
        assert!(kinds.contains(&kind.to_string()), "{kind} missing: {kinds:?}");
    }
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert!(
        deployment["spec"]["replicas"].as_u64().unwrap_or(1) >= 2,
        "replicas: {:?}",
        deployment["spec"]["replicas"]
    );
    let pod = &deployment["spec"]["template"]["spec"];
    let hub = &pod["containers"][0];
    let command: Vec<&str> = hub["command"].as_sequence().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(&command[..3], ["/opt/imageless/bin/imageless", "hub", "serve"], "{command:?}");
    let text = serde_yaml::to_string(deployment).unwrap();
    assert!(text.contains("s3://") && text.contains("imageless-hub-cache-s3"), "the bucket and its Secret: {text}");
    assert!(
        !pod["volumes"].as_sequence().into_iter().flatten().any(|v| v.get("persistentVolumeClaim").is_some()),
        "no volume claim: the cache is the bucket"
    );
}

/// What `kustomize edit set image imageless-installer=registry.example.com/ops/imageless-installer:v9`
/// writes into kustomization.yaml (`images:` with newName and newTag) moves every container of
/// the installer, uninstaller and hub cache to that image, and nothing else changes: the image is
/// named in one place. (No kustomize binary here; the edit is the entry that command writes.)
#[test]
fn setting_the_image_in_the_kustomization_moves_every_container() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let copy = tempfile::tempdir().unwrap();
    copy_tree(&deploy, copy.path());
    let set = "images:\n  - name: imageless-installer\n    newName: registry.example.com/ops/imageless-installer\n    newTag: v9\n";
    for dir in [".", "uninstall", "hub-cache", "hub-cache/s3"] {
        let file = copy.path().join(dir).join("kustomization.yaml");
        let text = std::fs::read_to_string(&file).unwrap();
        let at = text.find("images:").unwrap_or_else(|| panic!("{dir}/kustomization.yaml sets no image"));
        std::fs::write(&file, format!("{}{set}", &text[..at])).unwrap();
        let edited = kustomize_path(&copy.path().join(dir));
        let original = kustomize(dir);
        assert_eq!(edited.len(), original.len());
        let mut seen = 0;
        for (doc, before) in edited.iter().zip(&original) {
            let pod = match doc["kind"].as_str().unwrap() {
                "DaemonSet" => parse::<DaemonSet>(doc).spec.unwrap().template.spec.unwrap(),
                "Deployment" => {
                    parse::<k8s_openapi::api::apps::v1::Deployment>(doc).spec.unwrap().template.spec.unwrap()
                }
                _ => {
                    assert_eq!(doc, before, "only images change");
                    continue;
                }
            };
            for image in images_of(&pod) {
                assert_eq!(image, "registry.example.com/ops/imageless-installer:v9", "{dir}");
                seen += 1;
            }
        }
        assert!(seen > 0, "{dir}: no container");
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
