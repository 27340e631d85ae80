//! The Nix registration a nix-mutable container gets (crate::registration), checked by a real
//! Nix: the world's `flox/hello` closure is fetched into a node store from the hub, laid out as
//! a container's /nix (the view's `store/` and `var/nix/db`), and Nix, given that directory as
//! its store root, finds every path valid, with the narinfos' references, and the contents
//! matching the registered NarHash (`--verify --check-contents`).
//!
//! Needs IMAGELESS_HUB_ROOT (`cargo xtask world`) and `nix-store` (Nix is a build tool of this
//! project, never used by the node); fails with the reason when either is missing.
mod support;

use std::path::PathBuf;
use std::process::Command;

use imageless_core::store_path::StorePath;
use imageless_node::config::NodeConfig;
use imageless_node::fetch::Fetcher;
use imageless_node::{registration, view};

fn nix_store(root: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("nix-store")
        .arg("--store")
        .arg(root)
        .args(args)
        .output()
        .expect("nix-store is needed to check the registration (install Nix: scripts/setup-machine.sh)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_real_nix_sees_the_registered_closure_as_valid() {
    let root = std::env::var_os("IMAGELESS_HUB_ROOT")
        .map(PathBuf::from)
        .expect("IMAGELESS_HUB_ROOT is not set: run `cargo xtask world` and point it at .work/hub");
    let world: serde_json::Value = serde_json::from_slice(&std::fs::read(root.join("world.json")).unwrap()).unwrap();
    let closure: Vec<StorePath> = world["environments"]["flox/hello"]["generations"]["1"]["closure"]
        .as_array()
        .expect("flox/hello generation 1 in world.json")
        .iter()
        .map(|p| StorePath::parse(p.as_str().unwrap()).unwrap())
        .collect();
    let key = std::fs::read_to_string(root.join("cache-key.pub")).unwrap().trim().to_string();
    let hub = support::Hub::start();
    support::recompress_cache(&root.join("cache"), &hub.cache_dir(), "zstd", None);
    let state = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        state_root: state.path().to_path_buf(),
        substituters: vec![hub.url()],
        trusted_public_keys: vec![key],
        ..NodeConfig::default()
    };
    let fetcher = Fetcher::from_config(&config).unwrap();
    let report = fetcher.realize(&closure).unwrap();
    assert_eq!(report.closure.len(), closure.len());

    // A container's /nix under nix-mutable: the view's store/ and var/nix.
    let nix_root = tempfile::tempdir().unwrap();
    let nix_dir = nix_root.path().join("nix");
    std::fs::create_dir_all(&nix_dir).unwrap();
    view::build(&fetcher.store.dir, &report.closure, &nix_dir.join("store")).unwrap();
    let infos: Vec<_> = report.closure.iter().map(|p| fetcher.store.record(p).unwrap()).collect();
    registration::write(&nix_dir, &infos, 1_700_000_000).unwrap();

    let paths: Vec<&str> = report.closure.iter().map(StorePath::as_str).collect();
    let mut args = vec!["--check-validity"];
    args.extend(&paths);
    let (ok, _, err) = nix_store(nix_root.path(), &args);
    assert!(ok, "every path is valid to Nix: {err}");
    for info in &infos {
        let (ok, out, err) = nix_store(nix_root.path(), &["--query", "--references", info.store_path.as_str()]);
        assert!(ok, "{err}");
        let mut got: Vec<&str> = out.lines().collect();
        got.sort();
        let want: Vec<&str> = info.references.iter().map(StorePath::as_str).collect();
        assert_eq!(got, want, "references of {}", info.store_path);
    }
    let (ok, _, err) = nix_store(nix_root.path(), &["--verify", "--check-contents"]);
    assert!(
        ok && !err.contains("modified") && !err.contains("invalid"),
        "contents match the registered NarHash: {err}"
    );
    support::chmod_tree_writable(state.path());
    support::chmod_tree_writable(nix_root.path());
}
