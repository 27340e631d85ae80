//! `GET /api/v1/environments/<owner>/<name>/sbom` on a copy of the world's hub root: the
//! private environment only with a token that may read it, one clear answer per bad request,
//! and the SBOMs of every generation of every world environment, in both formats, accepted by
//! the reference validators (spdx-tools, cyclonedx-python-lib; scripts/validate-sbom.py) — and
//! a broken document refused by them, so the check can fail.
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{world_root, Conn, Server, BIN};

/// The world's hub root, hard-linked into a temp dir (tokens minted there, the server's lock
/// files, never touch the world itself: hub.json is replaced by rename).
fn world_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("cp").arg("-al").arg(world_root().join(".")).arg(dir.path()).status().unwrap();
    assert!(status.success());
    dir
}

fn token(root: &Path, handle: &str) -> String {
    let out = Command::new(BIN).args(["token", "--root"]).arg(root).args(["--handle", handle]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn get(server: &Server, path: &str, token: Option<&str>) -> (u16, Option<String>, Option<String>, Vec<u8>) {
    let mut conn = Conn::open(&server.hostport, Duration::from_secs(60)).unwrap();
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let a = conn.request("GET", path, &headers).unwrap();
    let ct = a.header("content-type").map(str::to_owned);
    let www = a.header("www-authenticate").map(str::to_owned);
    (a.status, ct, www, a.body)
}

fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).trim().to_owned()
}

fn validator() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/validate-sbom.py"))
}

/// Runs the validators on `files`; (success, output).
fn validate(format: &str, files: &[PathBuf]) -> (bool, String) {
    let out = Command::new("python3").arg(validator()).arg(format).args(files).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn private_sbom_only_with_a_token_that_may_read_it_and_bad_requests_get_one_clear_answer() {
    let root = world_copy();
    let alice = token(root.path(), "alice"); // granted on acme (world/hub.toml)
    let mallory = token(root.path(), "mallory");
    let server = Server::start(root.path(), &[]);
    let private = "/api/v1/environments/acme/private/sbom";

    // No credential: challenged, as git is; a token that may not read it: not found.
    let (status, _, www, _) = get(&server, private, None);
    assert_eq!((status, www.as_deref()), (401, Some("Basic realm=\"floxhub\"")));
    let (status, _, _, body) = get(&server, private, Some(&mallory));
    assert_eq!((status, text(&body).as_str()), (404, "environment acme/private not found"));
    // Nothing tells a private name from a missing one: both challenged without a credential,
    // both missing for a handle that may not read them.
    let missing = "/api/v1/environments/acme/nothing-here/sbom";
    assert_eq!(get(&server, missing, None).0, 401);
    let (status, _, _, body) = get(&server, missing, Some(&mallory));
    assert_eq!((status, text(&body).as_str()), (404, "environment acme/nothing-here not found"));
    for bad in ["garbage", "flox_unknown"] {
        assert_eq!(get(&server, private, Some(bad)).0, 401, "{bad}");
    }
    // A reader gets it, in both formats.
    let (status, ct, _, body) = get(&server, private, Some(&alice));
    assert_eq!((status, ct.as_deref()), (200, Some("application/spdx+json")), "{}", text(&body));
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["name"], "acme/private:1 (x86_64-linux)");
    let (status, ct, _, body) = get(&server, &format!("{private}?format=cyclonedx&generation=1"), Some(&alice));
    assert_eq!((status, ct.as_deref()), (200, Some("application/vnd.cyclonedx+json")));
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["metadata"]["component"]["name"], "acme/private");

    // Public environments need nothing; the same request gives the same bytes.
    let public = "/api/v1/environments/flox/echoip/sbom";
    let (status, _, _, first) = get(&server, public, None);
    assert_eq!(status, 200);
    assert_eq!(get(&server, public, None).3, first);
    // The live generation is 2; generation 1 is another document, created earlier.
    let live: serde_json::Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(live["name"], "flox/echoip:2 (x86_64-linux)");
    let (_, _, _, one) = get(&server, &format!("{public}?generation=1"), None);
    let one: serde_json::Value = serde_json::from_slice(&one).unwrap();
    assert_eq!(one["name"], "flox/echoip:1 (x86_64-linux)");
    assert_ne!(one["documentNamespace"], live["documentNamespace"]);

    // One clear answer per bad request.
    let cases: [(String, u16, &str); 7] = [
        (format!("{public}?generation=7"), 404, "generation 7 of flox/echoip does not exist; available: 1, 2 (live: 2)"),
        (format!("{public}?format=xml"), 400, "query parameter format=\"xml\" is not valid; accepted: spdx or cyclonedx"),
        (format!("{public}?system=aarch64-linux"), 422, "flox/echoip generation 2 is not locked for system aarch64-linux; its manifest.lock has packages for: x86_64-linux"),
        (format!("{public}?generation=x"), 400, "query parameter generation=\"x\" is not valid; accepted: a generation number N >= 1"),
        (format!("{public}?token={alice}"), 400, "query parameter \"token\" is not known; accepted: generation, format, system"),
        ("/api/v1/environments/flox/nope/sbom".to_owned(), 404, "environment flox/nope not found"),
        ("/api/v1/environments/nobody/x/sbom".to_owned(), 404, "environment nobody/x not found"),
    ];
    for (path, want_status, want) in &cases {
        let (status, _, _, body) = get(&server, path, None);
        assert_eq!((status, text(&body).as_str()), (*want_status, *want), "{path}");
    }
    assert_eq!(get(&server, "/api/v1/environments/flox/../sbom", None).0, 404);

    let log = server.stop();
    assert!(log.contains("GET /api/v1/environments/acme/private/sbom 200 alice"), "{log}");
    assert!(!log.contains(&alice) && !log.contains(&mallory), "a token in the hub's log:\n{log}");
}

#[test]
fn a_lock_the_node_cannot_parse_is_one_error() {
    let root = support::Root::new(false);
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("manifest.lock");
    std::fs::write(&lock, br#"{"lockfile-version": 1, "manifest": {"schema-version": "1.10.0"}, "packages": []}"#)
        .unwrap();
    let out = Command::new(BIN)
        .args(["publish", "--root"])
        .arg(root.path())
        .args(["alice/broken", "--lock"])
        .arg(&lock)
        .arg("--no-paths")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Rewrite the published lock into one the node refuses (the hub refuses to publish it):
    // a newer lockfile version, as a newer Flox could push to FloxHub.
    let repo = root.path().join("git/alice/floxmeta");
    let git = |args: &[&str], stdin: Option<&[u8]>| {
        use std::io::Write;
        let mut child = Command::new("git")
            .arg("--git-dir")
            .arg(&repo)
            .args(args)
            .env("GIT_INDEX_FILE", dir.path().join("index"))
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.unwrap_or_default()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "git {args:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let blob = git(&["hash-object", "-w", "--stdin"], Some(br#"{"lockfile-version": 2}"#));
    git(&["read-tree", "broken"], None);
    git(&["update-index", "--cacheinfo", &format!("100644,{blob},1/env/manifest.lock")], None);
    let tree = git(&["write-tree"], None);
    let commit = git(&["commit-tree", &tree, "-p", "broken"], Some(b"newer lock"));
    git(&["update-ref", "refs/heads/broken", &commit], None);

    let server = Server::start(root.path(), &[]);
    let (status, _, _, body) = get(&server, "/api/v1/environments/alice/broken/sbom", None);
    assert_eq!(
        (status, text(&body).as_str()),
        (422, "alice/broken generation 1: manifest.lock is not valid: lockfile-version 2 is not supported; this node reads lockfile-version 1")
    );
}

#[test]
fn every_world_environment_sbom_validates_and_a_broken_one_does_not() {
    let root = world_copy();
    let alice = token(root.path(), "alice");
    let world: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.path().join("world.json")).unwrap()).unwrap();
    let server = Server::start(root.path(), &[]);
    let out = tempfile::tempdir().unwrap();
    let mut files: [Vec<PathBuf>; 2] = [Vec::new(), Vec::new()];
    let envs = world["environments"].as_object().unwrap();
    assert!(envs.len() >= 9, "the world has its environments");
    for (env, e) in envs {
        for generation in e["generations"].as_object().unwrap().keys() {
            for (i, (format, ext)) in [("spdx", "spdx.json"), ("cyclonedx", "cdx.json")].into_iter().enumerate() {
                let path = format!("/api/v1/environments/{env}/sbom?generation={generation}&format={format}");
                let (status, _, _, body) = get(&server, &path, Some(&alice));
                assert_eq!(status, 200, "{path}: {}", text(&body));
                let file = out.path().join(format!("{}-{generation}.{ext}", env.replace('/', "-")));
                std::fs::write(&file, &body).unwrap();
                files[i].push(file);
            }
        }
        // Every path of the live closure once, with the cache's NarHash; packages with their
        // licenses as SPDX ids.
        let live = e["live_generation"].to_string();
        let spdx: serde_json::Value = serde_json::from_slice(
            &std::fs::read(out.path().join(format!("{}-{live}.spdx.json", env.replace('/', "-")))).unwrap(),
        )
        .unwrap();
        let closure: Vec<&str> =
            e["generations"][&live]["closure"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
        let mut in_doc: Vec<&str> =
            spdx["packages"].as_array().unwrap().iter().filter_map(|p| p["packageFileName"].as_str()).collect();
        in_doc.sort();
        let mut want = closure.clone();
        want.sort();
        assert_eq!(in_doc, want, "{env}: the SBOM's store paths are the closure, each once");
        for p in spdx["packages"].as_array().unwrap().iter().filter(|p| p["packageFileName"].is_string()) {
            let store_path = p["packageFileName"].as_str().unwrap();
            let hash = &store_path["/nix/store/".len().."/nix/store/".len() + 32];
            // Custom-catalog packages' paths are in their catalog's cache (acme/withpkg).
            let public = root.path().join(format!("cache/{hash}.narinfo"));
            let file = if public.exists() {
                public
            } else {
                std::fs::read_dir(root.path().join("catalogs"))
                    .unwrap()
                    .map(|c| c.unwrap().path().join(format!("cache/{hash}.narinfo")))
                    .find(|f| f.exists())
                    .unwrap_or_else(|| panic!("{store_path}: no narinfo in the public or a catalog cache"))
            };
            let narinfo = std::fs::read_to_string(file).unwrap();
            let nix32 = narinfo.lines().find_map(|l| l.strip_prefix("NarHash: sha256:")).unwrap();
            let hex: String = nix_hex(nix32);
            assert_eq!(p["checksums"][0]["checksumValue"].as_str().unwrap(), hex, "{store_path}");
        }
        if env == "flox/echoip" {
            let hello = spdx["packages"].as_array().unwrap().iter().find(|p| p["name"] == "hello").unwrap();
            assert_eq!(hello["licenseDeclared"], "GPL-3.0-or-later");
            let echoip = spdx["packages"].as_array().unwrap().iter().find(|p| p["name"] == "echoip").unwrap();
            assert_eq!(echoip["licenseDeclared"], "MIT");
        }
    }
    let (ok, report) = validate("spdx", &files[0]);
    assert!(ok, "spdx-tools refused a world SBOM:\n{report}");
    let (ok, report) = validate("cyclonedx", &files[1]);
    assert!(ok, "cyclonedx-python-lib refused a world SBOM:\n{report}");

    // The same validators refuse a document whose relationships name a store path it lacks,
    // and a license that is no SPDX id: the checks above can fail.
    let large = |ext: &str| out.path().join(format!("flox-large-1.{ext}"));
    let mut spdx: serde_json::Value = serde_json::from_slice(&std::fs::read(large("spdx.json")).unwrap()).unwrap();
    let packages = spdx["packages"].as_array_mut().unwrap();
    let dropped = packages.iter().position(|p| p["packageFileName"].is_string()).unwrap();
    packages.remove(dropped);
    let broken = out.path().join("broken.spdx.json");
    std::fs::write(&broken, serde_json::to_vec(&spdx).unwrap()).unwrap();
    let (ok, report) = validate("spdx", &[broken]);
    assert!(!ok && report.contains("did not find the referenced spdx_id"), "{report}");
    let mut cdx: serde_json::Value = serde_json::from_slice(&std::fs::read(large("cdx.json")).unwrap()).unwrap();
    cdx["components"][0]["licenses"] = serde_json::json!([{"license": {"id": "Unfree"}}]);
    let broken = out.path().join("broken.cdx.json");
    std::fs::write(&broken, serde_json::to_vec(&cdx).unwrap()).unwrap();
    let (ok, report) = validate("cyclonedx", &[broken]);
    assert!(!ok && report.contains("/components/0/licenses"), "{report}");
}

/// Nix base-32 (as in narinfos) to hex.
fn nix_hex(nix32: &str) -> String {
    hex::encode(nix_base32::from_nix_base32(nix32).expect("a narinfo's NarHash is Nix base-32"))
}
