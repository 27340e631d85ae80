//! Why a lockfile cannot be read, and why it cannot be linked for a system.
use super::{KNOWN_MANIFEST_KEYS, KNOWN_SCHEMA_VERSIONS};
use crate::store_path::StorePathError;

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
