//! The pods of the product docs (../shared/seeds), run unchanged through the `imageless pod`
//! CLI over CRI, on containerd 1.6.20, 1.7.24 and 2.1.9, on a node without Nix (each test runs
//! again inside `without-nix`, see imageless_e2e::without_nix). The docs' own environment, `limeytexan/echoip`, is published on the local hub
//! with echoip's lock from the world. It is public, as the telemetry example assumes; the auth
//! example mounts a token anyway (private environments are covered in flox_pods.rs).
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use imageless_e2e::docs::{docs_pods, publish_docs_environment, ECHOIP_ADDR};
use imageless_e2e::flox_node::{imageless, wait_for_answer, FloxNode};
use imageless_e2e::{without_nix, ContainerdVersion};

fn pod_cli(node: &FloxNode, args: &[&str]) -> std::process::Output {
    Command::new(imageless())
        .arg("pod")
        .args(args)
        .args(["--cri", &node.containerd.endpoint()])
        .env("IMAGELESS_POD_STATE_ROOT", node.dir.path().join("pods"))
        .output()
        .expect("imageless pod")
}

/// The docs' pods listen on port 8080 of the host network: one version at a time.
static PORT_8080: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn docs_pods_on(name: &str, version: ContainerdVersion) {
    let _port = PORT_8080.lock().unwrap_or_else(|e| e.into_inner());
    without_nix::run(name, || docs_pods_run_unchanged(version));
}

#[test]
fn docs_pods_on_containerd_1_6_20() {
    docs_pods_on("docs_pods_on_containerd_1_6_20", ContainerdVersion::V1_6);
}

#[test]
fn docs_pods_on_containerd_1_7_24() {
    docs_pods_on("docs_pods_on_containerd_1_7_24", ContainerdVersion::V1_7);
}

#[test]
fn docs_pods_on_containerd_2_1_9() {
    docs_pods_on("docs_pods_on_containerd_2_1_9", ContainerdVersion::V2_1);
}

fn docs_pods_run_unchanged(version: ContainerdVersion) {
    let pods = docs_pods();
    assert_eq!(pods.len(), 2, "the docs have two complete pods (auth, telemetry)");
    let node = FloxNode::start(version);
    publish_docs_environment(&node.hub);
    let token = node.hub.token("limeytexan", &[]);
    let secret = node.token_secret("floxhub-token", &token);

    for (i, yaml) in pods.iter().enumerate() {
        let file = node.dir.path().join(format!("docs-pod-{i}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let secret_arg = format!("floxhub-token={}", secret.display());
        let out =
            pod_cli(&node, &["run", file.to_str().unwrap(), "--detach", "--host-network", "--secret", &secret_arg]);
        assert!(out.status.success(), "docs pod {i}: {}", String::from_utf8_lossy(&out.stderr));
        let answer = wait_for_answer(ECHOIP_ADDR, Duration::from_secs(5));
        assert_eq!(answer, "127.0.0.1", "docs pod {i} serves echoip");
        let logs = pod_cli(&node, &["logs", "flox-containerd-demo"]);
        assert!(
            String::from_utf8_lossy(&logs.stdout).contains("listening")
                || String::from_utf8_lossy(&logs.stderr).contains("listening")
        );
        let rm = pod_cli(&node, &["rm", "flox-containerd-demo"]);
        assert!(rm.status.success(), "{}", String::from_utf8_lossy(&rm.stderr));
        assert_token_nowhere(&token, &[node.containerd.dir(), &node.state_root]);
    }
}

/// The token is in the secret only: not in any spec, state or log the node wrote.
fn assert_token_nowhere(token: &str, dirs: &[&Path]) {
    let out = Command::new("grep").args(["-rlF", "--", token]).args(dirs).output().unwrap();
    let hits = String::from_utf8_lossy(&out.stdout);
    assert!(hits.trim().is_empty(), "token found in {hits}");
}
