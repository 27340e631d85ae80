//! Reading a `manifest.lock`'s locked package entries into the typed model: strict where a
//! wrong guess would build a different environment, lenient where Flox is lenient. (The
//! manifest itself is read in `manifest`.)
use serde::Deserialize;
use serde_json::Value;

use super::*;

/// A field holds something the lockfile model does not accept (also the manifest's reader).
pub(super) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> LockfileError {
    LockfileError::InvalidField { field: field.into(), reason: reason.into() }
}

/// What kind of JSON value this is, for error texts.
pub(super) fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn optional_strings(value: Option<&Value>, field: &str) -> Result<Option<Vec<String>>, LockfileError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| invalid(field, format!("expected a list of strings, found {}", describe(item))))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(invalid(field, format!("expected a list of strings, got {}", describe(other)))),
    }
}

/// The shape of an `outputs` object; deserialised in file order (serde_json keeps it).
fn outputs_in_order(value: &serde_json::Map<String, Value>, field: &str) -> Result<Vec<(String, String)>, String> {
    value
        .iter()
        .map(|(name, path)| {
            path.as_str()
                .map(|p| (name.clone(), p.to_string()))
                .ok_or_else(|| format!("{field}.{name} is {}, expected a store path string", describe(path)))
        })
        .collect()
}

#[derive(Deserialize)]
struct RawCatalog {
    install_id: String,
    attr_path: String,
    system: String,
    outputs: serde_json::Map<String, Value>,
    #[serde(default)]
    outputs_to_install: Option<Vec<String>>,
    priority: u64,
    group: String,
    locked_url: String,
    derivation: String,
    name: String,
    pname: String,
    version: String,
    rev: String,
    // Informational (SBOMs only): read leniently, a value of another type is ignored.
    #[serde(default)]
    description: Option<Value>,
    #[serde(default)]
    license: Option<Value>,
    // Required by Flox's schema though unused here: a catalog entry without them is malformed.
    #[allow(dead_code)]
    rev_count: i64,
    #[allow(dead_code)]
    rev_date: String,
    #[allow(dead_code)]
    scrape_date: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawFlake {
    #[serde(rename = "install_id")]
    install_id: String,
    locked_url: String,
    locked_flake_attr_path: String,
    derivation: String,
    outputs: serde_json::Map<String, Value>,
    #[allow(dead_code)]
    output_names: Vec<String>,
    #[serde(default)]
    outputs_to_install: Option<Vec<String>>,
    #[allow(dead_code)]
    package_system: String,
    system: String,
    name: String,
    #[serde(default)]
    priority: Option<u64>,
    // Informational (SBOMs only): read leniently, a value of another type is ignored.
    #[serde(default)]
    pname: Option<Value>,
    #[serde(default)]
    version: Option<Value>,
    #[serde(default)]
    description: Option<Value>,
    #[serde(default)]
    licenses: Option<Value>,
}

/// An informational string field: kept when it is a string, ignored otherwise.
fn text(value: Option<Value>) -> Option<String> {
    match value {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// An informational list of strings (`licenses`): its string items, None when it is no list.
fn texts(value: Option<Value>) -> Option<Vec<String>> {
    match value {
        Some(Value::Array(items)) => Some(items.into_iter().filter_map(|v| text(Some(v))).collect()),
        _ => None,
    }
}

#[derive(Deserialize)]
struct RawStorePath {
    install_id: String,
    store_path: String,
    system: String,
    priority: u64,
}

pub(super) fn parse_package(index: usize, entry: &Value) -> Result<LockedPackage, LockfileError> {
    let map = entry.as_object().ok_or(LockfileError::UnknownPackageKind { index })?;
    let install_id = map.get("install_id").and_then(Value::as_str).map(str::to_string);
    let fail = |kind: &'static str, reason: String| LockfileError::InvalidPackage {
        index,
        kind,
        install_id: install_id.clone(),
        reason,
    };
    // Flox tries catalog, flake, store path in turn; the distinguishing key gives a precise error.
    if map.contains_key("attr_path") {
        let raw = RawCatalog::deserialize(entry).map_err(|e| fail("catalog", e.to_string()))?;
        let outputs = outputs_in_order(&raw.outputs, "outputs").map_err(|e| fail("catalog", e))?;
        Ok(LockedPackage::Catalog(CatalogPackage {
            install_id: raw.install_id,
            attr_path: raw.attr_path,
            system: raw.system,
            outputs,
            outputs_to_install: raw.outputs_to_install,
            priority: raw.priority,
            group: raw.group,
            locked_url: raw.locked_url,
            derivation: raw.derivation,
            name: raw.name,
            pname: raw.pname,
            version: raw.version,
            rev: raw.rev,
            description: text(raw.description),
            license: text(raw.license),
        }))
    } else if map.contains_key("locked-url") {
        let raw = RawFlake::deserialize(entry).map_err(|e| fail("flake", e.to_string()))?;
        let outputs = outputs_in_order(&raw.outputs, "outputs").map_err(|e| fail("flake", e))?;
        Ok(LockedPackage::Flake(FlakePackage {
            install_id: raw.install_id,
            locked_url: raw.locked_url,
            locked_flake_attr_path: raw.locked_flake_attr_path,
            system: raw.system,
            outputs,
            // buildenv prefers a snake-case `outputs_to_install` if a flake entry has one.
            outputs_to_install: match map.get("outputs_to_install") {
                Some(Value::Array(_)) => optional_strings(map.get("outputs_to_install"), "outputs_to_install")
                    .map_err(|e| fail("flake", e.to_string()))?,
                _ => raw.outputs_to_install,
            },
            priority: raw.priority.unwrap_or(DEFAULT_PRIORITY),
            derivation: raw.derivation,
            name: raw.name,
            pname: text(raw.pname),
            version: text(raw.version),
            description: text(raw.description),
            licenses: texts(raw.licenses),
        }))
    } else if map.contains_key("store_path") {
        let raw = RawStorePath::deserialize(entry).map_err(|e| fail("store-path", e.to_string()))?;
        Ok(LockedPackage::StorePath(StorePathPackage {
            install_id: raw.install_id,
            store_path: raw.store_path,
            system: raw.system,
            priority: raw.priority,
        }))
    } else {
        Err(LockfileError::UnknownPackageKind { index })
    }
}
