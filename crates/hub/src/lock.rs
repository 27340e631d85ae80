//! What the hub needs from a `manifest.lock`: the store paths for one system, and a
//! `manifest.toml` rendered from the lock's `manifest` object.
use std::collections::BTreeSet;

use serde_json::Value;

/// The Nix system of this machine, as lock entries name it.
pub fn host_system() -> Result<&'static str, String> {
    match std::env::consts::ARCH {
        "x86_64" => Ok("x86_64-linux"),
        "aarch64" => Ok("aarch64-linux"),
        other => Err(format!(
            "this machine's architecture {other:?} is not supported; accepted: x86_64, aarch64"
        )),
    }
}

/// A store path as a lock may carry it: `/nix/store/<32 base32 chars>-<name>`.
pub fn is_store_path(p: &str) -> bool {
    let Some(rest) = p.strip_prefix("/nix/store/") else {
        return false;
    };
    let (hash, name) = rest.split_at(rest.len().min(32));
    hash.len() == 32
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b.is_ascii_lowercase() && !b"eotu".contains(&b)))
        && name.len() > 1
        && name.starts_with('-')
        && name[1..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b))
}

/// Store paths of every package entry locked for `system`: catalog and flake entries'
/// `outputs` values, store-path entries' `store_path`.
pub fn store_paths_for_system(lock: &Value, system: &str) -> Result<BTreeSet<String>, String> {
    match lock.get("lockfile-version").and_then(Value::as_u64) {
        Some(1) => {}
        other => {
            return Err(format!(
                "lockfile-version {other:?} is not supported; accepted: 1"
            ))
        }
    }
    let packages = lock
        .get("packages")
        .and_then(Value::as_array)
        .ok_or("`packages` is missing or not an array")?;
    let mut paths = BTreeSet::new();
    for (i, pkg) in packages.iter().enumerate() {
        if pkg.get("system").and_then(Value::as_str) != Some(system) {
            continue;
        }
        let mut found = Vec::new();
        if let Some(outputs) = pkg.get("outputs").and_then(Value::as_object) {
            found.extend(outputs.values().filter_map(Value::as_str));
        }
        if let Some(sp) = pkg.get("store_path").and_then(Value::as_str) {
            found.push(sp);
        }
        if found.is_empty() {
            return Err(format!(
                "packages[{i}] has neither `outputs` nor `store_path`"
            ));
        }
        for p in found {
            if !is_store_path(p) {
                return Err(format!("packages[{i}]: {p:?} is not a store path; accepted: /nix/store/<32-char hash>-<name>"));
            }
            paths.insert(p.to_owned());
        }
    }
    Ok(paths)
}

/// Renders the lock's `manifest` object as TOML (nulls dropped: TOML has none). None when the
/// lock has no manifest object or it does not fit TOML.
pub fn render_manifest_toml(lock: &Value) -> Option<String> {
    let manifest = strip_nulls(lock.get("manifest")?.clone());
    if !manifest.is_object() {
        return None;
    }
    toml::to_string(&manifest).ok()
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.into_iter()
                .filter(|v| !v.is_null())
                .map(strip_nulls)
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello-2.12";
    const B: &str = "/nix/store/9gm5a7hzhyzx979l4r3plzyq36544cyq-bash-5.3p15";

    #[test]
    fn collects_paths_of_all_entry_kinds_for_one_system() {
        let lock = serde_json::json!({
            "lockfile-version": 1,
            "manifest": {"version": 1},
            "packages": [
                {"attr_path": "hello", "system": "x86_64-linux", "outputs": {"out": A}},
                {"locked-url": "github:x", "system": "x86_64-linux", "outputs": {"out": B}},
                {"install_id": "t", "system": "x86_64-linux", "store_path": A, "priority": 5},
                {"attr_path": "hello", "system": "aarch64-linux", "outputs": {"out": "/nix/store/bad"}}
            ]
        });
        let paths = store_paths_for_system(&lock, "x86_64-linux").unwrap();
        assert_eq!(
            paths.into_iter().collect::<Vec<_>>(),
            vec![A.to_string(), B.to_string()]
        );
        assert!(store_paths_for_system(&lock, "aarch64-linux")
            .unwrap_err()
            .contains("/nix/store/bad"));
    }

    #[test]
    fn refuses_other_lock_versions_and_bad_paths() {
        assert!(store_paths_for_system(
            &serde_json::json!({"lockfile-version": 0, "packages": []}),
            "x"
        )
        .is_err());
        assert!(!is_store_path(
            "/nix/store/../../etc/passwd-xxxxxxxxxxxxxxxxxxxxxxxxxx"
        ));
        assert!(!is_store_path(
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz"
        ));
        assert!(!is_store_path(
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-a/b"
        ));
        assert!(is_store_path(A));
    }

    #[test]
    fn renders_fixture_manifest() {
        let lock = serde_json::json!({"manifest": {
            "schema-version": "1.14.0",
            "install": {"bash": {"pkg-path": "bashNonInteractive", "outputs": "all"}},
            "options": {}
        }});
        let toml = render_manifest_toml(&lock).unwrap();
        let back: toml::Table = toml.parse().unwrap();
        assert_eq!(back["schema-version"].as_str(), Some("1.14.0"));
        assert_eq!(
            back["install"]["bash"]["pkg-path"].as_str(),
            Some("bashNonInteractive")
        );
        let with_null =
            serde_json::json!({"manifest": {"version": 1, "hook": null, "vars": {"A": "b"}}});
        assert_eq!(
            render_manifest_toml(&with_null).unwrap(),
            "version = 1\n\n[vars]\nA = \"b\"\n"
        );
    }
}
