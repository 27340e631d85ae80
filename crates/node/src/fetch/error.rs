//! What can go wrong while realizing a closure from binary caches. Every variant names the
//! store path and (where one was involved) the substituter, and says precisely what is wrong.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("flox: node config: {field} = {value:?} is not valid; accepted: {accepted}")]
    Config { field: &'static str, value: String, accepted: &'static str },
    #[error("flox: {path} is not in any substituter (tried {tried})")]
    NotFound { path: String, tried: String },
    #[error("flox: substituter {substituter}: GET {url} answered HTTP {status}")]
    Http { substituter: String, url: String, status: u16 },
    #[error("flox: substituter {substituter}: GET {url} failed: {detail}")]
    Network { substituter: String, url: String, detail: String },
    #[error("flox: substituter {substituter}: nix-cache-info says StoreDir {found}, expected /nix/store")]
    WrongStoreDir { substituter: String, found: String },
    #[error("flox: substituter {substituter}: narinfo of {path} is not valid: {detail}")]
    BadNarinfo { substituter: String, path: String, detail: String },
    #[error("flox: substituter {substituter}: {path} is not signed by a trusted key (signed by: {signers}; trusted: {trusted})")]
    UntrustedKey { substituter: String, path: String, signers: String, trusted: String },
    #[error("flox: substituter {substituter}: bad signature on {path} by trusted key {key}")]
    BadSignature { substituter: String, path: String, key: String },
    #[error("flox: substituter {substituter}: {path}: unsupported compression {compression:?} (accepted: xz, zstd, bzip2, none)")]
    UnsupportedCompression { substituter: String, path: String, compression: String },
    #[error("flox: substituter {substituter}: {path}: NAR ({compression}) does not decompress: {source}")]
    Decompress { substituter: String, path: String, compression: String, source: std::io::Error },
    #[error(
        "flox: substituter {substituter}: {path}: truncated NAR: the stream ended after {got} of {expected} bytes"
    )]
    TruncatedNar { substituter: String, path: String, got: u64, expected: u64 },
    #[error("flox: substituter {substituter}: {path}: NAR is larger than its NarSize {expected}")]
    NarTooLong { substituter: String, path: String, expected: u64 },
    #[error(
        "flox: substituter {substituter}: {path}: NarSize mismatch: narinfo says {expected} bytes, the NAR has {got}"
    )]
    NarSizeMismatch { substituter: String, path: String, expected: u64, got: u64 },
    #[error(
        "flox: substituter {substituter}: {path}: NarHash mismatch: narinfo says {expected}, the NAR hashes to {got}"
    )]
    NarHashMismatch { substituter: String, path: String, expected: String, got: String },
    #[error("flox: substituter {substituter}: {path}: NAR is not valid: {detail}")]
    BadNar { substituter: String, path: String, detail: String },
    #[error("flox: node store {dir}: {what}: {source}")]
    Store { dir: PathBuf, what: String, source: std::io::Error },
    #[error("flox: node store: {path} is valid but its record {record} is missing or unreadable")]
    MissingRecord { path: String, record: PathBuf },
}

impl FetchError {
    pub(crate) fn store(dir: &std::path::Path, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FetchError {
        let dir = dir.to_path_buf();
        let what = what.into();
        move |source| FetchError::Store { dir, what, source }
    }
}
