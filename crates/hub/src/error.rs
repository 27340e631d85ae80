//! The one error type of the hub library. Every variant names what was wrong and, for bad input,
//! what is accepted. No variant ever carries a token.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum HubServerError {
    #[error("{what} {value:?} is invalid: {accepted}")]
    InvalidInput { what: &'static str, value: String, accepted: &'static str },

    /// An owner or environment name outside `imageless_core::env_ref`'s rules (the message
    /// names the part, the value and what is accepted).
    #[error(transparent)]
    Name(#[from] imageless_core::env_ref::EnvRefError),

    #[error("handle {value:?} is not a FloxHub handle (handles follow the rules for owners): {source}")]
    Handle { value: String, source: imageless_core::env_ref::EnvRefError },

    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{path}: not valid hub.json: {source}")]
    ConfigFormat { path: PathBuf, source: serde_json::Error },

    #[error("{path} is missing: run `imageless hub init --root {root}` first")]
    NotInitialized { path: PathBuf, root: String },

    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed { command: String, status: String, stderr: String },

    #[error("could not start `{program}`: {source}")]
    Spawn { program: String, source: std::io::Error },

    #[error("lock file {path}: {message}")]
    Lockfile { path: PathBuf, message: String },

    #[error("environment {env}: {message}")]
    Generations { env: String, message: String },

    /// A TLS certificate or key file that cannot be used (the message never holds key bytes).
    #[error("TLS file {path}: {message}")]
    Tls { path: PathBuf, message: String },

    /// A catalog's packages or store (publish-package, the store-info endpoint).
    #[error("catalog {catalog}: {message}")]
    Catalog { catalog: String, message: String },

    #[error("listen address {addr:?}: {message}")]
    Listen { addr: String, message: String },
}

impl HubServerError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> HubServerError {
        let path = path.into();
        move |source| HubServerError::Io { path, source }
    }
}
