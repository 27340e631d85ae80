//! Nix store paths as they appear in lockfiles: `/nix/store/<hash>-<name>`, validated.
//!
//! A store path coming from a lockfile ends up in bind mounts, GC roots and `nix build`
//! arguments, so it is checked once here: the fixed store directory, a 32-character hash in
//! Nix's base-32 alphabet, a name made only of the characters Nix allows, and nothing after
//! the name (no trailing slash, no sub-path, so no `..` tricks).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The only store directory this node uses (Nix's default).
pub const STORE_DIR: &str = "/nix/store";

/// Length of the hash part of a store path (160 bits in Nix base-32).
pub const HASH_PART_LEN: usize = 32;

/// Longest name Nix accepts (`nix::StorePath` rejects names over 211 characters).
pub const MAX_NAME_LEN: usize = 211;

/// Nix's base-32 alphabet: digits and lowercase letters without `e`, `o`, `u`, `t`.
const NIX_BASE32_CHARS: &str = "0123456789abcdfghijklmnpqrsvwxyz";

/// What [`StorePath::parse`] accepts, quoted in every error so the reader knows the rule.
const ACCEPTED: &str = "expected /nix/store/<32 characters of [0-9a-df-np-sv-z]>-<name>, \
name made of [A-Za-z0-9+-._?=], not starting with '.', at most 211 characters, \
with no trailing slash or sub-path";

/// A validated Nix store path such as `/nix/store/0c2k…-hello-2.12.1`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath(String);

/// Why a string is not a store path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid store path '{value}': {reason}; {ACCEPTED}")]
pub struct StorePathError {
    /// The rejected string (store paths are public, so it is safe to show).
    pub value: String,
    /// What exactly is wrong with it.
    pub reason: String,
}

impl StorePath {
    /// Validate `value` as a top-level store path.
    pub fn parse(value: &str) -> Result<StorePath, StorePathError> {
        let fail = |reason: String| StorePathError { value: value.to_string(), reason };
        let prefix = format!("{STORE_DIR}/");
        let base = value.strip_prefix(&prefix).ok_or_else(|| fail(format!("it does not start with {prefix}")))?;
        if let Some(slash) = base.find('/') {
            return Err(fail(if slash + 1 == base.len() {
                "it has a trailing slash".to_string()
            } else {
                "it has a sub-path after the store object's name".to_string()
            }));
        }
        if base.len() <= HASH_PART_LEN || !base.is_char_boundary(HASH_PART_LEN) {
            return Err(fail(format!("'{base}' is too short for a {HASH_PART_LEN}-character hash, a '-' and a name")));
        }
        let (hash, rest) = base.split_at(HASH_PART_LEN);
        if let Some(bad) = hash.chars().find(|c| !NIX_BASE32_CHARS.contains(*c)) {
            return Err(fail(format!("the hash part '{hash}' contains '{bad}', which is not a Nix base-32 character")));
        }
        let name = rest.strip_prefix('-').ok_or_else(|| fail("the hash part is not followed by '-'".to_string()))?;
        validate_name(name).map_err(fail)?;
        Ok(StorePath(value.to_string()))
    }

    /// The 32-character hash part, e.g. `0c2k…` (what `.narinfo` files are named after).
    pub fn hash_part(&self) -> &str {
        &self.0[STORE_DIR.len() + 1..STORE_DIR.len() + 1 + HASH_PART_LEN]
    }

    /// The name after the hash, e.g. `hello-2.12.1`.
    pub fn name(&self) -> &str {
        &self.0[STORE_DIR.len() + 1 + HASH_PART_LEN + 1..]
    }

    /// The base name `<hash>-<name>` (the entry under `/nix/store`).
    pub fn base_name(&self) -> &str {
        &self.0[STORE_DIR.len() + 1..]
    }

    /// The whole path as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name after the hash is empty".to_string());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("the name is {} characters long, more than {MAX_NAME_LEN}", name.len()));
    }
    if name.starts_with('.') {
        return Err(format!("the name '{name}' starts with '.'"));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "+-._?=".contains(*c))) {
        return Err(format!("the name contains the character {bad:?}"));
    }
    Ok(())
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({:?})", self.0)
    }
}

impl FromStr for StorePath {
    type Err = StorePathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StorePath::parse(s)
    }
}

impl AsRef<str> for StorePath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::path::Path> for StorePath {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

impl Serialize for StorePath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for StorePath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        StorePath::parse(&value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "/nix/store/0c2kp0ppyd7cmv4pmz9y8xjpwgz0b0fs-hello-2.12.1";

    #[test]
    fn parses_a_real_store_path_and_splits_it() {
        let path = StorePath::parse(HELLO).unwrap();
        assert_eq!(path.hash_part(), "0c2kp0ppyd7cmv4pmz9y8xjpwgz0b0fs");
        assert_eq!(path.name(), "hello-2.12.1");
        assert_eq!(path.base_name(), "0c2kp0ppyd7cmv4pmz9y8xjpwgz0b0fs-hello-2.12.1");
        assert_eq!(path.as_str(), HELLO);
        assert_eq!(path.to_string(), HELLO);
    }

    #[test]
    fn accepts_every_allowed_name_character() {
        let p = format!("{STORE_DIR}/{}-a+b-c._?=Z9", "1".repeat(32));
        assert_eq!(StorePath::parse(&p).unwrap().name(), "a+b-c._?=Z9");
        let longest = format!("{STORE_DIR}/{}-{}", "1".repeat(32), "n".repeat(211));
        assert!(StorePath::parse(&longest).is_ok());
    }

    fn reason(value: &str) -> String {
        StorePath::parse(value).unwrap_err().reason
    }

    #[test]
    fn rejects_malformed_paths_with_a_reason() {
        let hash = "0c2kp0ppyd7cmv4pmz9y8xjpwgz0b0fs";
        assert!(reason("/gnu/store/x").contains("does not start with /nix/store/"));
        assert!(reason(&format!("{HELLO}/")).contains("trailing slash"));
        assert!(reason(&format!("{HELLO}/bin/hello")).contains("sub-path"));
        assert!(reason(&format!("{HELLO}/../../etc")).contains("sub-path"));
        assert!(reason("/nix/store/abc-x").contains("too short"));
        assert!(reason(&format!("/nix/store/{}-x", "e".repeat(32))).contains("'e'"));
        assert!(reason(&format!("/nix/store/{}-x", "A".repeat(32))).contains("'A'"));
        assert!(reason(&format!("/nix/store/{hash}_x")).contains("not followed by '-'"));
        assert!(reason(&format!("/nix/store/{hash}-.hidden")).contains("starts with '.'"));
        assert!(reason(&format!("/nix/store/{hash}-a b")).contains("' '"));
        assert!(reason(&format!("/nix/store/{hash}-caf\u{e9}")).contains('\u{e9}'));
        assert!(reason(&format!("/nix/store/{hash}-{}", "n".repeat(212))).contains("212"));
        assert!(reason(&format!("/nix/store/{hash}-")).contains("empty"));
        // A multi-byte character inside the hash must not panic on slicing.
        assert!(StorePath::parse(&format!("/nix/store/{}\u{e9}-x", "1".repeat(31))).is_err());
    }

    #[test]
    fn error_message_names_value_and_rule() {
        let message = StorePath::parse("/nix/store/x").unwrap_err().to_string();
        assert!(message.contains("'/nix/store/x'"), "{message}");
        assert!(message.contains("[0-9a-df-np-sv-z]"), "{message}");
    }

    #[test]
    fn serde_round_trip_validates() {
        let path: StorePath = serde_json::from_str(&format!("\"{HELLO}\"")).unwrap();
        assert_eq!(serde_json::to_string(&path).unwrap(), format!("\"{HELLO}\""));
        let bad = serde_json::from_str::<StorePath>("\"/nix/store/x\"").unwrap_err();
        assert!(bad.to_string().contains("invalid store path"));
    }
}
