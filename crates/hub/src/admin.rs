//! `hub init`, `hub token` and `hub grant`: the hub root's setup and its auth table.
use std::fs;
use std::time::Duration;

use crate::auth;
use crate::cache;
use crate::config::{random_bytes, HubConfig, HubPaths};
use crate::error::HubServerError;
use crate::names::validate_owner;

/// Creates what is missing of a hub root; keeps everything that exists (idempotent).
pub fn init(paths: &HubPaths) -> Result<(), HubServerError> {
    for dir in [paths.root.clone(), paths.git_root(), paths.cache()] {
        fs::create_dir_all(&dir).map_err(HubServerError::io(&dir))?;
    }
    let info = paths.cache().join("nix-cache-info");
    if !info.exists() {
        fs::write(&info, cache::NIX_CACHE_INFO).map_err(HubServerError::io(&info))?;
    }
    if !paths.secret_key().exists() || !paths.public_key().exists() {
        cache::generate_key(&paths.secret_key(), &paths.public_key())?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(paths.secret_key(), fs::Permissions::from_mode(0o600))
            .map_err(HubServerError::io(paths.secret_key()))?;
    }
    if !paths.hub_json().exists() {
        paths.write(&HubConfig::new(&random_bytes()?))?;
    }
    paths.load()?;
    Ok(())
}

/// How long a minted token lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    ExpiresIn(Duration),
    /// Already expired (for tests of the refusal path).
    Expired,
    /// Opaque tokens only: no expiry.
    Forever,
}

/// Mints a token for `handle`: an HS256 JWT, or an opaque `flox_...` token recorded in hub.json.
pub fn mint_token(paths: &HubPaths, handle: &str, lifetime: Lifetime, opaque: bool) -> Result<String, HubServerError> {
    validate_handle(handle)?;
    let now = crate::now_unix();
    let exp = match lifetime {
        Lifetime::ExpiresIn(d) => Some(now.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))),
        Lifetime::Expired => Some(now - 3600),
        Lifetime::Forever => None,
    };
    if opaque {
        let token = auth::new_opaque_token(&random_bytes()?);
        let record = auth::OpaqueTokenRecord { handle: handle.to_owned(), expires_at: exp };
        paths.update(|c| {
            c.tokens.insert(auth::opaque_token_key(&token), record);
            Ok(())
        })?;
        Ok(token)
    } else {
        let config = paths.load()?;
        let exp = exp.expect("JWTs always get an expiry");
        Ok(auth::mint_jwt(&config.secret_bytes(), handle, exp, now))
    }
}

/// A handle is an owner name (FloxHub users own environments under their handle).
fn validate_handle(handle: &str) -> Result<(), HubServerError> {
    imageless_core::env_ref::validate_owner(handle)
        .map_err(|source| HubServerError::Handle { value: handle.to_owned(), source })
}

/// Lets `handle` read `owner`'s private environments.
pub fn grant(paths: &HubPaths, owner: &str, handle: &str) -> Result<(), HubServerError> {
    validate_owner(owner)?;
    validate_handle(handle)?;
    paths.update(|c| {
        c.readers.entry(owner.to_owned()).or_default().insert(handle.to_owned());
        Ok(())
    })
}
