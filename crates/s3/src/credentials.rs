//! The node's AWS credentials for `s3://` substituters. They come from the node, never from a
//! pod, in this order (the standard AWS chain, as Nix's S3 store reads it, minus instance
//! metadata and web identity, which this client does not query):
//! 1. the node config's `s3_credentials_file` (an AWS shared-credentials file) with the store's
//!    `profile`, else `AWS_PROFILE`, else `default`;
//! 2. `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (/ `AWS_SESSION_TOKEN`) in the environment;
//! 3. `AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`, with the same profile.
//!
//! Secrets never reach a log or an error: [`Credentials`]' Debug shows the key id only, and
//! errors name the file and the profile, never a line of it.
//!
//! The credentials file is a small INI subset (`[profile]` and `key = value` lines); it is
//! parsed here in a few lines rather than with an INI crate so that its bytes are read bounded
//! and never echoed.
use std::io::Read;
use std::path::{Path, PathBuf};

/// An access key pair (and session token).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("S3 credentials file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("S3 credentials file {path} is over 64 KiB: not an AWS credentials file")]
    TooLarge { path: PathBuf },
    #[error(
        "S3 credentials file {path}: profile [{profile}] has no aws_access_key_id and aws_secret_access_key (profiles in the file: {found})"
    )]
    NoProfile { path: PathBuf, profile: String, found: String },
}

const MAX_FILE: u64 = 64 * 1024;

impl Credentials {
    /// From the environment's `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`.
    pub fn from_env() -> Option<Credentials> {
        let id = std::env::var("AWS_ACCESS_KEY_ID").ok().filter(|v| !v.is_empty())?;
        let secret = std::env::var("AWS_SECRET_ACCESS_KEY").ok().filter(|v| !v.is_empty())?;
        let token = std::env::var("AWS_SESSION_TOKEN").ok().filter(|v| !v.is_empty());
        Some(Credentials { access_key_id: id, secret_access_key: secret, session_token: token })
    }

    /// `profile` of the shared-credentials file at `path`.
    pub fn from_file(path: &Path, profile: &str) -> Result<Credentials, CredentialsError> {
        let file = std::fs::File::open(path).map_err(|source| CredentialsError::Read { path: path.into(), source })?;
        let mut text = String::new();
        file.take(MAX_FILE + 1)
            .read_to_string(&mut text)
            .map_err(|source| CredentialsError::Read { path: path.into(), source })?;
        if text.len() as u64 > MAX_FILE {
            return Err(CredentialsError::TooLarge { path: path.into() });
        }
        let profiles = parse_profiles(&text);
        let found = profiles.iter().map(|(name, _)| format!("[{name}]")).collect::<Vec<_>>().join(", ");
        profiles.into_iter().find(|(name, _)| name == profile).and_then(|(_, c)| c).ok_or_else(|| {
            CredentialsError::NoProfile {
                path: path.into(),
                profile: profile.into(),
                found: if found.is_empty() { "none".into() } else { found },
            }
        })
    }

    /// The chain above: Ok(None) when nothing gives credentials (anonymous requests: a public
    /// bucket).
    pub fn resolve(node_file: Option<&Path>, profile: Option<&str>) -> Result<Option<Credentials>, CredentialsError> {
        let env_profile = std::env::var("AWS_PROFILE").ok().filter(|p| !p.is_empty());
        let profile = profile.map(str::to_string).or(env_profile).unwrap_or_else(|| "default".into());
        if let Some(path) = node_file {
            return Credentials::from_file(path, &profile).map(Some);
        }
        if let Some(c) = Credentials::from_env() {
            return Ok(Some(c));
        }
        let shared = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".aws/credentials")));
        match shared {
            Some(path) if path.is_file() => Credentials::from_file(&path, &profile).map(Some),
            _ => Ok(None),
        }
    }
}

/// A `[name]` section being read: its key id, secret and session token so far.
#[derive(Default)]
struct Section {
    name: String,
    id: Option<String>,
    secret: Option<String>,
    token: Option<String>,
}

impl Section {
    fn finish(self) -> (String, Option<Credentials>) {
        let creds = match (self.id, self.secret) {
            (Some(id), Some(secret)) => {
                Some(Credentials { access_key_id: id, secret_access_key: secret, session_token: self.token })
            }
            _ => None,
        };
        (self.name, creds)
    }
}

/// `[name]` sections and the key pair of each (None when a section lacks one).
fn parse_profiles(text: &str) -> Vec<(String, Option<Credentials>)> {
    let mut out = Vec::new();
    let mut current: Option<Section> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            out.extend(current.take().map(Section::finish));
            let name = name.trim().strip_prefix("profile ").unwrap_or(name.trim()).trim();
            current = Some(Section { name: name.to_string(), ..Section::default() });
            continue;
        }
        let (Some(c), Some((key, value))) = (current.as_mut(), line.split_once('=')) else { continue };
        let value = Some(value.trim().to_string()).filter(|v| !v.is_empty());
        match key.trim() {
            "aws_access_key_id" => c.id = value,
            "aws_secret_access_key" => c.secret = value,
            "aws_session_token" => c.token = value,
            _ => {}
        }
    }
    out.extend(current.take().map(Section::finish));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_of_a_shared_credentials_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        std::fs::write(
            &path,
            "# a comment\n[default]\naws_access_key_id = AKIDEFAULT\naws_secret_access_key = s3cr3t-default\n\n\
             [ci]\naws_access_key_id=AKICI\naws_secret_access_key=s3cr3t-ci\naws_session_token = tok\n[empty]\nregion = x\n",
        )
        .unwrap();
        let d = Credentials::from_file(&path, "default").unwrap();
        assert_eq!((d.access_key_id.as_str(), d.secret_access_key.as_str()), ("AKIDEFAULT", "s3cr3t-default"));
        let ci = Credentials::from_file(&path, "ci").unwrap();
        assert_eq!(ci.session_token.as_deref(), Some("tok"));
        let e = Credentials::from_file(&path, "prod").unwrap_err().to_string();
        assert!(e.contains("profile [prod]") && e.contains("[default], [ci], [empty]"), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
        let e = Credentials::from_file(&path, "empty").unwrap_err().to_string();
        assert!(e.contains("profile [empty] has no aws_access_key_id"), "{e}");
        assert!(!format!("{ci:?}").contains("s3cr3t") && !format!("{ci:?}").contains("tok\""), "{ci:?}");
        let e = Credentials::from_file(&dir.path().join("missing"), "default").unwrap_err().to_string();
        assert!(e.starts_with("S3 credentials file ") && e.contains("missing"), "{e}");
    }
}
