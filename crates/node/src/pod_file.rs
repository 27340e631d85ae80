//! Reading files a pod can influence, as root, without being led anywhere else.
//!
//! The runtime runs as root on the node and every pod is hostile. A pod controls the contents
//! of its writable volumes (an emptyDir mounted where a secret is expected, say): it can plant
//! symlinks to other tenants' secrets or host files, FIFOs that block a reader forever, device
//! nodes whose `open` has side effects, or files of any size. So a pod-influenced file is
//! - resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` relative to the trusted
//!   directory it must stay in: symlinks that stay inside are followed (the kubelet's own
//!   atomic-writer layout is `name -> ..data/name`), absolute links and links that climb out
//!   are refused by the kernel, race-free;
//! - opened `O_PATH` first, which never opens the object itself (no FIFO blocks, no device
//!   `open` runs), then type-checked with `fstat` on that very inode;
//! - reopened for reading through `/proc/self/fd` only once it is known to be a regular file,
//!   non-blocking, and read with a bound (never more than `limit + 1` bytes).
//!
//! Errors are [`PodFileError`] values without any path: callers word them in the container's
//! terms, so no host path and no byte of content ever reaches a pod.
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, RenameFlags, ResolveFlags};
use rustix::io::Errno;

/// Why a pod-influenced file was not read.
#[derive(Debug, thiserror::Error)]
pub enum PodFileError {
    /// An absolute symlink, or one whose target climbs out of the trusted directory.
    #[error("is a symlink leaving its volume")]
    LeavesDirectory,
    /// A symlink loop, too many links, or a `/proc` magic link.
    #[error("is a symlink the runtime does not follow (a loop, or a /proc link)")]
    SymlinkLoop,
    /// A symlink where none is allowed (files the runtime opens without following links).
    #[error("is a symlink")]
    Symlink,
    #[error("is not a regular file")]
    NotRegular,
    #[error("is larger than {}", human_limit(*limit))]
    TooLarge { limit: u64 },
    #[error("cannot be read safely: this kernel lacks openat2 (Linux 5.6 or later is required)")]
    NoOpenat2,
    /// Any other failure; the OS error text names no path.
    #[error("cannot be read: {0}")]
    Io(std::io::Error),
}

fn human_limit(limit: u64) -> String {
    if limit.is_multiple_of(1024) && limit >= 1024 {
        format!("{} KiB", limit / 1024)
    } else {
        format!("{limit} bytes")
    }
}

impl From<Errno> for PodFileError {
    fn from(e: Errno) -> Self {
        PodFileError::Io(e.into())
    }
}

/// Reads `name` (one or more components, relative) beneath the trusted directory `dir`,
/// following only symlinks that stay inside it. `Ok(None)` when it does not exist (also for a
/// link inside `dir` that points at nothing).
pub fn read_beneath(dir: &Path, name: &str, limit: u64) -> Result<Option<Vec<u8>>, PodFileError> {
    let dir_fd = match rustix::fs::open(dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::NOTDIR) => return Err(PodFileError::NotRegular),
        Err(e) => return Err(e.into()),
    };
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    // EAGAIN: the kernel saw a concurrent rename while checking `..` and asks for a retry.
    let mut attempts = 0;
    let fd = loop {
        match rustix::fs::openat2(&dir_fd, name, OFlags::PATH | OFlags::CLOEXEC, Mode::empty(), resolve) {
            Ok(fd) => break fd,
            Err(Errno::AGAIN) if attempts < 8 => attempts += 1,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::XDEV) => return Err(PodFileError::LeavesDirectory),
            Err(Errno::LOOP) => return Err(PodFileError::SymlinkLoop),
            Err(Errno::NOTDIR) => return Ok(None),
            Err(Errno::NOSYS) => return Err(PodFileError::NoOpenat2),
            Err(e) => return Err(e.into()),
        }
    };
    read_regular(fd, limit).map(Some)
}

/// A regular file the runtime reads and rewrites in place without following a symlink at its
/// last component (e.g. an exec process file handed to runc): bounded read, type-checked.
pub struct NoFollowFile {
    fd: OwnedFd,
}

impl NoFollowFile {
    pub fn open(path: &Path) -> Result<NoFollowFile, PodFileError> {
        let fd = rustix::fs::open(path, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
        let st = rustix::fs::fstat(&fd)?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => Ok(NoFollowFile { fd }),
            FileType::Symlink => Err(PodFileError::Symlink),
            _ => Err(PodFileError::NotRegular),
        }
    }

    /// At most `limit` bytes; a larger file is an error, never truncated silently.
    pub fn read(&self, limit: u64) -> Result<Vec<u8>, PodFileError> {
        let dup = self.fd.as_fd().try_clone_to_owned().map_err(PodFileError::Io)?;
        read_regular(dup, limit)
    }

    /// Replaces the file's contents (same inode, no symlink followed).
    pub fn replace(&self, bytes: &[u8]) -> Result<(), PodFileError> {
        let mut file = reopen(&self.fd, OFlags::WRONLY | OFlags::TRUNC)?;
        file.rewind().map_err(PodFileError::Io)?;
        file.write_all(bytes).map_err(PodFileError::Io)
    }
}

/// Reads an `O_PATH` descriptor's file if it is a regular one no larger than `limit`.
fn read_regular(path_fd: OwnedFd, limit: u64) -> Result<Vec<u8>, PodFileError> {
    let st = rustix::fs::fstat(&path_fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(PodFileError::NotRegular);
    }
    if u64::try_from(st.st_size).unwrap_or(u64::MAX) > limit {
        return Err(PodFileError::TooLarge { limit });
    }
    let file = reopen(&path_fd, OFlags::RDONLY)?;
    let mut bytes = Vec::with_capacity(usize::try_from(st.st_size).unwrap_or(0));
    // The file may grow after fstat: read one byte past the limit to notice, never more.
    file.take(limit + 1).read_to_end(&mut bytes).map_err(PodFileError::Io)?;
    if bytes.len() as u64 > limit {
        return Err(PodFileError::TooLarge { limit });
    }
    Ok(bytes)
}

/// Opens the very inode an `O_PATH` descriptor pins (through our own /proc/self/fd), so no
/// path is resolved again and nothing the pod swapped in meanwhile is opened.
fn reopen(path_fd: &OwnedFd, access: OFlags) -> Result<File, PodFileError> {
    let proc_path = format!("/proc/self/fd/{}", path_fd.as_raw_fd());
    let flags = access | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
    let fd = rustix::fs::open(proc_path.as_str(), flags, Mode::empty())?;
    Ok(File::from(fd))
}

/// Removes a directory tree whose contents a pod wrote (a nix-mutable overlay's upper dir),
/// whatever its depth and without following any symlink in it.
///
/// A recursive walk holds one descriptor and one stack frame per level, so a pod that nests
/// directories a hundred thousand deep would exhaust either and leave the tree behind. Here
/// every subdirectory found is first renamed up to the top of the tree (same filesystem, so a
/// rename), which flattens it: at most two descriptors are open at any time and nothing
/// recurses. Entries are opened `O_NOFOLLOW | O_DIRECTORY` relative to their parent's
/// descriptor, so a planted symlink is unlinked, never entered.
///
/// Read-only directories (a closure view's, or ones a pod chmodded) are made writable through
/// their own descriptor before they are emptied or moved, so a caller without
/// `CAP_DAC_OVERRIDE` can remove them too; no mode is changed through a path.
pub fn remove_tree(root: &Path) -> std::io::Result<()> {
    let top = match rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    // Names (directly under `top`) of directories still to empty; "." is the top itself.
    let mut pending: Vec<std::ffi::OsString> = vec![".".into()];
    let mut flattened = 0u64;
    while let Some(name) = pending.pop() {
        let dir = rustix::fs::openat(
            &top,
            name.as_os_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        make_writable(&dir);
        let mut subdirs = Vec::new();
        {
            let mut entries = rustix::fs::Dir::read_from(&dir)?;
            while let Some(entry) = entries.read() {
                let entry = entry?;
                let child = std::ffi::OsStr::from_bytes(entry.file_name().to_bytes()).to_os_string();
                if child == "." || child == ".." {
                    continue;
                }
                if entry.file_type() == FileType::Directory {
                    subdirs.push(child);
                } else if entry.file_type() == FileType::Unknown {
                    // Some filesystems do not say; ask without following.
                    let st = rustix::fs::statat(&dir, child.as_os_str(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW)?;
                    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                        subdirs.push(child);
                    } else {
                        rustix::fs::unlinkat(&dir, child.as_os_str(), rustix::fs::AtFlags::empty())?;
                    }
                } else {
                    rustix::fs::unlinkat(&dir, child.as_os_str(), rustix::fs::AtFlags::empty())?;
                }
            }
        }
        if subdirs.is_empty() {
            if name != "." {
                rustix::fs::unlinkat(&top, name.as_os_str(), rustix::fs::AtFlags::REMOVEDIR)?;
            }
            continue;
        }
        // Not empty yet: come back to it once its subdirectories, moved up, are gone.
        pending.push(name);
        for child in subdirs {
            // The pod may have made a directory of the same name up there: never replace one.
            let mut made_writable = false;
            let up = loop {
                flattened += 1;
                let up: std::ffi::OsString = format!(".flox-rm-{flattened}").into();
                match rustix::fs::renameat_with(&dir, child.as_os_str(), &top, up.as_os_str(), RenameFlags::NOREPLACE) {
                    Ok(()) => break up,
                    Err(Errno::EXIST) => continue,
                    // Moving a directory rewrites its `..`: it must be writable itself.
                    Err(Errno::ACCESS) if !made_writable => {
                        let sub = rustix::fs::openat(
                            &dir,
                            child.as_os_str(),
                            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                            Mode::empty(),
                        )?;
                        make_writable(&sub);
                        made_writable = true;
                        flattened -= 1;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            pending.push(up);
        }
    }
    drop(top);
    std::fs::remove_dir(root)
}

/// Best effort `chmod u+rwx` on an open directory; a failure shows up as the removal's error.
fn make_writable(dir: &OwnedFd) {
    if let Ok(st) = rustix::fs::fstat(dir) {
        if st.st_mode & 0o700 != 0o700 {
            let _ = rustix::fs::fchmod(dir, Mode::from_raw_mode((st.st_mode | 0o700) & 0o7777));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let vol = root.path().join("volume");
        std::fs::create_dir(&vol).unwrap();
        std::fs::write(root.path().join("outside"), b"secret of another tenant").unwrap();
        (root, vol)
    }

    #[test]
    fn reads_a_regular_file_and_links_that_stay_inside() {
        let (_root, vol) = setup();
        // The kubelet's atomic-writer layout: name -> ..data/name, ..data -> ..<timestamp>.
        std::fs::create_dir(vol.join("..2026_11_24_10_00_00.1")).unwrap();
        std::fs::write(vol.join("..2026_11_24_10_00_00.1/floxhub-token"), b"flox_abc\n").unwrap();
        symlink("..2026_11_24_10_00_00.1", vol.join("..data")).unwrap();
        symlink("..data/floxhub-token", vol.join("floxhub-token")).unwrap();
        assert_eq!(read_beneath(&vol, "floxhub-token", 16).unwrap().unwrap(), b"flox_abc\n");
    }

    #[test]
    fn missing_file_or_dangling_inside_link_is_none() {
        let (_root, vol) = setup();
        assert!(read_beneath(&vol, "floxhub-token", 16).unwrap().is_none());
        symlink("nothing-here", vol.join("floxhub-token")).unwrap();
        assert!(read_beneath(&vol, "floxhub-token", 16).unwrap().is_none());
        assert!(read_beneath(&vol.join("absent-dir"), "floxhub-token", 16).unwrap().is_none());
    }

    #[test]
    fn absolute_and_climbing_links_are_refused() {
        let (root, vol) = setup();
        symlink(root.path().join("outside"), vol.join("abs")).unwrap();
        symlink("../outside", vol.join("rel")).unwrap();
        symlink("/etc/hostname", vol.join("host")).unwrap();
        for name in ["abs", "rel", "host", "../outside"] {
            let err = read_beneath(&vol, name, 1024).unwrap_err();
            assert!(matches!(err, PodFileError::LeavesDirectory), "{name}: {err:?}");
            assert_eq!(err.to_string(), "is a symlink leaving its volume");
        }
    }

    #[test]
    fn proc_magic_links_and_loops_are_refused() {
        let (_root, vol) = setup();
        symlink("/proc/self/root/etc/hostname", vol.join("magic")).unwrap();
        symlink("loop", vol.join("loop")).unwrap();
        assert!(matches!(read_beneath(&vol, "magic", 1024).unwrap_err(), PodFileError::LeavesDirectory));
        assert!(matches!(read_beneath(&vol, "loop", 1024).unwrap_err(), PodFileError::SymlinkLoop));
    }

    #[test]
    fn fifo_directory_and_device_are_not_regular_and_never_block() {
        let (_root, vol) = setup();
        rustix::fs::mknodat(rustix::fs::CWD, vol.join("fifo"), FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
        std::fs::create_dir(vol.join("dir")).unwrap();
        symlink("fifo", vol.join("to-fifo")).unwrap();
        let started = std::time::Instant::now();
        for name in ["fifo", "dir", "to-fifo"] {
            let err = read_beneath(&vol, name, 1024).unwrap_err();
            assert!(matches!(err, PodFileError::NotRegular), "{name}: {err:?}");
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // A device node (root only): its open would run driver code; it is never opened.
        if rustix::process::geteuid().is_root() {
            let dev = rustix::fs::makedev(1, 5); // /dev/zero
            rustix::fs::mknodat(
                rustix::fs::CWD,
                vol.join("zero"),
                FileType::CharacterDevice,
                Mode::from_raw_mode(0o600),
                dev,
            )
            .unwrap();
            assert!(matches!(read_beneath(&vol, "zero", 1024).unwrap_err(), PodFileError::NotRegular));
        }
    }

    #[test]
    fn large_files_are_refused_without_reading_them() {
        let (_root, vol) = setup();
        let f = File::create(vol.join("big")).unwrap();
        f.set_len(1 << 30).unwrap(); // sparse 1 GiB
        let err = read_beneath(&vol, "big", 16 * 1024).unwrap_err();
        assert!(matches!(err, PodFileError::TooLarge { limit: 16384 }));
        assert_eq!(err.to_string(), "is larger than 16 KiB");
        std::fs::write(vol.join("exact"), vec![b'a'; 16]).unwrap();
        assert_eq!(read_beneath(&vol, "exact", 16).unwrap().unwrap().len(), 16);
        std::fs::write(vol.join("over"), vec![b'a'; 17]).unwrap();
        assert!(matches!(read_beneath(&vol, "over", 16).unwrap_err(), PodFileError::TooLarge { .. }));
    }

    #[test]
    fn no_follow_file_reads_and_replaces_in_place_but_refuses_links_and_fifos() {
        let (root, vol) = setup();
        let p = vol.join("process.json");
        std::fs::write(&p, b"{\"args\":[]}").unwrap();
        let f = NoFollowFile::open(&p).unwrap();
        assert_eq!(f.read(1024).unwrap(), b"{\"args\":[]}");
        f.replace(b"{}").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{}");
        assert!(matches!(f.read(1).unwrap_err(), PodFileError::TooLarge { limit: 1 }));
        symlink(root.path().join("outside"), vol.join("link")).unwrap();
        assert!(matches!(NoFollowFile::open(&vol.join("link")).err().unwrap(), PodFileError::Symlink));
        rustix::fs::mknodat(rustix::fs::CWD, vol.join("fifo"), FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
        assert!(matches!(NoFollowFile::open(&vol.join("fifo")).err().unwrap(), PodFileError::NotRegular));
        assert_eq!(std::fs::read(root.path().join("outside")).unwrap(), b"secret of another tenant");
    }

    #[test]
    fn remove_tree_handles_any_depth_and_never_follows_links() {
        let (root, vol) = setup();
        let upper = vol.join("upper");
        std::fs::create_dir(&upper).unwrap();
        // 2000 levels: deeper than a path may be long, built relative to each parent.
        let mut fd = rustix::fs::open(&upper, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        for i in 0..2000 {
            rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
            if i % 500 == 0 {
                let f =
                    rustix::fs::openat(&fd, "f", OFlags::CREATE | OFlags::WRONLY, Mode::from_raw_mode(0o644)).unwrap();
                drop(f);
                rustix::fs::symlinkat(root.path().join("outside").as_os_str(), &fd, "link").unwrap();
                rustix::fs::symlinkat("/", &fd, "to-root").unwrap();
            }
            fd = rustix::fs::openat(&fd, "d", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        }
        drop(fd);
        std::fs::create_dir_all(upper.join("wide/a/b")).unwrap();
        std::fs::create_dir_all(upper.join(".flox-rm-1/x")).unwrap(); // the name the remover uses
        rustix::fs::mknodat(rustix::fs::CWD, upper.join("wide/fifo"), FileType::Fifo, Mode::from_raw_mode(0o600), 0)
            .unwrap();
        remove_tree(&upper).unwrap();
        assert!(!upper.exists());
        assert_eq!(std::fs::read(root.path().join("outside")).unwrap(), b"secret of another tenant");
        assert!(Path::new("/etc/hostname").exists() || Path::new("/etc/passwd").exists());
        remove_tree(&upper).unwrap(); // already gone: fine
                                      // A symlink as the root itself is refused, not followed.
        symlink(root.path(), vol.join("root-link")).unwrap();
        assert!(remove_tree(&vol.join("root-link")).is_err());
        assert!(root.path().join("outside").exists());
    }
}
