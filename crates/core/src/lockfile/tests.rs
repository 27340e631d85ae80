//! Lockfile parsing and selection, on hand-made locks (the real ones are in tests/fixtures.rs).
use super::*;
use crate::store_path::StorePath;
use crate::system::System;
use serde_json::json;

const H1: &str = "/nix/store/11111111111111111111111111111111-pkg-1.0";
const H2: &str = "/nix/store/22222222222222222222222222222222-pkg-1.0-man";
const H3: &str = "/nix/store/33333333333333333333333333333333-pkg-1.0-stubs";

fn catalog(id: &str, system: &str, outputs: Value, oti: Value, priority: u64) -> Value {
    json!({
        "attr_path": id, "derivation": "/nix/store/00000000000000000000000000000000-x.drv",
        "install_id": id, "locked_url": "https://github.com/flox/nixpkgs?rev=abc",
        "name": "pkg-1.0", "pname": "pkg", "rev": "abc", "rev_count": 1,
        "rev_date": "2025-01-01T00:00:00Z", "scrape_date": "2025-01-01T00:00:00Z",
        "version": "1.0", "outputs": outputs, "outputs_to_install": oti,
        "system": system, "group": "toplevel", "priority": priority,
        "some_future_key": {"tolerated": true}
    })
}

fn lockfile(manifest: Value, packages: Value) -> Result<Lockfile, LockfileError> {
    let doc = json!({"lockfile-version": 1, "manifest": manifest, "packages": packages});
    Lockfile::parse(doc.to_string().as_bytes())
}

fn schema_manifest(install: Value) -> Value {
    json!({"schema-version": "1.15.0", "install": install, "options": {}})
}

#[test]
fn lockfile_version_must_be_one() {
    let no_version = json!({"manifest": {}, "packages": []}).to_string();
    assert_eq!(
        Lockfile::parse(no_version.as_bytes()).unwrap_err().to_string(),
        "lockfile-version is missing; this node reads lockfile-version 1"
    );
    for (version, shown) in [(json!(2), "2"), (json!("1"), "\"1\""), (json!(0), "0")] {
        let doc = json!({"lockfile-version": version, "manifest": {}, "packages": []}).to_string();
        assert_eq!(
            Lockfile::parse(doc.as_bytes()).unwrap_err().to_string(),
            format!("lockfile-version {shown} is not supported; this node reads lockfile-version 1")
        );
    }
    assert!(matches!(Lockfile::parse(b"[]").unwrap_err(), LockfileError::NotAnObject));
    assert!(matches!(Lockfile::parse(b"{").unwrap_err(), LockfileError::InvalidJson(_)));
}

#[test]
fn manifest_versions_are_checked() {
    for v in KNOWN_SCHEMA_VERSIONS {
        let l = lockfile(json!({"schema-version": v}), json!([])).unwrap();
        assert_eq!(l.manifest.version, ManifestVersion::Schema(v.to_string()));
    }
    let err = lockfile(json!({"schema-version": "1.16.0"}), json!([])).unwrap_err();
    assert_eq!(err, LockfileError::UnsupportedSchemaVersion("1.16.0".into()));
    assert!(err.to_string().contains("accepted: version 1 or schema-version 1.10.0, 1.11.0"));
    assert_eq!(lockfile(json!({}), json!([])).unwrap_err(), LockfileError::MissingManifestVersion);
    let err = lockfile(json!({"version": 1, "teleport": {}}), json!([])).unwrap_err();
    assert_eq!(err, LockfileError::UnknownManifestKey { key: "teleport".into() });
    assert!(lockfile(json!({"version": 1, "schema-version": "1.10.0"}), json!([])).is_err());
}

#[test]
fn package_kinds_and_their_errors() {
    let manifest = json!({"version": 1});
    let err = lockfile(manifest.clone(), json!([{"install_id": "x", "system": "x86_64-linux"}])).unwrap_err();
    assert_eq!(err, LockfileError::UnknownPackageKind { index: 0 });
    let mut entry = catalog("hello", "x86_64-linux", json!({"out": H1}), json!(["out"]), 5);
    entry.as_object_mut().unwrap().remove("rev");
    let err = lockfile(manifest.clone(), json!([entry])).unwrap_err().to_string();
    assert!(
        err.starts_with("packages[0] (catalog entry 'hello') in manifest.lock is invalid: missing field `rev`"),
        "{err}"
    );
    let flake = json!({"install_id": "f", "locked-url": "github:a/b", "locked-flake-attr-path": "p",
            "derivation": "d", "outputs": {"out": H1}, "output-names": ["out"], "package-system": "x86_64-linux",
            "system": "x86_64-linux", "name": "f", "priority": null});
    let l = lockfile(json!({"version": 1, "install": {"f": {"flake": "github:a/b"}}}), json!([flake])).unwrap();
    assert_eq!(l.packages[0].priority(), DEFAULT_PRIORITY);
    let sp = json!({"install_id": "s", "store_path": H1, "system": "x86_64-linux"});
    let err = lockfile(manifest, json!([sp])).unwrap_err().to_string();
    assert!(err.contains("store-path entry 's'") && err.contains("priority"), "{err}");
}

#[test]
fn legacy_manifest_skips_stubs_and_ranks_other_outputs() {
    let l = lockfile(
        json!({"version": 1, "install": {"a": {"pkg-path": "a"}, "b": {"pkg-path": "b"}}}),
        json!([
            catalog("a", "x86_64-linux", json!({"man": H2, "stubs": H3, "out": H1}), json!(["out"]), 2),
            catalog("b", "x86_64-linux", json!({"out": H1, "man": H2}), Value::Null, 3),
            catalog("a", "aarch64-linux", json!({"out": H1}), json!(["out"]), 2),
        ]),
    )
    .unwrap();
    let got: Vec<_> = l
        .select(System::X86_64Linux)
        .unwrap()
        .outputs
        .into_iter()
        .map(|o| (o.install_id, o.output, o.priority))
        .collect();
    assert_eq!(
        got,
        [
            ("a".to_string(), "out".to_string(), 2),
            ("a".to_string(), "man".to_string(), 2000),
            // Without outputs_to_install nothing is "to install": all ranked behind.
            ("b".to_string(), "out".to_string(), 3001),
            ("b".to_string(), "man".to_string(), 3002),
        ]
    );
}

#[test]
fn schema_manifest_output_selection_and_errors() {
    let outputs = json!({"out": H1, "man": H2, "stubs": H3});
    let select = |descriptor: Value, oti: Value| {
        lockfile(
            schema_manifest(json!({"p": descriptor})),
            json!([catalog("p", "x86_64-linux", outputs.clone(), oti, 5)]),
        )
        .unwrap()
        .select(System::X86_64Linux)
        .map(|s| s.outputs.into_iter().map(|o| o.output).collect::<Vec<_>>())
    };
    // "all" keeps even `stubs` (only legacy manifests drop it), in lock order.
    assert_eq!(select(json!({"pkg-path": "p", "outputs": "all"}), json!(["out"])).unwrap(), ["out", "man", "stubs"]);
    assert_eq!(select(json!({"pkg-path": "p", "outputs": ["man", "out"]}), Value::Null).unwrap(), ["man", "out"]);
    // Default: outputs_to_install, duplicates linked once.
    assert_eq!(select(json!({"pkg-path": "p"}), json!(["out", "man", "out"])).unwrap(), ["out", "man"]);
    // Neither: nothing, as builder.pl.
    assert!(select(json!({"pkg-path": "p"}), Value::Null).unwrap().is_empty());
    let err = select(json!({"pkg-path": "p", "outputs": ["out", "lib"]}), Value::Null).unwrap_err();
    assert_eq!(err.to_string(), "p has no output named 'lib'");
    let err = lockfile(schema_manifest(json!({"p": {"pkg-path": "p", "outputs": "some"}})), json!([]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("manifest.install.p.outputs") && err.contains("'all' or a list"), "{err}");
}

#[test]
fn missing_install_id_and_bad_store_paths_fail_selection() {
    let l = lockfile(
        schema_manifest(json!({})),
        json!([catalog("ghost", "x86_64-linux", json!({"out": H1}), json!(["out"]), 5)]),
    )
    .unwrap();
    assert_eq!(
        l.select(System::X86_64Linux).unwrap_err().to_string(),
        "manifest does not contain a package with install ID 'ghost'"
    );
    // Store-path entries need no [install] entry (buildenv links them as they are), but
    // their path must be a valid store path.
    let sp = |path: &str| {
        lockfile(
            schema_manifest(json!({})),
            json!([{"install_id": "s", "store_path": path, "system": "x86_64-linux", "priority": 4}]),
        )
        .unwrap()
        .select(System::X86_64Linux)
    };
    let ok = sp(H1).unwrap();
    assert_eq!(ok.outputs[0].output, STORE_PATH_OUTPUT);
    assert_eq!(ok.outputs[0].priority, 4);
    let err = sp("/nix/store/short/../../etc").unwrap_err().to_string();
    assert!(err.starts_with("package 's' output 'out': invalid store path '/nix/store/short/../../etc'"), "{err}");
    // Store paths of other systems' entries are not validated for this one.
    let l = lockfile(
        json!({"version": 1, "install": {"p": {"pkg-path": "p"}}}),
        json!([
            catalog("p", "aarch64-darwin", json!({"out": "bogus"}), json!(["out"]), 5),
            catalog("p", "x86_64-linux", json!({"out": H1}), json!(["out"]), 5),
        ]),
    )
    .unwrap();
    assert_eq!(l.select(System::X86_64Linux).unwrap().outputs.len(), 1);
    assert!(l.select(System::Aarch64Darwin).is_err());
}

#[test]
fn locked_store_paths_are_every_output_of_the_system() {
    // options.systems excludes x86_64-linux (select refuses it) and `man` is not selected:
    // the cache still needs every locked output.
    let l = lockfile(
        json!({"schema-version": "1.15.0", "install": {"p": {"pkg-path": "p"}, "s": {"store-path": H3}},
                   "options": {"systems": ["aarch64-darwin"]}}),
        json!([
            catalog("p", "x86_64-linux", json!({"out": H1, "man": H2}), json!(["out"]), 5),
            {"install_id": "s", "store_path": H3, "system": "x86_64-linux", "priority": 5},
            {"install_id": "s", "store_path": H1, "system": "x86_64-linux", "priority": 6},
            catalog("p", "aarch64-darwin", json!({"out": "bogus"}), json!(["out"]), 5),
        ]),
    )
    .unwrap();
    assert!(l.select(System::X86_64Linux).is_err());
    let paths = l.locked_store_paths(System::X86_64Linux).unwrap();
    assert_eq!(paths.iter().map(StorePath::as_str).collect::<Vec<_>>(), vec![H1, H2, H3]);
    assert!(l.locked_store_paths(System::Aarch64Linux).unwrap().is_empty());
    let err = l.locked_store_paths(System::Aarch64Darwin).unwrap_err().to_string();
    assert!(err.starts_with("package 'p' output 'out': invalid store path 'bogus'"), "{err}");
}

#[test]
fn options_mode_cuda_and_reserved_vars() {
    let l = lockfile(
        json!({"schema-version": "1.14.0", "options": {"activate": {"mode": "run"}, "cuda-detection": false},
                   "vars": {"A": "1"}}),
        json!([]),
    )
    .unwrap();
    assert_eq!(l.activate_mode(), Some("run"));
    assert!(!l.cuda_detection());
    assert!(!l.add_sbin(), "add-sbin defaults to false");
    let l =
        lockfile(json!({"schema-version": "1.14.0", "options": {"activate": {"add-sbin": true}}}), json!([])).unwrap();
    assert!(l.add_sbin());
    assert_eq!(l.activate_mode(), None);
    let err = lockfile(json!({"version": 1, "options": {"activate": {"add-sbin": "yes"}}}), json!([])).unwrap_err();
    assert!(err.to_string().contains("manifest.options.activate.add-sbin"), "{err}");
    let err = lockfile(json!({"version": 1, "options": {"activate": {"mode": "prod"}}}), json!([])).unwrap_err();
    assert!(
        err.to_string().contains("manifest.options.activate.mode") && err.to_string().contains("\"run\" or \"dev\"")
    );
    let l = lockfile(json!({"version": 1, "vars": {"BASH_ENVTRACE_X": "1"}}), json!([])).unwrap();
    assert_eq!(l.vars_in_order().unwrap_err(), LockfileError::ReservedVar("BASH_ENVTRACE_X".into()));
    let err = lockfile(json!({"version": 1, "vars": {"N": 3}}), json!([])).unwrap_err();
    assert!(err.to_string().contains("manifest.vars.N"));
}

#[test]
fn hooks_are_outdented_on_the_way_out() {
    let l = lockfile(
        json!({"schema-version": "1.15.0", "hook": {"on-activate": "  a\n    b\n", "on-deactivate": "\tx"},
                   "profile": {"bash": "  echo hi\n"}}),
        json!([]),
    )
    .unwrap();
    assert_eq!(l.hook_on_activate().as_deref(), Some("a\n  b\n"));
    assert_eq!(l.hook_on_deactivate().as_deref(), Some("\tx"));
    assert_eq!(l.profile().bash.as_deref(), Some("echo hi\n"));
    assert_eq!(l.manifest.hook.on_activate.as_deref(), Some("  a\n    b\n"), "raw text kept");
}

/// Each wrong manifest field is named in full with what was found, in the texts the
/// hand-written reader gave before the manifest went through serde types.
#[test]
fn manifest_field_errors_name_the_field_and_what_was_there() {
    let cases = [
        (json!({"version": 1, "vars": {"N": 1}}), "'manifest.vars.N' in manifest.lock is invalid: expected a string, got a number"),
        (json!({"version": 1, "vars": ["A"]}), "'manifest.vars' in manifest.lock is invalid: expected a table, got an array"),
        (json!({"version": 1, "hook": {"on-activate": true}}), "'manifest.hook.on-activate' in manifest.lock is invalid: expected a string, got a boolean"),
        (json!({"version": 1, "profile": {"zsh": {"a": 1}}}), "'manifest.profile.zsh' in manifest.lock is invalid: expected a string, got an object"),
        (json!({"version": 1, "options": {"systems": ["a", 2]}}), "'manifest.options.systems' in manifest.lock is invalid: expected a list of strings, found a number"),
        (json!({"version": 1, "options": {"systems": "a"}}), "'manifest.options.systems' in manifest.lock is invalid: expected a list of strings, got a string"),
        (json!({"version": 1, "options": {"cuda-detection": "yes"}}), "'manifest.options.cuda-detection' in manifest.lock is invalid: expected true or false, got a string"),
        (json!({"version": 1, "options": {"activate": 1}}), "'manifest.options.activate' in manifest.lock is invalid: expected a table, got a number"),
        (json!({"version": 1, "options": {"activate": {"mode": "prod"}}}), "'manifest.options.activate.mode' in manifest.lock is invalid: got \"prod\"; accepted: \"run\" or \"dev\""),
        (json!({"version": 1, "install": {"p": null}}), "'manifest.install.p' in manifest.lock is invalid: expected a table, got null"),
        (json!({"version": 1, "install": {"p": {"systems": []}}}), "'manifest.install.p' in manifest.lock is invalid: it has none of 'pkg-path', 'flake' or 'store-path'"),
        (json!({"version": 1, "install": {"p": {"pkg-path": 1}}}), "'manifest.install.p.pkg-path' in manifest.lock is invalid: expected a string, got a number"),
        (json!({"version": 1, "install": {"p": {"pkg-path": "x", "priority": -1}}}), "'manifest.install.p.priority' in manifest.lock is invalid: got -1; expected an unsigned integer"),
        (json!({"version": 1, "install": {"p": {"pkg-path": "x", "outputs": ["out", 1]}}}), "'manifest.install.p.outputs' in manifest.lock is invalid: expected a list of strings, found a number"),
        (json!({"version": 1, "install": {"p": {"pkg-path": "x", "outputs": "some"}}}), "'manifest.install.p.outputs' in manifest.lock is invalid: got \"some\"; outputs must either be 'all' or a list of output names"),
        (json!([]), "'manifest' in manifest.lock is invalid: expected an object, got an array"),
        (json!({"version": 1, "schema-version": "1.15.0"}), "'manifest' in manifest.lock is invalid: it has both 'version' and 'schema-version'; accepted: exactly one"),
    ];
    for (manifest, expected) in cases {
        let err = lockfile(manifest.clone(), json!([])).unwrap_err().to_string();
        assert_eq!(err, expected, "{manifest}");
    }
    assert_eq!(
        lockfile(json!({"version": null}), json!([])).unwrap_err(),
        LockfileError::UnsupportedManifestVersion("null".into()),
        "a null version is a bad version, not a missing one"
    );
    assert_eq!(lockfile(json!({}), json!([])).unwrap_err(), LockfileError::MissingManifestVersion);
    assert_eq!(
        lockfile(json!({"schema-version": 1}), json!([])).unwrap_err(),
        LockfileError::UnsupportedSchemaVersion("1".into())
    );
    assert_eq!(
        lockfile(json!({"version": 1, "services": {}, "newer": {}}), json!([])).unwrap_err(),
        LockfileError::UnknownManifestKey { key: "newer".into() }
    );
}
