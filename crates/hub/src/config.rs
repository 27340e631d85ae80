//! The hub's root directory and its `hub.json`.
//!
//! # hub.json
//! ```json
//! {
//!   "version": 1,
//!   "jwt_secret": "<64 hex chars: the HS256 key for JWTs this hub mints and accepts>",
//!   "tokens": {
//!     "<sha256 hex of an opaque flox_... token>": { "handle": "alice", "expires_at": null }
//!   },
//!   "private": ["alice/secret-env"],
//!   "readers": { "alice": ["bob"] }
//! }
//! ```
//! - `tokens`: opaque tokens minted by `hub token --opaque`, keyed by their SHA-256 so the file
//!   never holds a usable token; `expires_at` is Unix seconds or null (never expires).
//! - `private`: environments (`owner/name`) hidden from callers who may not read them.
//!   Every environment not listed is public.
//! - `readers`: per owner, the handles allowed to read that owner's private environments
//!   (`hub grant`). A handle can always read its own owner's environments.
//! - `catalog_store_credentials` (optional): an AWS shared-credentials file holding the publisher
//!   credentials of the `s3://` stores catalog packages were published to (`hub publish-package
//!   --store`): used for the uploads and handed to readers of the catalog in `StoreInfo.auth`.
//! - `public_url` (optional): the hub's URL as nodes reach it (`https://hub.example.org`), for
//!   the per-catalog cache URLs it hands out; default: the scheme and `Host` of each request.
//! - `cache_store` (optional): `s3://BUCKET?endpoint=…&region=…&scheme=…` (Nix's S3 store URL):
//!   the public cache's narinfos and NARs live in that bucket instead of `DIR/cache`, so
//!   several replicas share it; `cache_store_credentials`: its AWS shared-credentials file;
//!   `fill_peers`: the replicas' URLs (or `dns:NAME:PORT`), so each missing file is filled by
//!   one of them (see `fill_peers.rs`); `cache_store_local_bytes`: the replica's disk tier in
//!   front of the bucket (`DIR/cache`, see `s3_tier.rs`), default 4 GiB, 0 turns it off.
//! - `upstream` (optional): binary cache URLs (`http(s)://HOST[:PORT]/PATH`) that `serve` pulls
//!   narinfo and NAR files from when its own cache lacks them; read when `serve` starts.
//!
//! The server re-reads the file on every request, so `token`, `grant` and `publish --private`
//! take effect without a restart. Writers hold an exclusive `flock` on `hub.json.lock` and
//! replace the file by atomic rename.
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::auth::OpaqueTokenRecord;
use crate::error::HubServerError;

/// The parsed hub.json. See the module documentation for the format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    pub version: u32,
    pub jwt_secret: String,
    #[serde(default)]
    pub tokens: BTreeMap<String, OpaqueTokenRecord>,
    #[serde(default)]
    pub private: BTreeSet<String>,
    #[serde(default)]
    pub readers: BTreeMap<String, BTreeSet<String>>,
    /// Binary caches `serve` pulls missing narinfo and NAR files from, in order
    /// (`serve --upstream` overrides this).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstream: Vec<String>,
    /// Git base URL that floxmeta requests for owners not hosted here are passed through to
    /// (`serve --upstream-git` overrides this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_git: Option<String>,
    /// AWS shared-credentials file of the catalogs' `s3://` stores (profile: the store URL's
    /// `profile`, else `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_store_credentials: Option<PathBuf>,
    /// The hub's URL as nodes reach it; None = from each request's scheme and Host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// `s3://BUCKET?…`: the public cache's narinfos and NARs in a bucket (`serve
    /// --cache-store` overrides this); None = `DIR/cache`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_store: Option<String>,
    /// AWS shared-credentials file for `cache_store` (profile: its `profile`, else `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_store_credentials: Option<PathBuf>,
    /// The replicas sharing `cache_store`: `http(s)://HOST:PORT` or `dns:NAME:PORT` (`serve
    /// --fill-peers` overrides this).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fill_peers: Vec<String>,
    /// Bytes of the replica's disk tier in front of `cache_store` (None: the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_store_local_bytes: Option<u64>,
}

impl HubConfig {
    pub fn new(random_secret: &[u8; 32]) -> Self {
        HubConfig {
            version: 1,
            jwt_secret: hex::encode(random_secret),
            tokens: BTreeMap::new(),
            private: BTreeSet::new(),
            readers: BTreeMap::new(),
            upstream: Vec::new(),
            upstream_git: None,
            catalog_store_credentials: None,
            public_url: None,
            cache_store: None,
            cache_store_credentials: None,
            fill_peers: Vec::new(),
            cache_store_local_bytes: None,
        }
    }

    pub fn secret_bytes(&self) -> Vec<u8> {
        // A secret that is not hex (hand-edited) is used as raw bytes rather than refused.
        hex::decode(&self.jwt_secret).unwrap_or_else(|_| self.jwt_secret.as_bytes().to_vec())
    }

    /// May `handle` (None = anonymous) read environment `owner/name`?
    pub fn may_read(&self, owner: &str, name: &str, handle: Option<&str>) -> bool {
        if !self.private.contains(&format!("{owner}/{name}")) {
            return true;
        }
        match handle {
            Some(h) => h == owner || self.readers.get(owner).is_some_and(|r| r.contains(h)),
            None => false,
        }
    }

    /// May `handle` read the packages of catalog `catalog`? The catalog's own handle and the
    /// handles granted its owner (`hub grant`), as for private environments.
    pub fn may_read_catalog(&self, catalog: &str, handle: &str) -> bool {
        handle == catalog || self.readers.get(catalog).is_some_and(|r| r.contains(handle))
    }

    /// The private environment names of `owner` that `handle` may not read: their branches are
    /// hidden from this caller.
    pub fn hidden_branches(&self, owner: &str, handle: Option<&str>) -> Vec<String> {
        self.private
            .iter()
            .filter_map(|env| env.split_once('/'))
            .filter(|(o, _)| *o == owner)
            .map(|(_, name)| name)
            .filter(|name| !self.may_read(owner, name, handle))
            .map(str::to_owned)
            .collect()
    }
}

/// The layout of a hub root directory (see docs/contracts.md).
#[derive(Debug, Clone)]
pub struct HubPaths {
    pub root: PathBuf,
}

impl HubPaths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HubPaths { root: root.into() }
    }
    pub fn git_root(&self) -> PathBuf {
        self.root.join("git")
    }
    /// The bare floxmeta repository of an owner (validate `owner` first).
    pub fn floxmeta(&self, owner: &str) -> PathBuf {
        self.git_root().join(owner).join("floxmeta")
    }
    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }
    pub fn secret_key(&self) -> PathBuf {
        self.root.join("cache-key.sec")
    }
    pub fn public_key(&self) -> PathBuf {
        self.root.join("cache-key.pub")
    }
    /// `DIR/catalogs`: one directory per catalog (validate names first).
    pub fn catalogs(&self) -> PathBuf {
        self.root.join("catalogs")
    }
    /// `DIR/catalogs/<catalog>`: `packages.json`, `key.pub` and the per-catalog `cache/`.
    pub fn catalog(&self, catalog: &str) -> PathBuf {
        self.catalogs().join(catalog)
    }
    pub fn catalog_cache(&self, catalog: &str) -> PathBuf {
        self.catalog(catalog).join("cache")
    }
    pub fn catalog_packages(&self, catalog: &str) -> PathBuf {
        self.catalog(catalog).join("packages.json")
    }
    pub fn catalog_public_key(&self, catalog: &str) -> PathBuf {
        self.catalog(catalog).join("key.pub")
    }
    pub fn hub_json(&self) -> PathBuf {
        self.root.join("hub.json")
    }
    fn hub_json_lock(&self) -> PathBuf {
        self.root.join("hub.json.lock")
    }

    pub fn load(&self) -> Result<HubConfig, HubServerError> {
        let path = self.hub_json();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(HubServerError::NotInitialized { path, root: self.root.display().to_string() })
            }
            Err(e) => return Err(HubServerError::Io { path, source: e }),
        };
        serde_json::from_slice(&bytes).map_err(|source| HubServerError::ConfigFormat { path, source })
    }

    /// Read-modify-write of hub.json under an exclusive lock, replaced by atomic rename.
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut HubConfig) -> Result<T, HubServerError>,
    ) -> Result<T, HubServerError> {
        let _lock = FileLock::exclusive(&self.hub_json_lock())?;
        let mut config = self.load()?;
        let out = change(&mut config)?;
        self.write(&config)?;
        Ok(out)
    }

    /// Writes hub.json atomically, mode 0600 (it holds the JWT secret).
    pub fn write(&self, config: &HubConfig) -> Result<(), HubServerError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.hub_json();
        let tmp = self.root.join(".hub.json.tmp");
        let mut json = serde_json::to_vec_pretty(config).expect("hub.json serializes");
        json.push(b'\n');
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(HubServerError::io(&tmp))?;
        f.write_all(&json).and_then(|_| f.sync_all()).map_err(HubServerError::io(&tmp))?;
        fs::rename(&tmp, &path).map_err(HubServerError::io(&path))
    }
}

/// An exclusive `flock` held until dropped.
pub(crate) struct FileLock {
    _file: fs::File,
}

impl FileLock {
    pub(crate) fn exclusive(path: &Path) -> Result<FileLock, HubServerError> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(HubServerError::io(path))?;
        // Blocks until granted.
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| HubServerError::Io { path: path.to_owned(), source: e.into() })?;
        Ok(FileLock { _file: file })
    }
}

/// 32 bytes from the kernel's CSPRNG.
pub fn random_bytes() -> Result<[u8; 32], HubServerError> {
    use std::io::Read;
    let mut buf = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(HubServerError::io("/dev/urandom"))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HubConfig {
        let mut c = HubConfig::new(&[1; 32]);
        c.private.insert("alice/secret".into());
        c.private.insert("alice/other".into());
        c.private.insert("carol/x".into());
        c.readers.entry("alice".into()).or_default().insert("bob".into());
        c
    }

    #[test]
    fn visibility_rules() {
        let c = config();
        assert!(c.may_read("alice", "public", None));
        assert!(!c.may_read("alice", "secret", None));
        assert!(c.may_read("alice", "secret", Some("alice")));
        assert!(c.may_read("alice", "secret", Some("bob")));
        assert!(!c.may_read("alice", "secret", Some("mallory")));
        assert_eq!(c.hidden_branches("alice", Some("mallory")), vec!["other".to_string(), "secret".to_string()]);
        assert!(c.hidden_branches("alice", Some("bob")).is_empty());
        assert!(c.hidden_branches("dave", None).is_empty());
        assert!(c.may_read_catalog("alice", "alice") && c.may_read_catalog("alice", "bob"));
        assert!(!c.may_read_catalog("alice", "mallory") && !c.may_read_catalog("carol", "bob"));
    }

    #[test]
    fn hub_json_round_trip_and_unknown_keys() {
        let c = config();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<HubConfig>(&json).unwrap(), c);
        assert!(serde_json::from_str::<HubConfig>(r#"{"version":1,"jwt_secret":"00","privat":[]}"#).is_err());
    }
}
