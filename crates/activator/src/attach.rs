//! Attach: what the main process's activation changed, recorded once, and replayed onto an
//! exec process's own environment (../reference/flox-runtime-semantics.md §5.4, §5.9).
//!
//! Flox runs `hook.on-activate` once per activation start and later `flox activate` calls in
//! the same container attach: they compute the fixed variables from their own environment and
//! replay the start's trace of environment mutations onto it. We have no patched bash to trace
//! with, so the trace is derived from a before/after diff of the start script: a value that
//! grew at the front or back of its old value is a prepend/append (so `PATH`-like variables
//! compose with the exec's own value, as Flox's replay does), a changed value is a set, a
//! removed one an unset. `[vars]` are always sets (Flox records them as forced `reset`s).
//!
//! The record is a small binary file: a header line, then `op NUL name NUL value NUL` per
//! mutation. Environment names and values cannot hold NUL, so this is exact for any bytes.
//! Pure: the I/O lives in [`crate::state`].
use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::EnvMap;

/// First bytes of a record; a different version is refused rather than misread.
pub const RECORD_HEADER: &[u8] = b"flox-activate attach 1\n";

/// One recorded mutation of the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvOp {
    /// Assign the value, whatever the target had.
    Set(OsString, OsString),
    /// Put the delta in front of the target's value (empty when unset).
    Prepend(OsString, OsString),
    /// Put the delta after the target's value (empty when unset).
    Append(OsString, OsString),
    /// Remove the variable.
    Unset(OsString),
}

/// The mutations that turn `before` into `after`. `forced` names (`[vars]`) are always sets.
pub fn diff(before: &EnvMap, after: &EnvMap, forced: &BTreeSet<OsString>) -> Vec<EnvOp> {
    let mut ops = Vec::new();
    for (name, new) in after {
        let old = match before.get(name) {
            Some(old) if old == new && !forced.contains(name) => continue,
            Some(old) if !forced.contains(name) => old,
            _ => {
                ops.push(EnvOp::Set(name.clone(), new.clone()));
                continue;
            }
        };
        let (old_bytes, new_bytes) = (old.as_bytes(), new.as_bytes());
        let op = if !old_bytes.is_empty() && new_bytes.len() > old_bytes.len() && new_bytes.ends_with(old_bytes) {
            EnvOp::Prepend(name.clone(), bytes(&new_bytes[..new_bytes.len() - old_bytes.len()]))
        } else if !old_bytes.is_empty() && new_bytes.len() > old_bytes.len() && new_bytes.starts_with(old_bytes) {
            EnvOp::Append(name.clone(), bytes(&new_bytes[old_bytes.len()..]))
        } else {
            EnvOp::Set(name.clone(), new.clone())
        };
        ops.push(op);
    }
    for name in before.keys() {
        if !after.contains_key(name) {
            ops.push(EnvOp::Unset(name.clone()));
        }
    }
    ops
}

/// Replays `ops` onto `env`, in order.
pub fn apply(env: &mut EnvMap, ops: &[EnvOp]) {
    for op in ops {
        match op {
            EnvOp::Set(name, value) => {
                env.insert(name.clone(), value.clone());
            }
            EnvOp::Prepend(name, delta) => {
                let mut value = delta.clone();
                value.push(env.get(name).map(OsString::as_os_str).unwrap_or_default());
                env.insert(name.clone(), value);
            }
            EnvOp::Append(name, delta) => {
                let mut value = env.get(name).cloned().unwrap_or_default();
                value.push(delta);
                env.insert(name.clone(), value);
            }
            EnvOp::Unset(name) => {
                env.remove(name);
            }
        }
    }
}

pub fn encode(ops: &[EnvOp]) -> Vec<u8> {
    let mut out = RECORD_HEADER.to_vec();
    for op in ops {
        let (tag, name, value): (&[u8], &OsStr, &OsStr) = match op {
            EnvOp::Set(name, value) => (b"set", name, value),
            EnvOp::Prepend(name, delta) => (b"prepend", name, delta),
            EnvOp::Append(name, delta) => (b"append", name, delta),
            EnvOp::Unset(name) => (b"unset", name, OsStr::new("")),
        };
        for field in [tag, name.as_bytes(), value.as_bytes()] {
            out.extend_from_slice(field);
            out.push(0);
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError(pub String);

pub fn decode(record: &[u8]) -> Result<Vec<EnvOp>, RecordError> {
    let body = record.strip_prefix(RECORD_HEADER).ok_or_else(|| RecordError("unknown format or version".into()))?;
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let body = body.strip_suffix(&[0]).ok_or_else(|| RecordError("cut short".into()))?;
    let fields: Vec<&[u8]> = body.split(|byte| *byte == 0).collect();
    if !fields.len().is_multiple_of(3) {
        return Err(RecordError("cut short".into()));
    }
    fields
        .chunks(3)
        .map(|chunk| {
            let (name, value) = (bytes(chunk[1]), bytes(chunk[2]));
            if name.is_empty() || chunk[1].contains(&b'=') {
                return Err(RecordError(format!("bad variable name {name:?}")));
            }
            match chunk[0] {
                b"set" => Ok(EnvOp::Set(name, value)),
                b"prepend" => Ok(EnvOp::Prepend(name, value)),
                b"append" => Ok(EnvOp::Append(name, value)),
                b"unset" => Ok(EnvOp::Unset(name)),
                other => Err(RecordError(format!("unknown operation {:?}", String::from_utf8_lossy(other)))),
            }
        })
        .collect()
}

fn bytes(slice: &[u8]) -> OsString {
    OsString::from_vec(slice.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env_map;

    fn names(list: &[&str]) -> BTreeSet<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn diff_finds_prepends_appends_sets_and_unsets() {
        let before = env_map([("PATH", "/e/bin:/bin"), ("KEEP", "k"), ("GONE", "g"), ("TAIL", "a"), ("V", "x")]);
        let after = env_map([
            ("PATH", "/hook/bin:/e/bin:/bin"),
            ("KEEP", "k"),
            ("TAIL", "a:b"),
            ("NEW", "n"),
            ("V", "x"),
            ("CHANGED", "c"),
        ]);
        let ops = diff(&before, &after, &names(&["V"]));
        assert_eq!(
            ops,
            vec![
                EnvOp::Set("CHANGED".into(), "c".into()),
                EnvOp::Set("NEW".into(), "n".into()),
                EnvOp::Prepend("PATH".into(), "/hook/bin:".into()),
                EnvOp::Append("TAIL".into(), ":b".into()),
                EnvOp::Set("V".into(), "x".into()),
                EnvOp::Unset("GONE".into()),
            ]
        );
    }

    #[test]
    fn replay_composes_with_the_targets_own_values() {
        let before = env_map([("PATH", "/e/bin:/bin"), ("GONE", "g")]);
        let after = env_map([("PATH", "/hook/bin:/e/bin:/bin"), ("HOOK", "1")]);
        let ops = diff(&before, &after, &BTreeSet::new());
        // Replaying onto the start's own base gives exactly what the main process got.
        let mut main = before.clone();
        apply(&mut main, &ops);
        assert_eq!(main, after);
        // An exec with its own PATH keeps it behind the hook's entry; its other variables stay.
        let mut exec = env_map([("PATH", "/e/bin:/custom/bin"), ("MINE", "m"), ("GONE", "x")]);
        apply(&mut exec, &ops);
        assert_eq!(exec, env_map([("PATH", "/hook/bin:/e/bin:/custom/bin"), ("MINE", "m"), ("HOOK", "1")]));
        // A prepend onto an unset variable is the delta alone, as in Flox's replay.
        let mut empty = EnvMap::new();
        apply(&mut empty, &[EnvOp::Prepend("X".into(), "a:".into())]);
        assert_eq!(empty, env_map([("X", "a:")]));
    }

    #[test]
    fn empty_old_values_are_sets_not_prepends() {
        let ops = diff(&env_map([("E", "")]), &env_map([("E", "v")]), &BTreeSet::new());
        assert_eq!(ops, vec![EnvOp::Set("E".into(), "v".into())]);
    }

    #[test]
    fn record_round_trips_any_bytes() {
        let ops = vec![
            EnvOp::Set("A".into(), "line1\nline2 = x".into()),
            EnvOp::Prepend("PATH".into(), "/x:".into()),
            EnvOp::Append("B".into(), OsString::from_vec(vec![0xff, b':'])),
            EnvOp::Unset("C".into()),
            EnvOp::Set("EMPTY".into(), "".into()),
        ];
        assert_eq!(decode(&encode(&ops)).unwrap(), ops);
        assert_eq!(decode(&encode(&[])).unwrap(), vec![]);
    }

    #[test]
    fn bad_records_are_refused() {
        assert!(decode(b"something else").is_err());
        assert!(decode(b"flox-activate attach 2\n").is_err());
        let mut cut = encode(&[EnvOp::Set("A".into(), "1".into())]);
        cut.pop();
        assert!(decode(&cut).is_err());
        let mut record = RECORD_HEADER.to_vec();
        record.extend_from_slice(b"set\0A=B\0x\0");
        assert!(decode(&record).is_err());
        record = RECORD_HEADER.to_vec();
        record.extend_from_slice(b"exec\0A\0x\0");
        assert!(decode(&record).is_err());
        record = RECORD_HEADER.to_vec();
        record.extend_from_slice(b"set\0A\0");
        assert!(decode(&record).is_err());
    }
}
