//! `hub publish-package`: a package's outputs (built in this machine's Nix store) published to
//! a catalog, as `flox publish` does to a Catalog Store: the outputs' closure copied into the
//! catalog's store and signed with the catalog's key, then recorded in `packages.json`, so
//! `POST /api/v1/catalog/store` names that store to readers of the catalog.
//!
//! The store is the hub's own per-catalog cache (`DIR/catalogs/<catalog>/cache`), or an
//! `s3://` bucket: the closure is staged as a binary cache in a temp directory, then uploaded
//! by presigned PUTs ([`super::upload`]) NARs first, each narinfo after its NAR. A Nix binary
//! cache refuses a path whose references it lacks, so the store holds the whole closure,
//! public dependencies (busybox, already in the hub's public cache) included; they stay in the
//! public cache too. The package is recorded only once its store holds all of it.
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use imageless_core::store_path::StorePath;

use super::key::SigningKey;
use super::packages::{self, PackageRecord, HUB_STORE};
use crate::cache;
use crate::config::HubPaths;
use crate::error::HubServerError;
use crate::names::{validate_env_name, validate_owner};
use crate::process::run;

/// What `hub publish-package` was asked to do.
#[derive(Debug, Clone)]
pub struct PackagePublish {
    pub catalog: String,
    /// The package's name in the catalog (`hello-private` of `acme/hello-private`).
    pub name: String,
    /// Output name → store path (present in this machine's Nix store).
    pub outputs: BTreeMap<String, StorePath>,
    /// The catalog's Nix secret key file.
    pub key_file: PathBuf,
    /// An `s3://bucket?…` store; None = the hub's per-catalog cache.
    pub store: Option<String>,
}

/// Publishes the package; returns what was recorded.
pub fn publish_package(paths: &HubPaths, req: &PackagePublish) -> Result<PackageRecord, HubServerError> {
    validate_owner(&req.catalog)?;
    validate_env_name(&req.name)?;
    let config = paths.load()?;
    if req.outputs.is_empty() {
        return Err(HubServerError::InvalidInput {
            what: "--output",
            value: String::new(),
            accepted: "at least one OUTPUT=STORE_PATH, e.g. out=/nix/store/…-hello-1.0",
        });
    }
    let key = SigningKey::read(&req.key_file)
        .map_err(|e| HubServerError::Catalog { catalog: req.catalog.clone(), message: e.to_string() })?;
    let store = match &req.store {
        None => HUB_STORE.to_owned(),
        Some(url) => {
            imageless_s3::S3Url::parse(url)
                .map_err(|e| HubServerError::Catalog { catalog: req.catalog.clone(), message: e.to_string() })?;
            url.clone()
        }
    };
    let outputs: Vec<StorePath> = req.outputs.values().cloned().collect();
    for p in &outputs {
        if !Path::new(p.as_str()).exists() {
            return Err(HubServerError::InvalidInput {
                what: "--output store path",
                value: p.to_string(),
                accepted: "paths present in this machine's /nix/store (build or realise them first)",
            });
        }
    }
    let closure = closure(&outputs)?;
    let public_cache = paths.cache();
    let is_public = |p: &StorePath| public_cache.join(format!("{}.narinfo", p.hash_part())).exists();
    if let Some(p) = outputs.iter().find(|p| is_public(p)) {
        return Err(HubServerError::Catalog {
            catalog: req.catalog.clone(),
            message: format!(
                "output {p} is in the hub's public cache: a catalog package's outputs must not be public (publish environments that install it after the package, so `hub publish` leaves its outputs to the catalog)"
            ),
        });
    }
    let private_paths: Vec<StorePath> = closure.iter().filter(|p| !is_public(p)).cloned().collect();
    tracing::info!(
        catalog = %req.catalog,
        package = %req.name,
        closure = closure.len(),
        private = private_paths.len(),
        %store,
        "publishing a catalog package"
    );

    if req.store.is_none() {
        let dir = paths.catalog_cache(&req.catalog);
        init_cache_dir(&dir)?;
        cache::copy_and_sign(&dir, &key.file, &outputs)?;
    } else {
        let staging = Staging::new(&paths.catalog(&req.catalog))?;
        init_cache_dir(&staging.0)?;
        cache::copy_and_sign(&staging.0, &key.file, &outputs)?;
        let plan = super::upload::plan(&staging.0)?;
        super::upload::upload(&req.catalog, &store, config.catalog_store_credentials.as_deref(), &plan)?;
    }

    let record = PackageRecord {
        outputs: req.outputs.clone(),
        closure,
        private_paths,
        store,
        public_key: key.public_key.clone(),
        published_at: crate::now_unix(),
    };
    packages::record(paths, &req.catalog, &req.name, record.clone())?;
    tracing::info!(catalog = %req.catalog, package = %req.name, "published");
    Ok(record)
}

/// A binary-cache directory with the hub's `nix-cache-info` (Nix writes its own otherwise).
fn init_cache_dir(dir: &Path) -> Result<(), HubServerError> {
    fs::create_dir_all(dir.join("nar")).map_err(HubServerError::io(dir))?;
    let info = dir.join("nix-cache-info");
    if !info.exists() {
        packages::write_atomically(&info, cache::NIX_CACHE_INFO.as_bytes())?;
    }
    Ok(())
}

/// The runtime closure of `paths` in this machine's store, sorted.
fn closure(paths: &[StorePath]) -> Result<Vec<StorePath>, HubServerError> {
    let out = run(
        Command::new("nix-store").args(["--query", "--requisites"]).args(paths.iter().map(StorePath::as_str)),
        None,
    )?;
    let mut closure = String::from_utf8_lossy(&out)
        .lines()
        .map(|l| {
            StorePath::parse(l.trim()).map_err(|e| HubServerError::InvalidInput {
                what: "closure path from nix-store --query --requisites",
                value: e.to_string(),
                accepted: "store paths below /nix/store",
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    closure.sort();
    closure.dedup();
    Ok(closure)
}

/// A staging directory beside the catalog's files, removed however the publish ends.
struct Staging(PathBuf);

impl Staging {
    fn new(catalog_dir: &Path) -> Result<Staging, HubServerError> {
        let nonce = hex::encode(&crate::config::random_bytes()?[..6]);
        let dir = catalog_dir.join(format!(".staging-{}-{nonce}", std::process::id()));
        fs::create_dir_all(&dir).map_err(HubServerError::io(&dir))?;
        Ok(Staging(dir))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Nix makes nothing read-only in a file:// cache; a plain removal does.
        let _ = fs::remove_dir_all(&self.0);
    }
}
