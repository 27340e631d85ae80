//! Finding and running the real runc.
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use imageless_node::config::NodeConfig;

use crate::ErrorLog;

/// The configured runc, else the first `runc` on PATH that is not this wrapper (the shim
/// launcher puts us first on PATH under the name `runc`).
pub fn find(config: &NodeConfig) -> Result<PathBuf, String> {
    if let Some(path) = &config.runc {
        return Ok(path.clone());
    }
    let me = std::env::current_exe().ok().and_then(|p| p.canonicalize().ok());
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("runc");
        if is_executable(&candidate) && candidate.canonicalize().ok() != me {
            return Ok(candidate);
        }
    }
    Err("flox: cannot find the real runc: none on PATH besides flox-runc; set `runc = \"/path/to/runc\"` in /etc/imageless/config.toml".into())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Replaces this process with the real runc (same argv, stdio, env).
pub fn exec(runc: &Path, args: &[String], log: &ErrorLog) -> i32 {
    let err = Command::new(runc).args(args).exec();
    log.error(&format!("flox: cannot run {}: {err}", runc.display()));
    1
}

/// Runs the real runc as a child and returns its exit status, for calls after which the
/// wrapper has cleanup to do.
pub fn spawn_wait(runc: &Path, args: &[String], log: &ErrorLog) -> i32 {
    match Command::new(runc).args(args).status() {
        Ok(s) => s.code().unwrap_or(1),
        Err(err) => {
            log.error(&format!("flox: cannot run {}: {err}", runc.display()));
            1
        }
    }
}
