//! The hub's Nix binary cache: static files under `DIR/cache`, filled and signed with the
//! `nix` tools, served read-only.
use std::path::{Path, PathBuf};
use std::process::Command;

use imageless_core::store_path::StorePath;

use crate::error::HubServerError;
use crate::process::run;

/// The `nix-cache-info` the hub writes at init.
pub const NIX_CACHE_INFO: &str = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n";
/// How NARs are compressed in the cache, as public binary caches do (they serve `.nar.xz` or
/// `.nar.zst`): zstd compresses a few hundred MB in seconds where xz takes minutes, and
/// every Nix that substitutes from the hub reads it.
pub const NAR_COMPRESSION: &str = "zstd";
/// The signing key's name (as in `imageless-hub-1:<base64>`).
pub const KEY_NAME: &str = "imageless-hub-1";

/// Maps a request path below `/cache/` to a file in the cache, or None when the path could
/// escape the cache or names nothing a binary cache holds.
pub fn resolve_cache_path(cache: &Path, rel: &str) -> Option<PathBuf> {
    if rel.is_empty() || rel.len() > 300 {
        return None;
    }
    let segments: Vec<&str> = rel.split('/').collect();
    let ok = segments.len() <= 2
        && segments.iter().all(|s| {
            !s.is_empty() && !s.starts_with('.') && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
        });
    ok.then(|| segments.iter().fold(cache.to_path_buf(), |p, s| p.join(s)))
}

/// The content type Nix's own binary cache servers use for each kind of file.
pub fn content_type(rel: &str) -> &'static str {
    if rel == "nix-cache-info" {
        "text/x-nix-cache-info"
    } else if rel.ends_with(".narinfo") {
        "text/x-nix-narinfo"
    } else if rel.ends_with(".nar") || rel.contains(".nar.") {
        "application/x-nix-nar"
    } else if rel.ends_with(".ls") {
        "application/json"
    } else {
        "application/octet-stream"
    }
}

/// `nix-store --generate-binary-cache-key imageless-hub-1 sec pub`.
pub fn generate_key(secret: &Path, public: &Path) -> Result<(), HubServerError> {
    run(Command::new("nix-store").arg("--generate-binary-cache-key").arg(KEY_NAME).arg(secret).arg(public), None)?;
    Ok(())
}

fn cache_url(cache: &Path) -> String {
    format!("file://{}", cache.display())
}

/// Copies the closure of `paths` into the cache (NARs compressed with [`NAR_COMPRESSION`])
/// and signs every path of that closure in the cache with the hub's key.
pub fn copy_and_sign(cache: &Path, secret_key: &Path, paths: &[StorePath]) -> Result<(), HubServerError> {
    if paths.is_empty() {
        return Ok(());
    }
    for p in paths {
        if !Path::new(p.as_str()).exists() {
            return Err(HubServerError::InvalidInput {
                what: "store path",
                value: p.to_string(),
                accepted:
                    "paths present in this machine's /nix/store (build or realise them first, or pass --no-paths)",
            });
        }
    }
    run(
        Command::new("nix")
            .args(["--extra-experimental-features", "nix-command", "copy", "--to"])
            .arg(format!("{}?compression={NAR_COMPRESSION}", cache_url(cache)))
            .args(paths.iter().map(StorePath::as_str)),
        None,
    )?;
    run(
        Command::new("nix")
            .args(["--extra-experimental-features", "nix-command", "store", "sign", "--store"])
            .arg(cache_url(cache))
            .arg("--key-file")
            .arg(secret_key)
            .arg("--recursive")
            .args(paths.iter().map(StorePath::as_str)),
        None,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_paths_stay_inside() {
        let c = Path::new("/hub/cache");
        assert_eq!(resolve_cache_path(c, "nix-cache-info"), Some(c.join("nix-cache-info")));
        assert_eq!(resolve_cache_path(c, "nar/abc.nar"), Some(c.join("nar/abc.nar")));
        for bad in ["", "../hub.json", "nar/../../x", "a/b/c", ".hidden", "nar//x", "x%2f"] {
            assert_eq!(resolve_cache_path(c, bad), None, "{bad}");
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("nix-cache-info"), "text/x-nix-cache-info");
        assert_eq!(content_type("abc.narinfo"), "text/x-nix-narinfo");
        assert_eq!(content_type("nar/x.nar"), "application/x-nix-nar");
        assert_eq!(content_type("nar/x.nar.xz"), "application/x-nix-nar");
    }
}
