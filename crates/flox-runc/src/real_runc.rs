//! Finding and running the real runc.
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use imageless_node::config::NodeConfig;

use crate::ErrorLog;

/// Why the real runc could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    #[error("flox: cannot find the real runc: none on PATH besides flox-runc; set `runc = \"/path/to/runc\"` in /etc/imageless/config.toml")]
    NotFound,
    #[error("flox: cannot run {}: {source}", runc.display())]
    Run { runc: PathBuf, source: std::io::Error },
}

/// The configured runc, else the first `runc` on PATH that is not this wrapper (the shim
/// launcher puts us first on PATH under the name `runc`).
pub fn find(config: &NodeConfig) -> Result<PathBuf, RuncError> {
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
    Err(RuncError::NotFound)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Replaces this process with the real runc (same argv, stdio, env).
pub fn exec(runc: &Path, args: &[String], log: &ErrorLog) -> i32 {
    let source = Command::new(runc).args(args).exec();
    log.error(&RuncError::Run { runc: runc.into(), source }.to_string());
    1
}

/// Runs the real runc as a child and returns its exit status, for calls after which the
/// wrapper has cleanup to do.
pub fn spawn_wait(runc: &Path, args: &[String], log: &ErrorLog) -> i32 {
    match Command::new(runc).args(args).status() {
        Ok(s) => s.code().unwrap_or(1),
        Err(source) => {
            log.error(&RuncError::Run { runc: runc.into(), source }.to_string());
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    #[test]
    fn messages_keep_their_text_and_chain_the_cause() {
        assert_eq!(
            RuncError::NotFound.to_string(),
            "flox: cannot find the real runc: none on PATH besides flox-runc; set `runc = \"/path/to/runc\"` in \
             /etc/imageless/config.toml"
        );
        let err = RuncError::Run { runc: "/x/runc".into(), source: std::io::Error::from_raw_os_error(2) };
        assert_eq!(err.to_string(), "flox: cannot run /x/runc: No such file or directory (os error 2)");
        assert_eq!(err.source().unwrap().to_string(), "No such file or directory (os error 2)");
    }
}
