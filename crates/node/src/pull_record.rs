//! Pull records: what the runtime tells the node agent about its pulls, so the agent can post
//! the pod's events and count metrics without being asked, and without the runtime waiting
//! for it (the agent may be down: pods start all the same).
//!
//! One JSON object a line in `<state_root>/events/pulls.jsonl`, appended (`O_APPEND`, one
//! `write` per record); past [`MAX_BYTES`] the file is renamed to `pulls.jsonl.1` (the one
//! before is dropped), so the directory stays under 2 × [`MAX_BYTES`]. Writing never fails a
//! pull and never blocks on anything but the local write. A record names the environment,
//! the pod, store path counts, byte counts, durations, substituter URLs (without user info)
//! and error texts: never a token (the runtime's errors never hold one).
//!
//! Phases of one pull (same `pull` id): `start` (after the closure is planned: paths and NAR
//! bytes to fetch), then `end` (duration, what came from which substituter) or `failed` (the
//! runtime's message). A create or prefetch that found the environment rendered writes `hit`.
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// The directory under the state root.
pub const DIR: &str = "events";
pub const FILE: &str = "pulls.jsonl";
pub const ROTATED: &str = "pulls.jsonl.1";
/// Size past which the file is rotated.
pub const MAX_BYTES: u64 = 1 << 20;
/// Longest error message kept in a record.
const MAX_MESSAGE: usize = 4096;
pub const VERSION: u32 = 1;

/// The pod a pull is for, from the container's CRI annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";

impl PodRef {
    /// From a spec's annotations (CRI sets all three for a pod's sandbox and containers).
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Option<PodRef> {
        let get = |k: &str| annotations.get(k).filter(|v| !v.is_empty()).cloned();
        Some(PodRef {
            namespace: get(SANDBOX_NAMESPACE)?,
            name: get(SANDBOX_NAME)?,
            uid: get(SANDBOX_UID)?,
            container: get(CONTAINER_NAME),
        })
    }

    /// As one argument (`namespace/name/uid`) for the sandbox's prefetch process.
    pub fn to_arg(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.name, self.uid)
    }

    pub fn from_arg(arg: &str) -> Option<PodRef> {
        let mut parts = arg.splitn(3, '/');
        let (namespace, name, uid) = (parts.next()?, parts.next()?, parts.next()?);
        if [namespace, name, uid].iter().any(|p| p.is_empty()) {
            return None;
        }
        Some(PodRef { namespace: namespace.into(), name: name.into(), uid: uid.into(), container: None })
    }
}

/// What one substituter delivered to a pull.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceBytes {
    pub paths: u64,
    pub bytes: u64,
    /// NARs it served that failed their checks (discarded, fetched elsewhere).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub corrupt: u64,
    /// Why the pull skipped it (`down`, `slow`, `invalid`), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "lowercase")]
pub enum Phase {
    /// The closure is planned: `paths` store paths of `bytes` NAR bytes to fetch.
    Start { paths: usize, bytes: u64 },
    /// Rendered: `bytes` NAR bytes of `paths` paths fetched, by substituter URL.
    End {
        duration_ms: u64,
        paths: usize,
        bytes: u64,
        sources: BTreeMap<String, SourceBytes>,
        /// The pull's warnings (substituters skipped, corrupt NARs), as the runc log shows them.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<String>,
    },
    /// The pull failed with the runtime's message; `kind` sorts it (`no-room`, `no-space`,
    /// `hub`, `fetch`, `lockfile`, `render`, `other`).
    Failed { duration_ms: u64, kind: String, message: String },
    /// The environment was rendered already: nothing pulled.
    Hit,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRecord {
    pub v: u32,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    /// The pull's id, the same in its start and end (`<pid>.<n>`).
    pub pull: String,
    /// `owner/name`.
    pub env: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u32>,
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    #[serde(flatten)]
    pub phase: Phase,
}

/// A new pull id for this process.
pub fn next_pull_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{}.{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// `https://user:secret@host/path` → `https://host/path`: a URL as a record may hold it.
pub fn url_without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
    format!("{scheme}://{host}{path}")
}

/// Cuts a message to [`MAX_MESSAGE`] bytes (on a char boundary).
pub fn bounded_message(message: &str) -> String {
    if message.len() <= MAX_MESSAGE {
        return message.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

pub fn dir(state_root: &Path) -> PathBuf {
    state_root.join(DIR)
}

/// Appends `record`; any failure is logged at debug level and otherwise ignored.
pub fn append(state_root: &Path, record: &PullRecord) {
    if let Err(e) = try_append(state_root, record) {
        tracing::debug!("pull record not written: {e}");
    }
}

fn try_append(state_root: &Path, record: &PullRecord) -> std::io::Result<()> {
    let dir = dir(state_root);
    let path = dir.join(FILE);
    let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let open = || std::fs::OpenOptions::new().create(true).append(true).open(&path);
    let mut file = match open() {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&dir)?;
            open()?
        }
        Err(e) => return Err(e),
    };
    if file.metadata()?.len() + line.len() as u64 > MAX_BYTES {
        // Two writers may both rotate: the later rename moves a nearly empty file over the
        // earlier one's. Records are hints; losing some there is acceptable.
        std::fs::rename(&path, dir.join(ROTATED))?;
        file = open()?;
    }
    file.write_all(&line)
}

/// Follows `pulls.jsonl` across rotations: each [`Tail::poll`] returns the records appended
/// since the last one. Lines that do not parse (a newer version's, a torn write) are skipped.
pub struct Tail {
    dir: PathBuf,
    /// Inode and offset of the file read so far.
    at: Option<(u64, u64)>,
    partial: Vec<u8>,
}

impl Tail {
    /// Starts at the current end: records written before are not replayed.
    pub fn from_end(state_root: &Path) -> Tail {
        let dir = dir(state_root);
        let at = std::fs::metadata(dir.join(FILE)).ok().map(|m| (inode(&m), m.len()));
        Tail { dir, at, partial: Vec::new() }
    }

    /// Starts at the beginning of the current file.
    pub fn from_start(state_root: &Path) -> Tail {
        Tail { dir: dir(state_root), at: None, partial: Vec::new() }
    }

    pub fn poll(&mut self) -> Vec<PullRecord> {
        let mut out = Vec::new();
        let current = std::fs::metadata(self.dir.join(FILE)).ok();
        if let Some((ino, offset)) = self.at {
            if current.as_ref().map(inode) != Some(ino) {
                // Rotated since: finish the old file (now `.1`) if it is the one we read.
                let rotated = self.dir.join(ROTATED);
                if std::fs::metadata(&rotated).ok().map(|m| inode(&m)) == Some(ino) {
                    self.read_from(&rotated, offset, &mut out);
                }
                self.partial.clear();
                self.at = None;
            }
        }
        if let Some(m) = current {
            let (ino, offset) = self.at.unwrap_or((inode(&m), 0));
            let offset = if m.len() < offset { 0 } else { offset };
            let read = self.read_from(&self.dir.join(FILE), offset, &mut out);
            self.at = Some((ino, offset + read));
        }
        out
    }

    /// Reads complete lines from `offset`; returns the bytes consumed (a partial last line
    /// is kept for the next poll).
    fn read_from(&mut self, path: &Path, offset: u64, out: &mut Vec<PullRecord>) -> u64 {
        let Ok(mut f) = std::fs::File::open(path) else { return 0 };
        if f.seek(SeekFrom::Start(offset)).is_err() {
            return 0;
        }
        let mut bytes = Vec::new();
        if f.take(4 * MAX_BYTES).read_to_end(&mut bytes).is_err() {
            return 0;
        }
        let read = bytes.len() as u64;
        self.partial.extend_from_slice(&bytes);
        let Some(last_newline) = self.partial.iter().rposition(|&b| b == b'\n') else { return read };
        let complete: Vec<u8> = self.partial.drain(..=last_newline).collect();
        for line in complete.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            if let Ok(record) = serde_json::from_slice::<PullRecord>(line) {
                out.push(record);
            }
        }
        read
    }
}

fn inode(m: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64, phase: Phase) -> PullRecord {
        PullRecord {
            v: VERSION,
            time_ms: n,
            pull: format!("1.{n}"),
            env: "flox/hello".into(),
            generation: Some(2),
            mode: "run".into(),
            pod: Some(PodRef { namespace: "ns".into(), name: "p".into(), uid: "u-1".into(), container: None }),
            phase,
        }
    }

    #[test]
    fn records_round_trip_as_one_json_line_each() {
        let r = record(
            7,
            Phase::End {
                duration_ms: 12,
                paths: 3,
                bytes: 300,
                sources: [(
                    "http://h/cache".to_string(),
                    SourceBytes { paths: 3, bytes: 300, ..SourceBytes::default() },
                )]
                .into(),
                warnings: Vec::new(),
            },
        );
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains(r#""phase":"end""#) && !text.contains('\n'), "{text}");
        assert_eq!(serde_json::from_str::<PullRecord>(&text).unwrap(), r);
    }

    #[test]
    fn tail_follows_appends_and_rotations_and_skips_garbage() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        append(root, &record(0, Phase::Hit));
        let mut tail = Tail::from_end(root);
        assert!(tail.poll().is_empty(), "records before the start are not replayed");
        append(root, &record(1, Phase::Start { paths: 1, bytes: 10 }));
        let mut raw = std::fs::OpenOptions::new().append(true).open(dir(root).join(FILE)).unwrap();
        raw.write_all(b"not json\n").unwrap();
        let got = tail.poll();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].time_ms, 1);
        // A line seen half-written is read once it is complete.
        let line = format!("{}\n", serde_json::to_string(&record(100, Phase::Hit)).unwrap());
        raw.write_all(&line.as_bytes()[..10]).unwrap();
        assert!(tail.poll().is_empty());
        raw.write_all(&line.as_bytes()[10..]).unwrap();
        assert_eq!(tail.poll()[0].time_ms, 100);
        // Fill past MAX_BYTES: the file rotates, and the tail reads the rest of the old one first.
        let big = "x".repeat(3000);
        let mut n = 2;
        while std::fs::metadata(dir(root).join(ROTATED)).is_err() {
            append(root, &record(n, Phase::Failed { duration_ms: 0, kind: "other".into(), message: big.clone() }));
            n += 1;
        }
        append(root, &record(n, Phase::Hit));
        let got = tail.poll();
        let times: Vec<u64> = got.iter().map(|r| r.time_ms).collect();
        assert_eq!(times, (2..=n).collect::<Vec<_>>(), "every record once, in order, across the rotation");
        assert!(std::fs::metadata(dir(root).join(FILE)).unwrap().len() < MAX_BYTES);
    }

    #[test]
    fn urls_lose_their_user_info_and_messages_are_bounded() {
        assert_eq!(url_without_userinfo("https://u:secret@cache.example/x"), "https://cache.example/x");
        assert_eq!(url_without_userinfo("http://127.0.0.1:8/cache"), "http://127.0.0.1:8/cache");
        assert_eq!(bounded_message(&"é".repeat(5000)).len(), 4096 + "…".len());
    }

    #[test]
    fn pod_refs_from_annotations_and_args() {
        let a: BTreeMap<String, String> = [
            (SANDBOX_NAMESPACE, "default"),
            (SANDBOX_NAME, "web-1"),
            (SANDBOX_UID, "0b7c-11"),
            (CONTAINER_NAME, "app"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let pod = PodRef::from_annotations(&a).unwrap();
        assert_eq!(pod.container.as_deref(), Some("app"));
        let back = PodRef::from_arg(&pod.to_arg()).unwrap();
        assert_eq!((back.namespace, back.name, back.uid), ("default".into(), "web-1".into(), "0b7c-11".into()));
        assert!(PodRef::from_arg("a//c").is_none());
        assert!(PodRef::from_annotations(&BTreeMap::new()).is_none());
    }
}
