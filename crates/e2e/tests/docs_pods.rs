//! The pods of the product docs (../shared/seeds), run unchanged through the `imageless pod`
//! CLI over CRI. The docs' own environment, `limeytexan/echoip`, is published on the local hub
//! with echoip's lock from the world. It is public, as the telemetry example assumes; the auth
//! example mounts a token anyway (private environments are covered in flox_pods.rs).
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use imageless_e2e::docs::{docs_pods, publish_docs_environment, ECHOIP_ADDR};
use imageless_e2e::flox_node::{imageless, wait_for_answer, FloxNode};
use imageless_e2e::ContainerdVersion;

fn pod_cli(node: &FloxNode, args: &[&str]) -> std::process::Output {
    Command::new(imageless())
        .arg("pod")
        .args(args)
        .args(["--cri", &node.containerd.endpoint()])
        .env("IMAGELESS_POD_STATE_ROOT", node.dir.path().join("pods"))
        .output()
        .expect("imageless pod")
}

#[test]
fn docs_pods_run_unchanged() {
    let pods = docs_pods();
    assert_eq!(pods.len(), 2, "the docs have two complete pods (auth, telemetry)");
    let node = FloxNode::start(ContainerdVersion::V1_7);
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
