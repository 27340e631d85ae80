//! `without-nix --root-dir DIR [--hide-git] -- PROGRAM [ARGS…]`: runs PROGRAM on a host
//! without Nix, as a node on Bottlerocket or Talos would be (issue 12).
//!
//! In a private mount namespace, DIR (an empty directory) becomes the new root: a tmpfs
//! holding a recursive bind of every top-level entry of `/` except `/nix` (symlinks such as
//! `/bin -> usr/bin` recreated), then `pivot_root` and the old root detached, so `/nix` is
//! absent, not just empty. Every `nix*` program in PATH's directories (and `git*` with
//! `--hide-git`) is covered by an empty file with no permission bits: nothing can run it (exec
//! fails with EACCES; a PATH search finds nothing it can run). Covering beats a filtered copy
//! of /usr/bin: programs that locate their files from their own path (python) keep working.
//! PATH loses its directories under a `nix` profile. Test
//! fixtures that stand for the outside world (the local hub serves git over HTTP with
//! `git http-backend`) find git in `$IMAGELESS_E2E_FIXTURE_PATH`, a bind of the real one
//! made before hiding it; the node and everything containerd starts never look there.
//!
//! Checked before PROGRAM starts: `/nix` does not exist, and no hidden name is runnable.
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use rustix::mount::{self, MountFlags, MountPropagationFlags, UnmountFlags};

/// Where the launcher keeps its own files inside the new root.
const OWN_DIR: &str = "/.without-nix";
use imageless_e2e::without_nix::FIXTURE_PATH_ENV;

fn main() -> ExitCode {
    match run() {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("without-nix: {e:#}");
            ExitCode::from(125)
        }
    }
}

enum Never {}

fn run() -> Result<Never> {
    let mut args = std::env::args_os().skip(1);
    let mut root_dir = None;
    let mut hide_git = false;
    let mut program: Vec<OsString> = Vec::new();
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--root-dir") => root_dir = args.next().map(PathBuf::from),
            Some("--hide-git") => hide_git = true,
            Some("--") => {
                program = args.by_ref().collect();
                break;
            }
            _ => bail!("usage: without-nix --root-dir DIR [--hide-git] -- PROGRAM [ARGS...]"),
        }
    }
    let root_dir = root_dir.context("--root-dir DIR is required")?;
    let Some((exe, exe_args)) = program.split_first() else { bail!("no PROGRAM given") };
    let hidden = |name: &str| name.starts_with("nix") || (hide_git && name.starts_with("git"));
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let path_dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .filter(|d| !d.components().any(|c| c.as_os_str().to_string_lossy().contains("nix")))
        .collect();

    // SAFETY: unshare(2) with CLONE_NEWNS only; this process is single-threaded here (no
    // runtime, no thread started), as CLONE_NEWNS requires.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNS)");
    }
    mount::mount_change("/", MountPropagationFlags::PRIVATE | MountPropagationFlags::REC)
        .context("making / private")?;
    build_root(&root_dir)?;
    std::env::set_current_dir(&root_dir)?;
    rustix::process::pivot_root(".", ".old-root").context("pivot_root")?;
    std::env::set_current_dir("/")?;
    mount::unmount("/.old-root", UnmountFlags::DETACH).context("detaching the old root")?;
    std::fs::remove_dir("/.old-root")?;

    let fixture_bin = Path::new(OWN_DIR).join("fixture-bin");
    std::fs::create_dir_all(&fixture_bin)?;
    let blocker = Path::new(OWN_DIR).join("absent");
    std::fs::write(&blocker, b"")?;
    std::fs::set_permissions(&blocker, std::fs::Permissions::from_mode(0o000))?;
    let mut covered = std::collections::HashSet::new();
    let mut hid = Vec::new();
    let standard = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from);
    for dir in path_dirs.iter().chain(standard.iter()) {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !hidden(&name) {
                continue;
            }
            let Ok(real) = std::fs::canonicalize(e.path()) else { continue };
            hid.push(name.clone());
            if !covered.insert(real.clone()) {
                continue;
            }
            if name.starts_with("git") {
                let keep = fixture_bin.join(&name);
                if !keep.exists() {
                    std::fs::write(&keep, b"")?;
                    mount::mount_bind(&real, &keep).with_context(|| format!("keeping {name} for fixtures"))?;
                }
            }
            mount::mount_bind(&blocker, &real).with_context(|| format!("hiding {}", real.display()))?;
        }
    }
    // What the test relies on, checked rather than assumed.
    if Path::new("/nix").exists() {
        bail!("/nix still exists in the new root");
    }
    for dir in path_dirs.iter().chain(standard.iter()) {
        let always = ["nix", "nix-store", "nix-env", "nix-build"].map(String::from);
        for name in hid.iter().chain(always.iter()).chain(hide_git.then(|| "git".to_string()).iter()) {
            let p = dir.join(name);
            if rustix::fs::access(&p, rustix::fs::Access::EXEC_OK).is_ok() {
                bail!("{} is still runnable", p.display());
            }
        }
    }
    eprintln!(
        "without-nix: /nix absent, {} names hidden ({}), git {}",
        hid.len(),
        if hide_git { "nix*, git*" } else { "nix*" },
        if hide_git { "hidden (fixtures: $IMAGELESS_E2E_FIXTURE_PATH)" } else { "kept" }
    );
    let err = Command::new(exe)
        .args(exe_args)
        .env("PATH", std::env::join_paths(&path_dirs)?)
        .env(FIXTURE_PATH_ENV, &fixture_bin)
        .exec();
    Err(err).with_context(|| format!("running {}", exe.to_string_lossy()))
}

/// Fills `root` (an empty directory): a tmpfs with every top-level entry of `/` but `nix`.
fn build_root(root: &Path) -> Result<()> {
    mount::mount("tmpfs", root, "tmpfs", MountFlags::empty(), c"mode=755")
        .with_context(|| format!("mounting a tmpfs at {}", root.display()))?;
    let mut names: Vec<OsString> = std::fs::read_dir("/")?.flatten().map(|e| e.file_name()).collect();
    names.sort();
    for name in names {
        if name == "nix" {
            continue;
        }
        let src = Path::new("/").join(&name);
        let dst = root.join(&name);
        let meta = std::fs::symlink_metadata(&src)?;
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if meta.is_dir() {
            std::fs::create_dir(&dst)?;
            mount::mount_bind_recursive(&src, &dst).with_context(|| format!("binding {}", src.display()))?;
        } else {
            std::fs::write(&dst, b"")?;
            mount::mount_bind(&src, &dst).with_context(|| format!("binding {}", src.display()))?;
        }
    }
    std::fs::create_dir(root.join(".old-root"))?;
    std::fs::create_dir_all(root.join(OWN_DIR.trim_start_matches('/')))?;
    Ok(())
}
