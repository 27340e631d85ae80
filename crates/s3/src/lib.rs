//! `s3://bucket?…` binary-cache stores as Nix names them, for the node's fetch client, the hub
//! and the test harness: the URL and its parameters ([`S3Url`]), credentials from the node (never
//! from a pod: [`credentials`]), and presigned requests ([`S3Store`]). No I/O but reading a
//! credentials file the operator names; the HTTP client is the caller's.
//!
//! Signing is rusty-s3's (sans-I/O, SigV4, a few small dependencies): the AWS SDK brings its
//! own HTTP stack and runtime and adds megabytes and start-up time to binaries the shim runs per
//! pod; `object_store` brings its own reqwest and a store abstraction the node does not need.
pub mod credentials;
pub mod error_body;
pub mod store;
pub mod url;

pub use credentials::{Credentials, CredentialsError};
pub use store::S3Store;
pub use url::{AddressingStyle, S3Url, S3UrlError};
