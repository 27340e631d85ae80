//! `owner/name[:generation]`, the value of `flox.dev/environment`.
//!
//! Owner and name end up in URLs (`<git>/<owner>/floxmeta`), git refs (`refs/heads/<name>`)
//! and node paths (`meta/<owner>`), so they are validated here, before any of those exist.
use std::fmt;

/// The longest owner or environment name accepted. FloxHub handles follow GitHub's (39);
/// environment names are short too. Bounded so a value cannot blow up a path or URL.
pub const MAX_PART_LEN: usize = 64;

/// A FloxHub environment reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EnvRef {
    pub owner: String,
    pub name: String,
    /// `None`: the live generation; `Some(n)`: pinned to generation n (n >= 1).
    pub generation: Option<u32>,
}

/// Why a reference is not valid; rendered into a message that says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}; expected owner/name or owner/name:N, where owner and name are 1-{MAX_PART_LEN} letters, digits, '.', '_' or '-' (not starting with '.' or '-', not ending in '.lock') and N is a generation number >= 1")]
pub struct EnvRefError {
    pub reason: String,
}

fn err(reason: impl Into<String>) -> EnvRefError {
    EnvRefError { reason: reason.into() }
}

impl EnvRef {
    pub fn parse(value: &str) -> Result<EnvRef, EnvRefError> {
        if value.trim().is_empty() {
            return Err(err("the value is empty"));
        }
        let (path, generation) = match value.split_once(':') {
            Some((path, gen)) => (path, Some(parse_generation(gen)?)),
            None => (value, None),
        };
        let parts: Vec<&str> = path.split('/').collect();
        let [owner, name] = parts.as_slice() else {
            return Err(err(format!("it has {} '/'-separated parts, not 2", parts.len())));
        };
        validate_part("owner", owner)?;
        validate_part("environment name", name)?;
        Ok(EnvRef { owner: owner.to_string(), name: name.to_string(), generation })
    }

    /// `owner/name` without the generation: what users see in messages and FLOX_ENV_DESCRIPTION.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }
}

/// Checks an owner handle alone, by the rules [`EnvRef::parse`] applies (for tools that take
/// owner and name apart, such as the hub).
pub fn validate_owner(owner: &str) -> Result<(), EnvRefError> {
    validate_part("owner", owner)
}

/// Checks an environment name alone, by the rules [`EnvRef::parse`] applies.
pub fn validate_name(name: &str) -> Result<(), EnvRefError> {
    validate_part("environment name", name)
}

fn parse_generation(gen: &str) -> Result<u32, EnvRefError> {
    if gen.is_empty() {
        return Err(err("the generation after ':' is empty"));
    }
    if !gen.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(format!("generation {gen:?} is not a number")));
    }
    match gen.parse::<u32>() {
        Ok(0) => Err(err("generation 0 does not exist (generations start at 1)")),
        Ok(n) => Ok(n),
        Err(_) => Err(err(format!("generation {gen:?} is too large"))),
    }
}

fn validate_part(what: &str, part: &str) -> Result<(), EnvRefError> {
    if part.is_empty() {
        return Err(err(format!("the {what} is empty")));
    }
    if part.len() > MAX_PART_LEN {
        return Err(err(format!("the {what} is {} characters long", part.len())));
    }
    if part.contains("..") {
        return Err(err(format!("the {what} {part:?} contains '..'")));
    }
    if part.starts_with('.') || part.starts_with('-') {
        return Err(err(format!("the {what} {part:?} starts with {:?}", &part[..1])));
    }
    // The name is a git branch of floxmeta, and git refuses ref components ending in .lock.
    if part.ends_with(".lock") {
        return Err(err(format!("the {what} {part:?} ends in '.lock'")));
    }
    if let Some(bad) = part.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        let shown = match bad {
            ' ' => "a space".to_string(),
            c if c.is_control() => format!("the control character {:?}", c),
            c => format!("{c:?}"),
        };
        return Err(err(format!("the {what} {part:?} contains {shown}")));
    }
    Ok(())
}

impl fmt::Display for EnvRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.generation {
            Some(n) => write!(f, "{}/{}:{}", self.owner, self.name, n),
            None => write!(f, "{}/{}", self.owner, self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_docs_values() {
        let r = EnvRef::parse("flox/echoip").unwrap();
        assert_eq!((r.owner.as_str(), r.name.as_str(), r.generation), ("flox", "echoip", None));
        let r = EnvRef::parse("flox/quotes-app:2").unwrap();
        assert_eq!(r.generation, Some(2));
        assert_eq!(r.to_string(), "flox/quotes-app:2");
        assert_eq!(r.full_name(), "flox/quotes-app");
    }

    #[test]
    fn rejects_bad_values_with_reasons() {
        let cases = [
            ("Flox/echo ip", "the environment name \"echo ip\" contains a space"),
            ("owner/", "the environment name is empty"),
            ("/name", "the owner is empty"),
            ("a/b/c", "it has 3 '/'-separated parts, not 2"),
            ("owner/name:0", "generation 0 does not exist (generations start at 1)"),
            ("owner/name:x", "generation \"x\" is not a number"),
            ("owner/name:", "the generation after ':' is empty"),
            ("owner/name:-1", "generation \"-1\" is not a number"),
            ("owner/..", "the environment name \"..\" contains '..'"),
            ("owner/x.lock", "the environment name \"x.lock\" ends in '.lock'"),
            ("own\ner/x", "the owner \"own\\ner\" contains the control character '\\n'"),
            ("echoip", "it has 1 '/'-separated parts, not 2"),
            ("", "the value is empty"),
        ];
        for (value, reason) in cases {
            let e = EnvRef::parse(value).unwrap_err();
            assert_eq!(e.reason, reason, "value {value:?}");
            assert!(e.to_string().contains("expected owner/name or owner/name:N"));
        }
        let long = format!("o/{}", "n".repeat(65));
        assert_eq!(EnvRef::parse(&long).unwrap_err().reason, "the environment name is 65 characters long");
    }

    #[test]
    fn owner_and_name_alone_follow_the_same_rules() {
        assert_eq!(validate_owner("alice"), Ok(()));
        assert_eq!(validate_name("hello-1.x_y"), Ok(()));
        assert_eq!(validate_owner("-x").unwrap_err().reason, "the owner \"-x\" starts with \"-\"");
        assert_eq!(validate_name("a:1").unwrap_err().reason, "the environment name \"a:1\" contains ':'");
        assert_eq!(validate_name("x.lock").unwrap_err().reason, "the environment name \"x.lock\" ends in '.lock'");
    }
}
