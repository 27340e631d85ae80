//! Mirroring store paths into a view, relative to open directories: each directory is opened
//! once and everything in it is made with `*at` calls on that descriptor (no path is resolved
//! again from the top for every entry), entry kinds come from the directory listing (no
//! `lstat` per entry), and a directory's mode is set on its descriptor once it is filled. A
//! hard-link farm of `flox/xlarge` (8,300 directories, 6,800 files, 2,000 symlinks) is about as
//! much kernel work as copying the closure's metadata; with full paths a third of it went to
//! walking them again and stat-ing every entry.
use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::{Method, ViewError, ViewStats};

/// Directories are writable while they are filled, then get the store's mode.
const FILLING: Mode = Mode::from_raw_mode(0o755);

/// `kind` as a listing gave it, looked up when the file system did not say (`DT_UNKNOWN`).
fn known_kind(dir: BorrowedFd<'_>, name: &CStr, kind: FileType) -> Result<FileType, Errno> {
    match kind {
        FileType::Unknown => {
            rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map(|st| FileType::from_raw_mode(st.st_mode))
        }
        known => Ok(known),
    }
}

pub(super) struct Mirror {
    pub method: Method,
    pub stats: ViewStats,
    /// Whether what is made anew (directories, copied files, recreated symlinks) gets the
    /// source's times: a store entry made from a view (see crate::deferred_store) is laid out
    /// exactly as Nix lays it out, every mtime 1. A view does without (a call per directory).
    pub keep_times: bool,
}

/// The times of `st` (what a listing's source has), to set on its copy.
fn times_of(st: &rfs::Stat) -> rfs::Timestamps {
    rfs::Timestamps {
        last_access: rfs::Timespec { tv_sec: st.st_atime as _, tv_nsec: st.st_atime_nsec as _ },
        last_modification: rfs::Timespec { tv_sec: st.st_mtime as _, tv_nsec: st.st_mtime_nsec as _ },
    }
}

fn failed(shown: &Path, e: impl Into<io::Error>) -> ViewError {
    ViewError::Io { path: shown.display().to_string(), source: e.into() }
}

impl Mirror {
    /// Recreates `name` of `src` (a directory) as `name` in `dst`; `kind` as the listing
    /// gave it (`Unknown`: looked up). Symlinks are linked or recreated, never followed;
    /// anything but a directory, a regular file or a symlink is left out (store paths hold
    /// nothing else).
    /// `shown` is `dst`'s path, for errors.
    pub fn entry(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
        kind: FileType,
        shown: &mut PathBuf,
    ) -> Result<(), ViewError> {
        shown.push(OsStr::from_bytes(name.to_bytes()));
        let result = match known_kind(src, name, kind) {
            Err(e) => Err(failed(shown, e)),
            Ok(FileType::Directory) => self.directory(src, dst, name, shown),
            Ok(FileType::RegularFile) => self.file(src, dst, name, shown),
            Ok(FileType::Symlink) => self.symlink(src, dst, name, shown),
            Ok(_) => Ok(()),
        };
        shown.pop();
        result
    }

    fn directory(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
        shown: &mut PathBuf,
    ) -> Result<(), ViewError> {
        let open = |at: BorrowedFd<'_>| {
            rfs::openat(
                at,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
        };
        let from = open(src).map_err(|e| failed(shown, e))?;
        let st = rfs::fstat(&from).map_err(|e| failed(shown, e))?;
        let mode = st.st_mode & 0o7777;
        rfs::mkdirat(dst, name, FILLING).map_err(|e| failed(shown, e))?;
        let to = open(dst).map_err(|e| failed(shown, e))?;
        let mut listing = Dir::new(from).map_err(|e| failed(shown, e))?;
        while let Some(entry) = listing.read() {
            let entry = entry.map_err(|e| failed(shown, e))?;
            let child = entry.file_name();
            if child == c"." || child == c".." {
                continue;
            }
            let from = listing.fd().map_err(|e| failed(shown, e))?;
            self.entry(from, to.as_fd(), child, entry.file_type(), shown)?;
        }
        rfs::fchmod(&to, Mode::from_raw_mode(mode)).map_err(|e| failed(shown, e))?;
        if self.keep_times {
            // Last: making the entries changed the directory's mtime.
            rfs::futimens(&to, &times_of(&st)).map_err(|e| failed(shown, e))?;
        }
        self.stats.dirs += 1;
        Ok(())
    }

    /// Hard-links `name` (a file, or a symlink itself: `linkat` without `AT_SYMLINK_FOLLOW`)
    /// while this view links; false when it must be copied (this file system cannot link
    /// into the view: copy from now on).
    fn linked(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
        shown: &Path,
    ) -> Result<bool, ViewError> {
        if self.method != Method::HardLink {
            return Ok(false);
        }
        match rfs::linkat(src, name, dst, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            // Another file system, or one without hard links.
            Err(Errno::XDEV | Errno::OPNOTSUPP | Errno::NOSYS) => {
                tracing::info!(to = %shown.display(), "closure view: hard links impossible, copying");
                self.method = Method::Copy;
                Ok(false)
            }
            Err(e) => Err(failed(shown, e)),
        }
    }

    /// A symlink is linked like a file (one call and no new inode, where recreating it takes
    /// a `readlinkat`, a `symlinkat` and an inode), else recreated.
    fn symlink(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
        shown: &Path,
    ) -> Result<(), ViewError> {
        if !self.linked(src, dst, name, shown)? {
            rfs::readlinkat(src, name, Vec::new())
                .and_then(|target| rfs::symlinkat(target.as_c_str(), dst, name))
                .map_err(|e| failed(shown, e))?;
            if self.keep_times {
                rfs::statat(src, name, AtFlags::SYMLINK_NOFOLLOW)
                    .and_then(|st| rfs::utimensat(dst, name, &times_of(&st), AtFlags::SYMLINK_NOFOLLOW))
                    .map_err(|e| failed(shown, e))?;
            }
        }
        self.stats.symlinks += 1;
        Ok(())
    }

    fn file(&mut self, src: BorrowedFd<'_>, dst: BorrowedFd<'_>, name: &CStr, shown: &Path) -> Result<(), ViewError> {
        if self.linked(src, dst, name, shown)? {
            self.stats.files += 1;
            return Ok(());
        }
        let from = rfs::openat(src, name, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| failed(shown, e))?;
        let st = rfs::fstat(&from).map_err(|e| failed(shown, e))?;
        let mode = st.st_mode & 0o555;
        let to = rfs::openat(
            dst,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map_err(|e| failed(shown, e))?;
        let mut to = File::from(to);
        io::copy(&mut File::from(from), &mut to).map_err(|e| failed(shown, e))?;
        // The mode exactly, whatever the umask.
        rfs::fchmod(&to, Mode::from_raw_mode(mode)).map_err(|e| failed(shown, e))?;
        if self.keep_times {
            rfs::futimens(&to, &times_of(&st)).map_err(|e| failed(shown, e))?;
        }
        self.stats.files += 1;
        self.stats.copied += 1;
        Ok(())
    }
}
