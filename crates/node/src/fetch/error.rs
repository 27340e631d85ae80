//! What can go wrong while realizing a closure from binary caches, in two layers:
//! - [`SourceError`]: what one substituter did wrong with one request (down, stalled, a 5xx,
//!   a bad narinfo, a corrupt NAR). Never fatal on its own: the fetch goes on with the next
//!   substituter that has the path.
//! - [`FetchError`]: what the caller sees. A path no substituter could deliver is one
//!   [`FetchError::Undeliverable`] listing, per substituter, why; the other variants are the
//!   node's own problems (config, store), which no other substituter can fix.
use std::path::PathBuf;

/// One substituter's failure on one request (its URL is in the attempt or the check that holds
/// it). Texts name the URL and what was expected, never a token.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("unavailable since an earlier failure ({reason}); asked again after {retry_in_secs} s")]
    Unavailable { reason: String, retry_in_secs: u64 },
    /// Found down by this pull (its check or another path's request): the failure itself.
    #[error("{reason}")]
    Down { reason: String },
    #[error("GET {url} answered HTTP 404")]
    NotFound { url: String },
    #[error("GET {url} answered HTTP {status}")]
    Http { url: String, status: u16 },
    /// An S3 store refused a request: a missing bucket, refused credentials.
    #[error("GET {object}: S3 {store} answered {code}: {message}")]
    S3 { object: String, store: String, code: String, message: String },
    #[error("GET {url} failed: {detail}")]
    Network { url: String, detail: String },
    #[error("GET {url}: no answer within {secs:.1} s")]
    Stalled { url: String, secs: f64 },
    #[error("GET {url}: the download stalled (no data for {secs:.1} s)")]
    BodyStalled { url: String, secs: f64 },
    #[error("did not answer nix-cache-info within {ms} ms of a substituter that did; skipped for this pull")]
    Slow { ms: u64 },
    #[error("nix-cache-info says StoreDir {found}, expected /nix/store")]
    WrongStoreDir { found: String },
    #[error("narinfo is not valid: {detail}")]
    BadNarinfo { detail: String },
    #[error("narinfo's References differ from those of the narinfo the closure was planned with")]
    OtherReferences,
    #[error("not signed by a trusted key (signed by: {signers}; trusted: {trusted})")]
    UntrustedKey { signers: String, trusted: String },
    #[error("bad signature by trusted key {key}")]
    BadSignature { key: String },
    #[error("unsupported compression {compression:?} (accepted: xz, zstd, bzip2, none)")]
    UnsupportedCompression { compression: String },
    #[error("NAR ({compression}) does not decompress: {source}")]
    Decompress { compression: String, source: std::io::Error },
    #[error("truncated NAR: the stream ended after {got} of {expected} bytes")]
    TruncatedNar { got: u64, expected: u64 },
    #[error("NAR is larger than its NarSize {expected}")]
    NarTooLong { expected: u64 },
    #[error("NarSize mismatch: narinfo says {expected} bytes, the NAR has {got}")]
    NarSizeMismatch { expected: u64, got: u64 },
    #[error("NarHash mismatch: narinfo says {expected}, the NAR hashes to {got}")]
    NarHashMismatch { expected: String, got: String },
    #[error("NAR is not valid: {detail}")]
    BadNar { detail: String },
}

/// The kinds a user sorts failures into (the first word of each attempt in an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFault {
    /// Refused, timed out, stalled, 5xx: the substituter is marked unavailable for a while.
    Down,
    /// 404: it does not have the path.
    Missing,
    /// It served a NAR that fails its checks: discarded, counted against the substituter.
    Corrupt,
    /// Its narinfo is not signed by a trusted key, or the signature is bad.
    Unsigned,
    /// It answered something that is not a Nix binary cache answer for /nix/store.
    Invalid,
}

impl SourceFault {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceFault::Down => "down",
            SourceFault::Missing => "not found",
            SourceFault::Corrupt => "corrupt",
            SourceFault::Unsigned => "unsigned",
            SourceFault::Invalid => "invalid",
        }
    }
}

impl SourceError {
    pub fn fault(&self) -> SourceFault {
        use SourceError::*;
        match self {
            Unavailable { .. } | Down { .. } | Network { .. } | Stalled { .. } | BodyStalled { .. } | Slow { .. } => {
                SourceFault::Down
            }
            Http { status: 500.., .. } => SourceFault::Down,
            Http { .. } => SourceFault::Invalid,
            NotFound { .. } => SourceFault::Missing,
            UntrustedKey { .. } | BadSignature { .. } => SourceFault::Unsigned,
            WrongStoreDir { .. } | BadNarinfo { .. } | OtherReferences | UnsupportedCompression { .. } | S3 { .. } => {
                SourceFault::Invalid
            }
            Decompress { .. }
            | TruncatedNar { .. }
            | NarTooLong { .. }
            | NarSizeMismatch { .. }
            | NarHashMismatch { .. }
            | BadNar { .. } => SourceFault::Corrupt,
        }
    }

    /// Whether the substituter as a whole is to be avoided for a while (not just this path):
    /// it could not be asked (refused, timed out, stalled) or failed on its side (5xx).
    pub fn marks_down(&self) -> bool {
        matches!(
            self,
            SourceError::Http { status: 500.., .. }
                | SourceError::Network { .. }
                | SourceError::Stalled { .. }
                | SourceError::BodyStalled { .. }
        )
    }
}

/// One substituter's part in the story of one path.
#[derive(Debug)]
pub struct Attempt {
    pub substituter: String,
    pub error: SourceError,
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.substituter, self.error.fault().as_str(), self.error)
    }
}

/// Attempts joined for one error line.
#[derive(Debug, Default)]
pub struct Attempts(pub Vec<Attempt>);

impl std::fmt::Display for Attempts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no substituter is configured");
        }
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("flox: node config: {field} = {value:?} is not valid; accepted: {accepted}")]
    Config { field: &'static str, value: String, accepted: &'static str },
    /// An `s3://` substituter's URL or the node's S3 credentials (the message names the file
    /// and profile, never a secret).
    #[error("flox: node config: substituters: {detail}")]
    S3Config { detail: String },
    #[error("flox: {path} could not be fetched from any substituter: {attempts}")]
    Undeliverable { path: String, attempts: Attempts },
    /// Locating a private catalog package's stores.
    #[error(transparent)]
    Catalog(#[from] super::catalog::CatalogError),
    /// A path of a private catalog package that no substituter (the catalog's stores included)
    /// delivered.
    #[error("flox: package {package}: {detail}")]
    Package { package: String, detail: String },
    /// One substituter's check (doctor's `nix-cache-info`), outside any path.
    #[error("flox: substituter {substituter}: {source}")]
    Substituter { substituter: String, source: SourceError },
    #[error("flox: node store {dir}: {what}: {source}")]
    Store { dir: PathBuf, what: String, source: std::io::Error },
    #[error("flox: node store: {path} is valid but its record {record} is missing or unreadable")]
    MissingRecord { path: String, record: PathBuf },
    /// The caller's [`super::Progress::admit`] refused the planned fetch (e.g. it does not fit
    /// on the store's filesystem); nothing was downloaded.
    #[error("{reason}")]
    Refused { reason: String },
}

impl FetchError {
    pub(crate) fn store(dir: &std::path::Path, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FetchError {
        let dir = dir.to_path_buf();
        let what = what.into();
        move |source| FetchError::Store { dir, what, source }
    }

    /// The per-substituter story of an undeliverable path (empty for other errors).
    pub fn attempts(&self) -> &[Attempt] {
        match self {
            FetchError::Undeliverable { attempts, .. } => &attempts.0,
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_undeliverable_path_lists_each_substituter_and_why() {
        let err = FetchError::Undeliverable {
            path: "/nix/store/00000000000000000000000000000000-x".into(),
            attempts: Attempts(vec![
                Attempt {
                    substituter: "http://a".into(),
                    error: SourceError::Network {
                        url: "http://a/nix-cache-info".into(),
                        detail: "Connection refused".into(),
                    },
                },
                Attempt {
                    substituter: "http://b".into(),
                    error: SourceError::NotFound { url: "http://b/0.narinfo".into() },
                },
                Attempt { substituter: "http://c".into(), error: SourceError::TruncatedNar { got: 5, expected: 9 } },
                Attempt {
                    substituter: "http://d".into(),
                    error: SourceError::UntrustedKey { signers: "k-1".into(), trusted: "t-1".into() },
                },
            ]),
        };
        assert_eq!(
            err.to_string(),
            "flox: /nix/store/00000000000000000000000000000000-x could not be fetched from any substituter: \
             http://a: down: GET http://a/nix-cache-info failed: Connection refused; \
             http://b: not found: GET http://b/0.narinfo answered HTTP 404; \
             http://c: corrupt: truncated NAR: the stream ended after 5 of 9 bytes; \
             http://d: unsigned: not signed by a trusted key (signed by: k-1; trusted: t-1)"
        );
    }

    #[test]
    fn only_outages_mark_a_substituter_down() {
        let net = SourceError::Network { url: "u".into(), detail: "refused".into() };
        assert!(net.marks_down());
        assert!(SourceError::Http { url: "u".into(), status: 503 }.marks_down());
        assert!(!SourceError::Http { url: "u".into(), status: 403 }.marks_down());
        assert!(SourceError::Stalled { url: "u".into(), secs: 1.0 }.marks_down());
        assert!(!SourceError::NotFound { url: "u".into() }.marks_down());
        assert!(!SourceError::TruncatedNar { got: 1, expected: 2 }.marks_down());
    }
}
