//! The floxmeta `metadata.json` (version 2) as the hub writes it: pure transitions on a JSON
//! value so that entries and keys written by other tools are kept unchanged.
//!
//! Reading (which generations exist, which is live, what is valid) is
//! `imageless_core::generations::GenerationsMetadata`, the parser the node uses, so the hub
//! cannot extend a file the node would refuse, nor write one it cannot read (tested below).
use imageless_core::generations::GenerationsMetadata;
use serde_json::{json, Map, Value};

/// Who made a change, and when.
#[derive(Debug, Clone)]
pub struct EventAuthor {
    pub author: String,
    pub hostname: String,
    pub timestamp: i64,
}

/// Metadata of a fresh generations branch: empty history, no generations.
pub fn initial_metadata() -> Value {
    json!({"version": 2, "history": [], "total_generations": 0})
}

/// Reads and checks a metadata.json (core's parser); the hub appends only to version 2.
pub fn parse_metadata(bytes: &[u8]) -> Result<Value, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("metadata.json is not JSON: {e}"))?;
    read(&value)?;
    Ok(value)
}

/// Core's view of the document; refuses legacy version 1, which the hub does not rewrite.
fn read(metadata: &Value) -> Result<GenerationsMetadata, String> {
    let parsed = GenerationsMetadata::from_json(metadata).map_err(|e| e.to_string())?;
    if parsed.source_version != 2 {
        return Err(format!(
            "metadata.json version {} is not supported; the hub writes only version 2",
            parsed.source_version
        ));
    }
    Ok(parsed)
}

fn entry(kind: &str, who: &EventAuthor, current: u64, previous: Option<u64>) -> Map<String, Value> {
    let mut e = Map::new();
    e.insert("kind".into(), kind.into());
    e.insert("author".into(), who.author.clone().into());
    e.insert("hostname".into(), who.hostname.clone().into());
    e.insert("timestamp".into(), who.timestamp.into());
    // Generation ids are strings in flox's schema; a number would not parse there.
    e.insert("current_generation".into(), current.to_string().into());
    if let Some(p) = previous {
        e.insert("previous_generation".into(), p.to_string().into());
    }
    e
}

/// Appends a new generation (kind `import` for the first, `edit` afterwards). Returns the new
/// generation number and the commit summary.
pub fn add_generation(metadata: &mut Value, who: &EventAuthor) -> Result<(u64, String), String> {
    let parsed = read(metadata)?;
    let total = u64::from(parsed.total_generations);
    let new = total + 1;
    let previous = parsed.live().map(u64::from);
    let (kind, summary) =
        if total == 0 { ("import", "imported environment") } else { ("edit", "manually edited the manifest") };
    let e = entry(kind, who, new, previous);
    metadata["history"].as_array_mut().ok_or("metadata.json has no `history` array")?.push(Value::Object(e));
    metadata["total_generations"] = new.into();
    Ok((new, summary.to_string()))
}

/// Appends a `switch_generation` entry making `target` live. Returns the commit message.
pub fn switch_generation(metadata: &mut Value, target: u64, who: &EventAuthor) -> Result<String, String> {
    let parsed = read(metadata)?;
    let total = u64::from(parsed.total_generations);
    if target == 0 || target > total {
        return Err(format!("generation {target} does not exist; accepted: 1..={total}"));
    }
    let previous = parsed.live().map(u64::from);
    if previous == Some(target) {
        return Err(format!("generation {target} is already live"));
    }
    let e = entry("switch_generation", who, target, previous);
    metadata["history"].as_array_mut().ok_or("metadata.json has no `history` array")?.push(Value::Object(e));
    Ok(match previous {
        Some(p) => format!("changed current generation {p} -> {target}"),
        None => format!("changed current generation to {target}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(t: i64) -> EventAuthor {
        EventAuthor { author: "ci".into(), hostname: "node".into(), timestamp: t }
    }

    /// What the node reads from the bytes the hub commits (publish.rs writes
    /// `serde_json::to_vec`): the writer and core's parser must not drift apart.
    fn as_node_reads(m: &Value) -> GenerationsMetadata {
        GenerationsMetadata::parse(&serde_json::to_vec(m).unwrap())
            .unwrap_or_else(|e| panic!("core refuses what the hub wrote: {e}\n{m}"))
    }

    fn live(m: &Value) -> Option<u32> {
        as_node_reads(m).live()
    }

    #[test]
    fn generations_follow_flox_semantics() {
        let mut m = initial_metadata();
        assert_eq!(live(&m), None);
        assert_eq!(add_generation(&mut m, &who(1)).unwrap().0, 1);
        assert_eq!(add_generation(&mut m, &who(2)).unwrap().0, 2);
        assert_eq!(add_generation(&mut m, &who(3)).unwrap().0, 3);
        assert_eq!(live(&m), Some(3));
        let h = m["history"].as_array().unwrap();
        assert_eq!(h[0]["kind"], "import");
        assert!(h[0].get("previous_generation").is_none());
        assert_eq!(h[2]["kind"], "edit");
        assert_eq!(h[2]["current_generation"], "3");
        assert_eq!(h[2]["previous_generation"], "2");
        assert_eq!(m["total_generations"], 3);

        assert_eq!(switch_generation(&mut m, 1, &who(4)).unwrap(), "changed current generation 3 -> 1");
        assert_eq!(live(&m), Some(1));
        assert_eq!(m["total_generations"], 3);
        assert!(switch_generation(&mut m, 1, &who(5)).is_err());
        assert!(switch_generation(&mut m, 4, &who(5)).unwrap_err().contains("1..=3"));
        // A new generation after a rollback records the rolled-back-to parent.
        add_generation(&mut m, &who(6)).unwrap();
        assert_eq!(m["history"][4]["previous_generation"], "1");
        assert_eq!(m["history"][4]["current_generation"], "4");
    }

    #[test]
    fn node_reads_every_event_the_hub_writes() {
        let mut m = initial_metadata();
        add_generation(&mut m, &who(10)).unwrap();
        add_generation(&mut m, &who(20)).unwrap();
        switch_generation(&mut m, 1, &who(30)).unwrap();
        let node = as_node_reads(&m);
        assert_eq!(node.source_version, 2);
        assert_eq!(node.total_generations, 2);
        assert_eq!(node.generations(), vec![1, 2]);
        assert_eq!(node.live(), Some(1));
        let events: Vec<_> = node
            .history
            .iter()
            .map(|e| (e.kind.as_str(), e.current_generation, e.previous_generation, e.timestamp))
            .collect();
        assert_eq!(events, [("import", 1, None, 10), ("edit", 2, Some(1), 20), ("switch_generation", 1, Some(2), 30)]);
        assert!(node.history.iter().all(|e| e.author == "ci" && e.hostname == "node"));
    }

    #[test]
    fn keeps_foreign_keys_and_rejects_other_versions() {
        let mut m = parse_metadata(br#"{"version":2,"history":[{"kind":"future","x":1,"author":"a","hostname":"h","timestamp":1,"current_generation":"1"}],"total_generations":1,"extra":true}"#).unwrap();
        add_generation(&mut m, &who(1)).unwrap();
        assert_eq!(m["extra"], true);
        assert_eq!(m["history"][0]["x"], 1);
        assert!(parse_metadata(br#"{"version":3,"history":[],"total_generations":0}"#).is_err());
        assert!(parse_metadata(br#"{"currentGen":"1","generations":{}}"#).is_err());
        // Legacy version 1 is read by the node but not rewritten by the hub.
        let v1 =
            br#"{"version":1,"currentGen":"1","generations":{"1":{"created":1,"lastActive":null,"description":"d"}}}"#;
        assert!(parse_metadata(v1).unwrap_err().contains("version 1 is not supported; the hub writes only version 2"));
        // A file the node would refuse is not extended.
        let err = parse_metadata(
            br#"{"version":2,"history":[{"kind":"edit","author":"a","hostname":"h","timestamp":1,"current_generation":"5"}],"total_generations":1}"#,
        )
        .unwrap_err();
        assert!(err.contains("outside 1..=1"), "{err}");
    }
}
