//! What the hub derives from a `manifest.lock` besides what `imageless_core::lockfile` reads:
//! a `manifest.toml` rendered from the lock's `manifest` object.
use serde_json::Value;

/// Renders the lock's `manifest` object (`Lockfile::manifest.raw`) as TOML (nulls dropped:
/// TOML has none). None when it is not an object or does not fit TOML.
pub fn render_manifest_toml(manifest: &Value) -> Option<String> {
    let manifest = strip_nulls(manifest.clone());
    if !manifest.is_object() {
        return None;
    }
    toml::to_string(&manifest).ok()
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, strip_nulls(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().filter(|v| !v.is_null()).map(strip_nulls).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_fixture_manifest() {
        let manifest = serde_json::json!({
            "schema-version": "1.14.0",
            "install": {"bash": {"pkg-path": "bashNonInteractive", "outputs": "all"}},
            "options": {}
        });
        let toml = render_manifest_toml(&manifest).unwrap();
        let back: toml::Table = toml.parse().unwrap();
        assert_eq!(back["schema-version"].as_str(), Some("1.14.0"));
        assert_eq!(back["install"]["bash"]["pkg-path"].as_str(), Some("bashNonInteractive"));
        let with_null = serde_json::json!({"version": 1, "hook": null, "vars": {"A": "b"}});
        assert_eq!(render_manifest_toml(&with_null).unwrap(), "version = 1\n\n[vars]\nA = \"b\"\n");
    }
}
