//! Custom catalogs end to end, with the real `imageless-hub` binary and real Nix: a package
//! built here (depending on busybox) published to catalog `acme` with `publish-package`, an
//! environment installing it published with `publish`; then `POST /api/v1/catalog/store` for
//! no credential, an outsider, a reader and bad bodies; the per-catalog cache for the same
//! callers; and `nix copy --from` the per-catalog cache with a netrc file holding the token,
//! the catalog's key trusted (and refused without the token, with an outsider's, or without
//! the key).
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use support::{Answer, Conn, Root, Server, Store, BIN};

fn hub(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env("IMAGELESS_LOG", "info").output().expect("run imageless-hub")
}

fn hub_ok(args: &[&str]) -> String {
    let out = hub(args);
    assert!(out.status.success(), "imageless-hub {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn system() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "aarch64-linux"
    } else {
        "x86_64-linux"
    }
}

/// (busybox path, package path): busybox added to the store, and a package built by it that
/// refers to it (so busybox is in its closure).
fn built() -> &'static (String, String) {
    static PATHS: OnceLock<(String, String)> = OnceLock::new();
    PATHS.get_or_init(|| {
        let work = tempfile::tempdir().unwrap();
        let bb = work.path().join("busybox");
        std::fs::create_dir_all(bb.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", bb.join("bin/busybox")).unwrap();
        let out = Command::new("nix-store").arg("--add").arg(&bb).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let bb_store = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let expr = format!(
            r#"let bb = builtins.storePath "{bb_store}"; in derivation {{
                 name = "imageless-hub-test-catalog-pkg-1.0"; system = "{}"; builder = "${{bb}}/bin/busybox";
                 args = [ "sh" "-c" "${{bb}}/bin/busybox mkdir $out && ${{bb}}/bin/busybox ln -s ${{bb}} $out/bb && echo private-package > $out/hello" ];
               }}"#,
            system()
        );
        let nix = work.path().join("pkg.nix");
        std::fs::write(&nix, expr).unwrap();
        let out = Command::new("nix-build").arg("--no-out-link").arg(&nix).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (bb_store, String::from_utf8(out.stdout).unwrap().trim().to_owned())
    })
}

fn hash_of(path: &str) -> &str {
    &path["/nix/store/".len().."/nix/store/".len() + 32]
}

/// An environment of `acme` installing `acme/hello-private` (the package) and busybox by store
/// path, locked as Flox locks a custom-catalog package (no cache URL).
fn write_lock(dir: &Path, bb: &str, pkg: &str) -> PathBuf {
    let lock = serde_json::json!({
        "lockfile-version": 1,
        "manifest": {"schema-version": "1.10.0", "install": {
            "hello-private": {"pkg-path": "acme/hello-private"},
            "busybox": {"store-path": bb}}, "options": {}},
        "packages": [
            {"attr_path": "hello-private", "broken": false, "derivation": "/nix/store/00000000000000000000000000000000-x.drv",
             "description": "d", "install_id": "hello-private", "license": "MIT",
             "locked_url": "https://example.invalid/acme", "name": "imageless-hub-test-catalog-pkg-1.0",
             "pname": "imageless-hub-test-catalog-pkg", "rev": "0000000000000000000000000000000000000000",
             "rev_count": 1, "rev_date": "2026-01-01T00:00:00Z", "scrape_date": "2026-01-01T00:00:00Z",
             "stabilities": ["unstable"], "unfree": false, "version": "1.0", "outputs_to_install": ["out"],
             "outputs": {"out": pkg}, "system": system(), "group": "toplevel", "priority": 5},
            {"install_id": "busybox", "store_path": bb, "system": system(), "priority": 5}
        ]
    });
    let path = dir.join("manifest.lock");
    std::fs::write(&path, serde_json::to_vec(&lock).unwrap()).unwrap();
    path
}

fn key_pair(dir: &Path, name: &str) -> (PathBuf, String) {
    let (sec, public) = (dir.join(format!("{name}.sec")), dir.join(format!("{name}.pub")));
    let ok =
        Command::new("nix-store").args(["--generate-binary-cache-key", name]).arg(&sec).arg(&public).status().unwrap();
    assert!(ok.success());
    (sec, std::fs::read_to_string(public).unwrap().trim().to_owned())
}

fn post(server: &Server, auth: Option<&str>, body: &str) -> Answer {
    let mut conn = Conn::open(&server.hostport, Duration::from_secs(30)).unwrap();
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = auth {
        headers.push(("Authorization", a));
    }
    conn.request_with_body("POST", "/api/v1/catalog/store", &headers, Some(body.as_bytes())).unwrap()
}

fn get(server: &Server, path: &str, auth: Option<&str>) -> Answer {
    let mut conn = Conn::open(&server.hostport, Duration::from_secs(30)).unwrap();
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
    conn.request("GET", path, &headers).unwrap()
}

fn json(a: &Answer) -> serde_json::Value {
    serde_json::from_slice(&a.body).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&a.body)))
}

fn basic(token: &str) -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("unused:{token}")))
}

/// `nix copy --from SUBSTITUTER` of `path` into an empty store, with `netrc` (if any) and `key`
/// trusted.
fn nix_copy(substituter: &str, path: &str, key: &str, netrc: Option<&Path>) -> Output {
    let store = Store::new();
    let cache_home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("nix");
    cmd.args(["--extra-experimental-features", "nix-command", "copy", "--from", substituter, "--to"])
        .arg(store.0.path())
        .arg(path)
        .args(["--option", "trusted-public-keys", key])
        .args(["--option", "narinfo-cache-negative-ttl", "0"])
        .args(["--option", "narinfo-cache-positive-ttl", "0"])
        .env("XDG_CACHE_HOME", cache_home.path());
    if let Some(n) = netrc {
        cmd.args(["--option", "netrc-file"]).arg(n);
    }
    let out = cmd.output().unwrap();
    if out.status.success() {
        let copied = store.0.path().join(path.trim_start_matches('/')).join("hello");
        assert_eq!(std::fs::read_to_string(copied).unwrap(), "private-package\n");
    }
    out
}

#[test]
fn catalog_packages_are_located_and_served_only_to_readers_of_the_catalog() {
    let (bb, pkg) = built();
    let root = Root::new(false);
    let r = root.path().to_str().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (acme_key, acme_pub) = key_pair(work.path(), "acme-1");

    // The environment first: busybox goes to the public cache, the catalog package does not.
    let lock = write_lock(work.path(), bb, pkg);
    assert_eq!(hub_ok(&["publish", "--root", r, "acme/withpkg", "--lock", lock.to_str().unwrap()]), "1");
    assert!(root.cache().join(format!("{}.narinfo", hash_of(bb))).exists());
    assert!(!root.cache().join(format!("{}.narinfo", hash_of(pkg))).exists());

    // Refusals name the field, the value and what is accepted.
    let out = hub(&["publish-package", "--root", r, "--catalog", "acme", "--name", "hello-private", "--key"]
        .iter()
        .copied()
        .chain([acme_pub.as_str(), "--output", &format!("out={pkg}")])
        .collect::<Vec<_>>());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--key") || err.contains("signing key"), "{err}");
    let public_key_file = work.path().join("acme-1.pub");
    let out = hub(&[
        "publish-package",
        "--root",
        r,
        "--catalog",
        "acme",
        "--name",
        "hello-private",
        "--key",
        public_key_file.to_str().unwrap(),
        "--output",
        &format!("out={pkg}"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is not a Nix secret key") && !err.contains(&acme_pub[8..]), "{err}");
    let out = hub(&[
        "publish-package",
        "--root",
        r,
        "--catalog",
        "acme",
        "--name",
        "busybox",
        "--key",
        acme_key.to_str().unwrap(),
        "--output",
        &format!("out={bb}"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is in the hub's public cache"), "{err}");

    let said = hub_ok(&[
        "publish-package",
        "--root",
        r,
        "--catalog",
        "acme",
        "--name",
        "hello-private",
        "--key",
        acme_key.to_str().unwrap(),
        "--output",
        &format!("out={pkg}"),
    ]);
    assert!(
        said.starts_with("acme/hello-private: 2 paths in hub (1 not in the public cache), signed by acme-1"),
        "{said}"
    );
    let packages: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.path().join("catalogs/acme/packages.json")).unwrap()).unwrap();
    let record = &packages["packages"]["hello-private"];
    assert_eq!(record["outputs"]["out"], pkg.as_str());
    assert_eq!(record["private_paths"], serde_json::json!([pkg]));
    assert_eq!(record["store"], "hub");
    assert_eq!(record["public_key"], acme_pub.as_str());
    assert_eq!(std::fs::read_to_string(root.path().join("catalogs/acme/key.pub")).unwrap().trim(), acme_pub);
    let narinfo =
        std::fs::read_to_string(root.path().join(format!("catalogs/acme/cache/{}.narinfo", hash_of(pkg)))).unwrap();
    assert!(narinfo.contains("Sig: acme-1:"), "{narinfo}");
    assert!(
        !root.cache().join(format!("{}.narinfo", hash_of(pkg))).exists(),
        "the package leaked into the public cache"
    );

    hub_ok(&["grant", "--root", r, "acme", "alice"]);
    let token = |h: &str| hub_ok(&["token", "--root", r, "--handle", h]);
    let (acme, alice, bob) = (token("acme"), token("alice"), token("bob"));
    let server = Server::start(root.path(), &[]);
    let request =
        serde_json::json!({"outpaths": [pkg, bb, "/nix/store/00000000000000000000000000000000-unknown"]}).to_string();

    // No credential, or the logged-out credential: a login is needed.
    for auth in [None, Some("Basic dW51c2VkOg==".to_owned())] {
        let a = post(&server, auth.as_deref(), &request);
        assert_eq!((a.status, a.header("www-authenticate")), (401, Some("Bearer")));
        assert!(json(&a)["detail"].as_str().unwrap().contains("Authorization: Bearer"), "{:?}", json(&a));
    }
    for bad in ["garbage", "flox_unknown"] {
        assert_eq!(post(&server, Some(&format!("Bearer {bad}")), &request).status, 401);
    }
    let expired = hub_ok(&["token", "--root", r, "--handle", "alice", "--expired"]);
    assert_eq!(post(&server, Some(&format!("Bearer {expired}")), &request).status, 401);

    // An outsider: every path answered, none located.
    let a = post(&server, Some(&format!("Bearer {bob}")), &request);
    assert_eq!(a.status, 200);
    assert_eq!(
        json(&a),
        serde_json::json!({"items": {
            pkg.as_str(): [], bb.as_str(): [], "/nix/store/00000000000000000000000000000000-unknown": []}})
    );
    // The catalog's own handle and a granted one (Bearer or Basic): the store info.
    let expected = serde_json::json!({
        "url": format!("{}/catalogs/acme/cache", server.url()), "auth": null, "catalog": "acme",
        "package": "hello-private", "public_keys": [acme_pub]});
    for auth in [format!("Bearer {acme}"), format!("Bearer {alice}"), basic(&alice)] {
        let a = post(&server, Some(&auth), &request);
        assert_eq!((a.status, a.header("content-type")), (200, Some("application/json")));
        let items = &json(&a)["items"];
        assert_eq!(items[pkg.as_str()], serde_json::json!([expected]));
        assert_eq!(items[bb.as_str()], serde_json::json!([expected]), "busybox is in the package's store too");
        assert_eq!(items["/nix/store/00000000000000000000000000000000-unknown"], serde_json::json!([]));
    }
    // Bad bodies: 422 naming the field and the value.
    let alice_auth = format!("Bearer {alice}");
    for (body, wanted) in [
        (r#"{"outpaths": ["/nix/store/x"]}"#.to_owned(), "field outpaths[0]: invalid store path '/nix/store/x'"),
        (r#"{"paths": []}"#.to_owned(), "field outpaths is missing"),
        ("not json".to_owned(), "the body is not JSON"),
        (
            serde_json::json!({"outpaths": vec![pkg.as_str(); 10_001]}).to_string(),
            "field outpaths has 10001 entries; accepted: at most 10000",
        ),
    ] {
        let a = post(&server, Some(&alice_auth), &body);
        assert_eq!(a.status, 422, "{}", String::from_utf8_lossy(&a.body));
        assert!(json(&a)["detail"].as_str().unwrap().starts_with(wanted), "{:?}", json(&a));
    }
    assert_eq!(get(&server, "/api/v1/catalog/store", Some(&alice_auth)).status, 405);

    // The per-catalog cache: challenged without a token, missing for outsiders (whether the
    // file or the catalog exists or not), served to readers.
    let narinfo_url = format!("/catalogs/acme/cache/{}.narinfo", hash_of(pkg));
    let a = get(&server, &narinfo_url, None);
    assert_eq!((a.status, a.header("www-authenticate")), (401, Some("Basic realm=\"floxhub\"")));
    assert_eq!(get(&server, &narinfo_url, Some("Basic dW51c2VkOg==")).status, 401);
    assert_eq!(get(&server, &narinfo_url, Some("Bearer garbage")).status, 401);
    assert_eq!(get(&server, "/catalogs/nope/cache/nix-cache-info", None).status, 401);
    for path in [
        narinfo_url.as_str(),
        "/catalogs/acme/cache/00000000000000000000000000000000.narinfo",
        "/catalogs/nope/cache/nix-cache-info",
    ] {
        let a = get(&server, path, Some(&basic(&bob)));
        assert_eq!((a.status, String::from_utf8_lossy(&a.body).trim()), (404, "not found"), "{path}");
    }
    let a = get(&server, &narinfo_url, Some(&basic(&alice)));
    assert_eq!((a.status, a.header("content-type")), (200, Some("text/x-nix-narinfo")));
    assert_eq!(String::from_utf8(a.body).unwrap(), narinfo);
    assert_eq!(get(&server, "/catalogs/acme/cache/nix-cache-info", Some(&format!("Bearer {acme}"))).status, 200);
    assert_eq!(get(&server, "/catalogs/acme/cache/../packages.json", Some(&basic(&alice))).status, 404);
    assert_eq!(get(&server, "/catalogs/acme/packages.json", Some(&basic(&alice))).status, 404);

    // Real Nix: netrc `login unused password <token>`, as the Flox CLI writes it.
    let substituter = format!("{}/catalogs/acme/cache", server.url());
    let netrc = |t: &str, name: &str| {
        let f = work.path().join(name);
        std::fs::write(&f, format!("machine 127.0.0.1 login unused password {t}\n")).unwrap();
        f
    };
    let out = nix_copy(&substituter, pkg, &acme_pub, Some(&netrc(&alice, "alice.netrc")));
    assert!(out.status.success(), "nix copy with alice's token: {}", String::from_utf8_lossy(&out.stderr));
    let out = nix_copy(&substituter, pkg, &acme_pub, None);
    assert!(!out.status.success(), "nix copy without a token succeeded");
    let out = nix_copy(&substituter, pkg, &acme_pub, Some(&netrc(&bob, "bob.netrc")));
    assert!(!out.status.success(), "nix copy with an outsider's token succeeded");
    let hub_key = std::fs::read_to_string(root.path().join("cache-key.pub")).unwrap();
    let out = nix_copy(&substituter, pkg, hub_key.trim(), Some(&netrc(&alice, "alice2.netrc")));
    assert!(!out.status.success(), "nix copy without the catalog's key trusted succeeded");

    // Tokens never reach the log.
    let log = server.stop();
    for t in [&acme, &alice, &bob] {
        assert!(!log.contains(t.as_str()), "a token is in the log");
    }
    assert!(log.contains("POST /api/v1/catalog/store 200 alice"), "{log}");
    assert!(log.contains(&format!("GET {narinfo_url} 404 bob")), "{log}");
}
