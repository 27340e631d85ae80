//! A lock's license text as an SPDX license expression.
//!
//! Flox's catalog writes `license` as nixpkgs' `meta.license` rendered to text: one SPDX id
//! (`MIT`), a Nix list of them (`[ MIT, NCSA ]`, a nested `[ Apache-2.0 LLVM-exception ]` being
//! a license with its exception) or a free name where nixpkgs has no SPDX id (`Unfree`); flake
//! entries carry a `licenses` list. Known ids (the SPDX license list of the `spdx` crate) are
//! kept as they are; anything else becomes a `LicenseRef-` whose name is the lock's text, so
//! nothing the lock says is lost and nothing unknown is passed off as an SPDX id.
use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// One license expression for a package, with the `LicenseRef-`s it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct License {
    /// An SPDX license expression (`MIT`, `NCSA AND Apache-2.0 WITH LLVM-exception`,
    /// `LicenseRef-Unfree`).
    pub expression: String,
    /// The SPDX id when the expression is exactly one listed license (CycloneDX `license.id`).
    pub spdx_id: Option<String>,
    /// `LicenseRef-…` id → the lock's text it stands for.
    pub refs: BTreeMap<String, String>,
}

/// A parsed Nix-style license text: a word or a list.
#[derive(Debug)]
enum Node {
    Word(String),
    List(Vec<Node>),
}

impl License {
    /// From a catalog entry's `license` text; None when it names nothing.
    pub fn from_catalog(text: &str) -> Option<License> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        let mut refs = BTreeMap::new();
        let expression = if text.starts_with('[') {
            match parse_list(text) {
                // `[ ]` names nothing.
                Some(Node::List(items)) if items.is_empty() => return None,
                Some(node) => render(&node, &mut refs, true)?,
                // Not a list after all: the whole text is one name.
                None => term(text, &mut refs),
            }
        } else if let Some(expression) = valid_expression(text) {
            expression
        } else {
            term(text, &mut refs)
        };
        Some(License::new(expression, refs))
    }

    /// From a flake entry's `licenses` list (each an SPDX id or a name); None when empty.
    pub fn from_list(items: &[String]) -> Option<License> {
        let mut refs = BTreeMap::new();
        let terms: Vec<String> =
            items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).map(|s| term(s, &mut refs)).collect();
        if terms.is_empty() {
            return None;
        }
        Some(License::new(join_and(terms), refs))
    }

    fn new(expression: String, refs: BTreeMap<String, String>) -> License {
        let spdx_id = spdx::license_id(&expression).filter(|id| id.name == expression).map(|id| id.name.to_string());
        License { expression, spdx_id, refs }
    }
}

/// `text` when it already is a valid SPDX expression of listed ids (e.g. `MIT OR Apache-2.0`).
fn valid_expression(text: &str) -> Option<String> {
    let parsed = spdx::Expression::parse(text).ok()?;
    let all_listed = parsed.requirements().all(|r| match &r.req.license {
        spdx::LicenseItem::Spdx { .. } => true,
        spdx::LicenseItem::Other(_) => false,
    });
    all_listed.then(|| text.to_string())
}

/// One license word: its SPDX id (with a trailing `+` kept), or a `LicenseRef-`.
fn term(word: &str, refs: &mut BTreeMap<String, String>) -> String {
    let base = word.strip_suffix('+').unwrap_or(word);
    if spdx::license_id(base).is_some_and(|id| id.name == base) {
        return word.to_string();
    }
    let id = license_ref(word);
    refs.insert(id.clone(), word.to_string());
    id
}

/// `LicenseRef-<name>`, the name kept when it is made only of the characters SPDX allows there,
/// otherwise cleaned and suffixed with a hash of the original (so distinct names stay distinct).
pub fn license_ref(name: &str) -> String {
    let clean: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect();
    let clean = clean.trim_matches('-');
    if clean == name {
        format!("LicenseRef-{clean}")
    } else {
        let digest = hex::encode(&Sha256::digest(name.as_bytes())[..4]);
        let clean = if clean.is_empty() { "unnamed" } else { clean };
        format!("LicenseRef-{clean}-{digest}")
    }
}

fn join_and(terms: Vec<String>) -> String {
    if terms.len() == 1 {
        return terms.into_iter().next().expect("one term");
    }
    terms.into_iter().map(|t| if t.contains(' ') { format!("({t})") } else { t }).collect::<Vec<_>>().join(" AND ")
}

/// A list renders as the AND of its items, except `[ LICENSE EXCEPTION ]`, which is `WITH`.
fn render(node: &Node, refs: &mut BTreeMap<String, String>, top: bool) -> Option<String> {
    match node {
        Node::Word(w) => Some(term(w, refs)),
        Node::List(items) => {
            if let [Node::Word(license), Node::Word(exception)] = items.as_slice() {
                if !top && spdx::exception_id(exception).is_some() {
                    return Some(format!("{} WITH {exception}", term(license, refs)));
                }
            }
            let terms = items.iter().map(|i| render(i, refs, false)).collect::<Option<Vec<_>>>()?;
            (!terms.is_empty()).then(|| join_and(terms))
        }
    }
}

/// Parses `[ a, [ b c ], d ]`; None when brackets do not balance.
fn parse_list(text: &str) -> Option<Node> {
    let mut stack: Vec<Vec<Node>> = Vec::new();
    let mut word = String::new();
    let mut done = None;
    for c in text.chars() {
        if done.is_some() {
            if c.is_whitespace() {
                continue;
            }
            return None;
        }
        match c {
            '[' | ']' | ',' | ' ' | '\t' | '\n' => {
                if !word.is_empty() {
                    stack.last_mut()?.push(Node::Word(std::mem::take(&mut word)));
                }
                if c == '[' {
                    stack.push(Vec::new());
                } else if c == ']' {
                    let list = Node::List(stack.pop()?);
                    match stack.last_mut() {
                        Some(parent) => parent.push(list),
                        None => done = Some(list),
                    }
                }
            }
            c => word.push(c),
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expr(text: &str) -> (String, Option<String>, Vec<(String, String)>) {
        let l = License::from_catalog(text).unwrap();
        (l.expression, l.spdx_id, l.refs.into_iter().collect())
    }

    #[test]
    fn single_ids_stay_ids() {
        assert_eq!(expr("MIT"), ("MIT".into(), Some("MIT".into()), vec![]));
        assert_eq!(expr("GPL-3.0-or-later"), ("GPL-3.0-or-later".into(), Some("GPL-3.0-or-later".into()), vec![]));
        assert_eq!(expr("Vim").1.as_deref(), Some("Vim"));
        assert_eq!(expr("curl").1.as_deref(), Some("curl"));
    }

    #[test]
    fn nix_lists_become_and_with_exceptions() {
        assert_eq!(expr("[ MIT ]").0, "MIT");
        assert_eq!(expr("[ MIT, NCSA ]").0, "MIT AND NCSA");
        assert_eq!(expr("[ NCSA, [ Apache-2.0 LLVM-exception ] ]").0, "NCSA AND (Apache-2.0 WITH LLVM-exception)");
        assert_eq!(expr("[ APSL-2.0, GPL-2.0 ]").0, "APSL-2.0 AND GPL-2.0");
        assert_eq!(expr("[ MIT, NCSA ]").1, None);
    }

    #[test]
    fn unknown_names_are_license_refs() {
        assert_eq!(
            expr("Unfree"),
            ("LicenseRef-Unfree".into(), None, vec![("LicenseRef-Unfree".into(), "Unfree".into())])
        );
        let (e, _, refs) = expr("Some License 2");
        assert!(e.starts_with("LicenseRef-Some-License-2-"), "{e}");
        assert_eq!(refs[0].1, "Some License 2");
        assert_eq!(expr("[ MIT, Unfree ]").0, "MIT AND LicenseRef-Unfree");
        // Not balanced: the whole text is a name.
        assert!(expr("[ MIT").0.starts_with("LicenseRef-"));
        assert!(License::from_catalog("  ").is_none());
        assert!(License::from_catalog("[ ]").is_none());
    }

    #[test]
    fn valid_expressions_are_kept() {
        assert_eq!(expr("MIT OR Apache-2.0").0, "MIT OR Apache-2.0");
        assert_eq!(expr("GPL-2.0+").0, "GPL-2.0+");
    }

    #[test]
    fn flake_lists() {
        let l = License::from_list(&["GPL-3.0-or-later".into()]).unwrap();
        assert_eq!(l.spdx_id.as_deref(), Some("GPL-3.0-or-later"));
        let l = License::from_list(&["MIT".into(), "Free".into()]).unwrap();
        assert_eq!(l.expression, "MIT AND LicenseRef-Free");
        assert!(License::from_list(&[]).is_none());
    }
}
