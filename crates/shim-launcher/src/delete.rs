//! The shim's `delete` action: containerd runs it in a container's bundle after that
//! container's shim has gone, after every shim exit, normal or not (twice per pod: sandbox and
//! app container). It must leave no runc container and no rootfs mount behind, and answer with
//! the task API's `DeleteResponse`.
//!
//! The stock runc shim's delete is a Go process (about 10 ms of CPU here) that always runs
//! `runc delete --force`, though after a normal teardown runc has long deleted the container
//! and that runc call only fails. The launcher does the same work itself and runs runc only
//! while runc still holds state for the container (a shim that died or was killed): the same
//! runc command as the stock delete, then the rootfs unmounted, then the same answer (the init
//! pid, exit status 128 + SIGKILL, now). A burst of pod teardowns then costs no Go process at
//! all. Then what flox-runc's delete would remove goes too, and the pod's record if its proxy
//! is gone.
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use imageless_node::config::NodeConfig;
use prost::Message;

use crate::group::{Group, RECORD_DIR};
use crate::read_bounded;
use crate::start::flag;

/// The stock shim's default runc root; containers live in `<root>/<namespace>/<id>`.
const RUNC_ROOT: &str = "/run/containerd/runc";
/// The runtime binary when the bundle names none (the shim looks it up on PATH).
const DEFAULT_RUNTIME: &str = "runc";
/// What the stock delete reports: the container was killed.
const EXIT_STATUS: u32 = 128 + 9;
/// Files of the bundle the shim wrote; still, never read without a bound.
const BUNDLE_FILE_LIMIT: u64 = 1 << 20;

/// `containerd.task.v2`/`v3` `DeleteResponse` (same message in both).
#[derive(Clone, PartialEq, Message)]
pub struct DeleteResponse {
    #[prost(uint32, tag = "1")]
    pub pid: u32,
    #[prost(uint32, tag = "2")]
    pub exit_status: u32,
    #[prost(message, optional, tag = "3")]
    pub exited_at: Option<Timestamp>,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, PartialEq, Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// What one delete works on, read from its arguments and bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    id: String,
    bundle: PathBuf,
    /// The runc binary the shim created the container with (the bundle's `runtime` file).
    runtime: String,
    /// `<root>/<namespace>`, the root runc keeps this namespace's containers in.
    runc_root: PathBuf,
}

impl Target {
    fn of(args: &[OsString], bundle: &Path) -> Result<Target, String> {
        let namespace = identifier(args, "namespace")?;
        let id = identifier(args, "id")?;
        let runtime =
            read_bounded(&bundle.join("runtime"), BUNDLE_FILE_LIMIT).map(|r| r.trim().to_string()).unwrap_or_default();
        let root = read_bounded(&bundle.join("options.json"), BUNDLE_FILE_LIMIT)
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|opts| opts.get("root").and_then(|r| r.as_str()).map(str::to_owned))
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| RUNC_ROOT.to_string());
        Ok(Target {
            id,
            bundle: bundle.to_path_buf(),
            runtime: if runtime.is_empty() { DEFAULT_RUNTIME.to_string() } else { runtime },
            runc_root: Path::new(&root).join(namespace),
        })
    }

    /// The runc command the stock delete runs.
    fn runc_delete(&self) -> Command {
        let mut cmd = Command::new(&self.runtime);
        cmd.arg("--root")
            .arg(&self.runc_root)
            .arg("--log")
            .arg(self.bundle.join("log.json"))
            .args(["--log-format", "json", "delete", "--force", &self.id])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    }

    /// Whether runc still holds the container (its state directory exists).
    fn runc_has_container(&self) -> bool {
        self.runc_root.join(&self.id).symlink_metadata().is_ok()
    }
}

/// Flag `-name`, a containerd identifier (it becomes a path component): present, non-empty,
/// no `/`, not `.` or `..`.
fn identifier(args: &[OsString], name: &str) -> Result<String, String> {
    match flag(args, name) {
        Some(v) if !v.is_empty() && !v.contains('/') && v != "." && v != ".." => Ok(v),
        Some(v) => {
            Err(format!("-{name} {v:?} is not valid: a containerd identifier, non-empty, without '/', not . or .."))
        }
        None => Err(format!("-{name} is missing: containerd passes the container's {name}")),
    }
}

pub fn delete(args: &[OsString]) -> i32 {
    let bundle = match std::env::current_dir() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("containerd-shim-flox-v2: the bundle (working directory): {e}");
            return 1;
        }
    };
    let target = match Target::of(args, &bundle) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("containerd-shim-flox-v2: {e}");
            return 1;
        }
    };
    // A shim that died: its container may still run. (Warnings only, as the stock delete.)
    let runc_done = !target.runc_has_container()
        || match target.runc_delete().status() {
            Ok(status) if status.success() => true,
            Ok(status) => {
                eprintln!("containerd-shim-flox-v2: runc delete --force {}: {status}", target.id);
                false
            }
            Err(e) => {
                eprintln!("containerd-shim-flox-v2: running {}: {e}", target.runtime);
                false
            }
        };
    unmount_all(&bundle.join("rootfs"));
    let pid = read_bounded(&bundle.join("init.pid"), BUNDLE_FILE_LIMIT)
        .and_then(|p| p.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let response = DeleteResponse { pid, exit_status: EXIT_STATUS, exited_at: Some(now()) };
    let mut out = std::io::stdout().lock();
    if out.write_all(&response.encode_to_vec()).and_then(|()| out.flush()).is_err() {
        return 1;
    }
    // Our state keeps gc from removing the environment under a container runc may still run.
    if let (true, Ok(config)) = (runc_done, NodeConfig::load(None)) {
        flox_runc::cleanup(&config, &target.id);
    }
    if let Some(group) = Group::of(args, &bundle, Path::new(RECORD_DIR)) {
        group.remove_if_stale();
    }
    0
}

/// Unmounts everything stacked on `rootfs` (the bundle's, containerd's directory; never a
/// path inside it, which the container could have changed). A mount that is busy is
/// detached with what is below it.
fn unmount_all(rootfs: &Path) {
    use rustix::io::Errno;
    use rustix::mount::{unmount, UnmountFlags};
    for _ in 0..64 {
        match unmount(rootfs, UnmountFlags::NOFOLLOW) {
            Ok(()) => continue,
            Err(Errno::INVAL | Errno::NOENT) => return,
            Err(Errno::BUSY) => {
                if let Err(e) = unmount(rootfs, UnmountFlags::NOFOLLOW | UnmountFlags::DETACH) {
                    eprintln!("containerd-shim-flox-v2: unmounting the rootfs: {e}");
                    return;
                }
            }
            Err(e) => {
                eprintln!("containerd-shim-flox-v2: unmounting the rootfs: {e}");
                return;
            }
        }
    }
}

fn now() -> Timestamp {
    let since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: since.as_secs() as i64, nanos: since.subsec_nanos() as i32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_target_is_read_from_the_arguments_and_the_bundle_as_the_stock_shim_does() {
        let tmp = tempfile::tempdir().unwrap();
        let bundle = tmp.path();
        let a = args(&["-namespace", "k8s.io", "-id", "c1", "-address", "/run/containerd/containerd.sock", "delete"]);
        let t = Target::of(&a, bundle).unwrap();
        assert_eq!(t.runtime, "runc", "no runtime file: runc on PATH");
        assert_eq!(t.runc_root, Path::new("/run/containerd/runc/k8s.io"));
        std::fs::write(bundle.join("runtime"), "/usr/local/sbin/runc").unwrap();
        std::fs::write(bundle.join("options.json"), r#"{"binary_name":"/usr/local/sbin/runc","root":"/run/r"}"#)
            .unwrap();
        let t = Target::of(&a, bundle).unwrap();
        assert_eq!((t.runtime.as_str(), t.runc_root.as_path()), ("/usr/local/sbin/runc", Path::new("/run/r/k8s.io")));
        let cmd = t.runc_delete();
        let argv: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let log = bundle.join("log.json").display().to_string();
        assert_eq!(argv, ["--root", "/run/r/k8s.io", "--log", &log, "--log-format", "json", "delete", "--force", "c1"]);
        let refused = |a: &[&str]| Target::of(&args(a), bundle).unwrap_err();
        assert_eq!(
            refused(&["-id", "c1", "delete"]),
            "-namespace is missing: containerd passes the container's namespace"
        );
        assert_eq!(
            refused(&["-namespace", "k8s.io", "-id", "../c1", "delete"]),
            "-id \"../c1\" is not valid: a containerd identifier, non-empty, without '/', not . or .."
        );
        assert_eq!(
            refused(&["-namespace", "..", "-id", "c1"]),
            "-namespace \"..\" is not valid: a containerd identifier, non-empty, without '/', not . or .."
        );
    }

    #[test]
    fn runc_runs_only_while_it_holds_the_container() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("runc");
        let t = Target {
            id: "c1".into(),
            bundle: tmp.path().into(),
            runtime: "runc".into(),
            runc_root: root.join("k8s.io"),
        };
        assert!(!t.runc_has_container(), "a normal teardown: runc deleted it already");
        std::fs::create_dir_all(root.join("k8s.io/c1")).unwrap();
        assert!(t.runc_has_container());
    }

    #[test]
    fn the_answer_is_the_task_apis_delete_response() {
        let response = DeleteResponse { pid: 42, exit_status: EXIT_STATUS, exited_at: Some(now()) };
        let bytes = response.encode_to_vec();
        // Field 1 (pid, varint 42), field 2 (exit status, varint 137), field 3 (a message).
        assert_eq!(&bytes[..5], &[0x08, 42, 0x10, 0x89, 0x01]);
        assert_eq!(bytes[5], 0x1a);
        assert_eq!(DeleteResponse::decode(&bytes[..]).unwrap(), response);
    }

    #[test]
    fn stacked_rootfs_mounts_are_all_unmounted() {
        use rustix::mount::{mount, MountFlags};
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        std::fs::create_dir(&rootfs).unwrap();
        for _ in 0..2 {
            if let Err(e) = mount("tmpfs", &rootfs, "tmpfs", MountFlags::empty(), None) {
                assert_eq!(e, rustix::io::Errno::PERM, "only a lack of privilege excuses this test");
                return;
            }
        }
        let mounted = || std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&*rootfs.to_string_lossy());
        assert!(mounted());
        unmount_all(&rootfs);
        assert!(!mounted(), "both mounts are gone");
    }

    #[test]
    fn a_rootfs_that_is_not_mounted_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        std::fs::create_dir(&rootfs).unwrap();
        unmount_all(&rootfs);
        unmount_all(&tmp.path().join("missing"));
        assert!(rootfs.is_dir());
    }
}
