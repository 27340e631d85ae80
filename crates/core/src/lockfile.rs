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

mod custom;
mod error;
mod manifest;
mod model;
mod outdent;
mod parse;
mod select;
mod vars_order;

pub use custom::{is_custom_pkg_path, CustomPackage};
pub use error::{LockfileError, SelectError};
pub use model::*;
pub use outdent::outdent_text;
pub use select::{SelectedOutput, Selection};
pub use vars_order::VarsCycle;

use serde_json::Value;

/// The manifest `schema-version`s this node understands (Flox's `KnownSchemaVersion`).
pub const KNOWN_SCHEMA_VERSIONS: [&str; 6] = ["1.10.0", "1.11.0", "1.12.0", "1.13.0", "1.14.0", "1.15.0"];

/// Priority of a package whose manifest sets none (Flox's `DEFAULT_PRIORITY`).
pub const DEFAULT_PRIORITY: u64 = 5;

/// Output name reported for store-path entries, which are one store path without outputs.
pub const STORE_PATH_OUTPUT: &str = "out";

/// Top-level manifest keys known to the manifest schemas up to 1.15.0. Flox's manifest
/// structs deny unknown fields; refusing here keeps a newer CLI's features from being
/// silently ignored on the node.
pub(crate) const KNOWN_MANIFEST_KEYS: [&str; 13] = [
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
        let manifest = manifest::parse_manifest(top.get("manifest").ok_or(LockfileError::MissingKey("manifest"))?)?;
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
            .map(|(index, entry)| parse::parse_package(index, entry))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Lockfile { manifest, packages })
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

#[cfg(test)]
mod tests;
