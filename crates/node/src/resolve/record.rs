//! `refs/<owner>/<name>.json`: what the hub said last about one environment, so that a pinned
//! or recently asked environment needs no hub, and a warm one no repository read.
//!
//! Written once per resolve, after the commit's files were read, by renaming a finished temp
//! file: a record on disk always names a commit whose files the cache has.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What the hub told us last about one environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefRecord {
    pub commit: String,
    /// Fingerprint of the token that fetched it; None = fetched anonymously (public).
    pub token_fingerprint: Option<String>,
    /// When the hub last answered (unix seconds).
    pub fetched_at: u64,
    /// Live generation at `commit`.
    #[serde(default)]
    pub live_generation: Option<u32>,
    /// `"<generation>:<mode>"` → rendered key at `commit`: a warm start needs no git read.
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
}

impl RefRecord {
    /// A record for `commit` answered at `now`, keeping what `previous` knew when it is the
    /// same commit.
    pub fn at(commit: &str, token_fingerprint: Option<String>, now: u64, previous: Option<&RefRecord>) -> RefRecord {
        let same = previous.filter(|p| p.commit == commit);
        RefRecord {
            commit: commit.to_string(),
            token_fingerprint,
            fetched_at: now,
            live_generation: same.and_then(|p| p.live_generation),
            keys: same.map(|p| p.keys.clone()).unwrap_or_default(),
        }
    }

    /// The key slot for one generation rendered in one mode.
    pub fn slot(generation: u32, mode: impl std::fmt::Display) -> String {
        format!("{generation}:{mode}")
    }
}

/// `<state_root>/refs/<owner>/<name>.json`.
pub fn path(state_root: &Path, owner: &str, name: &str) -> PathBuf {
    state_root.join("refs").join(owner).join(format!("{name}.json"))
}

/// The record, if there is a readable one (a damaged record is as good as none: it is a cache).
pub fn read(path: &Path) -> Option<RefRecord> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
thread_local! {
    /// Record writes on this thread (the tests check that a resolve writes once).
    pub static WRITES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Writes the record by renaming a finished temp file into place.
pub fn write(path: &Path, record: &RefRecord) -> std::io::Result<()> {
    #[cfg(test)]
    WRITES.with(|w| w.set(w.get() + 1));
    let dir = path.parent().expect("has parent");
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::write(&tmp, serde_json::to_vec(record).expect("serializable"))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        // A full disk must not leave a partial record file behind.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
