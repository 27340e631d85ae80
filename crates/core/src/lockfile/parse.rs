//! Reading a `manifest.lock`'s JSON into the typed model: strict where a wrong guess would
//! build a different environment, lenient where Flox is lenient.
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::*;

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> LockfileError {
    LockfileError::InvalidField { field: field.into(), reason: reason.into() }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An optional object section; `null` counts as absent (Flox writes nulls for empty sections).
fn section<'a>(
    manifest: &'a serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<&'a serde_json::Map<String, Value>>, LockfileError> {
    match manifest.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(other) => Err(invalid(format!("manifest.{key}"), format!("expected a table, got {}", describe(other)))),
    }
}

fn optional_string(
    map: &serde_json::Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<String>, LockfileError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(format!("{field}.{key}"), format!("expected a string, got {}", describe(other)))),
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

pub(super) fn parse_manifest(value: &Value) -> Result<Manifest, LockfileError> {
    let map =
        value.as_object().ok_or_else(|| invalid("manifest", format!("expected an object, got {}", describe(value))))?;

    let version = match (map.get("version"), map.get("schema-version")) {
        (Some(_), Some(_)) => {
            return Err(invalid("manifest", "it has both 'version' and 'schema-version'; accepted: exactly one"))
        }
        (Some(v), None) if v.as_u64() == Some(1) => ManifestVersion::V1,
        (Some(v), None) => return Err(LockfileError::UnsupportedManifestVersion(v.to_string())),
        (None, Some(Value::String(s))) if KNOWN_SCHEMA_VERSIONS.contains(&s.as_str()) => {
            ManifestVersion::Schema(s.clone())
        }
        (None, Some(Value::String(s))) => return Err(LockfileError::UnsupportedSchemaVersion(s.clone())),
        (None, Some(v)) => return Err(LockfileError::UnsupportedSchemaVersion(v.to_string())),
        (None, None) => return Err(LockfileError::MissingManifestVersion),
    };
    if let Some(key) = map.keys().find(|k| !KNOWN_MANIFEST_KEYS.contains(&k.as_str())) {
        return Err(LockfileError::UnknownManifestKey { key: key.clone() });
    }

    let mut install = BTreeMap::new();
    if let Some(entries) = section(map, "install")? {
        for (id, descriptor) in entries {
            install.insert(id.clone(), parse_descriptor(id, descriptor)?);
        }
    }

    let mut vars = BTreeMap::new();
    if let Some(entries) = section(map, "vars")? {
        for (name, value) in entries {
            let value = value.as_str().ok_or_else(|| {
                invalid(format!("manifest.vars.{name}"), format!("expected a string, got {}", describe(value)))
            })?;
            vars.insert(name.clone(), value.to_string());
        }
    }

    let hook = match section(map, "hook")? {
        Some(h) => Hook {
            on_activate: optional_string(h, "on-activate", "manifest.hook")?,
            on_deactivate: optional_string(h, "on-deactivate", "manifest.hook")?,
        },
        None => Hook::default(),
    };

    let profile = match section(map, "profile")? {
        Some(p) => Profile {
            common: optional_string(p, "common", "manifest.profile")?,
            bash: optional_string(p, "bash", "manifest.profile")?,
            zsh: optional_string(p, "zsh", "manifest.profile")?,
            fish: optional_string(p, "fish", "manifest.profile")?,
            tcsh: optional_string(p, "tcsh", "manifest.profile")?,
        },
        None => Profile::default(),
    };

    let options = match section(map, "options")? {
        Some(o) => parse_options(o)?,
        None => Options::default(),
    };

    Ok(Manifest { version, install, vars, hook, profile, options, raw: value.clone() })
}

fn parse_options(o: &serde_json::Map<String, Value>) -> Result<Options, LockfileError> {
    let systems = optional_strings(o.get("systems"), "manifest.options.systems")?;
    let cuda_detection = optional_bool(o.get("cuda-detection"), "manifest.options.cuda-detection")?;
    let add_sbin = match o.get("activate") {
        Some(Value::Object(activate)) => optional_bool(activate.get("add-sbin"), "manifest.options.activate.add-sbin")?,
        _ => None,
    };
    let activate_mode = match o.get("activate") {
        None | Some(Value::Null) => None,
        Some(Value::Object(activate)) => match activate.get("mode") {
            None | Some(Value::Null) => None,
            Some(Value::String(mode)) if mode == "run" || mode == "dev" => Some(mode.clone()),
            Some(other) => {
                return Err(invalid(
                    "manifest.options.activate.mode",
                    format!("got {other}; accepted: \"run\" or \"dev\""),
                ))
            }
        },
        Some(other) => {
            return Err(invalid("manifest.options.activate", format!("expected a table, got {}", describe(other))))
        }
    };
    Ok(Options { systems, activate_mode, cuda_detection, add_sbin })
}

fn optional_bool(value: Option<&Value>, field: &str) -> Result<Option<bool>, LockfileError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(invalid(field, format!("expected true or false, got {}", describe(other)))),
    }
}

fn parse_descriptor(id: &str, value: &Value) -> Result<InstallDescriptor, LockfileError> {
    let field = format!("manifest.install.{id}");
    let map = value.as_object().ok_or_else(|| invalid(&field, format!("expected a table, got {}", describe(value))))?;
    let text = |key: &str| optional_string(map, key, &field);
    let source = if let Some(pkg_path) = text("pkg-path")? {
        DescriptorSource::Catalog { pkg_path }
    } else if let Some(flake) = text("flake")? {
        DescriptorSource::Flake { flake }
    } else if let Some(store_path) = text("store-path")? {
        DescriptorSource::StorePath { store_path }
    } else {
        return Err(invalid(&field, "it has none of 'pkg-path', 'flake' or 'store-path'"));
    };
    let systems = optional_strings(map.get("systems"), &format!("{field}.systems"))?;
    let outputs = match map.get("outputs") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "all" => Some(DescriptorOutputs::All),
        Some(Value::Array(_)) => Some(DescriptorOutputs::List(
            optional_strings(map.get("outputs"), &format!("{field}.outputs"))?.unwrap_or_default(),
        )),
        Some(other) => {
            return Err(invalid(
                format!("{field}.outputs"),
                format!("got {other}; outputs must either be 'all' or a list of output names"),
            ))
        }
    };
    let priority =
        match map.get("priority") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                invalid(format!("{field}.priority"), format!("got {v}; expected an unsigned integer"))
            })?),
        };
    Ok(InstallDescriptor { source, systems, outputs, priority })
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
