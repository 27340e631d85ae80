//! End to end (containerd 1.7.24): a flox pod reads its environment's SBOMs at
//! /run/flox/env/sbom.spdx.json and /run/flox/env/sbom.cdx.json, and they are byte for byte
//! what `imageless sbom` prints on the node and what the hub serves; for `flox/large` every
//! store path of the closure appears once with the NAR hash the node verified (its store-info
//! record); the documents pass the reference validators; a private environment's SBOM needs a
//! token, from the CLI and from the hub; each bad input is one clear error.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use imageless_e2e::flox_node::{self as support, flox_pod, FloxNode};
use imageless_e2e::ContainerdVersion;

const EMPTY: &str = "flox/empty:1.0.0";
const SPDX_PATH: &str = "/run/flox/env/sbom.spdx.json";
const CDX_PATH: &str = "/run/flox/env/sbom.cdx.json";

/// `imageless sbom ARGS… --config <node config>`: (success, stdout, stderr).
fn imageless_sbom(node: &FloxNode, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(support::imageless())
        .arg("sbom")
        .args(args)
        .arg("--config")
        .arg(&node.config_path)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// GET from the hub: (status, body).
fn hub_get(node: &FloxNode, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(node.hub.addr()).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n{auth}\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

fn validate(format: &str, files: &[PathBuf]) -> (bool, String) {
    let out = Command::new("python3")
        .arg(imageless_e2e::repo_root().join("scripts/validate-sbom.py"))
        .arg(format)
        .args(files)
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// NarHash of a path as the node verified it: its record in `<state_root>/store-info`, as hex.
fn verified_nar_hash(state_root: &Path, store_path: &str) -> String {
    let hash = &store_path["/nix/store/".len().."/nix/store/".len() + 32];
    let record = std::fs::read_to_string(state_root.join(format!("store-info/{hash}.narinfo")))
        .unwrap_or_else(|e| panic!("no store-info record for {store_path}: {e}"));
    let nix32 = record.lines().find_map(|l| l.strip_prefix("NarHash: sha256:")).unwrap();
    hex::encode(nix_base32::from_nix_base32(nix32).unwrap())
}

#[test]
fn flox_pod_reads_its_sbom_and_it_is_what_imageless_sbom_and_the_hub_say() {
    let node = FloxNode::start(ContainerdVersion::V1_7);
    let probe = format!("cat {SPDX_PATH}; echo '-----'; cat {CDX_PATH}; ls -l {SPDX_PATH} {CDX_PATH} >&2");
    let pod = flox_pod("sbom", &[("flox.dev/environment", "flox/large")], EMPTY, &["bash", "-c", &probe]);
    let (code, out, err) = support::block_on(node.run_to_end(&pod, &[])).unwrap();
    assert_eq!(code, 0, "{err}");
    let (pod_spdx, pod_cdx) = out.split_once("-----\n").unwrap_or_else(|| panic!("{out}"));
    // Read-only, as the rest of the environment tree.
    let test_write = "echo x > /run/flox/env/sbom.spdx.json && echo writable || echo read-only";
    let pod2 = flox_pod("sbom-ro", &[("flox.dev/environment", "flox/large")], EMPTY, &["bash", "-c", test_write]);
    let (_, out2, _) = support::block_on(node.run_to_end(&pod2, &[])).unwrap();
    assert_eq!(out2.trim(), "read-only");

    // The node's CLI and the hub say exactly the same.
    let (ok, cli_spdx, stderr) = imageless_sbom(&node, &["flox/large"]);
    assert!(ok, "{stderr}");
    assert_eq!(pod_spdx, cli_spdx, "the pod's SPDX document differs from `imageless sbom`");
    // The pod ran the live generation; pinned to it, the CLI says the same.
    let live = node.world()["environments"]["flox/large"]["live_generation"].to_string();
    let pinned = format!("flox/large:{live}");
    let (ok, cli_cdx, stderr) = imageless_sbom(&node, &[pinned.as_str(), "--format", "cyclonedx"]);
    assert!(ok, "{stderr}");
    assert_eq!(pod_cdx, cli_cdx, "the pod's CycloneDX document differs from `imageless sbom`");
    assert_eq!(hub_get(&node, "/api/v1/environments/flox/large/sbom", None), (200, cli_spdx.clone()));
    assert_eq!(hub_get(&node, "/api/v1/environments/flox/large/sbom?format=cyclonedx", None), (200, cli_cdx.clone()));

    // flox/large: every store path of the closure once, with the NAR hash the node verified.
    let world = node.world();
    let closure: Vec<String> = world["environments"]["flox/large"]["generations"][live.as_str()]["closure"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert!(closure.len() >= 300, "flox/large has {} paths; the world is outdated", closure.len());
    let spdx: serde_json::Value = serde_json::from_str(&cli_spdx).unwrap();
    let paths: Vec<&serde_json::Value> =
        spdx["packages"].as_array().unwrap().iter().filter(|p| p["packageFileName"].is_string()).collect();
    let mut listed: Vec<&str> = paths.iter().map(|p| p["packageFileName"].as_str().unwrap()).collect();
    listed.sort();
    let mut want: Vec<&str> = closure.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(listed, want, "store paths of the SBOM vs the closure");
    for p in &paths {
        let store_path = p["packageFileName"].as_str().unwrap();
        assert_eq!(p["checksums"][0]["algorithm"], "SHA256");
        assert_eq!(
            p["checksums"][0]["checksumValue"].as_str().unwrap(),
            verified_nar_hash(&node.state_root, store_path)
        );
    }
    let cdx: serde_json::Value = serde_json::from_str(&cli_cdx).unwrap();
    for c in cdx["components"].as_array().unwrap().iter().filter(|c| c["bom-ref"].as_str().unwrap().starts_with('/')) {
        let store_path = c["bom-ref"].as_str().unwrap();
        assert_eq!(c["hashes"][0]["content"].as_str().unwrap(), verified_nar_hash(&node.state_root, store_path));
    }
    assert_eq!(cdx["components"].as_array().unwrap().len(), closure.len() + 4, "4 locked packages + the closure");

    // Both documents pass the reference validators.
    let dir = tempfile::tempdir().unwrap();
    let (spdx_file, cdx_file) = (dir.path().join("large.spdx.json"), dir.path().join("large.cdx.json"));
    std::fs::write(&spdx_file, &cli_spdx).unwrap();
    std::fs::write(&cdx_file, &cli_cdx).unwrap();
    let (ok, report) = validate("spdx", &[spdx_file]);
    assert!(ok, "{report}");
    let (ok, report) = validate("cyclonedx", &[cdx_file]);
    assert!(ok, "{report}");

    // A private environment: only with a token, from the CLI and from the hub.
    let (ok, _, stderr) = imageless_sbom(&node, &["acme/private"]);
    assert!(!ok, "acme/private's SBOM without a token");
    assert!(stderr.contains("acme/private"), "{stderr}");
    let alice = node.hub.token("alice", &[]);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &alice).unwrap();
    let (ok, private, stderr) = imageless_sbom(&node, &["acme/private", "--token-file", token_file.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(!stderr.contains(&alice) && !private.contains(&alice));
    assert_eq!(hub_get(&node, "/api/v1/environments/acme/private/sbom", None).0, 401);
    assert_eq!(hub_get(&node, "/api/v1/environments/acme/private/sbom", Some(&alice)), (200, private));

    // Bad input: one clear error each.
    let generations = world["environments"]["flox/large"]["generations"].as_object().unwrap();
    let available = generations.keys().cloned().collect::<Vec<_>>().join(", ");
    let missing = format!("flox: generation 9 of flox/large does not exist; available: {available} (live: {live})");
    let unlocked = format!(
        "flox: flox/large generation {live} is not locked for system aarch64-linux; its manifest.lock has packages for: x86_64-linux"
    );
    let cases: [(&[&str], &str); 4] = [
        (&["flox/large:9"], &missing),
        (&["flox/large", "--system", "aarch64-linux"], &unlocked),
        (&["flox/large", "--system", "riscv64-linux"], "--system: system 'riscv64-linux' is not supported; accepted: x86_64-linux, aarch64-linux, x86_64-darwin, aarch64-darwin"),
        (&["flox/large", "--format", "xml"], "--format: SBOM format \"xml\" is not supported; accepted: \"spdx\" (SPDX 2.3 JSON) or \"cyclonedx\" (CycloneDX 1.6 JSON)"),
    ];
    for (args, want) in cases {
        let (ok, out, stderr) = imageless_sbom(&node, args);
        assert!(!ok && out.is_empty(), "{args:?}");
        let last = stderr.trim().lines().last().unwrap_or_default();
        assert_eq!(last, format!("error: {want}"), "{args:?}: {stderr}");
    }
    assert!(!node.hub.access_log().contains(&alice), "a token in the hub's log");
}
