//! The shim's `start` and `delete` actions, as containerd runs them.
//!
//! `start` runs in the bundle directory and prints the address containerd then talks ttrpc to.
//! The launcher runs the stock runc shim's `start` (which starts or, for a pod's app
//! containers, finds the pod's shim process), then makes sure a proxy serves next to that
//! shim's socket, and prints the proxy's address in the shim's own format (a plain address in
//! 1.6/1.7, JSON bootstrap parameters in 2.x). The bundle's `address` file, which containerd
//! 1.6/1.7 reads back after a restart, names the proxy too (2.x keeps what was printed).
use std::ffi::OsString;
use std::io::{self, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::SystemTime;

use crate::group::{Group, RECORD_DIR};
use crate::proxy::ShimWatch;
use crate::read_bounded;

/// Longest unix socket path (sun_path holds 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Why a shim runs without the proxy (containerd then talks to the runc shim itself, and a
/// configured `flox-runc` does the flox work, as on containerd 1.6).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the runc shim printed no unix socket address: {0:?}")]
    Address(String),
    #[error("the proxy socket path {0} is too long")]
    PathTooLong(String),
    #[error("starting the proxy at {path}: {source}")]
    Start { path: String, source: io::Error },
}

pub fn start(shim: &Path, args: &[OsString]) -> i32 {
    let bundle = Path::new(".");
    let group = Group::of(args, bundle, Path::new(RECORD_DIR));
    // Another container of a pod whose proxy runs: what the pod's first start printed.
    if let Some(printed) = group.as_ref().and_then(Group::running) {
        if let Some(address) = shim_address(&printed) {
            write_address_file(bundle, &address);
        }
        print(&printed);
        return 0;
    }
    let pid_file = ShimPidFile::before_start(bundle);
    let out = match Command::new(shim).args(args).stderr(Stdio::inherit()).output() {
        Ok(out) => out,
        Err(e) => {
            eprintln!("containerd-shim-flox-v2: cannot run {}: {e}", shim.display());
            return 1;
        }
    };
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        print(&printed);
        return out.status.code().unwrap_or(1);
    }
    match proxied(&printed, bundle, group.as_ref(), pid_file.watch(bundle)) {
        Ok(printed) => print(&printed),
        Err(e) => {
            eprintln!("containerd-shim-flox-v2: {e}; containerd talks to the runc shim directly");
            print(&printed);
        }
    }
    0
}

fn print(text: &str) {
    let mut out = io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// What `start` prints instead of the runc shim's output `printed`: the same, with the proxy's
/// address (a proxy is started for the shim unless one already serves it), recorded for the
/// pod's other containers.
fn proxied(printed: &str, bundle: &Path, group: Option<&Group>, watch: ShimWatch) -> Result<String, ProxyError> {
    let address = shim_address(printed).ok_or_else(|| ProxyError::Address(printed.trim().to_string()))?;
    let upstream = address.strip_prefix("unix://").filter(|p| p.starts_with('/'));
    let upstream = upstream.ok_or_else(|| ProxyError::Address(address.clone()))?;
    let socket = format!("{upstream}.flox");
    if socket.len() > MAX_SOCKET_PATH {
        return Err(ProxyError::PathTooLong(socket));
    }
    ensure_proxy(Path::new(&socket), Path::new(upstream), bundle, group, watch)
        .map_err(|source| ProxyError::Start { path: socket.clone(), source })?;
    let ours = format!("unix://{socket}");
    write_address_file(bundle, &ours);
    let printed = printed.replacen(&address, &ours, 1);
    if let Some(group) = group {
        if let Err(e) = group.record(&printed, Path::new(&socket), Path::new(upstream)) {
            // Only an optimisation: the pod's next start runs the stock shim's start.
            eprintln!("containerd-shim-flox-v2: recording {}: {e}", group.path().display());
        }
    }
    Ok(printed)
}

/// The runc shim's `start` writes the pid of the shim process it started to the bundle's
/// `shim.pid` (and nothing when it found the pod's shim already running). The file's
/// modification time before the start tells one this start wrote from one left by an earlier
/// start in the same bundle.
struct ShimPidFile {
    before: Option<SystemTime>,
}

/// shim.pid holds a decimal pid; containerd's file, still read with a bound.
const PID_FILE_LIMIT: u64 = 32;

impl ShimPidFile {
    fn path(bundle: &Path) -> std::path::PathBuf {
        bundle.join("shim.pid")
    }

    fn before_start(bundle: &Path) -> ShimPidFile {
        ShimPidFile { before: std::fs::metadata(Self::path(bundle)).and_then(|m| m.modified()).ok() }
    }

    /// How the proxy will learn of the shim's exit: by a pidfd of the pid this start wrote,
    /// else by connecting to its socket.
    fn watch(&self, bundle: &Path) -> ShimWatch {
        let path = Self::path(bundle);
        let fresh = std::fs::metadata(&path).and_then(|m| m.modified()).is_ok_and(|m| Some(m) != self.before);
        let pid = read_bounded(&path, PID_FILE_LIMIT)
            .and_then(|text| text.trim().parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw);
        match (fresh, pid) {
            (true, Some(pid)) => rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
                .map_or(ShimWatch::Connect, ShimWatch::Pidfd),
            _ => ShimWatch::Connect,
        }
    }
}

/// containerd 1.6/1.7 reconnect after a restart to what the bundle's `address` file says (the
/// stock shim's start writes it; 2.x keeps what `start` printed instead).
fn write_address_file(bundle: &Path, address: &str) {
    let _ = std::fs::write(bundle.join("address"), address);
}

/// The address in a shim's `start` output: the whole (trimmed) text, or the `address` of
/// containerd 2.x's JSON bootstrap parameters.
fn shim_address(printed: &str) -> Option<String> {
    let text = printed.trim();
    if text.starts_with('{') {
        let params: serde_json::Value = serde_json::from_str(text).ok()?;
        return params.get("address")?.as_str().map(str::to_owned);
    }
    (!text.is_empty()).then(|| text.to_string())
}

/// Starts a proxy on `socket` for the shim at `upstream`, unless one already answers there
/// (the pod's sandbox started it). The listening socket is bound here, before the proxy
/// process exists, so containerd can connect as soon as `start` has printed it.
fn ensure_proxy(
    socket: &Path,
    upstream: &Path,
    bundle: &Path,
    group: Option<&Group>,
    watch: ShimWatch,
) -> io::Result<()> {
    if UnixStream::connect(socket).is_ok() {
        return Ok(());
    }
    let _ = std::fs::remove_file(socket); // a proxy that died (or a node restart) left it
    let listener = match UnixListener::bind(socket) {
        Ok(l) => l,
        // Another start for the same pod got there first.
        Err(e) if e.kind() == io::ErrorKind::AddrInUse && UnixStream::connect(socket).is_ok() => return Ok(()),
        Err(e) => return Err(e),
    };
    let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(bundle.join("flox-shim-proxy.log"));
    let (socket, upstream) = (socket.to_path_buf(), upstream.to_path_buf());
    let record = group.map(|g| g.path().to_owned());
    // A fork without exec: the proxy is this program, and starting it costs no second exec on
    // the pod's start path.
    // SAFETY: the launcher is single-threaded here (it has only run and waited for the stock
    // shim's start, reading its output on this thread), so the child may run any code: no
    // other thread held a lock or was mid-allocation at the fork.
    match unsafe { libc::fork() } {
        -1 => {
            let e = io::Error::last_os_error();
            let _ = std::fs::remove_file(&socket);
            Err(e)
        }
        0 => {
            // Its own session, as the runc shim's daemon: signals to containerd's process group
            // must not reach it. containerd reads `start`'s stdout to its end, so the proxy
            // must not hold it (nor containerd's stdin).
            let _ = rustix::process::setsid();
            let _ = rustix::stdio::dup2_stdin(&null);
            let _ = rustix::stdio::dup2_stdout(&null);
            let _ = match &log {
                Ok(log) => rustix::stdio::dup2_stderr(log),
                Err(_) => rustix::stdio::dup2_stderr(&null),
            };
            drop((null, log));
            crate::proxy::serve(listener, socket, upstream, record, watch)
        }
        _ => Ok(()),
    }
}

/// The value of Go-style flag `-name value`, `--name value` or `-name=value`.
pub(crate) fn flag(args: &[OsString], name: &str) -> Option<String> {
    let args: Vec<&str> = args.iter().filter_map(|a| a.to_str()).collect();
    for (i, arg) in args.iter().enumerate() {
        let bare = arg.trim_start_matches('-');
        if !arg.starts_with('-') {
            continue;
        }
        if bare == name {
            return args.get(i + 1).map(|v| v.to_string());
        }
        if let Some(v) = bare.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            return Some(v.to_string());
        }
    }
    None
}

/// Moves `exec` to the stock shim for every other action (and for `-v`).
pub fn exec_shim(shim: &Path, args: &[OsString]) -> i32 {
    let err = Command::new(shim).args(args).exec();
    eprintln!("containerd-shim-flox-v2: cannot exec {}: {err}", shim.display());
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_read_in_each_versions_format() {
        assert_eq!(shim_address("unix:///run/containerd/s/abc\n").as_deref(), Some("unix:///run/containerd/s/abc"));
        let json = r#"{"version":3,"address":"unix:///run/containerd/s/abc","protocol":"ttrpc"}"#;
        assert_eq!(shim_address(json).as_deref(), Some("unix:///run/containerd/s/abc"));
        assert_eq!(shim_address("  \n"), None);
        assert_eq!(shim_address(r#"{"version":3}"#), None);
    }

    #[test]
    fn flags_are_read_in_go_forms() {
        let args: Vec<OsString> =
            ["-namespace", "k8s.io", "-id", "c1", "--bundle=/b", "delete"].iter().map(OsString::from).collect();
        assert_eq!(flag(&args, "id").as_deref(), Some("c1"));
        assert_eq!(flag(&args, "bundle").as_deref(), Some("/b"));
        assert_eq!(flag(&args, "address"), None);
    }

    #[test]
    fn an_address_that_is_not_a_socket_file_gets_no_proxy() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(proxied("vsock://3:1024", tmp.path(), None, ShimWatch::Connect), Err(ProxyError::Address(_))));
        let long = format!("unix:///{}", "s".repeat(120));
        assert!(matches!(proxied(&long, tmp.path(), None, ShimWatch::Connect), Err(ProxyError::PathTooLong(_))));
    }

    #[test]
    fn the_proxy_watches_the_pid_this_start_wrote_and_no_other() {
        let tmp = tempfile::tempdir().unwrap();
        let bundle = tmp.path();
        let start = ShimPidFile::before_start(bundle);
        assert!(matches!(start.watch(bundle), ShimWatch::Connect), "no shim.pid: the stock start found a running shim");
        let mut shim = Command::new("sleep").arg("30").spawn().unwrap();
        std::fs::write(bundle.join("shim.pid"), shim.id().to_string()).unwrap();
        let ShimWatch::Pidfd(pidfd) = start.watch(bundle) else { panic!("the pid this start wrote is watched") };
        let readable = |timeout_ms: i64| {
            use rustix::event::{poll, PollFd, PollFlags, Timespec};
            let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
            let timeout = Timespec { tv_sec: timeout_ms / 1000, tv_nsec: timeout_ms % 1000 * 1_000_000 };
            poll(&mut fds, Some(&timeout)).unwrap() == 1
        };
        assert!(!readable(0), "the shim runs");
        let later = ShimPidFile::before_start(bundle);
        assert!(matches!(later.watch(bundle), ShimWatch::Connect), "a shim.pid an earlier start wrote is not trusted");
        shim.kill().unwrap();
        shim.wait().unwrap();
        assert!(readable(1000), "the pidfd says when the shim has exited");
        let bad = ShimPidFile::before_start(bundle);
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(bundle.join("shim.pid"), "not a pid").unwrap();
        assert!(matches!(bad.watch(bundle), ShimWatch::Connect));
    }

    #[test]
    fn a_running_proxy_is_reused_and_named_in_the_output_and_the_address_file() {
        let tmp = tempfile::tempdir().unwrap();
        let upstream = tmp.path().join("shim");
        let socket = tmp.path().join("shim.flox");
        let _listening = UnixListener::bind(&socket).unwrap(); // the pod's proxy
        std::fs::write(tmp.path().join("address"), format!("unix://{}", upstream.display())).unwrap();
        let printed = format!(r#"{{"version":3,"address":"unix://{}","protocol":"ttrpc"}}"#, upstream.display());
        let out = proxied(&printed, tmp.path(), None, ShimWatch::Connect).unwrap();
        assert_eq!(out, printed.replace(&upstream.display().to_string(), &socket.display().to_string()));
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("address")).unwrap(),
            format!("unix://{}", socket.display())
        );
    }
}
