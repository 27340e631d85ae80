//! Talking to the node's containerd: find the binary, its version, `config dump`, the socket it
//! serves and restarting it.
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::install::{HostRoot, InstallError, DEFAULT_SOCKET};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RestartMode {
    /// systemd when it runs the host, else a signal to the socket's peer, else none.
    Auto,
    Systemd,
    /// SIGTERM to the process serving containerd's socket (its supervisor restarts it).
    Signal,
    None,
}

/// PATH for programs run on the node (the installer image's own PATH names only its binaries).
const NODE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A command run on the node: in the node's root (chroot(2) in the child, done in-process because
/// the installer image has no `chroot` binary) when --host-root is not /.
pub fn node_command(root: &HostRoot, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    if !root.is_root() {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::process::CommandExt;
        // Built before fork: the child only makes two system calls, with no allocation.
        let dir = std::ffi::CString::new(root.0.as_os_str().as_bytes()).unwrap_or_default();
        cmd.env("PATH", NODE_PATH);
        // SAFETY: chroot(2) and chdir(2) are async-signal-safe; `dir` is moved into the closure,
        // and passing a &CStr to rustix allocates nothing in the child.
        unsafe {
            cmd.pre_exec(move || {
                rustix::process::chroot(dir.as_c_str())?;
                rustix::process::chdir(c"/")?;
                Ok(())
            });
        }
    }
    cmd
}

/// Runs containerd (on the node, see [`node_command`]).
pub fn containerd_command(root: &HostRoot, containerd_bin: &Path) -> Command {
    node_command(root, containerd_bin)
}

pub fn find_containerd(root: &HostRoot, explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_owned());
    }
    ["/usr/local/bin/containerd", "/usr/bin/containerd", "/var/lib/rancher/rke2/bin/containerd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| root.join(p).exists())
}

/// `containerd --version` → (full version text, major).
pub fn containerd_version(root: &HostRoot, bin: &Path) -> Option<(String, u64)> {
    let out = containerd_command(root, bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "containerd github.com/containerd/containerd 1.6.20~ds1 <rev>" or "containerd containerd.io 2.1.9 ..."
    let version = text.split_whitespace().find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    let major = version.trim_start_matches('v').split('.').next()?.parse().ok()?;
    Some((version.to_owned(), major))
}

/// The effective config as containerd sees it (`config dump` merges imports; no daemon needed).
pub fn config_dump(root: &HostRoot, bin: &Path, config: &Path) -> Result<String, String> {
    let out = containerd_command(root, bin)
        .arg("--config")
        .arg(config)
        .args(["config", "dump"])
        .output()
        .map_err(|e| format!("running {} config dump: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} --config {} config dump failed: {}",
            bin.display(),
            config.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8(out.stdout).map_err(|_| "config dump printed non-UTF-8".to_owned())
}

/// The unix socket containerd serves, from the config's `[grpc] address`.
pub fn socket_address(root: &HostRoot, main: &Path) -> PathBuf {
    std::fs::read_to_string(root.join(main))
        .ok()
        .and_then(|t| t.parse::<toml_edit::DocumentMut>().ok())
        .and_then(|d| d.get("grpc")?.get("address")?.as_str().map(PathBuf::from))
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// PID of the process serving a unix socket (SO_PEERCRED of a connection to it).
pub fn socket_peer_pid(socket: &Path) -> std::io::Result<i32> {
    let stream = std::os::unix::net::UnixStream::connect(socket)?;
    let cred = rustix::net::sockopt::socket_peercred(&stream)?;
    Ok(cred.pid.as_raw_nonzero().get())
}

pub fn restart(root: &HostRoot, mode: RestartMode, main: &Path) -> Result<String, InstallError> {
    let socket = root.join(&socket_address(root, main));
    let mode = match mode {
        RestartMode::Auto if root.join(Path::new("/run/systemd/system")).is_dir() => RestartMode::Systemd,
        RestartMode::Auto if socket_peer_pid(&socket).is_ok() => RestartMode::Signal,
        RestartMode::Auto => RestartMode::None,
        other => other,
    };
    match mode {
        RestartMode::Systemd => {
            let mut cmd = node_command(root, "systemctl");
            let status = cmd
                .args(["restart", "containerd"])
                .status()
                .map_err(|e| InstallError::Restart { mode: "systemd", reason: format!("running systemctl: {e}") })?;
            if !status.success() {
                return Err(InstallError::Restart {
                    mode: "systemd",
                    reason: format!("systemctl restart containerd exited with {status}"),
                });
            }
            Ok("restarted containerd (systemctl restart containerd)".into())
        }
        RestartMode::Signal => {
            let pid = socket_peer_pid(&socket).map_err(|e| InstallError::Restart {
                mode: "signal",
                reason: format!("nothing answers on {}: {e}", socket.display()),
            })?;
            // A pid just read from the socket's peer credentials.
            let target = rustix::process::Pid::from_raw(pid).ok_or_else(|| InstallError::Restart {
                mode: "signal",
                reason: format!("the socket's peer has no pid ({pid})"),
            })?;
            if let Err(e) = rustix::process::kill_process(target, rustix::process::Signal::TERM) {
                return Err(InstallError::Restart { mode: "signal", reason: format!("kill {pid}: {e}") });
            }
            Ok(format!("sent SIGTERM to containerd (pid {pid}); its supervisor must start it again"))
        }
        RestartMode::None | RestartMode::Auto => {
            Ok("containerd not restarted: restart it so it reads the changed config".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under another host root the command runs chrooted there, found by the node's PATH, without
    /// a `chroot` binary (the installer image has none). Needs root and a static busybox.
    #[test]
    fn node_command_runs_in_the_host_root() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("usr/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap_or_else(|e| panic!("static /bin/busybox: {e}"));
        std::fs::write(dir.path().join("only-in-the-root"), "").unwrap();
        let out = node_command(&HostRoot(dir.path().to_owned()), "busybox")
            .args(["sh", "-c", "pwd; ls /"])
            .current_dir("/tmp")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "/\nonly-in-the-root\nusr\n");
    }
}
