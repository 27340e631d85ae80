//! The FloxHub token from the volume a pod mounts at `/var/run/secrets/flox.dev`.
//!
//! That volume is normally a Kubernetes secret (read-only to the pod), but nothing stops a pod
//! from mounting an emptyDir there and planting whatever it likes. The token is therefore read
//! with [`crate::pod_file::read_beneath`]: only from inside the volume's host directory, a
//! regular file, at most [`TOKEN_LIMIT`] bytes, never blocking. A token a pod planted in its
//! own volume is its own business and is used; anything it could not already read is not.
//! Every error names the file as the container sees it, never the host directory.
use std::path::Path;

use imageless_core::container_paths::TOKEN_FILE;
use imageless_core::token::{Token, TokenParseError};

use crate::pod_file::{self, PodFileError};

/// A FloxHub token (an opaque `flox_…` or a JWT) is far smaller than this.
pub const TOKEN_LIMIT: u64 = 16 * 1024;

/// The token volume as the spec gives it: the host directory the runtime reads and the
/// container path it is mounted at (the only path errors may name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretVolume<'a> {
    pub host_dir: &'a Path,
    pub container_dir: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("flox: {path} is a symlink leaving the secret volume; only links inside the volume mounted at {volume} are followed")]
    LeavesVolume { path: String, volume: String },
    #[error("flox: {path} {problem}; mount the FloxHub token secret (a file holding the token) at {volume}")]
    Unreadable { path: String, volume: String, problem: PodFileError },
    #[error("flox: {path} is not a FloxHub token (an access token flox_... or a JWT): {}; create the secret from `flox auth token`", why_not(.reason))]
    NotAToken { path: String, reason: TokenParseError },
}

/// The reason alone, without TokenParseError's own "floxhub-token is …" preamble.
fn why_not(e: &TokenParseError) -> String {
    match e {
        TokenParseError::Empty => "it is empty".into(),
        TokenParseError::Unrecognised { reason } => (*reason).into(),
        TokenParseError::MissingClaims { reason } => format!("it is a JWT without the FloxHub claims: {reason}"),
    }
}

impl SecretVolume<'_> {
    fn token_path(&self) -> String {
        format!("{}/{TOKEN_FILE}", self.container_dir.trim_end_matches('/'))
    }

    /// The token, or `None` when the volume holds no `floxhub-token`.
    pub fn read_token(&self) -> Result<Option<Token>, TokenFileError> {
        let path = self.token_path();
        let volume = self.container_dir.to_string();
        let bytes = match pod_file::read_beneath(self.host_dir, TOKEN_FILE, TOKEN_LIMIT) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(None),
            Err(PodFileError::LeavesDirectory) => return Err(TokenFileError::LeavesVolume { path, volume }),
            Err(problem) => return Err(TokenFileError::Unreadable { path, volume, problem }),
        };
        // Not UTF-8 is just another way of not being a token; the bytes are never shown.
        let text = String::from_utf8(bytes)
            .map_err(|_| TokenParseError::Unrecognised { reason: "it is not UTF-8 text" })
            .map_err(|reason| TokenFileError::NotAToken { path: path.clone(), reason })?;
        Token::parse(&text).map(Some).map_err(|reason| TokenFileError::NotAToken { path, reason })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn volume(dir: &Path) -> SecretVolume<'_> {
        SecretVolume { host_dir: dir, container_dir: "/var/run/secrets/flox.dev" }
    }

    #[test]
    fn errors_name_the_container_path_only() {
        let root = tempfile::tempdir().unwrap();
        let vol = root.path().join("kubernetes.io~empty-dir").join("secrets");
        std::fs::create_dir_all(&vol).unwrap();
        std::fs::write(root.path().join("other-tenant-token"), "flox_other_tenant_secret").unwrap();
        let host = root.path().display().to_string();
        type Plant = Box<dyn Fn(&Path)>;
        let cases: Vec<(Plant, &str)> = vec![
            (
                Box::new(|v: &Path| symlink(v.join("../../other-tenant-token"), v.join(TOKEN_FILE)).unwrap()),
                "flox: /var/run/secrets/flox.dev/floxhub-token is a symlink leaving the secret volume; only links inside the volume mounted at /var/run/secrets/flox.dev are followed",
            ),
            (
                Box::new(|v: &Path| std::fs::create_dir(v.join(TOKEN_FILE)).unwrap()),
                "flox: /var/run/secrets/flox.dev/floxhub-token is not a regular file; mount the FloxHub token secret (a file holding the token) at /var/run/secrets/flox.dev",
            ),
            (
                Box::new(|v: &Path| std::fs::File::create(v.join(TOKEN_FILE)).unwrap().set_len(1 << 30).unwrap()),
                "flox: /var/run/secrets/flox.dev/floxhub-token is larger than 16 KiB; mount the FloxHub token secret (a file holding the token) at /var/run/secrets/flox.dev",
            ),
            (
                Box::new(|v: &Path| std::fs::write(v.join(TOKEN_FILE), "root:x:0:0:root:/root:/bin/bash\n").unwrap()),
                "flox: /var/run/secrets/flox.dev/floxhub-token is not a FloxHub token (an access token flox_... or a JWT): it does not start with flox_ and does not have the three dot-separated parts of a JWT; create the secret from `flox auth token`",
            ),
        ];
        for (plant, want) in cases {
            let _ = std::fs::remove_dir_all(&vol);
            std::fs::create_dir_all(&vol).unwrap();
            plant(&vol);
            let err = volume(&vol).read_token().unwrap_err().to_string();
            assert_eq!(err, want);
            assert!(!err.contains(&host), "host path in {err}");
            assert!(!err.contains("root:x") && !err.contains("other_tenant"), "content in {err}");
        }
    }

    #[test]
    fn a_token_in_the_pods_own_volume_is_used() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join(TOKEN_FILE), "flox_pat_mine\n").unwrap();
        let token = volume(root.path()).read_token().unwrap().unwrap();
        assert_eq!(token.expose(), "flox_pat_mine");
        let empty = tempfile::tempdir().unwrap();
        assert!(volume(empty.path()).read_token().unwrap().is_none());
    }
}
