//! A private, initially empty Nix store for the whole benchmark.
//!
//! The cold figures need the environments' store paths absent. On a shared node other
//! environments (and other people's GC roots) keep the world's paths alive, so
//! `nix-store --delete` would refuse, and deleting them anyway would break others. Instead the
//! benchmark process enters its own mount namespace and bind-mounts an empty directory over
//! `/nix`: everything it starts (hub, containerd, shims, runc, flox-runc, nix) sees only that
//! store, where deleting paths is safe and "cold" really means "not in the store". The
//! namespace and its mounts disappear with the last process in it.
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use rustix::mount::{mount_bind, mount_change, MountPropagationFlags};
use rustix::thread::{unshare_unsafe, UnshareFlags};

/// Moves this process into a new mount namespace whose `/nix` is `empty_dir`.
/// Must run before any thread is started: unshare applies to the calling thread only, and
/// threads started later inherit it.
pub fn enter_private_nix(empty_dir: &Path) -> anyhow::Result<()> {
    // SAFETY: only the mount namespace is unshared (not FILES, the flag that could leave
    // threads with file descriptors of another table), and no other thread exists yet.
    unsafe { unshare_unsafe(UnshareFlags::NEWNS) }.context("unshare(CLONE_NEWNS) (the benchmark needs root)")?;
    // Nothing we mount may propagate back to the host's namespace.
    mount_change("/", MountPropagationFlags::REC | MountPropagationFlags::PRIVATE)
        .context("making / private in the benchmark's mount namespace")?;
    std::fs::create_dir_all("/nix").context("creating /nix")?;
    mount_bind(empty_dir, "/nix").with_context(|| format!("bind-mounting {} on /nix", empty_dir.display()))?;
    // Let Nix create its database now, so no measured command pays for it.
    let out = Command::new("nix-store")
        .args(["--check-validity", "--print-invalid", "/nix/store/00000000000000000000000000000000-none"])
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => bail!("initializing the private Nix store: {}", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => bail!("running nix-store: {e} (is Nix installed? run scripts/setup-machine.sh)"),
    }
}

/// Which of `paths` are valid in the store.
pub fn valid_paths(paths: &[String]) -> anyhow::Result<Vec<String>> {
    if paths.is_empty() {
        return Ok(vec![]);
    }
    let out = Command::new("nix-store").args(["--check-validity", "--print-invalid"]).args(paths).output()?;
    if !out.status.success() {
        bail!("nix-store --check-validity: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let invalid = String::from_utf8_lossy(&out.stdout).into_owned();
    let invalid: std::collections::HashSet<&str> = invalid.lines().collect();
    Ok(paths.iter().filter(|p| !invalid.contains(p.as_str())).cloned().collect())
}

/// Deletes `paths` (a closure: referrers inside the set go too) from the private store after
/// removing the GC root directories given. Fails if anything is left.
pub fn delete_closure(paths: &[String], gcroot_dirs: &[&Path]) -> anyhow::Result<()> {
    for d in gcroot_dirs {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("removing GC roots {}", d.display()))?;
        }
    }
    let present = valid_paths(paths)?;
    if present.is_empty() {
        return Ok(());
    }
    let out = Command::new("nix-store").arg("--delete").args(&present).stdout(Stdio::null()).output()?;
    if !out.status.success() {
        bail!("nix-store --delete {}: {}", present.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    let left = valid_paths(paths)?;
    if !left.is_empty() {
        bail!("still in the store after nix-store --delete: {}", left.join(" "));
    }
    Ok(())
}
