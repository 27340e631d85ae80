//! A catalog's signing key: a Nix ed25519 secret key file (`NAME:base64(64 bytes)`, as
//! `nix-store --generate-binary-cache-key` writes it: the 32-byte seed, then the public key),
//! read only to name and check it; Nix itself signs with the file (`secret-key=`). The public
//! key (`NAME:base64(32 bytes)`) is what readers of the catalog are told to trust.
//!
//! Errors name the file and what is wrong, never a byte of the key.
use std::io::Read;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// A secret key file checked to be a Nix ed25519 key whose halves agree.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey {
    /// The key file (handed to Nix as `secret-key=`).
    pub file: PathBuf,
    /// The key's name, e.g. `acme-1`.
    pub name: String,
    /// `NAME:base64(public key)`.
    pub public_key: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("file", &self.file).field("public_key", &self.public_key).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing key {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "signing key {path} is not a Nix secret key: {reason}; accepted: NAME:BASE64 of 64 bytes, as `nix-store --generate-binary-cache-key NAME SECRET PUBLIC` writes it"
    )]
    Format { path: PathBuf, reason: &'static str },
}

/// Larger than any key file; more is not read.
const MAX_KEY_FILE: u64 = 4096;

impl SigningKey {
    pub fn read(path: &Path) -> Result<SigningKey, KeyError> {
        let read = |source| KeyError::Read { path: path.to_owned(), source };
        let mut text = String::new();
        std::fs::File::open(path).map_err(read)?.take(MAX_KEY_FILE).read_to_string(&mut text).map_err(read)?;
        let (name, public) =
            public_from_secret(text.trim()).map_err(|reason| KeyError::Format { path: path.to_owned(), reason })?;
        Ok(SigningKey { file: path.to_owned(), public_key: format!("{name}:{public}"), name })
    }
}

/// (name, base64 public key) of a secret key's text; Err says what is wrong, never the bytes.
fn public_from_secret(text: &str) -> Result<(String, String), &'static str> {
    let (name, secret) = text.split_once(':').ok_or("there is no ':' between name and key")?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return Err("the name is empty or has characters other than [A-Za-z0-9._-]");
    }
    let bytes = STANDARD.decode(secret).map_err(|_| "the key is not base64")?;
    let bytes: [u8; 64] = bytes.try_into().map_err(|_| "the key is not 64 bytes long")?;
    let seed: [u8; 32] = bytes[..32].try_into().expect("32 bytes");
    let derived = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
    if derived.as_bytes()[..] != bytes[32..] {
        return Err("its public half does not belong to its secret half");
    }
    Ok((name.to_owned(), STANDARD.encode(&bytes[32..])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix_keys_give_their_public_key_and_broken_ones_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let (sec, public) = (dir.path().join("sec"), dir.path().join("pub"));
        let ok = std::process::Command::new("nix-store")
            .args(["--generate-binary-cache-key", "acme-1"])
            .arg(&sec)
            .arg(&public)
            .status()
            .unwrap();
        assert!(ok.success());
        let key = SigningKey::read(&sec).unwrap();
        assert_eq!(key.public_key, std::fs::read_to_string(&public).unwrap().trim());
        assert_eq!(key.name, "acme-1");
        // The public key file is not a secret key; halves that do not match are refused.
        let err = SigningKey::read(&public).unwrap_err().to_string();
        assert!(err.contains("not 64 bytes long") && err.contains("accepted: NAME:BASE64"), "{err}");
        let mut bytes =
            STANDARD.decode(std::fs::read_to_string(&sec).unwrap().trim().split_once(':').unwrap().1).unwrap();
        bytes[40] ^= 1;
        let bad = dir.path().join("bad");
        std::fs::write(&bad, format!("acme-1:{}", STANDARD.encode(&bytes))).unwrap();
        let err = SigningKey::read(&bad).unwrap_err().to_string();
        assert!(err.contains("does not belong"), "{err}");
        assert!(!err.contains(&STANDARD.encode(&bytes)[..20]));
        assert!(SigningKey::read(&dir.path().join("missing")).unwrap_err().to_string().contains("missing"));
    }
}
