//! Tokens: HS256 JWTs carrying FloxHub's claims, opaque `flox_...` tokens, and the parsing of
//! the `Authorization` header. Pure logic; the caller supplies the secret, the token table and
//! the current time.
//!
//! Written by hand on `hmac` + `sha2` + `base64` instead of a JWT crate: the hub needs exactly one
//! algorithm and two claims, and a general JWT library would add a large dependency tree.
use std::collections::BTreeMap;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use imageless_core::token::{Token, TokenParseError as ClaimsError};
/// The claim FloxHub uses for the user's handle, and the prefix of opaque access tokens: the
/// node's definitions, so that the hub mints what the node reads.
pub use imageless_core::token::{ACCESS_TOKEN_PREFIX as OPAQUE_PREFIX, HANDLE_CLAIM};

type HmacSha256 = Hmac<Sha256>;

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub handle: String,
    /// Unix seconds, or None for a token that does not expire.
    pub expires_at: Option<i64>,
}

/// An opaque token's record in hub.json (keyed by the token's SHA-256, never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpaqueTokenRecord {
    pub handle: String,
    #[serde(default)]
    pub expires_at: Option<i64>,
}

/// Why a token was refused. Deliberately says nothing about the token's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenVerifyError {
    #[error("token is not a valid JWT or known access token")]
    Malformed,
    #[error("token signature does not verify")]
    BadSignature,
    /// The signature verifies but the FloxHub claims are missing or malformed (core's reason).
    #[error("token's FloxHub claims are invalid: {0}")]
    MissingClaim(&'static str),
    #[error("token expired at {0}")]
    Expired(i64),
    #[error("access token is unknown")]
    UnknownOpaque,
}

/// Credentials found in a request's `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// No `Authorization` header at all: git has not been challenged yet.
    Missing,
    /// Basic with an empty password: the Flox CLI's logged-out credential helper.
    Anonymous,
    Token(String),
    /// A header we cannot read (wrong scheme, bad base64): treated like a bad token.
    Unreadable,
}

/// Reads `Authorization: Basic base64(user:token)` (any user name; git clients send `oauth`) or
/// `Authorization: bearer <token>`.
pub fn parse_authorization(header: Option<&str>) -> Credential {
    let Some(value) = header.map(str::trim) else {
        return Credential::Missing;
    };
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return if rest.is_empty() { Credential::Unreadable } else { Credential::Token(rest.to_owned()) };
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let Ok(decoded) = STANDARD.decode(rest) else {
            return Credential::Unreadable;
        };
        let Ok(decoded) = String::from_utf8(decoded) else {
            return Credential::Unreadable;
        };
        let password = decoded.split_once(':').map(|(_, p)| p).unwrap_or("");
        return if password.is_empty() { Credential::Anonymous } else { Credential::Token(password.to_owned()) };
    }
    Credential::Unreadable
}

/// SHA-256 of an opaque token, hex: the key under which hub.json records it.
pub fn opaque_token_key(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new opaque token from 32 random bytes.
pub fn new_opaque_token(random: &[u8; 32]) -> String {
    format!("{OPAQUE_PREFIX}{}", hex::encode(random))
}

#[derive(Serialize)]
struct MintClaims<'a> {
    #[serde(rename = "https://flox.dev/handle")]
    handle: &'a str,
    exp: i64,
    iat: i64,
    sub: &'a str,
}

/// Mints an HS256 JWT for `handle` expiring at `exp` (Unix seconds).
pub fn mint_jwt(secret: &[u8], handle: &str, exp: i64, now: i64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = MintClaims { handle, exp, iat: now, sub: handle };
    let claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
    let signing_input = format!("{header}.{claims}");
    let signature = URL_SAFE_NO_PAD.encode(hmac_sha256(secret, signing_input.as_bytes()));
    format!("{signing_input}.{signature}")
}

fn hmac_sha256(secret: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Verifies an HS256 JWT's signature (constant-time) and reads handle and expiry.
pub fn verify_jwt(secret: &[u8], token: &str, now: i64) -> Result<Identity, TokenVerifyError> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenVerifyError::Malformed);
    };
    let header_json: serde_json::Value = decode_json_part(header)?;
    if header_json.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
        return Err(TokenVerifyError::Malformed);
    }
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenVerifyError::Malformed)?;
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(format!("{header}.{claims}").as_bytes());
    mac.verify_slice(&signature).map_err(|_| TokenVerifyError::BadSignature)?;
    // The claims are read as the node reads them (core's Token), once the signature holds.
    let parsed = Token::parse(token).map_err(|e| match e {
        ClaimsError::MissingClaims { reason } => TokenVerifyError::MissingClaim(reason),
        ClaimsError::Empty | ClaimsError::Unrecognised { .. } => TokenVerifyError::Malformed,
    })?;
    let (Some(handle), Some(exp)) = (parsed.handle(), parsed.exp()) else {
        return Err(TokenVerifyError::Malformed);
    };
    // Core's rule, the Flox CLI's: expired iff exp < now.
    if parsed.expired_at(u64::try_from(now).unwrap_or(0)).is_some() {
        return Err(TokenVerifyError::Expired(exp));
    }
    Ok(Identity { handle: handle.to_owned(), expires_at: Some(exp) })
}

fn decode_json_part(part: &str) -> Result<serde_json::Value, TokenVerifyError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| TokenVerifyError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenVerifyError::Malformed)
}

/// Resolves any token: `flox_...` through the opaque table, anything else as a JWT.
pub fn identify(
    token: &str,
    secret: &[u8],
    opaque: &BTreeMap<String, OpaqueTokenRecord>,
    now: i64,
) -> Result<Identity, TokenVerifyError> {
    if token.starts_with(OPAQUE_PREFIX) {
        let record = opaque.get(&opaque_token_key(token)).ok_or(TokenVerifyError::UnknownOpaque)?;
        if let Some(exp) = record.expires_at {
            if exp < now {
                return Err(TokenVerifyError::Expired(exp));
            }
        }
        return Ok(Identity { handle: record.handle.clone(), expires_at: record.expires_at });
    }
    verify_jwt(secret, token, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn jwt_round_trip_and_claims() {
        let t = mint_jwt(SECRET, "alice", 2_000, 1_000);
        let id = verify_jwt(SECRET, &t, 1_500).unwrap();
        assert_eq!(id, Identity { handle: "alice".into(), expires_at: Some(2_000) });
        // The claims are readable without the secret, as the Flox CLI reads them.
        let claims: serde_json::Value = decode_json_part(t.split('.').nth(1).unwrap()).unwrap();
        assert_eq!(claims[HANDLE_CLAIM], "alice");
        assert_eq!(claims["exp"], 2_000);
        // And the node's token parser reads the same handle and expiry.
        let node = Token::parse(&t).unwrap();
        assert_eq!((node.handle(), node.exp()), (Some("alice"), Some(2_000)));
    }

    #[test]
    fn jwt_expiry_signature_and_shape() {
        let t = mint_jwt(SECRET, "alice", 2_000, 1_000);
        assert_eq!(verify_jwt(SECRET, &t, 2_000).unwrap().handle, "alice");
        assert_eq!(verify_jwt(SECRET, &t, 2_001), Err(TokenVerifyError::Expired(2_000)));
        assert_eq!(verify_jwt(b"other secret", &t, 1_500), Err(TokenVerifyError::BadSignature));
        // A tampered payload with the old signature.
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(br#"{"https://flox.dev/handle":"root","exp":9999999999}"#);
        parts[1] = &forged;
        assert_eq!(verify_jwt(SECRET, &parts.join("."), 1_500), Err(TokenVerifyError::BadSignature));
        assert_eq!(verify_jwt(SECRET, "a.b", 0), Err(TokenVerifyError::Malformed));
        assert_eq!(verify_jwt(SECRET, "not a token", 0), Err(TokenVerifyError::Malformed));
    }

    #[test]
    fn jwt_without_handle_is_refused() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#);
        let claims = URL_SAFE_NO_PAD.encode(br#"{"exp":5}"#);
        let input = format!("{header}.{claims}");
        let sig = URL_SAFE_NO_PAD.encode(hmac_sha256(SECRET, input.as_bytes()));
        let err = verify_jwt(SECRET, &format!("{input}.{sig}"), 0);
        assert!(matches!(err, Err(TokenVerifyError::MissingClaim(reason)) if reason.contains(HANDLE_CLAIM)), "{err:?}");
    }

    #[test]
    fn alg_none_is_refused() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let claims = URL_SAFE_NO_PAD.encode(br#"{"https://flox.dev/handle":"a","exp":5}"#);
        assert_eq!(verify_jwt(SECRET, &format!("{header}.{claims}."), 0), Err(TokenVerifyError::Malformed));
    }

    #[test]
    fn opaque_tokens_are_looked_up_by_hash() {
        let token = new_opaque_token(&[7; 32]);
        assert!(token.starts_with("flox_"));
        let mut table = BTreeMap::new();
        table.insert(opaque_token_key(&token), OpaqueTokenRecord { handle: "bob".into(), expires_at: Some(100) });
        assert_eq!(identify(&token, SECRET, &table, 50).unwrap().handle, "bob");
        assert_eq!(identify(&token, SECRET, &table, 101), Err(TokenVerifyError::Expired(100)));
        assert_eq!(identify("flox_other", SECRET, &table, 50), Err(TokenVerifyError::UnknownOpaque));
    }

    #[test]
    fn authorization_header_forms() {
        let basic = |s: &str| format!("Basic {}", STANDARD.encode(s));
        assert_eq!(parse_authorization(None), Credential::Missing);
        assert_eq!(parse_authorization(Some(&basic("oauth:tok"))), Credential::Token("tok".into()));
        assert_eq!(parse_authorization(Some(&basic("oauth:"))), Credential::Anonymous);
        assert_eq!(parse_authorization(Some("bearer tok")), Credential::Token("tok".into()));
        assert_eq!(parse_authorization(Some("Bearer tok")), Credential::Token("tok".into()));
        assert_eq!(parse_authorization(Some("Basic !!!")), Credential::Unreadable);
        assert_eq!(parse_authorization(Some("Digest x")), Credential::Unreadable);
    }
}
