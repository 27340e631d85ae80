//! deploy/ grants the node agent exactly the API calls it makes (`agent::API_CALLS`): every
//! rule bound to the DaemonSet's service account, rendered with kubectl 1.20's kustomize, is
//! one of them, and each of them is granted, at the scope it needs and no wider.
use std::collections::BTreeSet;
use std::path::Path;

use imageless_cluster::agent::{ApiCall, Scope, API_CALLS};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde::Deserialize;

fn rendered() -> Vec<serde_yaml::Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let kubectl = root.join(".work/kubernetes-client/usr/bin/kubectl");
    assert!(kubectl.exists(), "{} is missing: run scripts/fetch-kubectl.sh", kubectl.display());
    let out = std::process::Command::new(kubectl).arg("kustomize").arg(root.join("deploy")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text).map(|d| serde_yaml::Value::deserialize(d).unwrap()).collect()
}

fn of_kind<T: serde::de::DeserializeOwned>(docs: &[serde_yaml::Value], kind: &str) -> Vec<T> {
    docs.iter().filter(|d| d["kind"] == kind).map(|d| serde_yaml::from_value(d.clone()).unwrap()).collect()
}

/// (group, resource, verb, scope, resourceName) of every grant in `rules`.
fn grants(rules: &[PolicyRule], scope: Scope) -> Vec<(String, String, String, Scope, Option<String>)> {
    let mut out = Vec::new();
    for r in rules {
        assert!(r.non_resource_urls.is_none());
        let names: Vec<Option<String>> = match &r.resource_names {
            Some(n) if !n.is_empty() => n.iter().cloned().map(Some).collect(),
            _ => vec![None],
        };
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    assert!(g != "*" && res != "*" && v != "*", "no wildcards: {r:?}");
                    for n in &names {
                        out.push((g.clone(), res.clone(), v.clone(), scope, n.clone()));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn the_agents_account_is_granted_exactly_what_it_calls() {
    let docs = rendered();
    let ds: DaemonSet = of_kind(&docs, "DaemonSet").remove(0);
    let meta_ns = ds.metadata.namespace.clone().unwrap();
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let sa = pod.service_account_name.clone().unwrap();
    assert_eq!(sa, "imageless-agent");
    let agent = pod.containers.iter().find(|c| c.name == "agent").unwrap();
    assert_eq!(agent.command.as_deref().unwrap()[1..], ["node", "agent"]);

    let binds_sa = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        subjects
            .iter()
            .flatten()
            .any(|s| s.kind == "ServiceAccount" && s.name == sa && s.namespace.as_deref() == Some(&meta_ns))
    };
    let mut granted = BTreeSet::new();
    let cluster_roles: Vec<ClusterRole> = of_kind(&docs, "ClusterRole");
    for b in of_kind::<ClusterRoleBinding>(&docs, "ClusterRoleBinding").iter().filter(|b| binds_sa(&b.subjects)) {
        assert_eq!(b.role_ref.kind, "ClusterRole");
        let role = cluster_roles.iter().find(|r| r.metadata.name.as_deref() == Some(&b.role_ref.name)).unwrap();
        granted.extend(grants(role.rules.as_deref().unwrap_or_default(), Scope::Cluster));
    }
    let roles: Vec<Role> = of_kind(&docs, "Role");
    for b in of_kind::<RoleBinding>(&docs, "RoleBinding").iter().filter(|b| binds_sa(&b.subjects)) {
        assert_eq!(b.metadata.namespace.as_deref(), Some(meta_ns.as_str()), "a Role in the agent's own namespace");
        assert_eq!(b.role_ref.kind, "Role");
        let role = roles.iter().find(|r| r.metadata.name.as_deref() == Some(&b.role_ref.name)).unwrap();
        assert_eq!(role.metadata.namespace, b.metadata.namespace);
        granted.extend(grants(role.rules.as_deref().unwrap_or_default(), Scope::OwnNamespace));
    }
    let wanted: BTreeSet<_> = API_CALLS
        .iter()
        .map(|c: &ApiCall| {
            (c.group.to_string(), c.resource.to_string(), c.verb.to_string(), c.scope, c.name.map(String::from))
        })
        .collect();
    assert_eq!(granted, wanted, "deploy/rbac.yaml must grant the agent exactly what it calls");
}
