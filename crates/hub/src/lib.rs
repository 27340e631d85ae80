//! A FloxHub-compatible hub for tests, the demo and air-gapped clusters.
//!
//! - [`server`]: `imageless hub serve` on hyper/tokio (optionally rustls); [`routes`]: floxmeta
//!   git repositories over smart HTTP through `git http-backend`, a signed Nix binary cache as
//!   static files ([`cache_file`]: the fast path for plain GET/HEAD), token auth,
//!   `/api/v1/accounts/me`, [`sbom`]: `/api/v1/environments/<owner>/<name>/sbom`; [`pull_through`]: missing cache files fetched once from upstream
//!   caches; [`git_upstream`]: floxmeta of owners not hosted here passed through to an upstream
//!   FloxHub; [`s3_cache`]: the public cache in an S3 bucket (`cache_store`), shared by
//!   replicas, [`fill_peers`]: which replica fills which missing file; [`s3_client`]: presigned
//!   S3 requests over the hub's client.
//! - [`publish`]: new generations and rollbacks in Flox's floxmeta layout; [`catalog`]: packages
//!   published to custom catalogs, their stores and `POST /api/v1/catalog/store`.
//! - [`admin`]: `init`, `token`, `grant`; [`config`]: the root layout and `hub.json`.
//! - [`auth`], [`generations`], [`lock`], [`names`]: pure logic, unit-tested.
pub mod admin;
pub mod auth;
pub mod cache;
pub mod cache_file;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod error;
pub mod fill_peers;
pub mod generations;
pub mod git_backend;
pub mod git_upstream;
pub mod lock;
pub mod names;
mod process;
pub mod publish;
pub mod pull_through;
pub mod routes;
pub mod s3_cache;
pub mod s3_client;
pub mod s3_tier;
pub mod sbom;
pub mod server;
mod signals;
mod tls;
mod upstream_http;

pub use error::HubServerError;

/// Unix seconds now.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
