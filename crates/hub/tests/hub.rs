//! End-to-end tests of the hub with real git, real Nix and the real `imageless-hub` binary as a
//! child process (so stdout, stderr, signals and exit codes are the real ones).
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

mod support;

use support::{Server, BIN};

fn hub_cmd(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env("IMAGELESS_LOG", "info").output().expect("run imageless-hub")
}

/// Runs a hub subcommand that must succeed; returns its trimmed stdout.
fn hub_ok(args: &[&str]) -> String {
    let out = hub_cmd(args);
    assert!(out.status.success(), "imageless-hub {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A hub root, initialised.
struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::tempdir().unwrap();
        hub_ok(&["init", "--root", dir.path().to_str().unwrap()]);
        Root { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn arg(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }
    fn token(&self, handle: &str, extra: &[&str]) -> String {
        let mut args = vec!["token", "--root", self.arg(), "--handle", handle];
        args.extend_from_slice(extra);
        hub_ok(&args)
    }
    fn publish(&self, env: &str, lock: &Path, extra: &[&str]) -> String {
        let mut args = vec!["publish", "--root", self.arg(), env, "--lock", lock.to_str().unwrap()];
        args.extend_from_slice(extra);
        hub_ok(&args)
    }
    fn repo(&self, owner: &str) -> PathBuf {
        self.path().join("git").join(owner).join("floxmeta")
    }
}

/// A minimal HTTP/1.1 request; returns status, headers (lowercased names) and body.
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let hostport = addr.strip_prefix("http://").unwrap();
    let mut s = TcpStream::connect(hostport).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nContent-Length: 0\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, raw[split + 4..].to_vec())
}

fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// git, isolated from host config, never prompting; the token reaches git the way the Flox CLI
/// passes it: through an inline credential helper reading an environment variable.
fn git(token: Option<&str>) -> Command {
    let mut cmd = Command::new("git");
    cmd.env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR");
    if let Some(t) = token {
        cmd.env("HUB_TOKEN", t)
            .args(["-c", "credential.helper=!f() { echo username=oauth; echo \"password=$HUB_TOKEN\"; }; f"]);
    }
    cmd
}

/// `git clone --bare --single-branch --branch NAME` as flox does; Ok(dir) or Err(stderr).
fn clone(addr: &str, owner: &str, branch: &str, token: Option<&str>) -> Result<tempfile::TempDir, String> {
    let dir = tempfile::tempdir().unwrap();
    let out = git(token)
        .args(["clone", "--quiet", "--single-branch", "--no-tags", "--bare", "--branch", branch])
        .arg(format!("{addr}/git/{owner}/floxmeta"))
        .arg(dir.path().join("c"))
        .output()
        .unwrap();
    if out.status.success() {
        Ok(dir)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn show(repo: &Path, spec: &str) -> String {
    let out = git(None).arg("--git-dir").arg(repo).args(["show", spec]).output().unwrap();
    assert!(out.status.success(), "git show {spec}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn system() -> &'static str {
    imageless_core::system::System::host().unwrap().as_str()
}

/// A lock with no store paths (for git-only tests); `tag` makes locks differ.
fn empty_lock(dir: &Path, tag: &str) -> PathBuf {
    let p = dir.join(format!("{tag}.lock"));
    let lock = serde_json::json!({
        "lockfile-version": 1,
        "manifest": {"version": 1, "vars": {"TAG": tag}},
        "packages": []
    });
    std::fs::write(&p, serde_json::to_vec_pretty(&lock).unwrap()).unwrap();
    p
}

#[test]
fn private_env_visibility_and_auth_over_git_http() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    assert_eq!(root.publish("alice/secret", &empty_lock(work.path(), "s1"), &["--private", "--no-paths"]), "1");
    assert_eq!(root.publish("alice/public", &empty_lock(work.path(), "p1"), &["--no-paths"]), "1");
    hub_ok(&["grant", "--root", root.arg(), "alice", "bob"]);

    let alice_jwt = root.token("alice", &[]);
    let alice_opaque = root.token("alice", &["--opaque"]);
    assert!(alice_opaque.starts_with("flox_"));
    let bob = root.token("bob", &["--expires-in", "1h"]);
    let mallory = root.token("mallory", &[]);
    let expired = root.token("alice", &["--expired"]);
    let expired_opaque = root.token("alice", &["--opaque", "--expired"]);
    let forged = imageless_hub::auth::mint_jwt(b"not the hub's secret", "alice", i64::MAX / 2, 0);
    let hub_json = std::fs::read_to_string(root.path().join("hub.json")).unwrap();
    assert!(!hub_json.contains(&alice_opaque), "hub.json must store only a hash of opaque tokens");

    let server = Server::start(root.path(), &[]);
    let addr = server.url();

    // Allowed: the owner (JWT and opaque) and a granted handle.
    for token in [&alice_jwt, &alice_opaque, &bob] {
        let c = clone(&addr, "alice", "secret", Some(token)).unwrap();
        let meta = show(&c.path().join("c"), "secret:metadata.json");
        assert!(meta.contains(r#""current_generation":"1""#), "{meta}");
        assert!(show(&c.path().join("c"), "secret:1/env/manifest.lock").contains("s1"));
    }
    // Another owner's handle: the branch is hidden, git says the ref does not exist.
    let err = clone(&addr, "alice", "secret", Some(&mallory)).unwrap_err();
    assert!(err.contains("Remote branch secret not found in upstream origin"), "{err}");
    // ... while alice's public environment stays readable for it, and for the logged-out helper.
    clone(&addr, "alice", "public", Some(&mallory)).unwrap();
    clone(&addr, "alice", "public", Some("")).unwrap();
    // Logged out (flox's helper with an empty password): not found, like FloxHub.
    let err = clone(&addr, "alice", "secret", Some("")).unwrap_err();
    assert!(err.contains("Remote branch secret not found"), "{err}");
    // Bad, forged and expired tokens: authentication fails.
    for token in [&expired, &expired_opaque, &forged, &"flox_unknown".to_string(), &"garbage".to_string()] {
        let err = clone(&addr, "alice", "secret", Some(token)).unwrap_err();
        assert!(err.contains("Authentication failed"), "{err}");
    }
    // No credentials at all: challenged with 401, git cannot answer it.
    let err = clone(&addr, "alice", "secret", None).unwrap_err();
    assert!(err.contains("could not read Username"), "{err}");

    // Protocol v2: ls-refs hides the branch, and a fetch by commit id is refused.
    let secret_id = String::from_utf8(
        git(None).arg("--git-dir").arg(root.repo("alice")).args(["rev-parse", "secret"]).output().unwrap().stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let ls = |token: &str| {
        let out = git(Some(token))
            .args(["-c", "protocol.version=2", "ls-remote"])
            .arg(format!("{addr}/git/alice/floxmeta"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(ls(&alice_jwt).contains("refs/heads/secret"));
    let mallory_refs = ls(&mallory);
    assert!(
        !mallory_refs.contains("refs/heads/secret") && mallory_refs.contains("refs/heads/public"),
        "{mallory_refs}"
    );
    let scratch = tempfile::tempdir().unwrap();
    assert!(git(None).args(["init", "-q", "--bare"]).arg(scratch.path()).status().unwrap().success());
    let out = git(Some(&mallory))
        .arg("--git-dir")
        .arg(scratch.path())
        .args(["-c", "protocol.version=2", "fetch"])
        .arg(format!("{addr}/git/alice/floxmeta"))
        .arg(&secret_id)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unadvertised object"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Unknown owner: 404 (git and plain HTTP).
    let err = clone(&addr, "nobody", "x", Some(&alice_jwt)).unwrap_err();
    assert!(err.contains("not found"), "{err}");
    let (status, _, _) = http(&addr, "GET", "/git/nobody/floxmeta/info/refs?service=git-upload-pack", &[]);
    assert_eq!(status, 404);
    // Read-only: receive-pack refused, for the owner too; dumb HTTP refused.
    let basic = format!("Basic {}", base64_encode(&format!("oauth:{alice_jwt}")));
    let (status, _, _) =
        http(&addr, "GET", "/git/alice/floxmeta/info/refs?service=git-receive-pack", &[("Authorization", &basic)]);
    assert_eq!(status, 403);
    let (status, _, _) = http(&addr, "POST", "/git/alice/floxmeta/git-receive-pack", &[("Authorization", &basic)]);
    assert_eq!(status, 403);
    let (status, _, _) = http(&addr, "GET", "/git/alice/floxmeta/HEAD", &[("Authorization", &basic)]);
    assert_eq!(status, 403);
    let pushed = clone(&addr, "alice", "public", Some(&alice_jwt)).unwrap();
    let out = git(Some(&alice_jwt))
        .arg("--git-dir")
        .arg(pushed.path().join("c"))
        .arg("push")
        .arg(format!("{addr}/git/alice/floxmeta"))
        .arg("public:refs/heads/pushed")
        .output()
        .unwrap();
    assert!(!out.status.success(), "push must be refused");
    // A bad token gets the Basic challenge.
    let (status, headers, _) = http(
        &addr,
        "GET",
        "/git/alice/floxmeta/info/refs?service=git-upload-pack",
        &[("Authorization", "bearer nope")],
    );
    assert_eq!(status, 401);
    assert_eq!(header_value(&headers, "www-authenticate"), Some("Basic realm=\"floxhub\""));

    // Accounts API.
    let (status, _, body) =
        http(&addr, "GET", "/api/v1/accounts/me", &[("Authorization", &format!("bearer {alice_opaque}"))]);
    assert_eq!(status, 200);
    let me: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(me, serde_json::json!({"handle": "alice", "expires_at": null}));
    let (status, _, body) = http(&addr, "GET", "/api/v1/accounts/me", &[("Authorization", &format!("bearer {bob}"))]);
    assert_eq!(status, 200);
    let me: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(me["handle"], "bob");
    let exp = me["expires_at"].as_i64().unwrap();
    assert!((exp - imageless_hub::now_unix() - 3600).abs() < 120, "{exp}");
    for auth in [format!("bearer {expired}"), "bearer garbage".into(), String::new()] {
        let h: Vec<(&str, &str)> = if auth.is_empty() { vec![] } else { vec![("Authorization", auth.as_str())] };
        assert_eq!(http(&addr, "GET", "/api/v1/accounts/me", &h).0, 401);
    }

    let log = server.stop();
    assert!(log.contains("GET /git/alice/floxmeta/info/refs 200 alice"), "{log}");
    assert!(log.contains("POST /git/alice/floxmeta/git-upload-pack 200 bob"), "{log}");
    assert!(log.contains("GET /git/nobody/floxmeta/info/refs 404"), "{log}");
    assert!(log.contains("received SIGTERM"), "{log}");
    for secret in [&alice_jwt, &alice_opaque, &bob, &mallory, &expired, &expired_opaque, &forged] {
        assert!(!log.contains(secret.as_str()), "a token leaked into the log");
        // Neither the token nor any header carrying it.
        assert!(!log.contains(&base64_encode(&format!("oauth:{secret}"))), "an Authorization header leaked");
    }
    assert!(!log.to_ascii_lowercase().contains("authorization"), "{log}");
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn publishing_generations_and_rolling_back() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let manifest = work.path().join("manifest.toml");
    std::fs::write(&manifest, "version = 1\n[vars]\nGIVEN = \"yes\"\n").unwrap();
    let mf = manifest.to_str().unwrap();
    assert_eq!(root.publish("alice/app", &empty_lock(work.path(), "gen-one"), &["--no-paths", "--manifest", mf]), "1");
    assert_eq!(root.publish("alice/app", &empty_lock(work.path(), "gen-two"), &["--no-paths"]), "2");
    assert_eq!(root.publish("alice/app", &empty_lock(work.path(), "gen-three"), &["--no-paths"]), "3");

    let server = Server::start(root.path(), &[]);
    let token = root.token("alice", &[]);
    let c = clone(&server.url(), "alice", "app", Some(&token)).unwrap();
    let repo = c.path().join("c");
    let meta: serde_json::Value = serde_json::from_str(&show(&repo, "app:metadata.json")).unwrap();
    assert_eq!(meta["version"], 2);
    assert_eq!(meta["total_generations"], 3);
    let history = meta["history"].as_array().unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!(history[0]["kind"], "import");
    assert_eq!(history[2]["kind"], "edit");
    assert_eq!(history[2]["current_generation"], "3");
    assert_eq!(history[2]["previous_generation"], "2");
    assert!(history[2]["timestamp"].is_i64() && history[2]["author"].is_string() && history[2]["hostname"].is_string());
    // Older generations stay readable at the branch head.
    assert!(show(&repo, "app:1/env/manifest.lock").contains("gen-one"));
    assert!(show(&repo, "app:3/env/manifest.lock").contains("gen-three"));
    assert!(show(&repo, "app:1/env/manifest.toml").contains("GIVEN = \"yes\""));
    // Rendered from the lock's manifest when none is given.
    assert!(show(&repo, "app:2/env/manifest.toml").contains("TAG = \"gen-two\""));
    let log = String::from_utf8(
        git(None).arg("--git-dir").arg(&repo).args(["log", "--format=%an <%ae>|%s|%b", "app"]).output().unwrap().stdout,
    )
    .unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines[0].starts_with("Flox User <floxuser@example.invalid>|Create generation 3|"), "{log}");
    assert_eq!(
        lines.last().unwrap(),
        &"Flox User <floxuser@example.invalid>|Initialize generations branch for environment 'app'|"
    );
    assert_eq!(show(&repo, "app~3:metadata.json"), r#"{"version":2,"history":[],"total_generations":0}"#);

    hub_ok(&["switch", "--root", root.arg(), "alice/app", "1"]);
    let c = clone(&server.url(), "alice", "app", Some(&token)).unwrap();
    let repo = c.path().join("c");
    let meta: serde_json::Value = serde_json::from_str(&show(&repo, "app:metadata.json")).unwrap();
    let last = meta["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "switch_generation");
    assert_eq!(last["current_generation"], "1");
    assert_eq!(last["previous_generation"], "3");
    assert_eq!(meta["total_generations"], 3);
    let files = String::from_utf8(
        git(None).arg("--git-dir").arg(&repo).args(["diff", "--name-only", "app~1", "app"]).output().unwrap().stdout,
    )
    .unwrap();
    assert_eq!(files.trim(), "metadata.json");

    // Bad requests end in one clear error.
    let out = hub_cmd(&["switch", "--root", root.arg(), "alice/app", "7"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("generation 7 does not exist; accepted: 1..=3"));
    let out = hub_cmd(&["publish", "--root", root.arg(), "alice/../x", "--lock", "/dev/null"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("environment name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop();
}

#[test]
fn token_and_init_cli() {
    let root = Root::new();
    let before = std::fs::read(root.path().join("hub.json")).unwrap();
    let key_before = std::fs::read(root.path().join("cache-key.pub")).unwrap();
    hub_ok(&["init", "--root", root.arg()]);
    assert_eq!(std::fs::read(root.path().join("hub.json")).unwrap(), before, "init must keep hub.json");
    assert_eq!(std::fs::read(root.path().join("cache-key.pub")).unwrap(), key_before, "init must keep the key");
    assert_eq!(
        std::fs::read_to_string(root.path().join("cache/nix-cache-info")).unwrap(),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n"
    );
    let out = hub_cmd(&["token", "--root", root.arg(), "--handle", "alice", "--expires-in", "-1d"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("negative"));
    let uninit = tempfile::tempdir().unwrap();
    let out = hub_cmd(&["token", "--root", uninit.path().to_str().unwrap(), "--handle", "alice"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("hub init"), "{}", String::from_utf8_lossy(&out.stderr));
    // JWT claims as FloxHub's tokens carry them, readable without the secret.
    let jwt = root.token("alice", &["--expires-in", "2h"]);
    use base64::Engine;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(jwt.split('.').nth(1).unwrap()).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
    assert_eq!(claims["https://flox.dev/handle"], "alice");
    assert!((claims["exp"].as_i64().unwrap() - imageless_hub::now_unix() - 7200).abs() < 120);
}

/// Builds (once) an input-addressed store path with a content-addressed dependency, using only
/// busybox: `nix-store --add` a directory with busybox, then a derivation built by it.
fn built_store_path() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let work = tempfile::tempdir().unwrap();
        let bb = work.path().join("busybox");
        std::fs::create_dir_all(bb.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", bb.join("bin/busybox")).unwrap();
        let out = Command::new("nix-store").arg("--add").arg(&bb).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let bb_store = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let expr = format!(
            r#"let bb = builtins.storePath "{bb_store}"; in derivation {{
                 name = "imageless-hub-test-hello"; system = "{}"; builder = "${{bb}}/bin/busybox";
                 args = [ "sh" "-c" "${{bb}}/bin/busybox mkdir $out && ${{bb}}/bin/busybox ln -s ${{bb}} $out/bb && echo hello-from-hub > $out/hello" ];
               }}"#,
            system()
        );
        let nix = work.path().join("hello.nix");
        std::fs::write(&nix, expr).unwrap();
        let out = Command::new("nix-build").arg("--no-out-link").arg(&nix).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
}

/// An empty Nix store directory, made writable again before removal (Nix makes paths read-only).
struct Store(tempfile::TempDir);
impl Drop for Store {
    fn drop(&mut self) {
        let _ = Command::new("chmod").arg("-R").arg("u+w").arg(self.0.path()).status();
    }
}

fn realise(store: &Path, path: &str, substituter: &str, key: &str, cache_home: &Path) -> Output {
    Command::new("nix-store")
        .arg("--store")
        .arg(store)
        .args(["--realise", path])
        .args(["--option", "substituters", substituter])
        .args(["--option", "trusted-public-keys", key])
        .args(["--option", "narinfo-cache-negative-ttl", "0"])
        .args(["--option", "narinfo-cache-positive-ttl", "0"])
        .env("XDG_CACHE_HOME", cache_home)
        .output()
        .unwrap()
}

#[test]
fn published_store_paths_realise_into_an_empty_store_only_with_the_key() {
    let path = built_store_path();
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let lock = work.path().join("manifest.lock");
    let lock_json = serde_json::json!({
        "lockfile-version": 1,
        "manifest": {"version": 1, "install": {"hello": {"store-path": path}}},
        "packages": [
            {"install_id": "hello", "store_path": path, "system": system(), "priority": 5},
            // Another system's entry must be skipped, not copied.
            {"install_id": "hello", "store_path": "/nix/store/00000000000000000000000000000000-elsewhere", "system": "aarch64-darwin", "priority": 5}
        ]
    });
    std::fs::write(&lock, serde_json::to_vec(&lock_json).unwrap()).unwrap();
    assert_eq!(root.publish("alice/hello", &lock, &[]), "1");
    let hash = &path["/nix/store/".len().."/nix/store/".len() + 32];
    let narinfo = std::fs::read_to_string(root.path().join(format!("cache/{hash}.narinfo"))).unwrap();
    assert!(narinfo.contains("Sig: imageless-hub-1:"), "{narinfo}");

    let server = Server::start(root.path(), &[]);
    let substituter = format!("{}/cache", server.url());
    let (status, headers, body) = http(&server.url(), "GET", &format!("/cache/{hash}.narinfo"), &[]);
    assert_eq!(status, 200);
    assert_eq!(header_value(&headers, "content-type"), Some("text/x-nix-narinfo"));
    assert_eq!(String::from_utf8(body).unwrap(), narinfo);
    assert_eq!(http(&server.url(), "GET", "/cache/00000000000000000000000000000000.narinfo", &[]).0, 404);
    assert_eq!(http(&server.url(), "GET", "/cache/../hub.json", &[]).0, 404);
    assert_eq!(
        http(&server.url(), "GET", "/cache/nix-cache-info", &[]).1.iter().find(|(k, _)| k == "content-type").unwrap().1,
        "text/x-nix-cache-info"
    );

    let key = std::fs::read_to_string(root.path().join("cache-key.pub")).unwrap();
    let cache_home = tempfile::tempdir().unwrap();

    // Without the hub's key (another key is trusted): refused, nothing realised.
    let other = tempfile::tempdir().unwrap();
    let (osec, opub) = (other.path().join("sec"), other.path().join("pub"));
    assert!(Command::new("nix-store")
        .args(["--generate-binary-cache-key", "other-1"])
        .arg(&osec)
        .arg(&opub)
        .status()
        .unwrap()
        .success());
    let other_key = std::fs::read_to_string(&opub).unwrap();
    let store = Store(tempfile::tempdir().unwrap());
    let out = realise(store.0.path(), path, &substituter, &other_key, cache_home.path());
    assert!(!out.status.success(), "realised without the hub's key");
    let in_store = store.0.path().join(path.trim_start_matches('/')).join("hello");
    assert!(!in_store.exists());

    // With the key: the whole closure arrives.
    let out = realise(store.0.path(), path, &substituter, &key, cache_home.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&in_store).unwrap(), "hello-from-hub\n");
    let bb_link = std::fs::read_link(store.0.path().join(path.trim_start_matches('/')).join("bb")).unwrap();
    assert!(store.0.path().join(bb_link.to_str().unwrap().trim_start_matches('/')).join("bin/busybox").exists());

    let log = server.stop();
    assert!(log.contains(&format!("GET /cache/{hash}.narinfo 200 -")), "{log}");
}

/// `serve --upstream-git`: an owner this hub does not host is fetched from the upstream FloxHub
/// with the caller's token passed through (and kept nowhere); owners hosted here stay local.
#[test]
fn owners_not_hosted_here_are_passed_through_to_the_upstream_git() {
    let upstream_root = Root::new();
    let work = tempfile::tempdir().unwrap();
    upstream_root.publish("alice/secret", &empty_lock(work.path(), "up-s1"), &["--private", "--no-paths"]);
    upstream_root.publish("alice/public", &empty_lock(work.path(), "up-p1"), &["--no-paths"]);
    let alice = upstream_root.token("alice", &[]);
    let upstream = Server::start(upstream_root.path(), &[]);

    let front_root = Root::new();
    front_root.publish("local/app", &empty_lock(work.path(), "local1"), &["--no-paths"]);
    let front = Server::start(front_root.path(), &["--upstream-git", &format!("{}/git", upstream.url())]);
    let addr = front.url();

    // Public and private environments of the upstream, through the front, as the caller.
    let c = clone(&addr, "alice", "public", Some("")).unwrap();
    assert!(show(&c.path().join("c"), "public:1/env/manifest.lock").contains("up-p1"));
    let c = clone(&addr, "alice", "secret", Some(&alice)).unwrap();
    assert!(show(&c.path().join("c"), "secret:1/env/manifest.lock").contains("up-s1"));
    // The upstream decides: no token gets its 401 challenge, a logged-out caller a missing branch.
    let err = clone(&addr, "alice", "secret", None).unwrap_err();
    assert!(err.contains("could not read Username"), "{err}");
    let err = clone(&addr, "alice", "secret", Some("")).unwrap_err();
    assert!(err.contains("Remote branch secret not found"), "{err}");
    // Owners hosted on the front are served by it; pushes never reach the upstream.
    clone(&addr, "local", "app", Some("")).unwrap();
    let (status, _, _) = http(&addr, "POST", "/git/alice/floxmeta/git-receive-pack", &[]);
    assert_eq!(status, 403);
    let upstream_log = upstream.stop();
    assert!(!upstream_log.contains("receive-pack"), "{upstream_log}");
    assert!(upstream_log.contains("/git/alice/floxmeta/git-upload-pack 200 alice"), "{upstream_log}");

    // The token crossed the front without a trace: not in its log, not in its root.
    let front_log = front.stop();
    assert!(!front_log.contains(&alice), "{front_log}");
    let grep = Command::new("grep").args(["-rqF", &alice]).arg(front_root.path()).status().unwrap();
    assert_eq!(grep.code(), Some(1), "the token is not on the front hub's disk");

    // Upstream down: a clear 502 naming the upstream, hosted owners unaffected.
    let front = Server::start(front_root.path(), &["--upstream-git", "http://127.0.0.1:9/git"]);
    let (status, _, body) = http(&front.url(), "GET", "/git/alice/floxmeta/info/refs?service=git-upload-pack", &[]);
    assert_eq!(status, 502);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("the upstream git http://127.0.0.1:9/git could not be reached"), "{body}");
    clone(&front.url(), "local", "app", Some("")).unwrap();
    front.stop();

    // A bad value is refused at start, naming the option and what is accepted, without the secret.
    let out = hub_cmd(&["serve", "--root", front_root.arg(), "--upstream-git", "https://oauth:s3cret@hub.invalid/git"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("upstream git URL") && err.contains("no credentials") && !err.contains("s3cret"), "{err}");
}
