//! Owner handles and environment names, validated before they touch a path, a git ref or a URL,
//! by the rules the node applies to `flox.dev/environment` (`imageless_core::env_ref`), so the
//! hub never serves an environment a pod could not name.
use imageless_core::env_ref;

use crate::error::HubServerError;

/// A FloxHub owner (user or organisation handle).
pub fn validate_owner(owner: &str) -> Result<(), HubServerError> {
    Ok(env_ref::validate_owner(owner)?)
}

/// An environment name, which is also the floxmeta branch name.
pub fn validate_env_name(name: &str) -> Result<(), HubServerError> {
    Ok(env_ref::validate_name(name)?)
}

/// Splits and validates `owner/name`.
pub fn parse_env_ref(s: &str) -> Result<(String, String), HubServerError> {
    let Some((owner, name)) = s.split_once('/') else {
        return Err(HubServerError::InvalidInput {
            what: "environment",
            value: s.to_owned(),
            accepted: "OWNER/NAME, e.g. alice/hello",
        });
    };
    validate_owner(owner)?;
    validate_env_name(name)?;
    Ok((owner.to_owned(), name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_flox_like_names() {
        assert_eq!(parse_env_ref("alice/hello-1.x_y").unwrap(), ("alice".into(), "hello-1.x_y".into()));
    }

    #[test]
    fn rejects_paths_and_ref_tricks() {
        let too_long = "n".repeat(env_ref::MAX_PART_LEN + 1);
        for bad in ["", "..", ".hidden", "-x", "a/b", "a b", "x.lock", "a\0", "ä", &too_long] {
            assert!(validate_owner(bad).is_err(), "{bad:?}");
            assert!(validate_env_name(bad).is_err(), "{bad:?}");
        }
        assert!(parse_env_ref("alice").is_err());
        assert!(parse_env_ref("alice/../x").is_err());
    }
}
