//! FloxHub tokens: recognised, inspected for handle and expiry, and never printed.
//!
//! Flox accepts two kinds (reference §1.7): opaque access tokens starting with `flox_`
//! (personal `flox_pat_…`, service `flox_sat_…`), which are never parsed, and JWTs whose
//! payload carries the FloxHub handle and an expiry. Like the CLI we decode a JWT's payload
//! without checking its signature: the hub checks it; we only want the handle and to refuse
//! an expired token early with a clear message.
//!
//! The secret is held in [`Token`], whose `Debug` and `Display` print a redaction, so a token
//! cannot leak through a log line, an error or a `{:?}` of a struct that contains it. The one
//! place that sends it to the hub calls [`Token::expose`].

use std::fmt;

use base64::Engine;
use sha2::{Digest, Sha256};

/// Prefix of FloxHub's opaque access tokens (`flox_pat_…`, `flox_sat_…`).
pub const ACCESS_TOKEN_PREFIX: &str = "flox_";

/// The JWT claim holding the FloxHub handle.
pub const HANDLE_CLAIM: &str = "https://flox.dev/handle";

/// Domain separation for [`Token::fingerprint`], so the digest cannot be confused with (or
/// looked up as) a plain SHA-256 of the token used anywhere else.
const FINGERPRINT_DOMAIN: &[u8] = b"imageless/floxhub-token-fingerprint/v1\0";

/// What is shown wherever a token would otherwise be printed.
const REDACTED: &str = "<redacted floxhub token>";

/// What kind of token it is, and what could be read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenKind {
    /// `flox_…`: opaque; handle and expiry are known only to the hub (`/api/v1/accounts/me`).
    Opaque,
    /// A JWT with the FloxHub handle claim and an expiry (Unix seconds).
    Jwt { handle: String, exp: i64 },
}

/// A FloxHub token. `Debug`/`Display` never show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    secret: String,
    kind: TokenKind,
}

/// Why a string is not a usable FloxHub token. Messages never contain the token itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenParseError {
    #[error("floxhub-token is empty; expected a FloxHub access token (flox_...) or a JWT")]
    Empty,
    #[error("floxhub-token is neither a FloxHub access token (flox_...) nor a JWT: {reason}")]
    Unrecognised { reason: &'static str },
    #[error("floxhub-token is a JWT without the FloxHub claims: {reason}")]
    MissingClaims { reason: &'static str },
}

impl Token {
    /// Recognise a token as read from a file or secret (surrounding whitespace and the
    /// trailing newline of a file are removed).
    pub fn parse(raw: &str) -> Result<Token, TokenParseError> {
        let secret = raw.trim();
        if secret.is_empty() {
            return Err(TokenParseError::Empty);
        }
        if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
            // A token goes into an HTTP header; inner whitespace means two values were pasted.
            return Err(TokenParseError::Unrecognised { reason: "it contains whitespace or control characters" });
        }
        let kind = if secret.starts_with(ACCESS_TOKEN_PREFIX) { TokenKind::Opaque } else { jwt_claims(secret)? };
        Ok(Token { secret: secret.to_string(), kind })
    }

    /// The secret itself, for the single place that sends it to the hub.
    pub fn expose(&self) -> &str {
        &self.secret
    }

    /// Opaque or JWT (with handle and expiry).
    pub fn kind(&self) -> &TokenKind {
        &self.kind
    }

    /// The FloxHub handle, when the token says it (JWTs only).
    pub fn handle(&self) -> Option<&str> {
        match &self.kind {
            TokenKind::Jwt { handle, .. } => Some(handle),
            TokenKind::Opaque => None,
        }
    }

    /// The expiry (Unix seconds) of a JWT, whether or not it has passed.
    pub fn exp(&self) -> Option<i64> {
        match &self.kind {
            TokenKind::Jwt { exp, .. } => Some(*exp),
            TokenKind::Opaque => None,
        }
    }

    /// `Some(exp)` if the token is known to have expired at `now_unix` (Flox's rule:
    /// expired iff `exp < now`); `None` if it is still valid or its expiry is unknown.
    pub fn expired_at(&self, now_unix: u64) -> Option<u64> {
        let exp = self.exp()?;
        let now = i64::try_from(now_unix).unwrap_or(i64::MAX);
        (exp < now).then(|| u64::try_from(exp).unwrap_or(0))
    }

    /// A stable, non-reversible identifier of this token: hex SHA-256 over a fixed
    /// domain prefix and the secret. Lets the node remember which token fetched a private
    /// environment without storing the token.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(FINGERPRINT_DOMAIN);
        hasher.update(self.secret.as_bytes());
        hex::encode(hasher.finalize())
    }
}

/// Decode the payload of a `header.payload.signature` JWT and read the FloxHub claims.
fn jwt_claims(secret: &str) -> Result<TokenKind, TokenParseError> {
    let parts: Vec<&str> = secret.split('.').collect();
    if parts.len() != 3 {
        return Err(TokenParseError::Unrecognised {
            reason: "it does not start with flox_ and does not have the three dot-separated parts of a JWT",
        });
    }
    let payload = decode_base64url(parts[1])
        .ok_or(TokenParseError::Unrecognised { reason: "the JWT payload is not base64url" })?;
    let claims: serde_json::Value = serde_json::from_slice(&payload)
        .map_err(|_| TokenParseError::Unrecognised { reason: "the JWT payload is not a JSON object" })?;
    let claims =
        claims.as_object().ok_or(TokenParseError::Unrecognised { reason: "the JWT payload is not a JSON object" })?;
    let handle = match claims.get(HANDLE_CLAIM) {
        Some(serde_json::Value::String(handle)) if !handle.is_empty() => handle.clone(),
        Some(_) => {
            return Err(TokenParseError::MissingClaims {
                reason: "claim 'https://flox.dev/handle' is not a non-empty string",
            })
        }
        None => return Err(TokenParseError::MissingClaims { reason: "claim 'https://flox.dev/handle' is missing" }),
    };
    let exp = match claims.get("exp") {
        Some(value) => value
            .as_i64()
            .ok_or(TokenParseError::MissingClaims { reason: "claim 'exp' is not an integer number of Unix seconds" })?,
        None => return Err(TokenParseError::MissingClaims { reason: "claim 'exp' is missing" }),
    };
    Ok(TokenKind::Jwt { handle, exp })
}

/// JWTs use unpadded base64url, but tolerate padding that some encoders add.
fn decode_base64url(part: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The kind (handle, expiry) is not secret and helps debugging.
        f.debug_struct("Token").field("secret", &REDACTED).field("kind", &self.kind).finish()
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn jwt(payload: &str) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode("not-a-real-signature")
        )
    }

    #[test]
    fn jwt_claims_are_read_without_checking_the_signature() {
        let raw = jwt(r#"{"https://flox.dev/handle":"alice","exp":1750000000,"sub":"auth0|1"}"#);
        let token = Token::parse(&format!("  {raw}\n")).unwrap();
        assert_eq!(token.kind(), &TokenKind::Jwt { handle: "alice".into(), exp: 1_750_000_000 });
        assert_eq!(token.handle(), Some("alice"));
        assert_eq!(token.expose(), raw, "whitespace and newline are trimmed");
    }

    #[test]
    fn expiry_follows_flox_rule_exp_before_now() {
        let token = Token::parse(&jwt(r#"{"https://flox.dev/handle":"a","exp":1000}"#)).unwrap();
        assert_eq!(token.expired_at(999), None);
        assert_eq!(token.expired_at(1000), None);
        assert_eq!(token.expired_at(1001), Some(1000));
        let opaque = Token::parse("flox_pat_abc").unwrap();
        assert_eq!(opaque.expired_at(u64::MAX), None);
    }

    #[test]
    fn flox_prefix_is_opaque() {
        for raw in ["flox_pat_0123456789", "flox_sat_xyz", "flox_anything"] {
            let token = Token::parse(raw).unwrap();
            assert_eq!(token.kind(), &TokenKind::Opaque);
            assert_eq!(token.handle(), None);
        }
    }

    #[test]
    fn bad_tokens_fail_without_showing_the_value() {
        let secret_like = "s3cr3t-value-that-must-not-leak";
        let cases = [
            secret_like.to_string(),
            format!("{secret_like}.{secret_like}.{secret_like}"),
            jwt(r#"{"exp":1}"#),
            jwt(r#"{"https://flox.dev/handle":"a"}"#),
            jwt(r#"{"https://flox.dev/handle":"a","exp":"soon"}"#),
            jwt(r#"{"https://flox.dev/handle":7,"exp":1}"#),
            jwt(r#"["not","an","object"]"#),
            "flox_a flox_b".to_string(),
        ];
        for raw in cases {
            let err = Token::parse(&raw).unwrap_err();
            let message = err.to_string();
            assert!(message.starts_with("floxhub-token "), "{message}");
            assert!(!message.contains(&raw) && !message.contains(secret_like), "{message}");
        }
        assert!(Token::parse(secret_like)
            .unwrap_err()
            .to_string()
            .contains("neither a FloxHub access token (flox_...) nor a JWT"));
        assert_eq!(Token::parse(" \n\t").unwrap_err(), TokenParseError::Empty);
    }

    #[test]
    fn debug_and_display_redact_the_secret() {
        let raw = jwt(r#"{"https://flox.dev/handle":"alice","exp":1}"#);
        for token in [Token::parse(&raw).unwrap(), Token::parse("flox_pat_SECRET").unwrap()] {
            let shown = format!("{token} {token:?} {:?}", Some(&token));
            assert!(!shown.contains(token.expose()), "{shown}");
            assert!(!shown.contains("SECRET"), "{shown}");
            assert!(shown.contains("redacted"), "{shown}");
        }
    }

    #[test]
    fn fingerprint_is_stable_distinct_and_domain_separated() {
        let a = Token::parse("flox_pat_a").unwrap();
        let b = Token::parse("flox_pat_b").unwrap();
        assert_eq!(a.fingerprint(), Token::parse("flox_pat_a\n").unwrap().fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
        let plain = hex::encode(Sha256::digest(b"flox_pat_a"));
        assert_ne!(a.fingerprint(), plain);
        assert!(!a.fingerprint().contains("flox_pat_a"));
    }
}
