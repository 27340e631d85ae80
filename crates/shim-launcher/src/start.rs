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
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use imageless_node::config::NodeConfig;

use crate::PROXY_ARG;

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
    Spawn { path: String, source: io::Error },
}

pub fn start(shim: &Path, args: &[OsString], me: &Path) -> i32 {
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
    match proxied(&printed, me, Path::new(".")) {
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
/// address (a proxy is started for the shim unless one already serves it).
fn proxied(printed: &str, me: &Path, bundle: &Path) -> Result<String, ProxyError> {
    let address = shim_address(printed).ok_or_else(|| ProxyError::Address(printed.trim().to_string()))?;
    let upstream = address.strip_prefix("unix://").filter(|p| p.starts_with('/'));
    let upstream = upstream.ok_or_else(|| ProxyError::Address(address.clone()))?;
    let socket = format!("{upstream}.flox");
    if socket.len() > MAX_SOCKET_PATH {
        return Err(ProxyError::PathTooLong(socket));
    }
    ensure_proxy(Path::new(&socket), Path::new(upstream), me, bundle)
        .map_err(|source| ProxyError::Spawn { path: socket.clone(), source })?;
    let ours = format!("unix://{socket}");
    // containerd 1.6/1.7 reconnect after a restart to what this file says.
    let address_file = bundle.join("address");
    if address_file.exists() {
        let _ = std::fs::write(&address_file, &ours);
    }
    Ok(printed.replacen(&address, &ours, 1))
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
fn ensure_proxy(socket: &Path, upstream: &Path, me: &Path, bundle: &Path) -> io::Result<()> {
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
    let log = std::fs::OpenOptions::new().create(true).append(true).open(bundle.join("flox-shim-proxy.log"));
    let mut cmd = Command::new(me);
    cmd.arg(PROXY_ARG)
        .arg(socket)
        .arg(upstream)
        // The listener is the proxy's stdin; containerd reads `start`'s stdout to its end, so
        // the proxy must not hold it.
        .stdin(Stdio::from(OwnedFd::from(listener)))
        .stdout(Stdio::null())
        .stderr(log.map(Stdio::from).unwrap_or_else(|_| Stdio::null()))
        // Its own process group, as the runc shim's daemon: signals to containerd's group
        // (e.g. a terminal's ^C on a foreground containerd) must not reach it.
        .process_group(0);
    if let Err(e) = cmd.spawn() {
        let _ = std::fs::remove_file(socket);
        return Err(e);
    }
    Ok(())
}

/// The proxy process: `PROXY_ARG SOCKET UPSTREAM`, the listener on stdin.
pub fn proxy_main(args: &[OsString]) -> i32 {
    let [socket, upstream] = args else { return 2 };
    let Ok(fd) = std::os::fd::AsFd::as_fd(&io::stdin()).try_clone_to_owned() else { return 1 };
    crate::proxy::serve(UnixListener::from(fd), PathBuf::from(socket), PathBuf::from(upstream))
}

/// `delete`: containerd's cleanup of a shim that is gone. The runc shim deletes the container
/// with runc (and prints its answer); then what flox-runc's delete would remove goes too.
pub fn delete(shim: &Path, args: &[OsString]) -> i32 {
    let status = match Command::new(shim).args(args).status() {
        Ok(s) => s.code().unwrap_or(1),
        Err(e) => {
            eprintln!("containerd-shim-flox-v2: cannot run {}: {e}", shim.display());
            return 1;
        }
    };
    if status == 0 {
        if let (Some(id), Ok(config)) = (flag(args, "id"), NodeConfig::load(None)) {
            flox_runc::cleanup(&config, &id);
        }
    }
    status
}

/// The value of Go-style flag `-name value`, `--name value` or `-name=value`.
fn flag(args: &[OsString], name: &str) -> Option<String> {
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
        let me = Path::new("/nonexistent");
        assert!(matches!(proxied("vsock://3:1024", me, tmp.path()), Err(ProxyError::Address(_))));
        let long = format!("unix:///{}", "s".repeat(120));
        assert!(matches!(proxied(&long, me, tmp.path()), Err(ProxyError::PathTooLong(_))));
    }

    #[test]
    fn a_running_proxy_is_reused_and_named_in_the_output_and_the_address_file() {
        let tmp = tempfile::tempdir().unwrap();
        let upstream = tmp.path().join("shim");
        let socket = tmp.path().join("shim.flox");
        let _listening = UnixListener::bind(&socket).unwrap(); // the pod's proxy
        std::fs::write(tmp.path().join("address"), format!("unix://{}", upstream.display())).unwrap();
        let printed = format!(r#"{{"version":3,"address":"unix://{}","protocol":"ttrpc"}}"#, upstream.display());
        let out = proxied(&printed, Path::new("/nonexistent"), tmp.path()).unwrap();
        assert_eq!(out, printed.replace(&upstream.display().to_string(), &socket.display().to_string()));
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("address")).unwrap(),
            format!("unix://{}", socket.display())
        );
    }
}
