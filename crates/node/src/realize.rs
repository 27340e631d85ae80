//! Making store paths present with the node's Nix, and keeping them alive.
//!
//! All paths of a lock are realized in one `nix-store --realise` call (Nix fetches them in
//! parallel and dedups shared closure members), from the substituters and keys of the node
//! config. GC roots live under /nix/var/nix/gcroots so the host's `nix-collect-garbage`
//! never deletes what a cached environment (and so a running pod) uses.
use std::path::Path;
use std::process::{Command, Stdio};

use imageless_core::store_path::StorePath;

use crate::config::NodeConfig;

#[derive(Debug, thiserror::Error)]
pub enum RealizeError {
    #[error("flox: cannot run {program}: {source}; is Nix installed on this node? (run `imageless doctor`)")]
    NixMissing { program: String, source: std::io::Error },
    #[error("flox: store paths of {env} are not available from the substituters ({substituters}): {detail}")]
    Unavailable { env: String, substituters: String, detail: String },
    #[error("flox: {what} failed: {detail}")]
    Nix { what: String, detail: String },
    #[error("flox: writing GC roots under {dir}: {source}")]
    GcRoot { dir: String, source: std::io::Error },
}

pub struct Nix<'a> {
    pub config: &'a NodeConfig,
}

impl Nix<'_> {
    fn nix_store(&self) -> Command {
        let mut cmd = Command::new(self.config.nix_program("nix-store"));
        cmd.stdin(Stdio::null());
        cmd
    }

    fn run(&self, mut cmd: Command, what: &str) -> Result<String, RealizeError> {
        let out = cmd.output().map_err(|source| RealizeError::NixMissing {
            program: self.config.nix_program("nix-store").display().to_string(),
            source,
        })?;
        if !out.status.success() {
            return Err(RealizeError::Nix { what: what.into(), detail: tail(&out.stderr) });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Paths among `paths` that are not valid in the local store.
    pub fn missing(&self, paths: &[StorePath]) -> Result<Vec<StorePath>, RealizeError> {
        if paths.is_empty() {
            return Ok(vec![]);
        }
        let mut cmd = self.nix_store();
        cmd.args(["--check-validity", "--print-invalid"]).args(paths.iter().map(StorePath::as_str));
        let out = self.run(cmd, "nix-store --check-validity")?;
        let invalid: std::collections::HashSet<&str> = out.lines().collect();
        Ok(paths.iter().filter(|p| invalid.contains(p.as_str())).cloned().collect())
    }

    /// Substitutes every missing path in one batch. Returns how many were missing.
    pub fn realize(&self, env: &str, paths: &[StorePath]) -> Result<usize, RealizeError> {
        let missing = self.missing(paths)?;
        if missing.is_empty() {
            return Ok(0);
        }
        let substituters = self.config.substituters.join(" ");
        let mut cmd = self.nix_store();
        cmd.arg("--realise")
            .args(missing.iter().map(StorePath::as_str))
            .args(["--option", "substituters", &substituters])
            .args(["--option", "trusted-public-keys", &self.config.trusted_public_keys.join(" ")])
            // A stale negative narinfo lookup must not hide a path that was just published.
            .args(["--option", "narinfo-cache-negative-ttl", "0"])
            .args(["--option", "max-jobs", "0"])
            .stdout(Stdio::null());
        match self.run(cmd, "nix-store --realise") {
            Ok(_) => Ok(missing.len()),
            Err(RealizeError::Nix { detail, .. }) => {
                Err(RealizeError::Unavailable { env: env.to_string(), substituters, detail })
            }
            Err(e) => Err(e),
        }
    }

    /// The runtime closure of `paths` (all valid), sorted.
    pub fn closure(&self, paths: &[StorePath]) -> Result<Vec<StorePath>, RealizeError> {
        if paths.is_empty() {
            return Ok(vec![]);
        }
        let mut cmd = self.nix_store();
        cmd.args(["--query", "--requisites"]).args(paths.iter().map(StorePath::as_str));
        let out = self.run(cmd, "nix-store --query --requisites")?;
        let mut closure: Vec<StorePath> = out.lines().filter_map(|l| StorePath::parse(l.trim()).ok()).collect();
        closure.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        closure.dedup();
        Ok(closure)
    }
}

/// Roots `paths` under `<gcroots_dir>/<key>/`: one symlink per path, which Nix treats as a
/// direct GC root. Written into a temp dir and renamed, so a root set is all or nothing.
pub fn add_gc_roots(gcroots_dir: &Path, key: &str, paths: &[StorePath]) -> Result<(), RealizeError> {
    let err = |source| RealizeError::GcRoot { dir: gcroots_dir.display().to_string(), source };
    std::fs::create_dir_all(gcroots_dir).map_err(err)?;
    let final_dir = gcroots_dir.join(key);
    if final_dir.exists() {
        return Ok(());
    }
    let tmp = gcroots_dir.join(format!(".tmp-{key}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(err)?;
    for p in paths {
        std::os::unix::fs::symlink(p.as_str(), tmp.join(p.base_name())).map_err(err)?;
    }
    match std::fs::rename(&tmp, &final_dir) {
        Ok(()) => Ok(()),
        Err(_) if final_dir.exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => Err(err(e)),
    }
}

pub fn remove_gc_roots(gcroots_dir: &Path, key: &str) -> std::io::Result<()> {
    match std::fs::remove_dir_all(gcroots_dir.join(key)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn tail(stderr: &[u8]) -> String {
    let s = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}
