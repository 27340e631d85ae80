//! `DIR/catalogs/<catalog>/packages.json`: the packages published to a catalog, where their
//! store paths are kept, and the key they are signed with.
//!
//! ```json
//! { "version": 1,
//!   "packages": {
//!     "hello-private": {
//!       "outputs": { "out": "/nix/store/…-hello-private-1.0" },
//!       "closure": [ "/nix/store/…-busybox-static", "/nix/store/…-hello-private-1.0" ],
//!       "private_paths": [ "/nix/store/…-hello-private-1.0" ],
//!       "store": "hub",
//!       "public_key": "acme-1:…",
//!       "published_at": 1760000000 } } }
//! ```
//! - `closure`: every path of the outputs' closure; all of them are in the package's store
//!   (a Nix binary cache refuses a path whose references it lacks), and `POST
//!   /api/v1/catalog/store` names that store for each of them.
//! - `private_paths`: the closure paths that are not in the hub's public cache.
//! - `store`: `hub` (the per-catalog cache `DIR/catalogs/<catalog>/cache`, served at
//!   `/catalogs/<catalog>/cache/`) or the `s3://bucket?…` URL the package was uploaded to.
//!
//! Written by temp file + rename under an exclusive `flock` on `packages.json.lock`; read
//! without a lock (a reader sees the old or the new file, never a part).
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use imageless_core::store_path::StorePath;
use serde::{Deserialize, Serialize};

use crate::config::{FileLock, HubPaths};
use crate::error::HubServerError;

/// `store` of a package kept in the hub's own per-catalog cache.
pub const HUB_STORE: &str = "hub";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogPackages {
    pub version: u32,
    #[serde(default)]
    pub packages: BTreeMap<String, PackageRecord>,
}

impl Default for CatalogPackages {
    fn default() -> Self {
        CatalogPackages { version: 1, packages: BTreeMap::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageRecord {
    /// Output name → store path.
    pub outputs: BTreeMap<String, StorePath>,
    /// The outputs' closure (sorted): every path the package's store holds for it.
    pub closure: Vec<StorePath>,
    /// The closure paths the hub's public cache does not have.
    pub private_paths: Vec<StorePath>,
    /// [`HUB_STORE`] or an `s3://…` URL.
    pub store: String,
    /// `NAME:base64` of the key the package's narinfos are signed with.
    pub public_key: String,
    pub published_at: i64,
}

impl PackageRecord {
    pub fn in_hub_store(&self) -> bool {
        self.store == HUB_STORE
    }
}

/// The catalog's packages; an empty list when nothing was published to it.
pub fn load(paths: &HubPaths, catalog: &str) -> Result<CatalogPackages, HubServerError> {
    let path = paths.catalog_packages(catalog);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| HubServerError::Catalog {
            catalog: catalog.to_owned(),
            message: format!("{} is not valid: {e}", path.display()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CatalogPackages::default()),
        Err(source) => Err(HubServerError::Io { path, source }),
    }
}

/// Records (or replaces) package `name` of `catalog`, and the catalog's current public key.
pub fn record(paths: &HubPaths, catalog: &str, name: &str, package: PackageRecord) -> Result<(), HubServerError> {
    let dir = paths.catalog(catalog);
    fs::create_dir_all(&dir).map_err(HubServerError::io(&dir))?;
    let _lock = FileLock::exclusive(&dir.join("packages.json.lock"))?;
    let mut packages = load(paths, catalog)?;
    let public_key = package.public_key.clone();
    packages.packages.insert(name.to_owned(), package);
    let mut json = serde_json::to_vec_pretty(&packages).expect("packages.json serializes");
    json.push(b'\n');
    write_atomically(&paths.catalog_packages(catalog), &json)?;
    write_atomically(&paths.catalog_public_key(catalog), format!("{public_key}\n").as_bytes())
}

/// Writes `bytes` to a dot-named temp file beside `path`, syncs it and renames it into place.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), HubServerError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    let mut f = fs::File::create(&tmp).map_err(HubServerError::io(&tmp))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(HubServerError::io(&tmp))?;
    fs::rename(&tmp, path).map_err(HubServerError::io(path))
}

/// The catalogs of this hub (directory names under `DIR/catalogs` that are valid names).
pub fn catalogs(paths: &HubPaths) -> Result<Vec<String>, HubServerError> {
    let dir = paths.catalogs();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(HubServerError::Io { path: dir, source }),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| crate::names::validate_owner(n).is_ok())
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(name: &str) -> StorePath {
        StorePath::parse(&format!("/nix/store/{}-{name}", "a".repeat(32))).unwrap()
    }

    #[test]
    fn records_round_trip_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let paths = HubPaths::new(dir.path());
        assert_eq!(load(&paths, "acme").unwrap(), CatalogPackages::default());
        assert!(catalogs(&paths).unwrap().is_empty());
        let record_of = |key: &str| PackageRecord {
            outputs: BTreeMap::from([("out".to_owned(), sp("p"))]),
            closure: vec![sp("p")],
            private_paths: vec![sp("p")],
            store: HUB_STORE.into(),
            public_key: key.into(),
            published_at: 1,
        };
        record(&paths, "acme", "p", record_of("acme-1:old")).unwrap();
        record(&paths, "acme", "p", record_of("acme-1:new")).unwrap();
        let loaded = load(&paths, "acme").unwrap();
        assert_eq!(loaded.packages.len(), 1);
        assert_eq!(loaded.packages["p"].public_key, "acme-1:new");
        assert!(loaded.packages["p"].in_hub_store());
        assert_eq!(std::fs::read_to_string(paths.catalog_public_key("acme")).unwrap(), "acme-1:new\n");
        assert_eq!(catalogs(&paths).unwrap(), vec!["acme".to_string()]);
        // No temp file is left beside it.
        let names: Vec<String> = std::fs::read_dir(paths.catalog("acme"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp.")), "{names:?}");
        std::fs::write(paths.catalog_packages("acme"), "{\"version\": 1, \"pkgs\": {}}").unwrap();
        assert!(load(&paths, "acme").unwrap_err().to_string().contains("packages.json is not valid"));
    }
}
