//! Private catalog packages: where their store paths live. A lock entry of a custom-catalog
//! package (`myorg/myapp`) has no cache URL; the node asks the catalog service
//! (`POST <catalog>/api/v1/catalog/store`, Flox's API) with the pod's FloxHub token, and adds
//! the stores it answers as substituters of this pull only, after the configured ones:
//! - a store whose location carries `auth` (a publisher store's S3 credentials) is read with
//!   those credentials, for that store only, kept in memory;
//! - an `http(s)://` store on a host of the node config's `catalog_token_hosts` is read with the
//!   token as HTTP basic auth's password (as Flox's netrc for its own hosts); any other host
//!   gets no token;
//! - `public_keys` the catalog returns are not trusted unless `catalog_trust_returned_keys`.
//!
//! The token goes to the catalog and the allowlisted hosts, nowhere else, and never into a
//! message.
use std::collections::BTreeMap;

use imageless_core::catalog::{StoreInfo, StoreInfoRequest, StoreInfoResponse, STORE_INFO_PATH};
use imageless_core::lockfile::CustomPackage;
use imageless_core::store_path::StorePath;
use imageless_core::token::Token;

use super::http::{error_chain, Http};

/// What a pull needs to locate its custom-catalog packages.
#[derive(Clone)]
pub struct CatalogPull {
    /// The catalog service's base URL.
    pub url: String,
    pub token: Option<Token>,
    pub packages: Vec<CustomPackage>,
    /// Hosts (`host` or `host:port`) whose stores get the token as basic auth.
    pub token_hosts: Vec<String>,
    pub trust_returned_keys: bool,
}

impl CatalogPull {
    /// `acme/app, acme/lib`.
    pub fn package_names(&self) -> String {
        self.packages.iter().map(|p| p.pkg_path.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// The package whose outputs include `path`, if one does.
    pub fn package_of(&self, path: &str) -> Option<&CustomPackage> {
        self.packages.iter().find(|p| p.store_paths.iter().any(|s| s.as_str() == path))
    }

    pub fn output_paths(&self) -> Vec<StorePath> {
        let mut paths: Vec<StorePath> = self.packages.iter().flat_map(|p| p.store_paths.iter().cloned()).collect();
        paths.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        paths.dedup();
        paths
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(
        "flox: package {packages} of this environment is in a private catalog: the catalog at {url} needs a FloxHub token; \
         mount a FloxHub token secret at /var/run/secrets/flox.dev (flox auth token | kubectl create secret generic floxhub-token --from-file=floxhub-token=/dev/stdin)"
    )]
    NeedsToken { packages: String, url: String },
    #[error("flox: package {packages}: the catalog at {url} refused the FloxHub token (HTTP {status}); create a new secret with flox auth token")]
    TokenRefused { packages: String, url: String, status: u16 },
    #[error("flox: package {packages}: the catalog at {url} could not be asked where its store paths live: {detail}")]
    Unreachable { packages: String, url: String, detail: String },
    #[error("flox: package {package}: the catalog at {url} gives this FloxHub token no store for {path}; the token's owner may not read catalog {catalog}")]
    NoStore { package: String, path: String, url: String, catalog: String },
    #[error("flox: package {package}: the catalog at {url} answered a store this node cannot use ({store}): {detail}")]
    BadStore { package: String, url: String, store: String, detail: String },
}

impl CatalogError {
    /// The catalog could not be asked (down, timed out, 5xx): the caller may fall back to
    /// what it fetched before with the same token.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, CatalogError::Unreachable { .. })
    }
}

/// Asks the catalog where `paths` live, with the pull's token.
pub async fn locate(http: &Http, pull: &CatalogPull, paths: &[StorePath]) -> Result<StoreInfoResponse, CatalogError> {
    let url = format!("{}{STORE_INFO_PATH}", pull.url.trim_end_matches('/'));
    let unreachable =
        |detail: String| CatalogError::Unreachable { packages: pull.package_names(), url: pull.url.clone(), detail };
    let body = StoreInfoRequest { outpaths: paths.iter().map(|p| p.to_string()).collect() };
    let token = pull.token.as_ref().map(Token::expose);
    let resp = http.post_json(&url, &body, token).await.map_err(|e| unreachable(error_chain(&e)))?;
    let status = resp.status().as_u16();
    match status {
        200 => {}
        401 | 403 if token.is_none() => {
            return Err(CatalogError::NeedsToken { packages: pull.package_names(), url: pull.url.clone() })
        }
        401 | 403 => {
            return Err(CatalogError::TokenRefused { packages: pull.package_names(), url: pull.url.clone(), status })
        }
        other => return Err(unreachable(format!("POST {url} answered HTTP {other}"))),
    }
    let bytes = resp.bytes().await.map_err(|e| unreachable(error_chain(&e)))?;
    if bytes.len() > 16 << 20 {
        return Err(unreachable(format!("POST {url} answered over 16 MiB")));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| unreachable(format!("POST {url} answered a body that is not a StoreInfoResponse: {e}")))
}

/// Every path the catalog gives no store for is an error naming its package.
pub fn require_locations(pull: &CatalogPull, answer: &StoreInfoResponse) -> Result<(), CatalogError> {
    for package in &pull.packages {
        for path in &package.store_paths {
            let empty = answer.items.get(path.as_str()).is_none_or(|l| l.iter().all(|s| s.url.is_none()));
            if empty {
                return Err(CatalogError::NoStore {
                    package: package.pkg_path.clone(),
                    path: path.to_string(),
                    url: pull.url.clone(),
                    catalog: package.catalog().to_string(),
                });
            }
        }
    }
    Ok(())
}

/// The distinct stores of an answer, each with the package it was given for (first seen).
pub fn stores(answer: &StoreInfoResponse) -> BTreeMap<String, (StoreInfo, String)> {
    let mut out = BTreeMap::new();
    for (path, locations) in &answer.items {
        for l in locations {
            if let Some(url) = &l.url {
                let package = l.package.clone().unwrap_or_else(|| path.clone());
                out.entry(url.clone()).or_insert_with(|| (l.clone(), package));
            }
        }
    }
    out
}

/// Whether `url`'s host (or `host:port`) is one the token may go to.
pub fn token_may_go_to(url: &str, hosts: &[String]) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else { return false };
    let Some(host) = parsed.host_str() else { return false };
    let with_port = parsed.port().map(|p| format!("{host}:{p}"));
    hosts.iter().any(|h| h == host || Some(h) == with_port.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_goes_only_to_listed_hosts() {
        let hosts = vec!["hub.example.internal".to_string(), "127.0.0.1:8080".to_string()];
        assert!(token_may_go_to("https://hub.example.internal/catalogs/acme/cache", &hosts));
        assert!(token_may_go_to("http://127.0.0.1:8080/x", &hosts));
        assert!(!token_may_go_to("http://127.0.0.1:9000/x", &hosts));
        assert!(!token_may_go_to("https://hub.example.internal.evil.test/x", &hosts));
        assert!(!token_may_go_to("https://evil.test/?hub.example.internal", &hosts));
        assert!(!token_may_go_to("s3://bucket?endpoint=hub.example.internal", &hosts));
    }
}
