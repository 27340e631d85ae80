//! Owner handles and environment names, validated before they touch a path, a git ref or a URL.
use crate::error::HubError;

const ACCEPTED: &str = "1 to 100 characters from A-Z a-z 0-9 . _ -, not starting with '.' or '-'";

fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && !s.starts_with('.')
        && !s.starts_with('-')
        && !s.ends_with(".lock")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// A FloxHub owner (user or organisation handle).
pub fn validate_owner(owner: &str) -> Result<(), HubError> {
    if is_valid_name(owner) {
        Ok(())
    } else {
        Err(HubError::InvalidInput {
            what: "owner",
            value: owner.to_owned(),
            accepted: ACCEPTED,
        })
    }
}

/// An environment name, which is also the floxmeta branch name.
pub fn validate_env_name(name: &str) -> Result<(), HubError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(HubError::InvalidInput {
            what: "environment name",
            value: name.to_owned(),
            accepted: ACCEPTED,
        })
    }
}

/// Splits and validates `owner/name`.
pub fn parse_env_ref(s: &str) -> Result<(String, String), HubError> {
    let Some((owner, name)) = s.split_once('/') else {
        return Err(HubError::InvalidInput {
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
        assert_eq!(
            parse_env_ref("alice/hello-1.x_y").unwrap(),
            ("alice".into(), "hello-1.x_y".into())
        );
    }

    #[test]
    fn rejects_paths_and_ref_tricks() {
        for bad in [
            "", "..", ".hidden", "-x", "a/b", "a b", "x.lock", "a\0", "ä",
        ] {
            assert!(validate_owner(bad).is_err(), "{bad:?}");
            assert!(validate_env_name(bad).is_err(), "{bad:?}");
        }
        assert!(parse_env_ref("alice").is_err());
        assert!(parse_env_ref("alice/../x").is_err());
    }
}
