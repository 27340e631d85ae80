//! The node cache against the local hub and its binary cache, through the `imageless pull`
//! and `imageless gc` CLIs: one realization for concurrent pulls, crash safety, offline
//! behaviour, the node's own store and gc, and the hub's failure answers. Each node starts
//! with an empty store of its own (`<state_root>/store`), so every pull here is cold.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use imageless_e2e::flox_node::{imageless, Hub, NodeConfigFile};
use imageless_node::store_read::StoreRead;

/// A node without containerd, driven through the `imageless pull`/`gc` CLIs: the harness's
/// hub and node config (a `hub_url` of its own for the unreachable-hub cases).
struct CliNode {
    dir: tempfile::TempDir,
    hub: Hub,
    config: PathBuf,
}

impl CliNode {
    fn new() -> CliNode {
        Self::with_hub_url(None)
    }

    fn with_hub_url(hub_url: Option<&str>) -> CliNode {
        let dir = tempfile::Builder::new().prefix("node-cache-").tempdir().unwrap();
        let hub = Hub::start(dir.path());
        let defaults = NodeConfigFile::new(dir.path(), &hub);
        let file = NodeConfigFile {
            hub_url: hub_url.map(String::from).unwrap_or(defaults.hub_url.clone()),
            hub_timeout_secs: 5,
            extra: "hub_answer_ttl_secs = 0".into(),
            ..defaults
        };
        let config = dir.path().join("node.toml");
        file.write(&config);
        CliNode { dir, hub, config }
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

impl CliNode {
    fn gc(&self, args: &[&str]) -> Output {
        let out =
            Command::new(imageless()).arg("gc").args(args).env("IMAGELESS_CONFIG", &self.config).output().unwrap();
        assert!(out.status.success(), "imageless gc: {}", stderr(&out));
        out
    }

    /// Base names in the node store (temp and trash entries excluded).
    fn store(&self) -> std::collections::BTreeSet<String> {
        std::fs::read_dir(self.dir.path().join("state/store"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `path` with every symlink into /nix/store followed into the node store (the host's
    /// /nix/store does not hold the world: it is what a container sees).
    fn in_store(&self, path: &Path) -> PathBuf {
        let store = self.dir.path().join("state/store");
        let mut resolved = PathBuf::new();
        let mut rest: Vec<std::ffi::OsString> = path.iter().map(Into::into).collect();
        rest.reverse();
        let mut hops = 0;
        while let Some(part) = rest.pop() {
            resolved.push(&part);
            let Ok(target) = std::fs::read_link(&resolved) else { continue };
            hops += 1;
            assert!(hops < 40, "symlink loop at {}", resolved.display());
            resolved.pop();
            let target = match target.strip_prefix("/nix/store") {
                Ok(inner) => store.join(inner),
                Err(_) => resolved.join(target),
            };
            rest.extend(target.iter().map(Into::into).collect::<Vec<_>>().into_iter().rev());
            resolved = PathBuf::new();
        }
        resolved
    }

    /// A container of the environment rendered at `env_dir` (what flox-runc saves at create).
    fn container_uses(&self, id: &str, env_dir: &str) {
        let key = PathBuf::from(env_dir).parent().unwrap().file_name().unwrap().to_string_lossy().into_owned();
        let state = serde_json::json!({
            "id": id, "env_key": key, "env_dir": env_dir, "activator": "/a", "description": "test",
            "disable_metrics": false, "skip_exec": false, "overlay_dir": null, "attach": true,
        });
        let dir = self.dir.path().join("state/containers");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{id}.json")), state.to_string()).unwrap();
    }
}

fn base_names(paths: &[String]) -> std::collections::BTreeSet<String> {
    paths.iter().map(|p| p.trim_start_matches("/nix/store/").to_string()).collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn twenty_concurrent_cold_pulls_realize_once() {
    let node = CliNode::new();
    let cold = node.world_closure("flox/hello", "1");
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
    let nars = node.hub.access_log().matches("GET /cache/nar/").count();
    assert_eq!(nars, cold.len(), "each closure path downloaded once from the hub");
    assert_eq!(node.store(), base_names(&cold), "exactly the closure is in the node store");
}

#[test]
fn killed_pull_leaves_nothing_half_visible() {
    let node = CliNode::new();
    let mut child =
        node.pull_cmd(&["flox/devtools", "--mode", "dev"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // Kill it somewhere in fetch/realize/render; whatever the moment, no env may be visible
    // unless it is complete.
    std::thread::sleep(Duration::from_millis(150));
    child.kill().unwrap(); // SIGKILL
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
    // The tree links into /nix/store as the container sees it; on the node that is the node store.
    let store = StoreRead::new(node.dir.path().join("state/store"));
    let devlib = store.resolve(&env.join("include/devlib.h"));
    assert!(devlib.is_ok_and(|p| p.is_file()), "dev mode links the propagated devlib");
    assert!(!node.envs().iter().any(|k| k.starts_with(".tmp-")), "stale temp dirs cleaned: {:?}", node.envs());
    assert_eq!(node.store(), base_names(&node.world_closure("flox/devtools", "1")), "the whole closure, once");

    // A kill inside the git fetch leaves gix's lock files; plant them so that moment is always
    // covered, not only when the timing above happens to hit it. The next fetch of the owner's
    // repository (hello is a branch not fetched yet) must not trip over them.
    let meta = node.dir.path().join("state/meta/flox.git");
    std::fs::write(meta.join("shallow.lock"), b"").unwrap();
    std::fs::write(meta.join("refs/heads/hello.lock"), b"").unwrap();
    let o = node.pull(&["flox/hello"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!meta.join("shallow.lock").exists(), "the stale git lock is gone");
}

#[test]
fn offline_hub_pinned_cached_resolves_and_private_needs_the_same_token() {
    let mut node = CliNode::new();
    let alice = node.token_file("alice");
    let o = node.pull(&["flox/echoip:1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The live generation too: offline, nothing can be fetched into the node store.
    let o = node.pull(&["flox/echoip"]);
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

/// `imageless gc` drops environments no container uses, then every store path no remaining
/// environment references; what a used environment needs stays, shared paths included.
#[test]
fn gc_sweeps_the_node_store_but_keeps_what_containers_use() {
    let node = CliNode::new();
    let hello = node.pull(&["flox/hello"]);
    assert!(hello.status.success(), "{}", stderr(&hello));
    let echoip = node.pull(&["flox/echoip:1"]);
    assert!(echoip.status.success(), "{}", stderr(&echoip));
    let (hello_closure, echoip_closure) =
        (base_names(&node.world_closure("flox/hello", "1")), base_names(&node.world_closure("flox/echoip", "1")));
    let both: std::collections::BTreeSet<String> = hello_closure.union(&echoip_closure).cloned().collect();
    assert_eq!(node.store(), both);

    // Recently used: `--older-than` keeps both.
    node.gc(&["--older-than", "1h"]);
    assert_eq!(node.envs().len(), 2);
    assert_eq!(node.store(), both);

    // A container uses echoip: hello goes, and with it the paths only hello needed.
    node.container_uses("c1", String::from_utf8_lossy(&echoip.stdout).trim());
    let out = node.gc(&[]);
    assert!(stderr(&out).contains("1 environments removed, 1 in use kept"), "{}", stderr(&out));
    assert_eq!(node.envs().len(), 1);
    assert_eq!(node.store(), echoip_closure, "exactly echoip's closure is left");
    assert!(!hello_closure.is_subset(&echoip_closure), "the test needs a path only hello uses");
    let env = PathBuf::from(String::from_utf8_lossy(&echoip.stdout).trim());
    assert!(node.in_store(&env.join("bin/echoip")).is_file(), "echoip is still whole");

    // Unused now: everything goes, and a pull brings it back.
    std::fs::remove_file(node.dir.path().join("state/containers/c1.json")).unwrap();
    node.gc(&[]);
    assert!(node.envs().is_empty(), "{:?}", node.envs());
    assert!(node.store().is_empty(), "{:?}", node.store());
    let again = node.pull(&["flox/echoip:1"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(node.store(), echoip_closure);
}

/// gc and pulls never race: gc runs over and over while cold pulls of several environments
/// go on; every pull succeeds, and every environment left has its whole closure in the store.
#[test]
fn gc_during_pulls_never_breaks_an_environment() {
    let node = CliNode::new();
    let envs: [&[&str]; 5] =
        [&["flox/hello"], &["flox/echoip:1"], &["flox/echoip"], &["flox/hooks"], &["flox/devtools", "--mode", "dev"]];
    let mut pulls: Vec<_> =
        envs.iter().map(|a| node.pull_cmd(a).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()).collect();
    let mut gcs = 0;
    while pulls.iter_mut().any(|c| c.try_wait().unwrap().is_none()) {
        node.gc(&[]);
        gcs += 1;
    }
    assert!(gcs >= 1, "gc never ran during the pulls");
    for (o, args) in pulls.into_iter().map(|c| c.wait_with_output().unwrap()).zip(envs) {
        assert!(o.status.success(), "pull {args:?} during gc: {}", stderr(&o));
    }
    let store = node.store();
    for key in node.envs().iter().filter(|k| !k.starts_with('.')) {
        let closure = std::fs::read_to_string(node.dir.path().join("state/envs").join(key).join("closure")).unwrap();
        for p in closure.lines() {
            assert!(store.contains(p.trim_start_matches("/nix/store/")), "{key}: {p} swept under its environment");
        }
    }
    node.gc(&[]);
    assert!(node.envs().is_empty() && node.store().is_empty(), "{:?} {:?}", node.envs(), node.store());
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
    let node = CliNode::new();
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
    // A first resolve fetches at once; one the hub refuses leaves no repository behind.
    assert!(!node.dir.path().join("state/meta/nobody.git").exists(), "a refused first fetch left a repository");
    let expired = node.dir.path().join("expired.token");
    std::fs::write(&expired, node.hub.token("alice", &["--expired"])).unwrap();
    let o = node.pull(&["acme/private", "--token-file", expired.to_str().unwrap()]);
    assert!(stderr(&o).contains("flox: FloxHub token (secret floxhub-token) expired at "), "{}", stderr(&o));
    let wrong = node.dir.path().join("wrong.token");
    std::fs::write(&wrong, "flox_notarealtoken").unwrap();
    let o = node.pull(&["acme/private", "--token-file", wrong.to_str().unwrap()]);
    assert!(stderr(&o).contains("rejected the FloxHub token"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("flox_notarealtoken"), "token never printed");

    let broken = CliNode::with_hub_url(Some(&broken_hub()));
    let o = broken.pull(&["flox/echoip"]);
    assert!(stderr(&o).contains("answered HTTP 500 for flox/echoip"), "{}", stderr(&o));
}

/// A cluster's single address: nodes whose `hub_url` and substituter are a front hub that hosts
/// nothing itself (`--upstream` for packages, `--upstream-git` for floxmeta) pull public and
/// private environments of the world hub behind it; the world hub serves each NAR once for two
/// nodes, and the token reaches it through the front without staying there.
#[test]
fn nodes_pull_through_one_front_hub_for_git_and_packages() {
    let world = CliNode::new();
    let dir = world.dir.path();
    let front_root = dir.join("front");
    world.hub.imageless(&["hub", "init", "--root", front_root.to_str().unwrap()]);
    let front = Hub::serve_root(
        &imageless(),
        &front_root,
        &dir.join("front.log"),
        &["--upstream", &format!("{}/cache", world.hub.url), "--upstream-git", &format!("{}/git", world.hub.url)],
    )
    .unwrap();
    let alice = world.token_file("alice");
    let node = |name: &str| {
        let home = dir.join(name);
        std::fs::create_dir_all(&home).unwrap();
        let file = NodeConfigFile {
            hub_url: front.url.clone(),
            cache_url: format!("{}/cache", front.url),
            extra: "hub_answer_ttl_secs = 0".into(),
            ..NodeConfigFile::new(&home, &world.hub)
        };
        file.write(&home.join("node.toml"));
        home.join("node.toml")
    };
    let pull = |config: &PathBuf, args: &[&str]| {
        Command::new(imageless()).arg("pull").args(args).env("IMAGELESS_CONFIG", config).output().unwrap()
    };
    let mark = world.hub.log_mark();
    for config in [node("node-a"), node("node-b")] {
        let o = pull(&config, &["flox/hello"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let o = pull(&config, &["acme/private", "--token-file", alice.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        let o = pull(&config, &["acme/private"]);
        assert!(!o.status.success() && stderr(&o).contains("acme/private"), "{}", stderr(&o));
    }
    let closure = world.world_closure("flox/hello", "1").len() + world.world_closure("acme/private", "1").len();
    let (_, nars) = world.hub.cache_gets_since(mark);
    assert!(nars <= closure, "{nars} NAR GETs at the world hub for two nodes; the closures have {closure} paths");
    let world_log = world.hub.access_log();
    assert!(world_log.contains("/git/acme/floxmeta/git-upload-pack 200 alice"), "{world_log}");
    let front_log = front.access_log();
    assert!(front_log.contains("/git/flox/floxmeta/git-upload-pack 200 -"), "{front_log}");
    let token = std::fs::read_to_string(&alice).unwrap();
    let grep = Command::new("grep").args(["-rqF", token.trim()]).arg(&front_root).arg(dir.join("front.log")).status();
    assert_eq!(grep.unwrap().code(), Some(1), "the token is neither in the front's root nor in its log");
}
