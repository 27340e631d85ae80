//! End to end on containerd 1.7.24 and 2.1.9: a flox pod of `flox/large` (315 paths) starts on
//! a node whose substituters are, in order, a closed port, a server that accepts and never
//! answers, a cache whose NARs are truncated and a good cache. The caches are written by real
//! Nix (`nix copy --to file://…?compression=xz`, signed with a key of their own) and served by
//! nginx. The pod runs; its closure in the node store is byte-identical to a clean pull from the
//! good cache alone; its cold start is within 2× of that clean pull's; the container's runc log
//! names the three bad substituters.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use imageless_e2e::bad_peers::{closed_port_url, Silent};
use imageless_e2e::flox_node::{self as support, flox_pod, FloxNode};
use imageless_e2e::static_server::Nginx;
use imageless_e2e::store_tree::tree;
use imageless_e2e::ContainerdVersion;

const EMPTY: &str = "flox/empty:1.0.0";

/// The live closure of `flox/large` in the world.
fn large_closure() -> Vec<String> {
    let world: serde_json::Value =
        serde_json::from_slice(&std::fs::read(support::world_root().join("world.json")).unwrap()).unwrap();
    let env = &world["environments"]["flox/large"];
    let gen = env["live_generation"].to_string();
    env["generations"][gen.as_str()]["closure"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().into()).collect()
}

/// `flox/large`'s closure in a binary cache written by real Nix: `nix copy` from the world's
/// cache into `file://…?compression=xz`, signed with a fresh key. Built once per world (a
/// minute of xz) under .work/failover-cache/<world stamp>/: (the cache directory, its public key).
fn nix_written_cache() -> (PathBuf, String) {
    static BUILT: OnceLock<(PathBuf, String)> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let world = support::world_root();
            let stamp = std::fs::read_to_string(world.join("world.stamp")).unwrap();
            let base = imageless_e2e::repo_root().join(".work/failover-cache");
            let dir = base.join(stamp.trim());
            if !dir.join("done").exists() {
                std::fs::create_dir_all(&base).unwrap();
                let tmp = base.join(format!(".tmp-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&tmp);
                std::fs::create_dir_all(&tmp).unwrap();
                let run = |cmd: &mut Command| {
                    let out = cmd.output().unwrap();
                    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
                };
                run(Command::new("nix-store")
                    .args(["--generate-binary-cache-key", "imageless-e2e-failover-1"])
                    .arg(tmp.join("key.sec"))
                    .arg(tmp.join("key.pub")));
                let to = format!("file://{}/cache?compression=xz&secret-key={}/key.sec", tmp.display(), tmp.display());
                run(Command::new("nix")
                    .args(["--extra-experimental-features", "nix-command", "copy", "--no-check-sigs", "--from"])
                    .arg(format!("file://{}/cache", world.display()))
                    .args(["--to", &to])
                    .args(large_closure()));
                std::fs::write(tmp.join("done"), b"").unwrap();
                // Older worlds' caches go; a concurrent run's rename may win, which is as good.
                for e in std::fs::read_dir(&base).unwrap().flatten() {
                    if e.path() != tmp {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
                let _ = std::fs::rename(&tmp, &dir);
                let _ = std::fs::remove_dir_all(&tmp);
            }
            let key = std::fs::read_to_string(dir.join("key.pub")).unwrap().trim().to_string();
            (dir.join("cache"), key)
        })
        .clone()
}

/// A copy of `cache` whose every NAR is cut to half its bytes (narinfos untouched): nginx serves
/// each file whole, so the node sees an xz stream that ends early.
fn truncated_copy(cache: &Path, dest: &Path) {
    std::fs::create_dir_all(dest.join("nar")).unwrap();
    for e in std::fs::read_dir(cache).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dest.join(e.file_name())).unwrap();
        }
    }
    for e in std::fs::read_dir(cache.join("nar")).unwrap().flatten() {
        let bytes = std::fs::read(e.path()).unwrap();
        std::fs::write(dest.join("nar").join(e.file_name()), &bytes[..bytes.len() / 2]).unwrap();
    }
}

/// The node's substituters and trusted keys, in its config file (read at every runtime call).
fn set_substituters(node: &FloxNode, substituters: &[String], key: &str) {
    let text = std::fs::read_to_string(&node.config_path).unwrap();
    let list = |v: &[String]| v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("substituters =") {
                format!("substituters = [{}]", list(substituters))
            } else if l.starts_with("trusted_public_keys =") {
                format!("trusted_public_keys = [{key:?}]")
            } else {
                l.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect();
    std::fs::write(&node.config_path, text).unwrap();
}

/// Runs the large pod cold: (time from RunPodSandbox until its container has started, the
/// container's runc log, read while it runs: CRI removes the bundle once the process exits).
fn run_large(node: &FloxNode) -> (Duration, String) {
    let pod = flox_pod(
        "large",
        &[("flox.dev/environment", "flox/large")],
        EMPTY,
        &["bash", "-c", "large-app; trap 'exit 0' TERM; sleep 600 & wait"],
    );
    support::block_on(async {
        let started = Instant::now();
        let running = node.run(&pod, &[]).await.unwrap_or_else(|e| panic!("the flox/large pod failed: {e}"));
        let took = started.elapsed();
        let id = running.containers.iter().find(|c| !c.init).expect("the app container").id.clone();
        let log = runc_log(node.containerd.dir(), &id);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out: String = running.logs(None).unwrap().iter().map(|l| format!("{}\n", l.text)).collect();
            if out.contains("large-app: 250 libraries") {
                break;
            }
            assert!(Instant::now() < deadline, "no output from large-app: {out}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        running.remove().await.unwrap();
        (took, log)
    })
}

/// `<bundle>/log.json` of container `id` under containerd's state.
fn runc_log(containerd_dir: &Path, id: &str) -> String {
    fn find(dir: &Path, id: &str, depth: usize) -> Option<PathBuf> {
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let path = e.path();
            if e.file_type().ok()?.is_dir() && !e.file_type().ok()?.is_symlink() {
                if e.file_name() == id && path.join("log.json").is_file() {
                    return Some(path.join("log.json"));
                }
                if depth > 0 {
                    if let Some(found) = find(&path, id, depth - 1) {
                        return Some(found);
                    }
                }
            }
        }
        None
    }
    let path =
        find(containerd_dir, id, 6).unwrap_or_else(|| panic!("no log.json of {id} below {}", containerd_dir.display()));
    std::fs::read_to_string(path).unwrap()
}

fn failover(version: ContainerdVersion) {
    let (cache, key) = nix_written_cache();
    let closure = large_closure();
    let work = tempfile::tempdir().unwrap();
    let good = Nginx::start(&work.path().join("good"), &cache).unwrap();

    // The reference: a cold pull from the good cache alone.
    let (clean, reference) = {
        let node = FloxNode::start(version);
        set_substituters(&node, &[good.cache_url()], &key);
        let (took, _) = run_large(&node);
        (took, tree(&node.store_dir(), &closure))
    };
    assert!(reference.len() > closure.len(), "the closure is in the node store");

    let truncated_dir = work.path().join("truncated-cache");
    truncated_copy(&cache, &truncated_dir);
    let truncated = Nginx::start(&work.path().join("truncated"), &truncated_dir).unwrap();
    let silent = Silent::start();
    let closed = closed_port_url();
    let node = FloxNode::start(version);
    set_substituters(&node, &[closed.clone(), silent.url.clone(), truncated.cache_url(), good.cache_url()], &key);
    let (took, log) = run_large(&node);
    eprintln!(
        "cache_failover {version}: cold start {:.2} s with a closed port, a silent server and a truncated cache before \
         the good one; {:.2} s with the good one alone",
        took.as_secs_f64(),
        clean.as_secs_f64()
    );
    assert_eq!(tree(&node.store_dir(), &closure), reference, "the closure differs from a clean pull's");
    assert!(took < clean * 2, "cold start {took:?} is over twice the clean pull's {clean:?}");
    assert!(truncated.access_log().contains("GET /cache/nar/"), "the truncated cache was asked for NARs");
    assert!(silent.accepted() >= 1, "the silent server was asked");
    // What the user sees: one warning line in the container's runc log naming the three.
    let warning = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["level"] == "warning" && v["msg"].as_str().is_some_and(|m| m.contains("while pulling")))
        .unwrap_or_else(|| panic!("no pull warning in the runc log:\n{log}"));
    let msg = warning["msg"].as_str().unwrap();
    assert!(msg.contains(&format!("substituter {closed} skipped: GET {closed}/nix-cache-info failed: ")), "{msg}");
    assert!(msg.contains(&format!("substituter {} skipped: no answer to nix-cache-info within ", silent.url)), "{msg}");
    assert!(
        msg.contains(&format!("substituter {} served ", truncated.cache_url()))
            && msg.contains("corrupt NARs (discarded, fetched from another substituter; last: /nix/store/"),
        "{msg}"
    );
}

#[test]
fn large_starts_past_a_dead_a_silent_and_a_truncated_cache_on_1_7() {
    failover(ContainerdVersion::V1_7);
}

#[test]
fn large_starts_past_a_dead_a_silent_and_a_truncated_cache_on_2_1() {
    failover(ContainerdVersion::V2_1);
}
