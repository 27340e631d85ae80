//! `metadata.json` of a floxmeta environment branch: which generations exist and which is live.
//!
//! Reference §2.2–2.4. Version 2 is an append-only `history` of events; the live generation
//! is the `current_generation` of the last event. Legacy version 1 (camelCase `currentGen` and
//! a `generations` map) is read the way the Flox CLI migrates it in memory. Any other version
//! is refused, as the CLI refuses it, rather than guessed at.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

/// Parsed `metadata.json`, normalised to the version-2 shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationsMetadata {
    /// The version the file was written in (1 = legacy, migrated on read; 2 = current).
    pub source_version: u32,
    /// Number of generations ever created; they are numbered `1..=total_generations`.
    pub total_generations: u32,
    /// Events, oldest first.
    pub history: Vec<HistoryEntry>,
}

/// One event of the history. Unknown kinds and extra keys are tolerated and ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Event type, e.g. `import`, `install`, `switch_generation` (kept as written).
    pub kind: String,
    pub author: String,
    pub hostname: String,
    pub command: Option<Vec<String>>,
    /// Unix seconds.
    pub timestamp: u64,
    /// The generation live after this event.
    pub current_generation: u32,
    /// The generation live before this event, if any.
    pub previous_generation: Option<u32>,
}

/// Why `metadata.json` cannot be used, or a generation cannot be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerationsError {
    #[error("metadata.json is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("metadata.json has no 'version' and matches neither the legacy (currentGen/generations) nor the version 2 (history/total_generations) layout")]
    UnknownLayout,
    #[error("Environment metadata of version '{version}' is not supported: this node reads metadata.json versions 1 and 2; the environment was probably modified by a newer version of Flox")]
    UnsupportedVersion { version: String },
    #[error("Environment metadata of version '{version}' could not be parsed into its expected schema: {detail}")]
    InvalidSchema { version: u32, detail: String },
    #[error("generation {generation} of {environment} does not exist; available: {} (live: {})", join_ids(.available), .live.map_or_else(|| "none".to_string(), |live| live.to_string()))]
    GenerationNotFound { generation: u32, environment: String, available: Vec<u32>, live: Option<u32> },
    #[error("{environment} has no live generation: its metadata.json history is empty")]
    NoLiveGeneration { environment: String },
}

fn join_ids(ids: &[u32]) -> String {
    if ids.is_empty() {
        return "none".to_string();
    }
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

/// A generation id: JSON string of decimal digits (Flox serialises the number as a string;
/// a JSON number does not parse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct GenerationId(u32);

impl<'de> Deserialize<'de> for GenerationId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_generation_id(&text).map(GenerationId).ok_or_else(|| {
            serde::de::Error::custom(format!("generation id '{text}' is not a string of decimal digits"))
        })
    }
}

fn parse_generation_id(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[derive(Deserialize)]
struct V2File {
    history: Vec<V2Entry>,
    total_generations: u32,
}

#[derive(Deserialize)]
struct V2Entry {
    kind: String,
    author: String,
    hostname: String,
    #[serde(default)]
    command: Option<Vec<String>>,
    timestamp: u64,
    current_generation: GenerationId,
    #[serde(default)]
    previous_generation: Option<GenerationId>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct V1File {
    current_gen: Option<String>,
    generations: BTreeMap<String, V1Generation>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct V1Generation {
    created: u64,
    // Required by the legacy schema (its absence marks pre-1.0 data), unused once migrated.
    #[allow(dead_code)]
    last_active: Option<u64>,
    #[allow(dead_code)]
    description: String,
}

impl GenerationsMetadata {
    /// Parse the bytes of `metadata.json`, trying (like Flox) legacy v1, then v2, then
    /// reporting by the `version` key.
    pub fn parse(bytes: &[u8]) -> Result<GenerationsMetadata, GenerationsError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|err| GenerationsError::InvalidJson(err.to_string()))?;
        GenerationsMetadata::from_json(&value)
    }

    /// [`GenerationsMetadata::parse`] of an already-decoded document (for writers that edit
    /// the JSON value itself, so that keys unknown here are kept).
    pub fn from_json(value: &serde_json::Value) -> Result<GenerationsMetadata, GenerationsError> {
        let version = value.get("version");

        // (a) legacy v1: `version` absent or 1.
        let mut v1_error = None;
        if version.is_none() || version_number(version) == Some(1) {
            match V1File::deserialize(value) {
                Ok(v1) => return migrate_v1(v1),
                Err(err) => v1_error = Some(err.to_string()),
            }
        }
        match (version, version_number(version)) {
            // (b) current v2.
            (Some(_), Some(2)) => {
                let v2 = V2File::deserialize(value)
                    .map_err(|err| GenerationsError::InvalidSchema { version: 2, detail: err.to_string() })?;
                check_v2_ids(&v2)?;
                Ok(from_v2(v2))
            }
            // (c) anything else with a version.
            (Some(_), Some(1)) => {
                Err(GenerationsError::InvalidSchema { version: 1, detail: v1_error.unwrap_or_default() })
            }
            (Some(serde_json::Value::String(text)), _) => {
                Err(GenerationsError::UnsupportedVersion { version: text.clone() })
            }
            (Some(other), _) => Err(GenerationsError::UnsupportedVersion { version: other.to_string() }),
            (None, _) => Err(GenerationsError::UnknownLayout),
        }
    }

    /// The live generation: `current_generation` of the last event; `None` with no history.
    pub fn live(&self) -> Option<u32> {
        self.history.last().map(|entry| entry.current_generation)
    }

    /// Every generation that exists, ascending.
    pub fn generations(&self) -> Vec<u32> {
        (1..=self.total_generations).collect()
    }

    /// Whether generation `n` exists.
    pub fn contains(&self, n: u32) -> bool {
        n >= 1 && n <= self.total_generations
    }

    /// The error for a requested generation that does not exist in `environment` (`owner/name`).
    pub fn generation_not_found(&self, generation: u32, environment: impl fmt::Display) -> GenerationsError {
        GenerationsError::GenerationNotFound {
            generation,
            environment: environment.to_string(),
            available: self.generations(),
            live: self.live(),
        }
    }

    /// When generation `n` was created: the timestamp of the first event that made it current
    /// (its `import`/`edit`/… event; a later `switch_generation` back to it does not count).
    /// `None` when no event names it.
    pub fn created_at(&self, n: u32) -> Option<u64> {
        self.history.iter().find(|e| e.current_generation == n).map(|e| e.timestamp)
    }

    /// The generation to use: the requested one if it exists, else the live one.
    pub fn resolve(&self, requested: Option<u32>, environment: impl fmt::Display) -> Result<u32, GenerationsError> {
        match requested {
            Some(n) if self.contains(n) => Ok(n),
            Some(n) => Err(self.generation_not_found(n, environment)),
            None => {
                self.live().ok_or_else(|| GenerationsError::NoLiveGeneration { environment: environment.to_string() })
            }
        }
    }
}

fn version_number(version: Option<&serde_json::Value>) -> Option<u64> {
    version.and_then(serde_json::Value::as_u64)
}

/// Generations are numbered densely `1..=total_generations`; an event naming another
/// number would make the node look for files that cannot exist, so the file is refused.
fn check_v2_ids(v2: &V2File) -> Result<(), GenerationsError> {
    for (index, entry) in v2.history.iter().enumerate() {
        let ids = std::iter::once(("current_generation", entry.current_generation))
            .chain(entry.previous_generation.map(|id| ("previous_generation", id)));
        for (field, id) in ids {
            if id.0 == 0 || id.0 > v2.total_generations {
                return Err(GenerationsError::InvalidSchema {
                    version: 2,
                    detail: format!(
                        "history[{index}].{field} is {}, outside 1..={} (total_generations)",
                        id.0, v2.total_generations
                    ),
                });
            }
        }
    }
    Ok(())
}

fn from_v2(v2: V2File) -> GenerationsMetadata {
    GenerationsMetadata {
        source_version: 2,
        total_generations: v2.total_generations,
        history: v2
            .history
            .into_iter()
            .map(|entry| HistoryEntry {
                kind: entry.kind,
                author: entry.author,
                hostname: entry.hostname,
                command: entry.command,
                timestamp: entry.timestamp,
                current_generation: entry.current_generation.0,
                previous_generation: entry.previous_generation.map(|id| id.0),
            })
            .collect(),
    }
}

/// Flox's in-memory migration of the legacy layout: one `migrate_v1` event per generation in
/// id order, then a switch if `currentGen` is not the newest. Ids must be dense from 1.
fn migrate_v1(v1: V1File) -> Result<GenerationsMetadata, GenerationsError> {
    let invalid = |detail: String| GenerationsError::InvalidSchema { version: 1, detail };
    let mut generations = Vec::with_capacity(v1.generations.len());
    for (id, generation) in v1.generations {
        let n = parse_generation_id(&id).ok_or_else(|| invalid(format!("generation id '{id}' is not a number")))?;
        generations.push((n, generation));
    }
    generations.sort_by_key(|(n, _)| *n);
    for (index, (n, _)) in generations.iter().enumerate() {
        if *n as usize != index + 1 {
            return Err(invalid(format!(
                "generations must be numbered 1, 2, 3, ... without gaps; found {n} at position {}",
                index + 1
            )));
        }
    }
    let total = generations.len() as u32;
    let current = match (&v1.current_gen, total) {
        (None, 0) => None,
        (None, _) => return Err(invalid("currentGen is missing".to_string())),
        (Some(id), _) => {
            let n = parse_generation_id(id)
                .filter(|n| *n >= 1 && *n <= total)
                .ok_or_else(|| invalid(format!("currentGen '{id}' is not one of the generations")))?;
            Some(n)
        }
    };
    let mut history: Vec<HistoryEntry> = Vec::new();
    let mut previous = None;
    for (n, generation) in &generations {
        history.push(HistoryEntry {
            kind: "migrate_v1".to_string(),
            author: "unknown".to_string(),
            hostname: "unknown".to_string(),
            command: None,
            timestamp: generation.created,
            current_generation: *n,
            previous_generation: previous,
        });
        previous = Some(*n);
    }
    if let (Some(current), Some(newest)) = (current, previous) {
        if current != newest {
            let timestamp = history.last().map_or(0, |entry| entry.timestamp);
            history.push(HistoryEntry {
                kind: "switch_generation".to_string(),
                author: "unknown".to_string(),
                hostname: "unknown".to_string(),
                command: None,
                timestamp,
                current_generation: current,
                previous_generation: Some(newest),
            });
        }
    }
    Ok(GenerationsMetadata { source_version: 1, total_generations: total, history })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The illustrative file of reference §2.6: import, install, rollback to 1.
    const V2_SAMPLE: &str = r#"{"version": 2, "total_generations": 2, "history": [
      {"kind": "import", "author": "alice", "hostname": "build-01", "command": ["flox", "push"],
       "timestamp": 1750000000, "current_generation": "1"},
      {"kind": "install", "targets": ["ripgrep"], "author": "alice", "hostname": "build-01",
       "command": ["flox", "install", "ripgrep"], "timestamp": 1750000600,
       "current_generation": "2", "previous_generation": "1"},
      {"kind": "switch_generation", "author": "bob", "hostname": "ops-02",
       "command": ["flox", "generations", "rollback"], "timestamp": 1750003600,
       "current_generation": "1", "previous_generation": "2"}]}"#;

    #[test]
    fn v2_live_is_the_last_entry_not_the_newest() {
        let meta = GenerationsMetadata::parse(V2_SAMPLE.as_bytes()).unwrap();
        assert_eq!(meta.source_version, 2);
        assert_eq!(meta.live(), Some(1));
        assert_eq!(meta.generations(), vec![1, 2]);
        assert!(meta.contains(2) && !meta.contains(3) && !meta.contains(0));
        assert_eq!(meta.history[1].kind, "install");
        assert_eq!(meta.history[2].previous_generation, Some(2));
        assert_eq!(meta.history[2].author, "bob");
    }

    #[test]
    fn v2_tolerates_unknown_kinds_and_extra_fields() {
        let text = r#"{"version":2,"total_generations":1,"future_key":{"x":1},"history":[
          {"kind":"initialize","author":"floxhub","hostname":"hub","timestamp":1,
           "current_generation":"1","whatever":[1,2]},
          {"kind":"teleport","author":"a","hostname":"h","timestamp":2,"command":null,
           "current_generation":"1","previous_generation":null}]}"#;
        let meta = GenerationsMetadata::parse(text.as_bytes()).unwrap();
        assert_eq!(meta.live(), Some(1));
        assert_eq!(meta.history[1].kind, "teleport");
        assert_eq!(meta.history[0].command, None);
    }

    #[test]
    fn v2_empty_history_has_no_live_generation() {
        let meta = GenerationsMetadata::parse(br#"{"version":2,"total_generations":0,"history":[]}"#).unwrap();
        assert_eq!(meta.live(), None);
        assert!(meta.generations().is_empty());
        let err = meta.resolve(None, "alice/empty").unwrap_err().to_string();
        assert!(err.contains("alice/empty has no live generation"), "{err}");
    }

    #[test]
    fn v2_generation_id_must_be_a_string_of_digits() {
        for id in ["1", "\"x\"", "\"-1\"", "\"+1\"", "\"\""] {
            let text = format!(
                r#"{{"version":2,"total_generations":1,"history":[{{"kind":"edit","author":"a","hostname":"h","timestamp":1,"current_generation":{id}}}]}}"#
            );
            let err = GenerationsMetadata::parse(text.as_bytes()).unwrap_err();
            assert!(matches!(err, GenerationsError::InvalidSchema { version: 2, .. }), "{id}: {err}");
            assert!(err.to_string().starts_with("Environment metadata of version '2' could not be parsed"));
        }
    }

    #[test]
    fn v2_events_must_name_existing_generations() {
        for (current, previous) in [("3", "null"), ("0", "null"), ("1", "\"9\"")] {
            let text = format!(
                r#"{{"version":2,"total_generations":2,"history":[{{"kind":"edit","author":"a","hostname":"h","timestamp":1,"current_generation":"{current}","previous_generation":{previous}}}]}}"#
            );
            let err = GenerationsMetadata::parse(text.as_bytes()).unwrap_err().to_string();
            assert!(err.contains("outside 1..=2 (total_generations)"), "{err}");
        }
    }

    #[test]
    fn v2_missing_required_field_is_a_schema_error() {
        let text = r#"{"version":2,"total_generations":1,"history":[{"kind":"edit","hostname":"h","timestamp":1,"current_generation":"1"}]}"#;
        let err = GenerationsMetadata::parse(text.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("author"), "{err}");
    }

    #[test]
    fn newer_versions_are_refused() {
        let err = GenerationsMetadata::parse(br#"{"version":3,"history":[]}"#).unwrap_err();
        assert_eq!(err, GenerationsError::UnsupportedVersion { version: "3".into() });
        assert!(err.to_string().contains("newer version of Flox"));
        let err = GenerationsMetadata::parse(br#"{"version":"two"}"#).unwrap_err();
        assert_eq!(err, GenerationsError::UnsupportedVersion { version: "two".into() });
        assert_eq!(GenerationsMetadata::parse(b"{}").unwrap_err(), GenerationsError::UnknownLayout);
        assert!(matches!(GenerationsMetadata::parse(b"not json").unwrap_err(), GenerationsError::InvalidJson(_)));
    }

    #[test]
    fn v1_is_migrated_with_a_final_switch_when_current_is_not_newest() {
        let text = r#"{"currentGen":"2","generations":{
          "1":{"created":100,"lastActive":200,"description":"one"},
          "3":{"created":300,"lastActive":null,"description":"three"},
          "2":{"created":200,"lastActive":300,"description":"two"}},"version":1}"#;
        let meta = GenerationsMetadata::parse(text.as_bytes()).unwrap();
        assert_eq!(meta.source_version, 1);
        assert_eq!(meta.generations(), vec![1, 2, 3]);
        assert_eq!(meta.live(), Some(2));
        let kinds: Vec<_> = meta.history.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["migrate_v1", "migrate_v1", "migrate_v1", "switch_generation"]);
        assert_eq!(meta.history[2].timestamp, 300);
    }

    #[test]
    fn v1_without_version_key_and_current_newest() {
        let text = r#"{"currentGen":"1","generations":{"1":{"created":1,"lastActive":null,"description":"d"}}}"#;
        let meta = GenerationsMetadata::parse(text.as_bytes()).unwrap();
        assert_eq!(meta.live(), Some(1));
        assert_eq!(meta.history.len(), 1);
    }

    #[test]
    fn v1_gaps_and_missing_current_are_errors() {
        let gap = r#"{"currentGen":"1","generations":{"1":{"created":1,"lastActive":null,"description":"d"},"3":{"created":1,"lastActive":null,"description":"d"}}}"#;
        let err = GenerationsMetadata::parse(gap.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("without gaps"), "{err}");
        let missing = r#"{"currentGen":null,"generations":{"1":{"created":1,"lastActive":null,"description":"d"}}}"#;
        let err = GenerationsMetadata::parse(missing.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("currentGen is missing"), "{err}");
        let unknown = r#"{"currentGen":"7","generations":{"1":{"created":1,"lastActive":null,"description":"d"}}}"#;
        let err = GenerationsMetadata::parse(unknown.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("currentGen '7'"), "{err}");
    }

    #[test]
    fn creation_time_is_the_first_event_of_a_generation() {
        let text = r#"{"version":2,"total_generations":2,"history":[
          {"kind":"import","author":"a","hostname":"h","timestamp":100,"current_generation":"1"},
          {"kind":"edit","author":"a","hostname":"h","timestamp":200,"current_generation":"2","previous_generation":"1"},
          {"kind":"switch_generation","author":"a","hostname":"h","timestamp":300,"current_generation":"1","previous_generation":"2"}]}"#;
        let m = GenerationsMetadata::parse(text.as_bytes()).unwrap();
        assert_eq!((m.created_at(1), m.created_at(2), m.created_at(3)), (Some(100), Some(200), None));
    }

    #[test]
    fn not_found_message_lists_available_and_live() {
        let meta = GenerationsMetadata::parse(V2_SAMPLE.as_bytes()).unwrap();
        assert_eq!(meta.resolve(Some(2), "alice/tools").unwrap(), 2);
        assert_eq!(meta.resolve(None, "alice/tools").unwrap(), 1);
        let err = meta.resolve(Some(5), "alice/tools").unwrap_err();
        assert_eq!(err.to_string(), "generation 5 of alice/tools does not exist; available: 1, 2 (live: 1)");
    }
}
