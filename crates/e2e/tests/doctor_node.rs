//! `imageless doctor`'s node checks against a real hub serving the world's binary cache: each
//! substituter's `nix-cache-info` (a cache for /nix/store, one that is not, a 404, a closed
//! port) and the keys the node trusts (the hub's key, a malformed entry, none).
use std::path::Path;
use std::time::Duration;

use imageless_containerd_config::doctor::{self, Check, DoctorContext, Status};
use imageless_e2e::flox_node::{free_port, Hub, NodeConfigFile};

fn context(dir: &Path, node_config: &Path) -> DoctorContext {
    let containerd_config = dir.join("containerd.toml");
    std::fs::write(&containerd_config, "version = 2\n").unwrap();
    DoctorContext {
        containerd_config,
        address: Some(dir.join("no-such.sock")),
        containerd_bin: None,
        token_file: None,
        node_config_path: node_config.to_owned(),
        path_env: std::env::var_os("PATH").unwrap_or_default(),
        network_timeout: Duration::from_secs(5),
    }
}

fn named<'a>(checks: &'a [Check], name: &str) -> Vec<&'a Check> {
    checks.iter().filter(|c| c.name == name).collect()
}

#[test]
fn doctor_checks_each_substituters_cache_info_and_the_trusted_keys() {
    let dir = tempfile::Builder::new().prefix("doctor-").tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let config_path = dir.path().join("node.toml");
    let base = NodeConfigFile::new(dir.path(), &hub);
    let ctx = context(dir.path(), &config_path);
    let closed = format!("http://127.0.0.1:{}", free_port());
    let subs = [format!("{}/cache", hub.url), format!("{}/no-cache-here", hub.url), format!("{closed}/cache")];
    let with = |subs: &[String], keys: &str| {
        let text = base
            .text()
            .replace(&format!("substituters = [\"{}/cache\"]", hub.url), &format!("substituters = {subs:?}"));
        let text = text.replace(
            &format!("trusted_public_keys = [{:?}]", base.trusted_key),
            &format!("trusted_public_keys = {keys}"),
        );
        assert!(text.contains("substituters = [") && text.contains(&format!("trusted_public_keys = {keys}")), "{text}");
        std::fs::write(&config_path, text).unwrap();
        doctor::run(&ctx)
    };

    let checks = with(&subs, &format!("[{:?}]", base.trusted_key));
    let sub = named(&checks, "substituter");
    assert_eq!(sub.len(), 3, "one check per substituter: {checks:#?}");
    assert_eq!(sub[0].status, Status::Ok, "{}", sub[0]);
    assert!(sub[0].detail.contains("a binary cache for /nix/store"), "{}", sub[0]);
    assert_eq!(sub[1].status, Status::Fail, "{}", sub[1]);
    assert!(sub[1].detail.contains("no-cache-here/nix-cache-info answered HTTP 404"), "{}", sub[1]);
    assert_eq!(sub[2].status, Status::Fail, "{}", sub[2]);
    assert!(sub[2].detail.starts_with(&format!("substituter {closed}/cache: GET")), "{}", sub[2]);
    let keys = named(&checks, "trusted keys");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].status, Status::Ok, "{}", keys[0]);
    assert_eq!(keys[0].detail, base.trusted_key.split(':').next().unwrap());

    // A cache for another store directory is refused, as the node refuses it.
    std::fs::write(hub.root.join("cache/nix-cache-info"), "StoreDir: /gnu/store\nWantMassQuery: 1\n").unwrap();
    let checks = with(&subs[..1], &format!("[{:?}]", base.trusted_key));
    let sub = named(&checks, "substituter");
    assert_eq!(sub[0].status, Status::Fail, "{}", sub[0]);
    assert!(sub[0].detail.contains("nix-cache-info says StoreDir /gnu/store, expected /nix/store"), "{}", sub[0]);

    // Keys: a malformed entry is named; none at all means every path is refused.
    let checks = with(&subs[..1], "[\"imageless-hub-1:not-base64!\"]");
    let keys = named(&checks, "trusted keys");
    assert_eq!(keys[0].status, Status::Fail, "{}", keys[0]);
    assert!(keys[0].detail.contains("\"imageless-hub-1:not-base64!\" is not <key-name>:<base64"), "{}", keys[0]);
    let checks = with(&subs[..1], "[]");
    let keys = named(&checks, "trusted keys");
    assert_eq!(keys[0].status, Status::Fail, "{}", keys[0]);
    assert!(keys[0].detail.contains("trusted_public_keys is empty"), "{}", keys[0]);
}
