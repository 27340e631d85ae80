//! End to end on containerd 1.7.24 and 2.1.9 with real Garage: the world's public environment
//! `acme/withpkg` installs `acme/hello-private`, a package of acme's private catalog, published
//! by the hub (`imageless hub publish-package --store s3://…`) to an S3 bucket on Garage, signed
//! with acme's key. The node asks the hub's catalog where the package lives with the pod's token
//! and reads the bucket with the credentials the catalog hands out:
//! - with alice's token (alice may read acme) the pod runs `hello-private`;
//! - without a token, or with bob's (an outsider), before and after the package is cached on
//!   the node, the pod fails with one message naming the package;
//! - the token reaches the hub and nothing else: a recording proxy in front of Garage's S3 API
//!   sees the node's requests (so it was asked) and never the token; the hub's log never shows it.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imageless_e2e::flox_node::{self as support, FloxNode};
use imageless_e2e::garage::{Garage, REGION};
use imageless_e2e::ContainerdVersion;

const BUCKET: &str = "acme-store";

/// A TCP proxy in front of `target` that records every byte clients send.
struct RecordingProxy {
    port: u16,
    sent: Arc<Mutex<Vec<u8>>>,
}

impl RecordingProxy {
    fn start(target: String) -> RecordingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let record = sent.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&target) else { continue };
                let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut s_read, mut c_write) = (server, client);
                let record = record.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = c_read.read(&mut buf) {
                        if n == 0 || s_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = s_write.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_read, &mut c_write);
                    let _ = c_write.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        RecordingProxy { port, sent }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.sent.lock().unwrap()).into_owned()
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pod(name: &str, with_secret: bool) -> String {
    support::token_pod(name, "acme/withpkg", "hello-private", with_secret)
}

/// Publishes the world's hello-private to `BUCKET` through `proxy` (the hub uploads with the
/// publisher credentials of its hub.json) and makes the node trust the new signing key.
fn publish_to_garage(node: &mut FloxNode, garage: &Garage, proxy: &RecordingProxy, work: &Path) -> String {
    let world = node.world();
    let acme = &world["catalogs"]["acme"];
    let package = &acme["packages"]["hello-private"];
    let outputs: Vec<(String, String)> = package["store_paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, p)| (name.clone(), p.as_str().unwrap().to_string()))
        .collect();
    let closure: Vec<String> =
        package["closure"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().into()).collect();
    // The package's closure into this machine's store (publish-package copies from there), from
    // the world's catalog cache, checked against acme's world key.
    run(Command::new("nix")
        .args(["--extra-experimental-features", "nix-command", "copy", "--from"])
        .arg(format!("file://{}", node.hub.root.join("catalogs/acme/cache").display()))
        .args(["--option", "trusted-public-keys", acme["public_key"].as_str().unwrap()])
        .args(&closure));
    let key_sec = work.join("acme-s3-1.sec");
    let key_pub = work.join("acme-s3-1.pub");
    run(Command::new("nix-store").args(["--generate-binary-cache-key", "acme-s3-1"]).arg(&key_sec).arg(&key_pub));
    // The publisher store's credentials, in hub.json.
    let creds = work.join("publisher-credentials");
    garage.write_credentials_file(&creds).unwrap();
    let hub_json = node.hub.root.join("hub.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&hub_json).unwrap()).unwrap();
    config["catalog_store_credentials"] = serde_json::json!(creds.display().to_string());
    std::fs::write(&hub_json, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let store =
        format!("s3://{BUCKET}?endpoint=127.0.0.1:{}&scheme=http&region={REGION}&addressing-style=path", proxy.port);
    let mut args = vec!["hub", "publish-package", "--root"];
    let root = node.hub.root.display().to_string();
    args.push(&root);
    let key_arg = key_sec.display().to_string();
    args.extend(["--catalog", "acme", "--name", "hello-private", "--key", &key_arg, "--store", &store]);
    let outs: Vec<String> = outputs.iter().map(|(name, p)| format!("{name}={p}")).collect();
    for o in &outs {
        args.extend(["--output", o]);
    }
    run(Command::new(support::imageless()).args(&args));
    node.hub.restart();
    // Nothing of it stays in this machine's store: the node must fetch it.
    let _ = Command::new("nix-store").arg("--delete").args(outputs.iter().map(|(_, p)| p)).output();
    // The node trusts acme's new key (and the hub's, for the public packages).
    let pub_key = std::fs::read_to_string(&key_pub).unwrap().trim().to_string();
    let text = std::fs::read_to_string(&node.config_path).unwrap();
    let text: String = text
        .lines()
        .map(|l| match l.strip_prefix("trusted_public_keys = [") {
            Some(rest) => format!("trusted_public_keys = [{pub_key:?}, {rest}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&node.config_path, text).unwrap();
    outputs[0].1.clone()
}

fn private_package(version: ContainerdVersion) {
    let mut node = FloxNode::start(version);
    let work = tempfile::tempdir().unwrap();
    let garage = Garage::start().unwrap();
    garage.create_bucket(BUCKET).unwrap();
    let proxy = RecordingProxy::start(garage.s3_endpoint.trim_start_matches("http://").to_string());
    let output = publish_to_garage(&mut node, &garage, &proxy, work.path());
    let uploads = proxy.text();
    assert!(uploads.contains(&format!("PUT /{BUCKET}/")), "the hub uploaded through the proxy");
    let mark = uploads.len();

    let alice = node.hub.token("alice", &[]);
    let bob = node.hub.token("bob", &[]);
    let alice_secret = node.token_secret("alice", &alice);
    let bob_secret = node.token_secret("bob", &bob);
    support::block_on(async {
        // Cold, without a token: one message naming the package.
        let msg = node.run_error(&pod("no-token-cold", false)).await;
        assert!(msg.contains("flox: package acme/hello-private of this environment is in a private catalog"), "{msg}");
        assert!(msg.contains("needs a FloxHub token"), "{msg}");
        assert_eq!(msg.matches("flox: ").count(), 1, "one message: {msg}");

        // Cold, with an outsider's token.
        let err =
            node.run(&pod("bob-cold", true), &[("floxhub-token", &bob_secret)]).await.err().expect("bob is refused");
        let msg = err.cri_message().map(String::from).unwrap_or_else(|| err.to_string());
        assert!(
            msg.contains(&format!(
                "flox: package acme/hello-private: the catalog at {} gives this FloxHub token no store for {output}",
                node.hub.url
            )),
            "{msg}"
        );

        // Alice: it runs, fetched from the bucket with the catalog's credentials.
        let mut running =
            node.run(&pod("alice", true), &[("floxhub-token", &alice_secret)]).await.expect("alice's pod starts");
        running.wait_main(Some(Duration::from_secs(60))).await.unwrap();
        assert_eq!(running.stdout(None).unwrap().trim(), "hello-private 1.0 (acme)");
        running.remove().await.unwrap();
        let base = output.trim_start_matches("/nix/store/");
        assert!(node.store_dir().join(base).is_dir(), "the package is in the node store");

        // Cached now: still nothing for a pod without a token or with bob's.
        let msg = node.run_error(&pod("no-token-warm", false)).await;
        assert!(msg.contains("flox: package acme/hello-private of this environment is in a private catalog"), "{msg}");
        let err =
            node.run(&pod("bob-warm", true), &[("floxhub-token", &bob_secret)]).await.err().expect("bob is refused");
        let msg = err.cri_message().map(String::from).unwrap_or_else(|| err.to_string());
        assert!(msg.contains("gives this FloxHub token no store for"), "{msg}");
    });

    // The node read the bucket (through the proxy) without ever sending a token there.
    let node_requests = proxy.text()[mark..].to_string();
    assert!(node_requests.contains(&format!("GET /{BUCKET}/")), "the node did not read the bucket:\n{node_requests}");
    for token in [&alice, &bob] {
        assert!(!proxy.text().contains(token.as_str()), "a FloxHub token reached the S3 store");
        assert!(!node.hub.access_log().contains(token.as_str()), "a token is in the hub's log");
    }
}

#[test]
fn a_private_catalog_package_in_garage_needs_a_token_of_its_org_on_1_7() {
    private_package(ContainerdVersion::V1_7);
}

#[test]
fn a_private_catalog_package_in_garage_needs_a_token_of_its_org_on_2_1() {
    private_package(ContainerdVersion::V2_1);
}
