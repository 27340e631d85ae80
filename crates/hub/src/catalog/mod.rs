//! Custom catalogs (Flox's `flox publish` to an organisation's catalog): packages published to
//! catalog `<catalog>` with `hub publish-package`, kept in a store of the catalog's own (the
//! hub's per-catalog cache or an `s3://` bucket) signed with the catalog's key, and located by
//! readers of the catalog through `POST /api/v1/catalog/store`.
//!
//! - [`key`]: the catalog's Nix signing key; [`packages`]: `catalogs/<catalog>/packages.json`;
//! - [`publish`]: `hub publish-package`; [`upload`]: the ordered presigned uploads to S3;
//! - [`store_info`]: the endpoint's answer; [`serve`]: its route and the per-catalog cache's.
//!
//! Hub root layout: `DIR/catalogs/<catalog>/{packages.json, key.pub, cache/}`.
pub mod key;
pub mod packages;
pub mod publish;
mod serve;
pub mod store_info;
pub mod upload;
