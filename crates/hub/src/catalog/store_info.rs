//! `POST /api/v1/catalog/store`: where the store paths of catalog packages live, for a caller
//! (a FloxHub token's handle). Reading and answering; the route (auth, body) is in
//! [`super::serve`].
//!
//! A path gets one location per catalog that holds it and the handle may read (the catalog's
//! own handle, or one granted it with `hub grant`): its store (the per-catalog cache URL or the
//! `s3://` URL), the publisher credentials for an `s3://` store, the catalog, the package and
//! the catalog's public key. Every other path gets `[]`, so the answer never tells whether a
//! package the caller may not read exists.
use std::collections::BTreeMap;

use imageless_core::catalog::{StoreInfo, StoreInfoResponse, MAX_OUTPATHS};
use imageless_core::store_path::{StorePath, StorePathError};
use imageless_s3::{Credentials, S3Url};

use super::packages;
use crate::config::{HubConfig, HubPaths};
use crate::error::HubServerError;

/// Why a request body is refused (422, as `{"detail": …}`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the body is not JSON ({0}); accepted: {{\"outpaths\": [\"/nix/store/…\", …]}}")]
    NotJson(String),
    #[error("field outpaths is missing; accepted: {{\"outpaths\": [\"/nix/store/…\", …]}}")]
    MissingOutpaths,
    #[error("field outpaths is {0}; accepted: an array of store paths")]
    NotAnArray(&'static str),
    #[error("field outpaths has {0} entries; accepted: at most {MAX_OUTPATHS}")]
    TooMany(usize),
    #[error("field outpaths[{index}] is {kind}; accepted: a store path string")]
    NotAString { index: usize, kind: &'static str },
    #[error("field outpaths[{index}]: {source}")]
    InvalidPath { index: usize, source: StorePathError },
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Reads a `StoreInfoRequest`: an object with `outpaths`, at most [`MAX_OUTPATHS`] valid
/// store paths (other keys are ignored, as the catalog service does).
pub fn parse_request(body: &[u8]) -> Result<Vec<StorePath>, RequestError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| RequestError::NotJson(e.to_string()))?;
    let outpaths = match &value {
        serde_json::Value::Object(o) => o.get("outpaths").ok_or(RequestError::MissingOutpaths)?,
        other => return Err(RequestError::NotJson(format!("the top level is {}", kind(other)))),
    };
    let list = outpaths.as_array().ok_or_else(|| RequestError::NotAnArray(kind(outpaths)))?;
    if list.len() > MAX_OUTPATHS {
        return Err(RequestError::TooMany(list.len()));
    }
    list.iter()
        .enumerate()
        .map(|(index, v)| {
            let s = v.as_str().ok_or(RequestError::NotAString { index, kind: kind(v) })?;
            StorePath::parse(s).map_err(|source| RequestError::InvalidPath { index, source })
        })
        .collect()
}

/// The answer for `handle`: every requested path → its locations. `hub_url` is the hub's URL
/// as the caller reaches it (no trailing `/`). Blocking (reads files).
pub fn answer(
    paths: &HubPaths,
    config: &HubConfig,
    handle: &str,
    hub_url: &str,
    requested: &[StorePath],
) -> Result<StoreInfoResponse, HubServerError> {
    let mut located: BTreeMap<&str, Vec<StoreInfo>> = BTreeMap::new();
    let wanted: std::collections::BTreeSet<&str> = requested.iter().map(StorePath::as_str).collect();
    let mut records = Vec::new();
    for catalog in packages::catalogs(paths)?.into_iter().filter(|c| config.may_read_catalog(c, handle)) {
        let list = packages::load(paths, &catalog)?;
        records.push((catalog, list));
    }
    for (catalog, list) in &records {
        for (name, record) in &list.packages {
            let mut info: Option<StoreInfo> = None;
            for p in record.closure.iter().filter(|p| wanted.contains(p.as_str())) {
                let entry = located.entry(p.as_str()).or_default();
                let url = store_url(catalog, &record.store, hub_url);
                // One location per store: a path shared by two packages of a catalog is named once.
                if entry.iter().any(|i| i.url.as_deref() == Some(url.as_str())) {
                    continue;
                }
                if info.is_none() {
                    info = Some(StoreInfo {
                        url: Some(url),
                        auth: store_auth(catalog, &record.store, config)?,
                        catalog: Some(catalog.clone()),
                        package: Some(name.clone()),
                        public_keys: Some(vec![record.public_key.clone()]),
                    });
                }
                entry.push(info.clone().expect("set above"));
            }
        }
    }
    let items = requested
        .iter()
        .map(|p| (p.as_str().to_owned(), located.get(p.as_str()).cloned().unwrap_or_default()))
        .collect();
    Ok(StoreInfoResponse { items })
}

/// The per-catalog cache's URL, or the package's `s3://` store.
fn store_url(catalog: &str, store: &str, hub_url: &str) -> String {
    if store == packages::HUB_STORE {
        format!("{hub_url}/catalogs/{catalog}/cache")
    } else {
        store.to_owned()
    }
}

/// The publisher credentials of an `s3://` store (hub.json's `catalog_store_credentials`,
/// the URL's profile or `default`); None for the hub's own cache or when none are configured.
fn store_auth(
    catalog: &str,
    store: &str,
    config: &HubConfig,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, HubServerError> {
    let Some(file) = config.catalog_store_credentials.as_deref().filter(|_| store != packages::HUB_STORE) else {
        return Ok(None);
    };
    let fail = |message: String| HubServerError::Catalog { catalog: catalog.to_owned(), message };
    let url = S3Url::parse(store).map_err(|e| fail(e.to_string()))?;
    let c =
        Credentials::from_file(file, url.profile.as_deref().unwrap_or("default")).map_err(|e| fail(e.to_string()))?;
    let mut envs = serde_json::Map::new();
    envs.insert("AWS_ACCESS_KEY_ID".into(), c.access_key_id.into());
    envs.insert("AWS_SECRET_ACCESS_KEY".into(), c.secret_access_key.into());
    if let Some(t) = c.session_token {
        envs.insert("AWS_SESSION_TOKEN".into(), t.into());
    }
    let mut auth = serde_json::Map::new();
    auth.insert("aws-s3".into(), serde_json::json!({ "envs": envs }));
    Ok(Some(auth))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::packages::PackageRecord;

    fn sp(c: char, name: &str) -> StorePath {
        StorePath::parse(&format!("/nix/store/{}-{name}", c.to_string().repeat(32))).unwrap()
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let p = sp('a', "x").to_string();
        assert_eq!(
            parse_request(format!(r#"{{"outpaths": ["{p}", "{p}"], "extra": 1}}"#).as_bytes()).unwrap().len(),
            2
        );
        let err = |body: &str| parse_request(body.as_bytes()).unwrap_err().to_string();
        assert!(err("nope").starts_with("the body is not JSON ("), "{}", err("nope"));
        assert!(err("[]").contains("the top level is an array"));
        assert!(err("{}").starts_with("field outpaths is missing"));
        assert_eq!(err(r#"{"outpaths": "x"}"#), "field outpaths is a string; accepted: an array of store paths");
        assert_eq!(err(r#"{"outpaths": [1]}"#), "field outpaths[0] is a number; accepted: a store path string");
        let bad = err(r#"{"outpaths": ["/nix/store/x"]}"#);
        assert!(bad.starts_with("field outpaths[0]: invalid store path '/nix/store/x'"), "{bad}");
        let many = serde_json::json!({ "outpaths": vec![p; MAX_OUTPATHS + 1] }).to_string();
        assert_eq!(err(&many), "field outpaths has 10001 entries; accepted: at most 10000");
    }

    #[test]
    fn readers_get_the_store_others_an_empty_list() {
        let dir = tempfile::tempdir().unwrap();
        let paths = HubPaths::new(dir.path());
        let (bb, pkg, other) = (sp('b', "busybox"), sp('c', "hello-private-1.0"), sp('d', "unknown"));
        let hub_record = PackageRecord {
            outputs: BTreeMap::from([("out".to_owned(), pkg.clone())]),
            closure: vec![bb.clone(), pkg.clone()],
            private_paths: vec![pkg.clone()],
            store: packages::HUB_STORE.into(),
            public_key: "acme-1:pub".into(),
            published_at: 1,
        };
        packages::record(&paths, "acme", "hello-private", hub_record.clone()).unwrap();
        // A second package sharing busybox: busybox is still named once per store.
        let mut second = hub_record.clone();
        second.closure = vec![bb.clone()];
        packages::record(&paths, "acme", "zzz", second).unwrap();
        let creds = dir.path().join("aws");
        std::fs::write(&creds, "[default]\naws_access_key_id = AKID\naws_secret_access_key = sekrit\n").unwrap();
        let s3 = PackageRecord {
            store: "s3://bucket?endpoint=127.0.0.1:3900&scheme=http&region=garage".into(),
            ..hub_record
        };
        packages::record(&paths, "globex", "tool", s3).unwrap();

        let mut config = HubConfig::new(&[1; 32]);
        config.readers.entry("acme".into()).or_default().insert("alice".into());
        config.catalog_store_credentials = Some(creds);
        let ask = |handle: &str| {
            answer(&paths, &config, handle, "http://hub:8080", &[pkg.clone(), bb.clone(), other.clone()]).unwrap()
        };

        let alice = ask("alice");
        let infos = &alice.items[pkg.as_str()];
        assert_eq!(infos.len(), 1);
        assert_eq!(infos[0].url.as_deref(), Some("http://hub:8080/catalogs/acme/cache"));
        assert_eq!((infos[0].catalog.as_deref(), infos[0].package.as_deref()), (Some("acme"), Some("hello-private")));
        assert_eq!(infos[0].public_keys, Some(vec!["acme-1:pub".to_string()]));
        assert!(infos[0].auth.is_none());
        assert_eq!(alice.items[bb.as_str()].len(), 1);
        assert!(alice.items[other.as_str()].is_empty());
        // Another handle: every path answered, all empty.
        let bob = ask("bob");
        assert_eq!(bob.items.len(), 3);
        assert!(bob.items.values().all(Vec::is_empty));
        // The S3 store's owner gets the publisher credentials.
        let globex = ask("globex");
        let info = &globex.items[pkg.as_str()][0];
        assert!(info.url.as_deref().unwrap().starts_with("s3://bucket?"));
        let envs = info.aws_envs().unwrap().unwrap();
        assert_eq!((envs.access_key_id.as_str(), envs.secret_access_key.as_str()), ("AKID", "sekrit"));
    }
}
