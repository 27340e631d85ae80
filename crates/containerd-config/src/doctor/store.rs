//! The node store (`store_dir`, default `<state_root>/store`): the node fetches every store path
//! there and builds each container's view from it, so doctor checks what those steps need —
//! the directory exists or can be created and is writable; its filesystem takes hard links
//! into the state root (views are hard-link farms; across filesystems they become copies) and
//! the state root can hold an overlay's upper dir (`flox.dev/nix-mutable`); there is room.
//!
//! The filesystem checks try the real operation in a scratch directory (`.imageless-doctor-*`)
//! that is removed again, so the node is left as it was.
use std::io;
use std::path::{Path, PathBuf};

use imageless_node::config::NodeConfig;

use super::{fail, ok, warn, Check};

/// Below this much free space a pull of a large environment is likely to fail.
const LOW_SPACE: u64 = 1 << 30;

pub(super) fn checks(node: &NodeConfig) -> Vec<Check> {
    let store = node.store_dir();
    let mut checks = vec![store_dir_check(&store)];
    checks.push(hard_link_check(&store, &node.state_root));
    checks.push(overlay_check(&node.state_root));
    checks.push(disk_check(&store));
    checks
}

/// The directory itself, or the deepest ancestor that exists (where it would be created).
fn existing(path: &Path) -> &Path {
    path.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"))
}

fn writable(p: &Path) -> bool {
    rustix::fs::access(p, rustix::fs::Access::WRITE_OK).is_ok()
}

fn store_dir_check(store: &Path) -> Check {
    const NAME: &str = "node store";
    const FIX: &str = "set `store_dir` (or `state_root`) in the node config to a writable local directory";
    match std::fs::metadata(store) {
        Ok(m) if !m.is_dir() => fail(NAME, format!("{} is not a directory", store.display()), FIX),
        Ok(_) if !writable(store) => fail(NAME, format!("{} is not writable", store.display()), FIX),
        Ok(_) => ok(NAME, format!("{} (writable)", store.display())),
        Err(_) => {
            let base = existing(store);
            if base.is_dir() && writable(base) {
                ok(NAME, format!("{} (created at the first pull, under {})", store.display(), base.display()))
            } else {
                fail(NAME, format!("{} cannot be created: {} is not writable", store.display(), base.display()), FIX)
            }
        }
    }
}

/// A scratch directory under `base`, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(base: &Path, what: &str) -> io::Result<Scratch> {
        let dir = base.join(format!(".imageless-doctor-{what}-{}", std::process::id()));
        std::fs::create_dir(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Views (`<state_root>/views`) hard-link the store's files: try one link from where the
/// store is to where the views are.
fn hard_link_check(store: &Path, state_root: &Path) -> Check {
    const NAME: &str = "store filesystem";
    let (store_base, views_base) = (existing(store), existing(state_root));
    let tried = (|| {
        let from = Scratch::new(store_base, "link")?;
        let file = from.0.join("file");
        std::fs::write(&file, b"")?;
        let to = Scratch::new(views_base, "view")?;
        std::fs::hard_link(&file, to.0.join("file"))
    })();
    match tried {
        Ok(()) => ok(NAME, format!("hard links from {} into {} work", store.display(), state_root.display())),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => warn(
            NAME,
            format!(
                "{} and {} are on different filesystems: closure views copy every file instead of linking it",
                store.display(),
                state_root.display()
            ),
            "put `store_dir` on the state root's filesystem (the default, <state_root>/store, is)",
        ),
        Err(e) => fail(
            NAME,
            format!("cannot hard-link a file from {} into {}: {e}", store_base.display(), views_base.display()),
            "use a local filesystem with hard links (ext4, xfs, btrfs, tmpfs) for `store_dir` and `state_root`",
        ),
    }
}

/// `flox.dev/nix-mutable` containers get an overlay whose upper and work dirs live under
/// `<state_root>/overlays`: mount one there and unmount it again.
fn overlay_check(state_root: &Path) -> Check {
    const NAME: &str = "overlay";
    let base = existing(state_root);
    let tried = (|| {
        let scratch = Scratch::new(base, "overlay")?;
        for sub in ["lower", "upper", "work", "merged"] {
            std::fs::create_dir(scratch.0.join(sub))?;
        }
        let p = |sub: &str| scratch.0.join(sub).display().to_string();
        let options = format!("lowerdir={},upperdir={},workdir={}", p("lower"), p("upper"), p("work"));
        let options = std::ffi::CString::new(options).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let merged = scratch.0.join("merged");
        rustix::mount::mount("overlay", &merged, "overlay", rustix::mount::MountFlags::empty(), options.as_c_str())?;
        rustix::mount::unmount(&merged, rustix::mount::UnmountFlags::DETACH)?;
        Ok::<_, io::Error>(())
    })();
    match tried {
        Ok(()) => ok(NAME, format!("{} can hold nix-mutable overlays", base.display())),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error()) => warn(
            NAME,
            format!("cannot try an overlay mount under {} without privileges: {e}", base.display()),
            "run doctor as root on the node",
        ),
        Err(e) => fail(
            NAME,
            format!("an overlay with its upper dir under {} does not mount: {e}", base.display()),
            "put `state_root` on a local filesystem that can be an overlay's upper dir (ext4, xfs, btrfs, tmpfs; not NFS or overlayfs)",
        ),
    }
}

fn disk_check(store: &Path) -> Check {
    let existing = existing(store);
    let st = match rustix::fs::statvfs(existing) {
        Ok(st) => st,
        Err(e) => return warn("disk", format!("statvfs {}: {e}", existing.display()), "check `store_dir`"),
    };
    let free = st.f_bavail * st.f_frsize;
    let gib = free as f64 / (1u64 << 30) as f64;
    if free < LOW_SPACE {
        warn(
            "disk",
            format!("{gib:.1} GiB free for the node store under {}", existing.display()),
            "free space or run `imageless gc`",
        )
    } else {
        ok("disk", format!("{gib:.1} GiB free for the node store under {}", existing.display()))
    }
}
