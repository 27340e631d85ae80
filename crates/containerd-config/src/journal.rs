//! Writing files on the node so that a failed install can be undone byte for byte.
//!
//! Every file install writes goes through [`Journal::write`], which remembers what was there
//! first (bytes, mode, owner, or nothing) and which directories it had to create. On failure
//! [`Journal::rollback`] puts each file back and removes the directories, newest first.
//! [`write_atomic`] is the write itself: temp file in the same directory, fsync, rename, fsync of
//! the directory, so containerd never reads half a config and a running `flox-runc` or shim keeps
//! its old inode while the new binary takes the name.
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::install::InstallError;

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> InstallError + 'a {
    move |source| InstallError::Io { action, path: path.to_owned(), source }
}

/// A file as it was before install touched it.
#[derive(Debug, Clone)]
struct Before {
    bytes: Vec<u8>,
    mode: u32,
    uid: u32,
    gid: u32,
}

#[derive(Debug)]
enum Entry {
    File { path: PathBuf, before: Option<Before> },
    Dir(PathBuf),
}

/// What install changed so far (host paths), in order.
#[derive(Debug, Default)]
pub struct Journal {
    entries: Vec<Entry>,
}

impl Journal {
    /// Writes `bytes` to `path` atomically, remembering the previous state of the file and the
    /// directories this creates.
    pub fn write(&mut self, path: &Path, bytes: &[u8], mode: FileMode) -> Result<(), InstallError> {
        let missing = missing_parents(path);
        let known = self.entries.iter().any(|e| matches!(e, Entry::File { path: p, .. } if p == path));
        if !known {
            let before = match std::fs::symlink_metadata(path) {
                Ok(meta) => Some(Before {
                    bytes: std::fs::read(path).map_err(io("reading", path))?,
                    mode: meta.mode() & 0o7777,
                    uid: meta.uid(),
                    gid: meta.gid(),
                }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(io("reading", path)(e)),
            };
            // Directories are created top-down; rollback walks the entries backwards.
            self.entries.extend(missing.into_iter().map(Entry::Dir));
            self.entries.push(Entry::File { path: path.to_owned(), before });
        }
        write_atomic(path, bytes, mode)
    }

    /// The directories the writes so far created, parents first.
    pub fn created_dirs(&self) -> Vec<PathBuf> {
        self.entries.iter().filter_map(|e| if let Entry::Dir(d) = e { Some(d.clone()) } else { None }).collect()
    }

    /// Puts every file back as it was and removes the directories install created. Returns what
    /// could not be restored (for the error message); empty when the node is as it was.
    pub fn rollback(self) -> Vec<String> {
        let mut problems = Vec::new();
        for entry in self.entries.into_iter().rev() {
            match entry {
                Entry::File { path, before: Some(before) } => {
                    let restored = write_atomic(&path, &before.bytes, FileMode::Exactly(before.mode))
                        .and_then(|()| chown(&path, before.uid, before.gid))
                        .and_then(|()| set_mode(&path, before.mode));
                    if let Err(e) = restored {
                        problems.push(e.to_string());
                    }
                }
                Entry::File { path, before: None } => match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => problems.push(format!("removing {}: {e}", path.display())),
                },
                Entry::Dir(dir) => {
                    if let Err(e) = std::fs::remove_dir(&dir) {
                        problems.push(format!("removing directory {}: {e}", dir.display()));
                    }
                }
            }
        }
        problems
    }
}

/// The parent directories of `path` that do not exist yet, parents first.
pub fn missing_parents(path: &Path) -> Vec<PathBuf> {
    let mut missing = Vec::new();
    let mut dir = path.parent();
    while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d.to_owned());
        dir = d.parent();
    }
    missing.reverse();
    missing
}

/// The mode a written file gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileMode {
    /// The existing file's mode, or this one for a new file.
    KeepOr(u32),
    /// Always this mode (binaries: 0755 whatever the old file had).
    Exactly(u32),
}

/// Writes through a temp file in the same directory, fsyncs it, renames it over `path` and fsyncs
/// the directory. The old file's owner is kept. A failure leaves no temp file behind.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: FileMode) -> Result<(), InstallError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    let old = std::fs::metadata(path).ok();
    let mode = match mode {
        FileMode::KeepOr(default) => old.as_ref().map(|m| m.mode() & 0o7777).unwrap_or(default),
        FileMode::Exactly(m) => m,
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.imageless-tmp"));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("writing", &tmp))?;
        file.write_all(bytes).map_err(io("writing", &tmp))?;
        if let Some(old) = &old {
            std::os::unix::fs::fchown(&file, Some(old.uid()), Some(old.gid())).map_err(io("chown", &tmp))?;
        }
        file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(io("setting mode of", &tmp))?;
        file.sync_all().map_err(io("syncing", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io("renaming into", path))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    if let Some(parent) = path.parent() {
        // The rename is durable only once the directory is.
        std::fs::File::open(parent).and_then(|d| d.sync_all()).map_err(io("syncing", parent))?;
    }
    Ok(())
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), InstallError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io("chown", path))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), InstallError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io("setting mode of", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_restores_bytes_mode_and_removes_what_it_created() {
        let dir = tempfile::tempdir().unwrap();
        let kept = dir.path().join("kept.toml");
        std::fs::write(&kept, "before\n").unwrap();
        set_mode(&kept, 0o640).unwrap();
        let created = dir.path().join("new/deeper/bin");
        let mut journal = Journal::default();
        journal.write(&kept, b"after\n", FileMode::KeepOr(0o644)).unwrap();
        journal.write(&kept, b"after again\n", FileMode::KeepOr(0o644)).unwrap();
        journal.write(&created, b"binary", FileMode::Exactly(0o755)).unwrap();
        assert_eq!(std::fs::read(&kept).unwrap(), b"after again\n");
        assert_eq!(std::fs::metadata(&kept).unwrap().mode() & 0o7777, 0o640, "mode of an existing file kept");
        assert_eq!(journal.rollback(), Vec::<String>::new());
        assert_eq!(std::fs::read(&kept).unwrap(), b"before\n");
        assert_eq!(std::fs::metadata(&kept).unwrap().mode() & 0o7777, 0o640);
        assert!(!dir.path().join("new").exists(), "created directories are removed");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["kept.toml"], "no temp file left");
    }
}
