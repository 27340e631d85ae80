//! The data model of a parsed `manifest.lock`: the manifest that was locked and the locked
//! package entries, as typed values (parsing is in `parse`, output selection in `select`).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::STORE_PATH_OUTPUT;

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
    /// `description`, when the catalog has one (for SBOMs; never used to build).
    pub description: Option<String>,
    /// `license` as the catalog writes it: an SPDX id (`MIT`), a Nix list
    /// (`[ MIT, NCSA ]`) or a free name (`Unfree`); for SBOMs, never used to build.
    pub license: Option<String>,
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
    pub pname: Option<String>,
    pub version: Option<String>,
    pub description: Option<String>,
    /// `licenses` (SPDX ids or free names), for SBOMs.
    pub licenses: Option<Vec<String>>,
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
