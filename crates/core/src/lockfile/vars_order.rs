//! The order in which `[vars]` are exported (Flox's `varsOrder`, reference §4.8).
//!
//! Values are pasted into `export NAME="VALUE"` lines and expanded by bash, so a variable
//! that references another `[vars]` entry must come after it. Flox emits names
//! alphabetically (byte order) except that each variable waits for the entries it
//! references via `$NAME` or `${NAME...}`; a reference to its own name reads the ambient
//! value and is no dependency; `\$` is a literal dollar. A cycle is an error naming the loop.

use std::collections::{BTreeMap, BTreeSet};

/// A reference loop among `[vars]`, as the chain of names that closes it (`a → b → a`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarsCycle(pub Vec<String>);

impl std::fmt::Display for VarsCycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(" → "))
    }
}

/// Names of `vars` in export order, or the first reference cycle found.
pub fn vars_order(vars: &BTreeMap<String, String>) -> Result<Vec<String>, VarsCycle> {
    let names: BTreeSet<&str> = vars.keys().map(String::as_str).collect();
    let depends_on: BTreeMap<&str, BTreeSet<&str>> =
        vars.iter().map(|(name, value)| (name.as_str(), references(value, &names, name))).collect();

    // Kahn's algorithm; always taking the alphabetically first ready name keeps unrelated
    // variables in alphabetical order.
    let mut waiting_on: BTreeMap<&str, usize> = depends_on.iter().map(|(name, deps)| (*name, deps.len())).collect();
    let mut ready: BTreeSet<&str> =
        waiting_on.iter().filter(|(_, count)| **count == 0).map(|(name, _)| *name).collect();
    let mut order: Vec<String> = Vec::with_capacity(vars.len());
    while let Some(name) = ready.pop_first() {
        order.push(name.to_string());
        for (dependent, deps) in &depends_on {
            if deps.contains(name) {
                let count = waiting_on.get_mut(dependent).expect("every name has a count");
                *count -= 1;
                if *count == 0 {
                    ready.insert(dependent);
                }
            }
        }
    }
    if order.len() == vars.len() {
        return Ok(order);
    }

    // Every name left over references another left-over name; walk the first references
    // from the alphabetically first one until a name repeats: that is the loop.
    let emitted: BTreeSet<&str> = order.iter().map(String::as_str).collect();
    let left: BTreeSet<&str> = names.difference(&emitted).copied().collect();
    let mut path: Vec<&str> = vec![*left.first().expect("some names are left")];
    loop {
        let last = *path.last().expect("path is never empty");
        let next = *depends_on[last]
            .iter()
            .find(|dep| left.contains(*dep))
            .expect("a left-over name references another left-over name");
        if let Some(start) = path.iter().position(|name| *name == next) {
            let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
            cycle.push(next.to_string());
            return Err(VarsCycle(cycle));
        }
        path.push(next);
    }
}

/// The other `[vars]` names that `value` expands.
fn references<'a>(value: &str, names: &BTreeSet<&'a str>, own_name: &str) -> BTreeSet<&'a str> {
    let bytes = value.as_bytes();
    let mut found = BTreeSet::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'$' => {
                let braced = bytes.get(i + 1) == Some(&b'{');
                let start = i + 1 + usize::from(braced);
                let mut end = start;
                while end < bytes.len() && is_name_byte(bytes[end], end == start) {
                    end += 1;
                }
                // `${NAME` only counts when a `}` follows somewhere: it may close an
                // operator form like `${NAME:-default}`. An unclosed one is a bash syntax
                // error at activation, and adding no edge avoids a false cycle.
                let closed = !braced || bytes[end..].contains(&b'}');
                if end > start && closed {
                    let name = &value[start..end];
                    if name != own_name {
                        if let Some(known) = names.get(name) {
                            found.insert(*known);
                        }
                    }
                }
                i = end.max(i + 1);
            }
            _ => i += 1,
        }
    }
    found
}

/// Shell variable name characters; the first may not be a digit (`$1` is positional).
fn is_name_byte(byte: u8, first: bool) -> bool {
    byte.is_ascii_alphabetic() || byte == b'_' || (!first && byte.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(entries: &[(&str, &str)]) -> Result<Vec<String>, String> {
        let vars = entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        vars_order(&vars).map_err(|cycle| cycle.to_string())
    }

    #[test]
    fn alphabetical_without_references() {
        assert_eq!(order(&[("b", "2"), ("a", "1"), ("C", "3")]).unwrap(), ["C", "a", "b"]);
    }

    #[test]
    fn references_move_a_variable_after_its_dependencies() {
        assert_eq!(order(&[("alpha", "${omega}-x"), ("omega", "base")]).unwrap(), ["omega", "alpha"]);
        assert_eq!(order(&[("a", "$m/x"), ("m", "${z:-d}"), ("z", "1")]).unwrap(), ["z", "m", "a"]);
        // Independent names keep their alphabetical place.
        assert_eq!(order(&[("a", "${z}"), ("b", "x"), ("z", "1")]).unwrap(), ["b", "z", "a"]);
    }

    #[test]
    fn self_reference_escapes_and_unknown_names_add_no_edge() {
        assert_eq!(order(&[("PATH", "${PATH}:/x")]).unwrap(), ["PATH"]);
        assert_eq!(order(&[("PATH", "$bin:$PATH"), ("bin", "/b")]).unwrap(), ["bin", "PATH"]);
        assert_eq!(order(&[("a", r"\${b}"), ("b", "${a}")]).unwrap(), ["a", "b"]);
        assert_eq!(order(&[("a", "$HOME $1 ${2} $(b)"), ("b", "x")]).unwrap(), ["a", "b"]);
        // `$ab` names `ab`, not `a`.
        assert_eq!(order(&[("a", "1"), ("ab", "2"), ("x", "$ab")]).unwrap(), ["a", "ab", "x"]);
        // Unclosed `${` is no reference, so no false cycle.
        assert_eq!(order(&[("bar", "${foo"), ("foo", "${bar}")]).unwrap(), ["bar", "foo"]);
    }

    #[test]
    fn cycles_are_reported_as_a_chain() {
        assert_eq!(order(&[("foo", "${bar}"), ("bar", "${foo}")]).unwrap_err(), "bar → foo → bar");
        assert_eq!(order(&[("a", "$b"), ("b", "$c"), ("c", "$a"), ("d", "1")]).unwrap_err(), "a → b → c → a");
        // A name that only leads into a loop is not part of the reported loop.
        assert_eq!(order(&[("a", "$x"), ("x", "$y"), ("y", "$x")]).unwrap_err(), "x → y → x");
    }
}
