//! Private catalog packages on a node: which pull asks the catalog, and who may use an
//! environment that holds them once it is rendered. A rendered environment with custom-catalog
//! packages keeps a record of them (`<env>/catalog-packages`); every container create that uses
//! it asks the catalog again with its own token (the same rule as private environments: the
//! cache serves a token the catalog accepts now). With the catalog unreachable, only the token
//! that fetched the packages may use them.
use std::io::Read;
use std::path::Path;

use imageless_core::lockfile::{CustomPackage, Lockfile};
use imageless_core::store_path::StorePath;
use imageless_core::system::System;
use imageless_core::token::Token;
use serde::{Deserialize, Serialize};

use crate::config::NodeConfig;
use crate::fetch::catalog::{self, CatalogPull};
use crate::fetch::http::Http;
use crate::fetch::{Deadlines, FetchError};

/// Beside a rendered environment that holds custom-catalog packages.
pub const RECORD: &str = "catalog-packages";

/// Hosts that always get the token for the stores a catalog answers: Flox's publisher hosts
/// (as the Flox CLI's netrc list); the catalog's own host is added per node.
pub const FLOX_TOKEN_HOSTS: [&str; 3] = ["publisher.flox.dev", "publisher.preview.flox.dev", "api.preview2.flox.dev"];

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    catalog_url: String,
    packages: Vec<RecordedPackage>,
    /// The fingerprint of the token that fetched them (never the token).
    fetched_with: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RecordedPackage {
    pkg_path: String,
    install_id: String,
    paths: Vec<String>,
}

/// The catalog service's base URL: `catalog_url`, else FloxHub's API for FloxHub, else the hub.
pub fn catalog_url(config: &NodeConfig) -> String {
    if let Some(url) = &config.catalog_url {
        return url.trim_end_matches('/').to_string();
    }
    let git = crate::resolve::git_url_for_hub(&config.hub_url);
    git.strip_suffix("/git").unwrap_or(&git).to_string()
}

/// The pull of `lockfile`'s custom-catalog packages for `system` with `token`.
pub fn pull_for(config: &NodeConfig, lockfile: &Lockfile, system: System, token: Option<&Token>) -> CatalogPull {
    let url = catalog_url(config);
    let mut token_hosts: Vec<String> = config.catalog_token_hosts.clone();
    if let Ok(parsed) = reqwest::Url::parse(&url) {
        if let Some(host) = parsed.host_str() {
            token_hosts.push(match parsed.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_string(),
            });
        }
    }
    token_hosts.extend(FLOX_TOKEN_HOSTS.iter().map(|h| h.to_string()));
    CatalogPull {
        url,
        token: token.cloned(),
        packages: lockfile.custom_packages(system),
        token_hosts,
        trust_returned_keys: config.catalog_trust_returned_keys,
    }
}

/// Writes the record of `pull`'s packages into `dir` (nothing when it has none).
pub fn write_record(dir: &Path, pull: &CatalogPull) -> std::io::Result<()> {
    if pull.packages.is_empty() {
        return Ok(());
    }
    let record = Record {
        catalog_url: pull.url.clone(),
        packages: pull
            .packages
            .iter()
            .map(|p| RecordedPackage {
                pkg_path: p.pkg_path.clone(),
                install_id: p.install_id.clone(),
                paths: p.store_paths.iter().map(|s| s.to_string()).collect(),
            })
            .collect(),
        fetched_with: pull.token.as_ref().map(Token::fingerprint),
    };
    std::fs::write(dir.join(RECORD), serde_json::to_vec_pretty(&record).expect("serializable"))
}

/// Whether `token` may use the rendered environment at `dir` now: Ok when it holds no
/// custom-catalog packages, or the catalog gives this token a store for each of their paths.
pub fn check(config: &NodeConfig, dir: &Path, token: Option<&Token>) -> Result<(), FetchError> {
    let Ok(file) = std::fs::File::open(dir.join(RECORD)) else { return Ok(()) };
    let mut text = String::new();
    file.take(1 << 20).read_to_string(&mut text).map_err(FetchError::store(dir, "reading catalog-packages"))?;
    let record: Record = serde_json::from_str(&text).map_err(|e| {
        FetchError::store(dir, "reading catalog-packages")(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    })?;
    let pull = CatalogPull {
        url: record.catalog_url.clone(),
        token: token.cloned(),
        packages: record
            .packages
            .iter()
            .map(|p| CustomPackage {
                install_id: p.install_id.clone(),
                pkg_path: p.pkg_path.clone(),
                store_paths: p.paths.iter().filter_map(|s| StorePath::parse(s).ok()).collect(),
            })
            .collect(),
        token_hosts: Vec::new(),
        trust_returned_keys: false,
    };
    let deadlines = Deadlines {
        connect: std::time::Duration::from_millis(config.substituter_connect_timeout_ms),
        stall: std::time::Duration::from_millis(config.substituter_stall_timeout_ms),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(FetchError::store(dir, "starting a runtime for the catalog check"))?;
    let answer = runtime.block_on(async {
        let http =
            Http::new(deadlines).map_err(|source| FetchError::Substituter { substituter: "-".into(), source })?;
        Ok::<_, FetchError>(catalog::locate(&http, &pull, &pull.output_paths()).await)
    })?;
    match answer {
        Ok(answer) => Ok(catalog::require_locations(&pull, &answer)?),
        Err(e) if e.is_unreachable() => {
            let same = token.map(Token::fingerprint).is_some_and(|f| Some(f) == record.fetched_with);
            if same {
                tracing::warn!("{e}; the token that fetched the packages may use them meanwhile");
                Ok(())
            } else {
                Err(e.into())
            }
        }
        Err(e) => Err(e.into()),
    }
}
