//! The binary-cache client against the test world's real cache (NARs written by `nix copy`,
//! signed by `nix store sign`), served by the project's hub: every environment's closure,
//! in each compression, lands in the node store exactly as `nix-store --realise` lays it
//! out from the same hub (compared as NAR dumps, modes and mtimes included).
//!
//! Needs IMAGELESS_HUB_ROOT (`cargo xtask world` builds it) and `nix-store` for the
//! comparison; fails with the reason when either is missing.
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use imageless_core::store_path::StorePath;
use imageless_node::config::NodeConfig;
use imageless_node::fetch::Fetcher;
use sha2::{Digest, Sha256};

fn hub_root() -> PathBuf {
    let root = std::env::var_os("IMAGELESS_HUB_ROOT")
        .map(PathBuf::from)
        .expect("IMAGELESS_HUB_ROOT is not set: run `cargo xtask world` and point it at .work/hub");
    assert!(root.join("world.json").is_file(), "{} has no world.json: run `cargo xtask world`", root.display());
    root
}

/// Every store path of every generation's closure in the world, but `flox/large`'s and
/// `flox/xlarge`'s (235 MB and 1.6 GB in four compressions would take minutes here; the e2e
/// suite and the bench use them)
/// and the private catalog packages' (they are in their catalog's store, not the public cache:
/// crates/hub/tests/catalog.rs and the e2e catalog test fetch them).
fn world_closure(root: &Path) -> Vec<StorePath> {
    let world: serde_json::Value = serde_json::from_slice(&std::fs::read(root.join("world.json")).unwrap()).unwrap();
    let mut all = BTreeSet::new();
    for (name, env) in world["environments"].as_object().unwrap() {
        if name == "flox/large" || name == "flox/xlarge" {
            continue;
        }
        for generation in env["generations"].as_object().unwrap().values() {
            for p in generation["closure"].as_array().unwrap() {
                all.insert(p.as_str().unwrap().to_string());
            }
        }
    }
    for p in world["catalog_store_paths"].as_array().into_iter().flatten() {
        all.remove(p.as_str().unwrap());
    }
    all.iter().map(|p| StorePath::parse(p).unwrap()).collect()
}

fn nar_hash_of(cache: &Path, p: &StorePath) -> String {
    let text = std::fs::read_to_string(cache.join(format!("{}.narinfo", p.hash_part()))).unwrap();
    text.lines().find_map(|l| l.strip_prefix("NarHash: ")).unwrap().to_string()
}

#[test]
fn the_world_closure_matches_nix_store_realise_in_each_compression() {
    let root = hub_root();
    let key = std::fs::read_to_string(root.join("cache-key.pub")).unwrap().trim().to_string();
    let wanted = world_closure(&root);
    let hashes: BTreeSet<String> = wanted.iter().map(|p| p.hash_part().to_string()).collect();
    assert!(wanted.len() >= 5, "the world has too few paths to mean anything: {wanted:?}");

    // What Nix itself makes of the same cache, served by the same hub, in a store of its own.
    let reference_hub = support::Hub::start();
    support::recompress_cache(&root.join("cache"), &reference_hub.cache_dir(), "none", Some(&hashes));
    let nix_root = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("nix-store")
        .arg("--store")
        .arg(nix_root.path())
        .arg("--realise")
        .args(wanted.iter().map(StorePath::as_str))
        .args(["--option", "substituters", &reference_hub.url()])
        .args(["--option", "trusted-public-keys", &key])
        .args(["--option", "narinfo-cache-negative-ttl", "0"])
        .args(["--option", "max-jobs", "0"])
        .output()
        .expect("nix-store is needed as the reference for this test (install Nix: scripts/setup-machine.sh)");
    assert!(out.status.success(), "nix-store --realise failed: {}", String::from_utf8_lossy(&out.stderr));
    let nix_store = nix_root.path().join("nix/store");

    for compression in ["none", "xz", "zstd", "bzip2"] {
        let hub = support::Hub::start();
        support::recompress_cache(&root.join("cache"), &hub.cache_dir(), compression, Some(&hashes));
        let state = tempfile::tempdir().unwrap();
        let config = NodeConfig {
            state_root: state.path().to_path_buf(),
            substituters: vec![hub.url()],
            trusted_public_keys: vec![key.clone()],
            ..NodeConfig::default()
        };
        let report = Fetcher::from_config(&config).unwrap().realize(&wanted).unwrap();
        assert_eq!(report.closure, wanted, "{compression}: the closure of the world's paths is the world's paths");
        assert_eq!(report.downloaded(), wanted.len(), "{compression}");
        let store = state.path().join("store");
        for p in &wanted {
            let ours = support::dump(&store.join(p.base_name()));
            let hash = format!("sha256:{}", support::nix32(&Sha256::digest(&ours)));
            assert_eq!(hash, nar_hash_of(&root.join("cache"), p), "{compression}: {p}");
            assert!(ours == support::dump(&nix_store.join(p.base_name())), "{compression}: {p} differs from Nix's");
        }
        assert_eq!(support::store_entries(&store).len(), wanted.len(), "{compression}: only store paths");
        support::chmod_tree_writable(state.path());
    }
    support::chmod_tree_writable(nix_root.path());
}
