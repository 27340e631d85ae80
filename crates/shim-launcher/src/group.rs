//! A pod's containers share one runc shim (containerd groups them by the sandbox id), and so one
//! proxy. The pod's first `start` (the sandbox's) runs the stock shim's start and records what
//! it printed, with the proxy's address, under a key of (containerd's address, namespace, pod).
//! Later starts of the same pod print that record while the proxy and its shim answer, without
//! running the stock shim's start: a Go process that would only find the pod's socket and say
//! so (a few ms of CPU per container).
use std::ffi::OsString;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::read_bounded;

/// Where the records live (tmpfs: a node restart starts with none, as with shims).
pub const RECORD_DIR: &str = "/run/imageless/shims";
/// The annotation containerd's CRI sets on every container of a pod, and the runc shim groups by.
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// A bundle's config.json is containerd's; still, never read without a bound.
const SPEC_LIMIT: u64 = 4 << 20;
const RECORD_LIMIT: u64 = 64 << 10;

/// One pod's record.
#[derive(Debug, Clone)]
pub struct Group {
    record: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    /// What `start` printed, naming the proxy.
    printed: String,
    proxy: String,
    upstream: String,
}

impl Group {
    /// The group of the container whose bundle is `bundle`, started with containerd's `args`
    /// (`-address`, `-namespace`, `-id`), its record kept in `dir`.
    pub fn of(args: &[OsString], bundle: &Path, dir: &Path) -> Option<Group> {
        let address = crate::start::flag(args, "address")?;
        let namespace = crate::start::flag(args, "namespace")?;
        let group = sandbox_id(bundle).or_else(|| crate::start::flag(args, "id"))?;
        let key = Sha256::digest(format!("{address}\0{namespace}\0{group}").as_bytes());
        Some(Group { record: dir.join(hex::encode(key)) })
    }

    pub fn path(&self) -> &Path {
        &self.record
    }

    /// What to print for another container of a pod whose proxy and shim both answer.
    pub fn running(&self) -> Option<String> {
        let record: Record = serde_json::from_str(&read_bounded(&self.record, RECORD_LIMIT)?).ok()?;
        UnixStream::connect(&record.upstream).ok()?;
        UnixStream::connect(&record.proxy).ok()?;
        Some(record.printed)
    }

    /// Records the pod's first start (atomically: other starts may read it at any time).
    pub fn record(&self, printed: &str, proxy: &Path, upstream: &Path) -> std::io::Result<()> {
        let record = Record {
            printed: printed.to_string(),
            proxy: proxy.display().to_string(),
            upstream: upstream.display().to_string(),
        };
        if let Some(dir) = self.record.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.record.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec(&record).expect("serializable"))?;
        std::fs::rename(tmp, &self.record)
    }
}

impl Group {
    /// Drops the record (and the proxy socket it names) when its proxy no longer answers: a
    /// proxy that was killed cannot remove them itself.
    pub fn remove_if_stale(&self) {
        let Ok(text) = std::fs::read_to_string(&self.record) else { return };
        let Ok(record) = serde_json::from_str::<Record>(&text) else {
            let _ = std::fs::remove_file(&self.record);
            return;
        };
        if UnixStream::connect(&record.proxy).is_err() {
            let _ = std::fs::remove_file(&record.proxy);
            let _ = std::fs::remove_file(&self.record);
        }
    }
}

fn sandbox_id(bundle: &Path) -> Option<String> {
    let spec: serde_json::Value = serde_json::from_str(&read_bounded(&bundle.join("config.json"), SPEC_LIMIT)?).ok()?;
    spec.get("annotations")?.get(SANDBOX_ID)?.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    fn args(id: &str) -> Vec<OsString> {
        ["-namespace", "k8s.io", "-address", "/run/containerd/containerd.sock", "-id", id, "start"]
            .iter()
            .map(OsString::from)
            .collect()
    }

    #[test]
    fn a_pods_containers_share_a_record_and_other_pods_do_not() {
        let tmp = tempfile::tempdir().unwrap();
        let (sandbox, app, other) = (tmp.path().join("s"), tmp.path().join("a"), tmp.path().join("o"));
        for (dir, sandbox_id) in [(&sandbox, "pod1"), (&app, "pod1"), (&other, "pod2")] {
            std::fs::create_dir(dir).unwrap();
            let spec = serde_json::json!({"annotations": {SANDBOX_ID: sandbox_id}});
            std::fs::write(dir.join("config.json"), spec.to_string()).unwrap();
        }
        let records = tmp.path().join("records");
        let of = |bundle: &Path, id: &str| Group::of(&args(id), bundle, &records).unwrap().record;
        assert_eq!(of(&sandbox, "pod1"), of(&app, "c1"));
        assert_ne!(of(&sandbox, "pod1"), of(&other, "c2"));
        // Without the annotation (not CRI), the container is its own group.
        let plain = tmp.path().join("p");
        std::fs::create_dir(&plain).unwrap();
        assert_eq!(of(&plain, "pod1"), of(&sandbox, "pod1"));
        assert_ne!(of(&plain, "x"), of(&sandbox, "pod1"));
        let mut no_address = args("x");
        no_address.drain(2..4);
        assert!(Group::of(&no_address, &plain, &records).is_none());
    }

    #[test]
    fn a_record_is_used_only_while_its_proxy_and_shim_answer() {
        let tmp = tempfile::tempdir().unwrap();
        let bundle = tmp.path();
        let group = Group::of(&args("c1"), bundle, &tmp.path().join("records")).unwrap();
        assert_eq!(group.running(), None, "no record yet");
        let (proxy, upstream) = (tmp.path().join("proxy.sock"), tmp.path().join("shim.sock"));
        let printed = format!("unix://{}", proxy.display());
        group.record(&printed, &proxy, &upstream).unwrap();
        assert_eq!(group.running(), None, "nothing listens");
        let _shim = UnixListener::bind(&upstream).unwrap();
        assert_eq!(group.running(), None, "the proxy is gone");
        let proxy_listener = UnixListener::bind(&proxy).unwrap();
        assert_eq!(group.running().as_deref(), Some(printed.as_str()));
        group.remove_if_stale();
        assert!(group.path().exists(), "a live proxy's record stays");
        drop(proxy_listener);
        assert_eq!(group.running(), None);
        group.remove_if_stale();
        assert!(!group.path().exists() && !proxy.exists(), "a dead proxy's record and socket go");
    }
}
