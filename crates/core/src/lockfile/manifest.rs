//! The manifest inside a `manifest.lock`, read through serde types like the packages are.
//!
//! The types mirror what the node reads of Flox's manifest schema (`version`/`schema-version`,
//! `install`, `vars`, `hook`, `profile`, `options`). Their fields do not make serde fail on a
//! wrong JSON type: they keep what was there ([`Field`], [`Table`]), and [`into_model`]
//! checks them with each field's full name, so an error says `manifest.vars.N: expected a
//! string, got a number` rather than serde's position-less "invalid type". Fields whose error
//! quotes the value as written (`outputs`, `priority`, `mode`, the versions) stay JSON values.
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use super::parse::{describe, invalid};
use super::*;

/// The top level of the manifest. Keys not modelled here are collected to be checked against
/// [`KNOWN_MANIFEST_KEYS`].
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawManifest {
    #[serde(default, deserialize_with = "present")]
    version: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    schema_version: Option<Value>,
    #[serde(default)]
    install: Table<BTreeMap<String, Table<RawDescriptor>>>,
    #[serde(default)]
    vars: Table<BTreeMap<String, Field>>,
    #[serde(default)]
    hook: Table<RawHook>,
    #[serde(default)]
    profile: Table<RawProfile>,
    #[serde(default)]
    options: Table<RawOptions>,
    #[serde(flatten)]
    other: BTreeMap<String, IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", default)]
struct RawDescriptor {
    pkg_path: Field,
    flake: Field,
    store_path: Field,
    systems: Field,
    outputs: Option<Value>,
    priority: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", default)]
struct RawHook {
    on_activate: Field,
    on_deactivate: Field,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawProfile {
    common: Field,
    bash: Field,
    zsh: Field,
    fish: Field,
    tcsh: Field,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", default)]
struct RawOptions {
    systems: Field,
    cuda_detection: Field,
    activate: Table<RawActivate>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", default)]
struct RawActivate {
    add_sbin: Field,
    mode: Option<Value>,
}

/// A key that is there, even as `null` (a `"version": null` is a bad version, not a missing one).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A leaf as found: its value when it is a string, a boolean or a list, else only its kind.
/// `null` and an absent key are the same (Flox writes nulls for unset fields).
#[derive(Debug, Default)]
enum Field {
    #[default]
    Null,
    Bool(bool),
    Str(String),
    List(Vec<Field>),
    /// Any other JSON value, by its kind ("a number", "an object").
    Other(&'static str),
}

/// An optional section: a JSON object read as `T`, absent (or `null`), or something else.
#[derive(Default)]
enum Table<T> {
    #[default]
    Absent,
    Present(T),
    /// Not an object: the kind of what was there.
    Wrong(&'static str),
}

impl Field {
    fn kind(&self) -> &'static str {
        match self {
            Field::Null => "null",
            Field::Bool(_) => "a boolean",
            Field::Str(_) => "a string",
            Field::List(_) => "an array",
            Field::Other(kind) => kind,
        }
    }

    fn text(self, field: &str) -> Result<Option<String>, LockfileError> {
        match self {
            Field::Null => Ok(None),
            Field::Str(s) => Ok(Some(s)),
            other => Err(invalid(field, format!("expected a string, got {}", other.kind()))),
        }
    }

    fn flag(self, field: &str) -> Result<Option<bool>, LockfileError> {
        match self {
            Field::Null => Ok(None),
            Field::Bool(b) => Ok(Some(b)),
            other => Err(invalid(field, format!("expected true or false, got {}", other.kind()))),
        }
    }

    fn texts(self, field: &str) -> Result<Option<Vec<String>>, LockfileError> {
        match self {
            Field::Null => Ok(None),
            Field::List(items) => items
                .into_iter()
                .map(|item| match item {
                    Field::Str(s) => Ok(s),
                    other => Err(invalid(field, format!("expected a list of strings, found {}", other.kind()))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            other => Err(invalid(field, format!("expected a list of strings, got {}", other.kind()))),
        }
    }
}

impl<T> Table<T> {
    fn get(self, field: &str) -> Result<Option<T>, LockfileError> {
        match self {
            Table::Absent => Ok(None),
            Table::Present(t) => Ok(Some(t)),
            Table::Wrong(kind) => Err(invalid(field, format!("expected a table, got {kind}"))),
        }
    }
}

pub(super) fn parse_manifest(value: &Value) -> Result<Manifest, LockfileError> {
    if !value.is_object() {
        return Err(invalid("manifest", format!("expected an object, got {}", describe(value))));
    }
    let raw = RawManifest::deserialize(value).map_err(|e| invalid("manifest", e.to_string()))?;
    into_model(raw, value)
}

/// Checks every field with its full name and builds the model, in the order Flox checks.
fn into_model(raw: RawManifest, value: &Value) -> Result<Manifest, LockfileError> {
    let version = match (raw.version, raw.schema_version) {
        (Some(_), Some(_)) => {
            return Err(invalid("manifest", "it has both 'version' and 'schema-version'; accepted: exactly one"))
        }
        (Some(v), None) if v.as_u64() == Some(1) => ManifestVersion::V1,
        (Some(v), None) => return Err(LockfileError::UnsupportedManifestVersion(v.to_string())),
        (None, Some(Value::String(s))) if KNOWN_SCHEMA_VERSIONS.contains(&s.as_str()) => ManifestVersion::Schema(s),
        (None, Some(Value::String(s))) => return Err(LockfileError::UnsupportedSchemaVersion(s)),
        (None, Some(v)) => return Err(LockfileError::UnsupportedSchemaVersion(v.to_string())),
        (None, None) => return Err(LockfileError::MissingManifestVersion),
    };
    if let Some(key) = raw.other.keys().find(|k| !KNOWN_MANIFEST_KEYS.contains(&k.as_str())) {
        return Err(LockfileError::UnknownManifestKey { key: key.clone() });
    }

    let mut install = BTreeMap::new();
    for (id, descriptor) in raw.install.get("manifest.install")?.unwrap_or_default() {
        let field = format!("manifest.install.{id}");
        let descriptor = match descriptor {
            Table::Absent => return Err(invalid(&field, "expected a table, got null")),
            other => other.get(&field)?.unwrap_or_default(),
        };
        install.insert(id, into_descriptor(descriptor, &field)?);
    }

    let mut vars = BTreeMap::new();
    for (name, value) in raw.vars.get("manifest.vars")?.unwrap_or_default() {
        match value {
            Field::Str(s) => vars.insert(name, s),
            other => {
                return Err(invalid(
                    format!("manifest.vars.{name}"),
                    format!("expected a string, got {}", other.kind()),
                ))
            }
        };
    }

    let hook = match raw.hook.get("manifest.hook")? {
        Some(h) => Hook {
            on_activate: h.on_activate.text("manifest.hook.on-activate")?,
            on_deactivate: h.on_deactivate.text("manifest.hook.on-deactivate")?,
        },
        None => Hook::default(),
    };

    let profile = match raw.profile.get("manifest.profile")? {
        Some(p) => Profile {
            common: p.common.text("manifest.profile.common")?,
            bash: p.bash.text("manifest.profile.bash")?,
            zsh: p.zsh.text("manifest.profile.zsh")?,
            fish: p.fish.text("manifest.profile.fish")?,
            tcsh: p.tcsh.text("manifest.profile.tcsh")?,
        },
        None => Profile::default(),
    };

    let options = match raw.options.get("manifest.options")? {
        Some(o) => into_options(o)?,
        None => Options::default(),
    };

    Ok(Manifest { version, install, vars, hook, profile, options, raw: value.clone() })
}

fn into_options(o: RawOptions) -> Result<Options, LockfileError> {
    let systems = o.systems.texts("manifest.options.systems")?;
    let cuda_detection = o.cuda_detection.flag("manifest.options.cuda-detection")?;
    let (add_sbin, activate_mode) = match o.activate.get("manifest.options.activate")? {
        None => (None, None),
        Some(activate) => {
            let add_sbin = activate.add_sbin.flag("manifest.options.activate.add-sbin")?;
            let mode = match activate.mode {
                None | Some(Value::Null) => None,
                Some(Value::String(mode)) if mode == "run" || mode == "dev" => Some(mode),
                Some(other) => {
                    return Err(invalid(
                        "manifest.options.activate.mode",
                        format!("got {other}; accepted: \"run\" or \"dev\""),
                    ))
                }
            };
            (add_sbin, mode)
        }
    };
    Ok(Options { systems, activate_mode, cuda_detection, add_sbin })
}

fn into_descriptor(d: RawDescriptor, field: &str) -> Result<InstallDescriptor, LockfileError> {
    let source = if let Some(pkg_path) = d.pkg_path.text(&format!("{field}.pkg-path"))? {
        DescriptorSource::Catalog { pkg_path }
    } else if let Some(flake) = d.flake.text(&format!("{field}.flake"))? {
        DescriptorSource::Flake { flake }
    } else if let Some(store_path) = d.store_path.text(&format!("{field}.store-path"))? {
        DescriptorSource::StorePath { store_path }
    } else {
        return Err(invalid(field, "it has none of 'pkg-path', 'flake' or 'store-path'"));
    };
    let systems = d.systems.texts(&format!("{field}.systems"))?;
    let outputs = match d.outputs {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "all" => Some(DescriptorOutputs::All),
        Some(Value::Array(items)) => Some(DescriptorOutputs::List(
            items
                .iter()
                .map(|item| {
                    item.as_str().map(str::to_string).ok_or_else(|| {
                        invalid(
                            format!("{field}.outputs"),
                            format!("expected a list of strings, found {}", describe(item)),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        )),
        Some(other) => {
            return Err(invalid(
                format!("{field}.outputs"),
                format!("got {other}; outputs must either be 'all' or a list of output names"),
            ))
        }
    };
    let priority =
        match d.priority {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                invalid(format!("{field}.priority"), format!("got {v}; expected an unsigned integer"))
            })?),
        };
    Ok(InstallDescriptor { source, systems, outputs, priority })
}

// ---- Deserialize for the leaves: never fails on a type, only records it ----

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Field, E> {
        Ok(Field::Null)
    }
    fn visit_none<E>(self) -> Result<Field, E> {
        Ok(Field::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Field, D::Error> {
        Field::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Field, E> {
        Ok(Field::Bool(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Field, E> {
        Ok(Field::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Field, E> {
        Ok(Field::Str(v))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Field, E> {
        Ok(Field::Other("a number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Field, E> {
        Ok(Field::Other("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Field, E> {
        Ok(Field::Other("a number"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Field>()? {
            items.push(item);
        }
        Ok(Field::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Field::Other("an object"))
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Field, D::Error> {
        d.deserialize_any(FieldVisitor)
    }
}

struct TableVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for TableVisitor<T> {
    type Value = Table<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a table")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Table<T>, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Table::Present)
    }
    fn visit_unit<E>(self) -> Result<Table<T>, E> {
        Ok(Table::Absent)
    }
    fn visit_none<E>(self) -> Result<Table<T>, E> {
        Ok(Table::Absent)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Table<T>, D::Error> {
        Table::deserialize(d)
    }
    // Anything else: only its kind is kept (as `Field` reads it), for the error.
    fn visit_bool<E>(self, _: bool) -> Result<Table<T>, E> {
        Ok(Table::Wrong("a boolean"))
    }
    fn visit_str<E>(self, _: &str) -> Result<Table<T>, E> {
        Ok(Table::Wrong("a string"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Table<T>, E> {
        Ok(Table::Wrong("a number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Table<T>, E> {
        Ok(Table::Wrong("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Table<T>, E> {
        Ok(Table::Wrong("a number"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Table<T>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Table::Wrong("an array"))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Table<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Table<T>, D::Error> {
        d.deserialize_any(TableVisitor(PhantomData))
    }
}
