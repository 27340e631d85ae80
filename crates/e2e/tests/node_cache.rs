//! The node cache against the local hub and real Nix, through the `imageless pull` CLI:
//! one realization for concurrent pulls, crash safety, offline behaviour, GC roots, and the
//! hub's failure answers.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use imageless_e2e::flox_node::{imageless, Hub};

struct Node {
    dir: tempfile::TempDir,
    hub: Hub,
    config: PathBuf,
    gcroots: PathBuf,
}

impl Node {
    fn new() -> Node {
        Self::with_hub_url(None)
    }

    fn with_hub_url(hub_url: Option<&str>) -> Node {
        let dir = tempfile::Builder::new().prefix("node-cache-").tempdir().unwrap();
        let hub = Hub::start(dir.path());
        let gcroots = PathBuf::from("/nix/var/nix/gcroots/imageless-test").join(dir.path().file_name().unwrap());
        let key = std::fs::read_to_string(hub.root.join("cache-key.pub")).unwrap();
        let config = dir.path().join("node.toml");
        std::fs::write(
            &config,
            format!(
                "state_root = {:?}\nhub_url = {:?}\nsubstituters = [\"{}/cache\"]\ntrusted_public_keys = [{:?}]\ngcroots_dir = {:?}\nhub_timeout_secs = 5\nhub_answer_ttl_secs = 0\n",
                dir.path().join("state").display().to_string(),
                hub_url.unwrap_or(&hub.url),
                hub.url,
                key.trim(),
                gcroots.display().to_string(),
            ),
        )
        .unwrap();
        Node { dir, hub, config, gcroots }
    }

    fn pull_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(imageless());
        cmd.arg("pull").args(args).env("IMAGELESS_CONFIG", &self.config).env("IMAGELESS_LOG", "info");
        cmd
    }

    fn pull(&self, args: &[&str]) -> Output {
        self.pull_cmd(args).output().unwrap()
    }

    fn envs(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("state/envs"))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }

    fn world_closure(&self, env: &str, gen: &str) -> Vec<String> {
        let w: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.hub.root.join("world.json")).unwrap()).unwrap();
        w["environments"][env]["generations"][gen]["closure"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect()
    }

    fn token_file(&self, handle: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{handle}.token"));
        std::fs::write(&path, self.hub.token(handle, &[])).unwrap();
        path
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.gcroots);
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Removes store paths so the next pull must substitute them. Paths other users of this
/// machine's store keep alive (e.g. busybox, rooted by another node) stay; at least the
/// environment's own top package must go. Returns the paths that are now absent.
fn make_cold(paths: &[String]) -> Vec<String> {
    // One path at a time, in passes: referrers go first, live paths simply stay.
    for _ in 0..paths.len() {
        let mut progress = false;
        for p in paths.iter().filter(|p| Path::new(p).exists()) {
            let out = Command::new("nix-store").args(["--delete", p]).output().unwrap();
            progress |= out.status.success() && !Path::new(p).exists();
        }
        if !progress {
            break;
        }
    }
    let cold: Vec<String> = paths.iter().filter(|p| !Path::new(p).exists()).cloned().collect();
    assert!(!cold.is_empty(), "nothing of {paths:?} could be made cold");
    cold
}

#[test]
fn twenty_concurrent_cold_pulls_realize_once() {
    let node = Node::new();
    let cold = make_cold(&node.world_closure("flox/hello", "1"));
    let children: Vec<_> = (0..20)
        .map(|_| node.pull_cmd(&["flox/hello"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap())
        .collect();
    let outputs: Vec<Output> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    for o in &outputs {
        assert!(o.status.success(), "{}", stderr(o));
    }
    let rendered = outputs.iter().filter(|o| stderr(o).contains("environment rendered")).count();
    assert_eq!(rendered, 1, "one realization and render for 20 concurrent pulls");
    let paths: std::collections::HashSet<String> =
        outputs.iter().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).collect();
    assert_eq!(paths.len(), 1, "all 20 got the same environment: {paths:?}");
    // Nix asks for a narinfo several times per path, but downloads each NAR once.
    let nars = node.hub.access_log().matches("GET /cache/nar/").count();
    assert_eq!(nars, cold.len(), "each missing closure path downloaded once from the hub");
}

#[test]
fn killed_pull_leaves_nothing_half_visible() {
    let node = Node::new();
    make_cold(&node.world_closure("flox/devtools", "1"));
    let mut child =
        node.pull_cmd(&["flox/devtools", "--mode", "dev"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // Kill it somewhere in fetch/realize/render; whatever the moment, no env may be visible
    // unless it is complete.
    std::thread::sleep(Duration::from_millis(150));
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    for key in node.envs().iter().filter(|k| !k.starts_with('.')) {
        let dir = node.dir.path().join("state/envs").join(key);
        assert!(
            dir.join("closure").exists() && dir.join("env/activate.d/imageless.json").exists(),
            "partial env {key} visible"
        );
    }
    let o = node.pull(&["flox/devtools", "--mode", "dev"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let env = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    assert!(env.join("include/devlib.h").exists(), "dev mode links the propagated devlib");
    assert!(!node.envs().iter().any(|k| k.starts_with(".tmp-")), "stale temp dirs cleaned: {:?}", node.envs());
}

#[test]
fn offline_hub_pinned_cached_resolves_and_private_needs_the_same_token() {
    let mut node = Node::new();
    let alice = node.token_file("alice");
    let o = node.pull(&["flox/echoip:1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = node.pull(&["acme/private", "--token-file", alice.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    node.hub.stop();
    let o = node.pull(&["flox/echoip:1"]);
    assert!(o.status.success(), "pinned + cached works offline: {}", stderr(&o));
    let o = node.pull(&["flox/echoip"]);
    assert!(o.status.success(), "unpinned uses the last known live generation: {}", stderr(&o));
    assert!(stderr(&o).contains("using the last known live generation of flox/echoip"), "{}", stderr(&o));
    let o = node.pull(&["acme/private"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("refusing to serve a private environment"), "{}", stderr(&o));
    let o = node.pull(&["acme/private", "--token-file", alice.to_str().unwrap()]);
    assert!(o.status.success(), "same token offline: {}", stderr(&o));
    let o = node.pull(&["flox/hooks"]);
    assert!(stderr(&o).contains("is unreachable"), "never cached + offline: {}", stderr(&o));
}

#[test]
fn nix_garbage_collection_keeps_cached_environments() {
    let node = Node::new();
    let o = node.pull(&["flox/hello"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let gc = Command::new("nix-collect-garbage").output().unwrap();
    assert!(gc.status.success(), "{}", String::from_utf8_lossy(&gc.stderr));
    for p in node.world_closure("flox/hello", "1") {
        assert!(Path::new(&p).exists(), "{p} collected although a cached env uses it");
    }
    // `imageless gc` drops the env and its roots; then Nix may collect the paths.
    let out = Command::new(imageless()).args(["gc"]).env("IMAGELESS_CONFIG", &node.config).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(node.envs().is_empty(), "{:?}", node.envs());
    assert!(std::fs::read_dir(&node.gcroots).map(|d| d.count()).unwrap_or(0) == 0);
}

/// A hub that answers every request with HTTP 500 (only the status matters here).
fn broken_hub() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ =
                s.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    format!("http://{addr}")
}

#[test]
fn hub_failures_are_precise() {
    let node = Node::new();
    let cases = [
        ("flox/echoip:7", "flox: generation 7 of flox/echoip does not exist; available: 1, 2 (live: 2)"),
        ("flox/nope", "flox: environment flox/nope not found on"),
        ("nobody/echoip", "flox: owner \"nobody\" not found on"),
    ];
    for (env, want) in cases {
        let o = node.pull(&[env]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains(want), "{env}: {}", stderr(&o));
    }
    let expired = node.dir.path().join("expired.token");
    std::fs::write(&expired, node.hub.token("alice", &["--expired"])).unwrap();
    let o = node.pull(&["acme/private", "--token-file", expired.to_str().unwrap()]);
    assert!(stderr(&o).contains("flox: FloxHub token (secret floxhub-token) expired at "), "{}", stderr(&o));
    let wrong = node.dir.path().join("wrong.token");
    std::fs::write(&wrong, "flox_notarealtoken").unwrap();
    let o = node.pull(&["acme/private", "--token-file", wrong.to_str().unwrap()]);
    assert!(stderr(&o).contains("rejected the FloxHub token"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("flox_notarealtoken"), "token never printed");

    let broken = Node::with_hub_url(Some(&broken_hub()));
    let o = broken.pull(&["flox/echoip"]);
    assert!(stderr(&o).contains("answered HTTP 500 for flox/echoip"), "{}", stderr(&o));
}
