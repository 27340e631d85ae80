//! `manifest.lock` (lockfile-version 1): parse it and decide what to link for one system.
//!
//! Reference §3 and §4.1/§4.8. Parsing is as strict as the Flox CLI where a wrong guess would
//! build a different environment (lockfile version, manifest version, output selection) and
//! as lenient where Flox is lenient (unknown keys inside package entries, the `compose`
//! section, which a runtime can ignore because `manifest` is already the merged manifest).
//!
//! [`Lockfile::select`] reproduces the CLI's pre-build checks (`options.systems`, implicitly
//! locked systems) and buildenv's output selection (`builder.pl`, `packagesToPkgs`), so that
//! the node links the same store paths at the same priorities as `flox activate` would.

mod outdent;
mod vars_order;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use outdent::outdent_text;
pub use vars_order::VarsCycle;

use crate::store_path::{StorePath, StorePathError};
use crate::system::System;

/// The manifest `schema-version`s this node understands (Flox's `KnownSchemaVersion`).
pub const KNOWN_SCHEMA_VERSIONS: [&str; 6] = ["1.10.0", "1.11.0", "1.12.0", "1.13.0", "1.14.0", "1.15.0"];

/// Priority of a package whose manifest sets none (Flox's `DEFAULT_PRIORITY`).
pub const DEFAULT_PRIORITY: u64 = 5;

/// Output name reported for store-path entries, which are one store path without outputs.
pub const STORE_PATH_OUTPUT: &str = "out";

/// Top-level manifest keys known to the manifest schemas up to 1.15.0. Flox's manifest
/// structs deny unknown fields; refusing here keeps a newer CLI's features from being
/// silently ignored on the node.
const KNOWN_MANIFEST_KEYS: [&str; 13] = [
    "version",
    "schema-version",
    "minimum-cli-version",
    "install",
    "vars",
    "hook",
    "profile",
    "options",
    "services",
    "build",
    "containerize",
    "include",
    "plugins",
];

/// Why a lockfile cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockfileError {
    #[error("manifest.lock is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("manifest.lock is not a JSON object")]
    NotAnObject,
    #[error("lockfile-version is missing; this node reads lockfile-version 1")]
    MissingLockfileVersion,
    #[error("lockfile-version {0} is not supported; this node reads lockfile-version 1")]
    UnsupportedLockfileVersion(String),
    #[error("manifest.lock has no '{0}'")]
    MissingKey(&'static str),
    #[error("'{field}' in manifest.lock is invalid: {reason}")]
    InvalidField { field: String, reason: String },
    #[error("manifest in manifest.lock has neither 'version' nor 'schema-version'; accepted: version 1 or schema-version {}", KNOWN_SCHEMA_VERSIONS.join(", "))]
    MissingManifestVersion,
    #[error("manifest version {0} is not supported; accepted: version 1 or schema-version {known}", known = KNOWN_SCHEMA_VERSIONS.join(", "))]
    UnsupportedManifestVersion(String),
    #[error("manifest schema-version {0} is not supported; accepted: version 1 or schema-version {known}", known = KNOWN_SCHEMA_VERSIONS.join(", "))]
    UnsupportedSchemaVersion(String),
    #[error("manifest key '{key}' is not known to this node (accepted: {}); the environment was probably locked by a newer Flox", KNOWN_MANIFEST_KEYS.join(", "))]
    UnknownManifestKey { key: String },
    #[error("packages[{index}] in manifest.lock is none of a catalog (attr_path), flake (locked-url) or store-path (store_path) entry")]
    UnknownPackageKind { index: usize },
    #[error("packages[{index}] ({kind} entry{}) in manifest.lock is invalid: {reason}", install_id.as_ref().map(|id| format!(" '{id}'")).unwrap_or_default())]
    InvalidPackage { index: usize, kind: &'static str, install_id: Option<String>, reason: String },
    #[error("Found a reference cycle in the '[vars]' section: {0}.\nRemove one of these references so the variables no longer form a loop.")]
    VarsCycle(String),
    #[error("manifest [vars] may not set reserved variable '{0}'")]
    ReservedVar(String),
}

/// Why a lockfile cannot be rendered for a system.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("This environment is not yet compatible with your system ({system}).\nSupported systems: {}", supported.join(", "))]
    SystemNotSupported { system: String, supported: Vec<String> },
    #[error("This environment is not locked for your system ({system}).\nLocked systems: {}\nRun 'flox upgrade' to re-lock the environment for your system, or add '{system}' to 'options.systems' with 'flox edit'.", locked.join(", "))]
    NotLockedForSystem { system: String, locked: Vec<String> },
    #[error("manifest does not contain a package with install ID '{0}'")]
    MissingInstallId(String),
    #[error("{attr_path} has no output named '{output}'")]
    NoSuchOutput { attr_path: String, output: String },
    #[error("package '{install_id}' output '{output}': {source}")]
    InvalidStorePath {
        install_id: String,
        output: String,
        #[source]
        source: StorePathError,
    },
    #[error("package '{install_id}' has priority {priority}, too large to rank its other outputs")]
    PriorityOverflow { install_id: String, priority: u64 },
}

/// A parsed `manifest.lock`.
#[derive(Debug, Clone, PartialEq)]
pub struct Lockfile {
    /// The (merged) manifest that was locked.
    pub manifest: Manifest,
    /// One entry per (install id, system), in file order.
    pub packages: Vec<LockedPackage>,
}

/// How the manifest inside the lock is versioned; it decides output selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestVersion {
    /// `"version": 1` (legacy): all outputs except `stubs` are linked.
    V1,
    /// `"schema-version": "1.1x.0"`: the descriptor's `outputs` decides.
    Schema(String),
}

/// The runtime-relevant parts of the manifest inside the lock.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub version: ManifestVersion,
    /// `[install]`: install id → descriptor.
    pub install: BTreeMap<String, InstallDescriptor>,
    /// `[vars]`, as written (not yet ordered; see [`Lockfile::vars_in_order`]).
    pub vars: BTreeMap<String, String>,
    /// `[hook]`, as written (not outdented).
    pub hook: Hook,
    /// `[profile]`, as written (not outdented).
    pub profile: Profile,
    pub options: Options,
    /// The whole manifest JSON, for sections this module does not model (services, build, …).
    pub raw: Value,
}

/// One `[install]` descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallDescriptor {
    pub source: DescriptorSource,
    /// Per-package `systems`, if restricted.
    pub systems: Option<Vec<String>>,
    /// Descriptor `outputs` (schema-version manifests).
    pub outputs: Option<DescriptorOutputs>,
    pub priority: Option<u64>,
}

/// Where an `[install]` entry comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DescriptorSource {
    Catalog { pkg_path: String },
    Flake { flake: String },
    StorePath { store_path: String },
}

/// Descriptor `outputs`: `"all"` or a list of names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DescriptorOutputs {
    All,
    List(Vec<String>),
}

/// `[hook]` scripts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hook {
    pub on_activate: Option<String>,
    pub on_deactivate: Option<String>,
}

/// `[profile]` scripts (sourced by interactive shells only; not for exec'd commands). Also
/// the `profile` of `activation::ActivationData`, serialized with these field names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub common: Option<String>,
    pub bash: Option<String>,
    pub zsh: Option<String>,
    pub fish: Option<String>,
    pub tcsh: Option<String>,
}

/// The `[options]` that matter at run time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub systems: Option<Vec<String>>,
    /// `activate.mode`: `"run"` or `"dev"` (Flox's default when absent is dev).
    pub activate_mode: Option<String>,
    /// `cuda-detection`, default true.
    pub cuda_detection: Option<bool>,
    /// `activate.add-sbin`, default false.
    pub add_sbin: Option<bool>,
}

/// One locked package entry (reference §3.2–3.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockedPackage {
    Catalog(CatalogPackage),
    Flake(FlakePackage),
    StorePath(StorePathPackage),
}

/// A catalog entry (`LockedPackageCatalog`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogPackage {
    pub install_id: String,
    pub attr_path: String,
    pub system: String,
    /// Output name → store path, in file order.
    pub outputs: Vec<(String, String)>,
    pub outputs_to_install: Option<Vec<String>>,
    pub priority: u64,
    pub group: String,
    pub locked_url: String,
    pub derivation: String,
    pub name: String,
    pub pname: String,
    pub version: String,
    pub rev: String,
}

/// A flake entry (`LockedPackageFlake`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlakePackage {
    pub install_id: String,
    pub locked_url: String,
    pub locked_flake_attr_path: String,
    pub system: String,
    pub outputs: Vec<(String, String)>,
    pub outputs_to_install: Option<Vec<String>>,
    pub priority: u64,
    pub derivation: String,
    pub name: String,
}

/// A store-path entry (`LockedPackageStorePath`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorePathPackage {
    pub install_id: String,
    pub store_path: String,
    pub system: String,
    pub priority: u64,
}

impl LockedPackage {
    pub fn install_id(&self) -> &str {
        match self {
            LockedPackage::Catalog(p) => &p.install_id,
            LockedPackage::Flake(p) => &p.install_id,
            LockedPackage::StorePath(p) => &p.install_id,
        }
    }

    /// The system this entry was locked for (the manifest system, not a flake's package-system).
    pub fn system(&self) -> &str {
        match self {
            LockedPackage::Catalog(p) => &p.system,
            LockedPackage::Flake(p) => &p.system,
            LockedPackage::StorePath(p) => &p.system,
        }
    }

    pub fn priority(&self) -> u64 {
        match self {
            LockedPackage::Catalog(p) => p.priority,
            LockedPackage::Flake(p) => p.priority,
            LockedPackage::StorePath(p) => p.priority,
        }
    }

    /// Every output of the entry (a store-path entry has the one, named [`STORE_PATH_OUTPUT`]).
    pub fn outputs(&self) -> Vec<(&str, &str)> {
        match self {
            LockedPackage::Catalog(p) => p.outputs.iter().map(|(n, s)| (n.as_str(), s.as_str())).collect(),
            LockedPackage::Flake(p) => p.outputs.iter().map(|(n, s)| (n.as_str(), s.as_str())).collect(),
            LockedPackage::StorePath(p) => vec![(STORE_PATH_OUTPUT, p.store_path.as_str())],
        }
    }
}

/// The outputs to link for one system, in lockfile order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub outputs: Vec<SelectedOutput>,
}

/// One store path to link into the environment, with its conflict priority (lower wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedOutput {
    pub install_id: String,
    /// Output name (`out`, `bin`, `man`…; [`STORE_PATH_OUTPUT`] for store-path entries).
    pub output: String,
    pub store_path: StorePath,
    pub priority: u64,
}

impl Selection {
    /// The distinct store paths, in first-seen order (what must be realised).
    pub fn store_paths(&self) -> Vec<&StorePath> {
        let mut seen = BTreeSet::new();
        self.outputs.iter().map(|o| &o.store_path).filter(|p| seen.insert(p.as_str())).collect()
    }
}

impl Lockfile {
    /// Parse the bytes of a `manifest.lock`.
    pub fn parse(bytes: &[u8]) -> Result<Lockfile, LockfileError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|err| LockfileError::InvalidJson(err.to_string()))?;
        let top = value.as_object().ok_or(LockfileError::NotAnObject)?;
        match top.get("lockfile-version") {
            None => return Err(LockfileError::MissingLockfileVersion),
            Some(version) if version.as_u64() == Some(1) => {}
            Some(other) => return Err(LockfileError::UnsupportedLockfileVersion(other.to_string())),
        }
        let manifest = parse_manifest(top.get("manifest").ok_or(LockfileError::MissingKey("manifest"))?)?;
        let packages = top
            .get("packages")
            .ok_or(LockfileError::MissingKey("packages"))?
            .as_array()
            .ok_or_else(|| LockfileError::InvalidField {
                field: "packages".into(),
                reason: "expected an array of locked package entries".into(),
            })?
            .iter()
            .enumerate()
            .map(|(index, entry)| parse_package(index, entry))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Lockfile { manifest, packages })
    }

    /// The store paths to link for `system` and their priorities (reference §3.6/§3.7).
    pub fn select(&self, system: System) -> Result<Selection, SelectError> {
        let system_name = system.as_str();
        if let Some(supported) = &self.manifest.options.systems {
            if !supported.iter().any(|s| s == system_name) {
                return Err(SelectError::SystemNotSupported {
                    system: system_name.to_string(),
                    supported: supported.clone(),
                });
            }
        }
        if let Some(locked) = self.implicit_locked_systems() {
            if !locked.contains(system_name) {
                return Err(SelectError::NotLockedForSystem {
                    system: system_name.to_string(),
                    locked: locked.into_iter().collect(),
                });
            }
        }

        let mut selected = Vec::new();
        // builder.pl ranks the not-to-install outputs of legacy manifests with one counter
        // shared by the whole environment, so that they never collide with each other.
        let mut other_output_counter: u64 = 0;
        for package in self.packages.iter().filter(|p| p.system() == system_name) {
            let install_id = package.install_id();
            let mut push = |output: &str, path: &str, priority: u64| -> Result<(), SelectError> {
                let store_path = StorePath::parse(path).map_err(|source| SelectError::InvalidStorePath {
                    install_id: install_id.to_string(),
                    output: output.to_string(),
                    source,
                })?;
                selected.push(SelectedOutput {
                    install_id: install_id.to_string(),
                    output: output.to_string(),
                    store_path,
                    priority,
                });
                Ok(())
            };

            // Store paths are linked as they are, even without an [install] entry (as buildenv does).
            if let LockedPackage::StorePath(p) = package {
                push(STORE_PATH_OUTPUT, &p.store_path, p.priority)?;
                continue;
            }
            let descriptor = self
                .manifest
                .install
                .get(install_id)
                .ok_or_else(|| SelectError::MissingInstallId(install_id.to_string()))?;
            let (outputs, outputs_to_install, attr_path) = match package {
                LockedPackage::Catalog(p) => (&p.outputs, &p.outputs_to_install, p.attr_path.as_str()),
                LockedPackage::Flake(p) => (&p.outputs, &p.outputs_to_install, p.locked_flake_attr_path.as_str()),
                LockedPackage::StorePath(_) => unreachable!("handled above"),
            };
            let priority = package.priority();
            let path_of = |name: &str| outputs.iter().find(|(n, _)| n == name).map(|(_, p)| p.as_str());

            match &self.manifest.version {
                ManifestVersion::V1 => {
                    // All outputs but `stubs` (CUDA build-time stubs break things at run time);
                    // the package's default outputs at its priority, the others behind every
                    // real package at 1000 × priority + counter.
                    let wanted =
                        |name: &str| outputs_to_install.as_ref().is_some_and(|list| list.iter().any(|o| o == name));
                    let usable = || outputs.iter().filter(|(name, _)| name != "stubs");
                    for (name, path) in usable().filter(|(name, _)| wanted(name)) {
                        push(name, path, priority)?;
                    }
                    for (name, path) in usable().filter(|(name, _)| !wanted(name)) {
                        let ranked =
                            priority.checked_mul(1000).and_then(|p| p.checked_add(other_output_counter)).ok_or_else(
                                || SelectError::PriorityOverflow { install_id: install_id.to_string(), priority },
                            )?;
                        other_output_counter += 1;
                        push(name, path, ranked)?;
                    }
                }
                ManifestVersion::Schema(_) => {
                    let names: Vec<&str> = match &descriptor.outputs {
                        Some(DescriptorOutputs::All) => outputs.iter().map(|(n, _)| n.as_str()).collect(),
                        Some(DescriptorOutputs::List(list)) => list.iter().map(String::as_str).collect(),
                        // No descriptor `outputs` and no `outputs_to_install` links nothing,
                        // as builder.pl does (reference §3.7, ambiguous case).
                        None => outputs_to_install.iter().flatten().map(String::as_str).collect(),
                    };
                    let mut linked = BTreeSet::new();
                    for name in names {
                        let path = path_of(name).ok_or_else(|| SelectError::NoSuchOutput {
                            attr_path: attr_path.to_string(),
                            output: name.to_string(),
                        })?;
                        // Duplicates in outputs_to_install are a known catalog bug; link once.
                        if linked.insert(name) {
                            push(name, path, priority)?;
                        }
                    }
                }
            }
        }
        Ok(Selection { outputs: selected })
    }

    /// Every store path locked for `system`: all outputs of each entry of that system, not
    /// only the ones [`Lockfile::select`] links, and without select's system checks. This is
    /// what a binary cache must hold for the lock (the hub copies it when publishing); an
    /// empty set when nothing is locked for `system`.
    pub fn locked_store_paths(&self, system: System) -> Result<BTreeSet<StorePath>, SelectError> {
        let mut paths = BTreeSet::new();
        for package in self.packages.iter().filter(|p| p.system() == system.as_str()) {
            for (output, path) in package.outputs() {
                let store_path = StorePath::parse(path).map_err(|source| SelectError::InvalidStorePath {
                    install_id: package.install_id().to_string(),
                    output: output.to_string(),
                    source,
                })?;
                paths.insert(store_path);
            }
        }
        Ok(paths)
    }

    /// Systems implied by the lock when `options.systems` is unset: those of the entries of
    /// catalog packages without per-package `systems`. `None` when there is no such signal.
    pub fn implicit_locked_systems(&self) -> Option<BTreeSet<String>> {
        if self.manifest.options.systems.is_some() {
            return None;
        }
        let unconstrained: BTreeSet<&str> = self
            .manifest
            .install
            .iter()
            .filter(|(_, d)| matches!(d.source, DescriptorSource::Catalog { .. }) && d.systems.is_none())
            .map(|(id, _)| id.as_str())
            .collect();
        let systems: BTreeSet<String> = self
            .packages
            .iter()
            .filter(|p| unconstrained.contains(p.install_id()))
            .map(|p| p.system().to_string())
            .collect();
        (!systems.is_empty()).then_some(systems)
    }

    /// `[vars]` in the order Flox exports them, as (name, value).
    pub fn vars_in_order(&self) -> Result<Vec<(String, String)>, LockfileError> {
        let vars = &self.manifest.vars;
        if let Some(reserved) = vars.keys().find(|name| name.starts_with("BASH_ENVTRACE_")) {
            return Err(LockfileError::ReservedVar(reserved.clone()));
        }
        let order = vars_order::vars_order(vars).map_err(|cycle| LockfileError::VarsCycle(cycle.to_string()))?;
        Ok(order
            .into_iter()
            .map(|name| {
                let value = vars[&name].clone();
                (name, value)
            })
            .collect())
    }

    /// `hook.on-activate`, outdented as Flox writes `activate.d/hook-on-activate`.
    pub fn hook_on_activate(&self) -> Option<String> {
        self.manifest.hook.on_activate.as_deref().map(outdent_text)
    }

    /// `hook.on-deactivate` (1.15.0+), outdented.
    pub fn hook_on_deactivate(&self) -> Option<String> {
        self.manifest.hook.on_deactivate.as_deref().map(outdent_text)
    }

    /// `[profile]` scripts, outdented as Flox writes `activate.d/profile-<shell>`.
    pub fn profile(&self) -> Profile {
        let p = &self.manifest.profile;
        let o = |s: &Option<String>| s.as_deref().map(outdent_text);
        Profile { common: o(&p.common), bash: o(&p.bash), zsh: o(&p.zsh), fish: o(&p.fish), tcsh: o(&p.tcsh) }
    }

    /// `options.activate.mode` (`"run"` or `"dev"`), if the manifest sets it.
    pub fn activate_mode(&self) -> Option<&str> {
        self.manifest.options.activate_mode.as_deref()
    }

    /// `options.cuda-detection` (default true).
    pub fn cuda_detection(&self) -> bool {
        self.manifest.options.cuda_detection.unwrap_or(true)
    }

    /// `options.activate.add-sbin` (default false).
    pub fn add_sbin(&self) -> bool {
        self.manifest.options.add_sbin.unwrap_or(false)
    }
}

// ---------------------------------------------------------------------------------------
// Parsing helpers

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

fn parse_manifest(value: &Value) -> Result<Manifest, LockfileError> {
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

fn parse_package(index: usize, entry: &Value) -> Result<LockedPackage, LockfileError> {
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

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(
            select(json!({"pkg-path": "p", "outputs": "all"}), json!(["out"])).unwrap(),
            ["out", "man", "stubs"]
        );
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
        let l = lockfile(json!({"schema-version": "1.14.0", "options": {"activate": {"add-sbin": true}}}), json!([]))
            .unwrap();
        assert!(l.add_sbin());
        assert_eq!(l.activate_mode(), None);
        let err = lockfile(json!({"version": 1, "options": {"activate": {"add-sbin": "yes"}}}), json!([])).unwrap_err();
        assert!(err.to_string().contains("manifest.options.activate.add-sbin"), "{err}");
        let err = lockfile(json!({"version": 1, "options": {"activate": {"mode": "prod"}}}), json!([])).unwrap_err();
        assert!(
            err.to_string().contains("manifest.options.activate.mode")
                && err.to_string().contains("\"run\" or \"dev\"")
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
}
