//! Closure views: one read-only directory per environment that looks like the store but holds
//! exactly the environment's closure, so a container gets the closure with a single bind mount
//! at /nix/store whatever the closure's size.
//!
//! Layout: `<state_root>/views/<key>/<hash>-<name>/…`, one entry per closure path, keyed like
//! the rendered environment (`envs/<key>`) whose closure it mirrors.
//!
//! A view is a hard-link farm of the store: directories are recreated, files and symlinks are
//! hard links to the store's own inodes, so a view costs an inode per directory and no
//! data (a 300-path, 240 MB closure links in well under a second). Bind-mounting each store
//! path into the view instead would put one host mount per path back (and `rbind` would show
//! them all in the container); an overlay cannot place several store paths side by side
//! under one directory. When the view's directory is on another file system than the store
//! (link fails with EXDEV) the files are copied instead: slower and larger, still correct.
//!
//! Lifecycle: built once under the key's lock into `.tmp-<key>-<pid>` and renamed into place,
//! so a view that exists is complete; a killed build leaves only a temp dir that the next
//! build or gc removes. Views are plain directories (no mounts on the host), so they survive a
//! node restart as they are. They are used by containers (the per-container state records the
//! key) and removed with their environment by [`crate::cache::NodeCache::gc`], never while a
//! container uses the key.
use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use imageless_core::store_path::StorePath;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

mod mirror;
use mirror::Mirror;

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("flox: store path {path} of the environment's closure is missing from {store}; realize it again (imageless pull)")]
    MissingPath { path: String, store: String },
    #[error("flox: building the closure view {path}: {source}")]
    Io { path: String, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ViewError + '_ {
    move |source| ViewError::Io { path: path.display().to_string(), source }
}

/// How a view's files were made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    HardLink,
    Copy,
}

/// Counts of what a view build made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ViewStats {
    pub paths: usize,
    pub dirs: usize,
    pub files: usize,
    pub symlinks: usize,
    /// Files copied because hard links were not possible.
    pub copied: usize,
}

/// `<state_root>/views`.
pub fn views_dir(state_root: &Path) -> PathBuf {
    state_root.join("views")
}

/// `<state_root>/views/<key>`: what is bound at /nix/store.
pub fn view_dir(state_root: &Path, key: &str) -> PathBuf {
    views_dir(state_root).join(key)
}

/// Builds the view of `closure` into `dest` (which must not exist) from `store_dir`, the
/// directory holding the store paths' contents (/nix/store, or a node-owned store).
pub fn build(store_dir: &Path, closure: &[StorePath], dest: &Path) -> Result<ViewStats, ViewError> {
    ViewBuild::start(store_dir, dest)?.finish(closure)
}

/// A view built path by path: [`ViewBuild::add`] mirrors a store path as soon as it is in the
/// store (while the rest of the closure is still being fetched, so a cold start does not walk
/// the closure's files a second time after the pull), [`ViewBuild::finish`] completes it once
/// the closure is known: mirrors what was not added, removes what was added but is not in the
/// closure, and makes the top directory read-only.
pub struct ViewBuild {
    store_dir: PathBuf,
    /// The store directory, opened at the first path (a pull may create it after the view
    /// started).
    store: Option<OwnedFd>,
    dest: PathBuf,
    dest_fd: OwnedFd,
    mirror: Mirror,
    added: HashSet<String>,
}

fn open_dir(path: &Path) -> Result<OwnedFd, ViewError> {
    rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| io_err(path)(e.into()))
}

impl ViewBuild {
    /// Creates `dest` (which must not exist).
    pub fn start(store_dir: &Path, dest: &Path) -> Result<ViewBuild, ViewError> {
        fs::create_dir(dest).map_err(io_err(dest))?;
        Ok(ViewBuild {
            store_dir: store_dir.to_path_buf(),
            store: None,
            dest: dest.to_path_buf(),
            dest_fd: open_dir(dest)?,
            mirror: Mirror { method: Method::HardLink, stats: ViewStats::default(), keep_times: false },
            added: HashSet::new(),
        })
    }

    /// Directories (and whatever is copied rather than linked) get their source's times, as a
    /// store's entry made from a view needs (every mtime 1, as Nix lays paths out).
    pub fn keeping_times(mut self) -> ViewBuild {
        self.mirror.keep_times = true;
        self
    }

    /// Mirrors `path` (complete in the store) into the view, once.
    pub fn add(&mut self, path: &StorePath) -> Result<(), ViewError> {
        let name = path.base_name();
        if self.added.contains(name) {
            return Ok(());
        }
        let missing = || ViewError::MissingPath { path: path.to_string(), store: self.store_dir.display().to_string() };
        let store = match &self.store {
            Some(fd) => fd,
            None => match open_dir(&self.store_dir) {
                Ok(fd) => self.store.insert(fd),
                Err(ViewError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => return Err(missing()),
                Err(e) => return Err(e),
            },
        };
        let cname = CString::new(name).map_err(|_| missing())?;
        let kind = match rustix::fs::statat(store, cname.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => FileType::from_raw_mode(stat.st_mode),
            Err(Errno::NOENT) => return Err(missing()),
            Err(e) => return Err(io_err(&self.store_dir.join(name))(e.into())),
        };
        let mut shown = self.dest.clone();
        self.mirror.entry(store.as_fd(), self.dest_fd.as_fd(), &cname, kind, &mut shown)?;
        self.mirror.stats.paths += 1;
        self.added.insert(name.to_string());
        Ok(())
    }

    /// Takes `path` as already in the view, complete: made by whoever reports it (a fetch
    /// that linked it while unpacking, see [`crate::fetch::Fetcher::linking_into`]).
    pub fn adopt(&mut self, path: &StorePath) {
        if self.added.insert(path.base_name().to_string()) {
            self.mirror.stats.paths += 1;
        }
    }

    /// Completes the view of exactly `closure`.
    pub fn finish(mut self, closure: &[StorePath]) -> Result<ViewStats, ViewError> {
        for path in closure {
            self.add(path)?;
        }
        let wanted: HashSet<&str> = closure.iter().map(StorePath::base_name).collect();
        let extra: Vec<String> = self.added.iter().filter(|n| !wanted.contains(n.as_str())).cloned().collect();
        for name in extra {
            // A store path is a directory, a file or a symlink.
            let entry = self.dest.join(&name);
            let is_dir = fs::symlink_metadata(&entry).map_err(io_err(&entry))?.is_dir();
            let removed = if is_dir { remove_tree(&entry) } else { fs::remove_file(&entry) };
            removed.map_err(io_err(&entry))?;
            self.mirror.stats.paths -= 1;
        }
        // The top directory is read-only like the store's (the bind is read-only anyway).
        fs::set_permissions(&self.dest, fs::Permissions::from_mode(0o555)).map_err(io_err(&self.dest))?;
        Ok(self.mirror.stats)
    }
}

/// Removes a view directory (or a leftover temp/trash dir): its directories are read-only and
/// a view can be as deep as a store path, so this is the depth-safe remover.
pub use crate::pod_file::remove_tree;

/// Keys of the views present (complete ones; temp and trash dirs start with a dot).
pub fn list(state_root: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(views_dir(state_root)) else { return vec![] };
    let mut keys: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|k| !k.starts_with('.'))
        .collect();
    keys.sort();
    keys
}

/// Leftovers of view builds or removals that were killed mid-way, for keys nobody is building
/// now (`busy` says whether a key's build is in progress).
pub fn clean_leftovers(state_root: &Path, busy: impl Fn(&str) -> bool) {
    let Ok(entries) = fs::read_dir(views_dir(state_root)) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(".tmp-").or_else(|| name.strip_prefix(".gc-")) else { continue };
        let key = rest.rsplit_once('-').map_or(rest, |(k, _pid)| k);
        if !busy(key) {
            let _ = remove_tree(&e.path());
        }
    }
}

/// Views whose key no container uses and whose environment is gone from `envs`: nothing can
/// mount them any more.
pub fn orphans(state_root: &Path, in_use: &HashSet<String>, env_exists: impl Fn(&str) -> bool) -> Vec<String> {
    list(state_root).into_iter().filter(|k| !in_use.contains(k) && !env_exists(k)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt};

    fn store_path(store: &Path, name: &str) -> StorePath {
        std::fs::create_dir_all(store.join(name)).unwrap();
        StorePath::parse(&format!("/nix/store/{name}")).unwrap()
    }

    #[test]
    fn view_mirrors_exactly_the_closure_with_hard_links() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        let a = store_path(&store, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a-1.0");
        let b = store_path(&store, "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b-1.0");
        let _other = store_path(&store, "cccccccccccccccccccccccccccccccc-other-1.0");
        std::fs::create_dir_all(store.join(a.base_name()).join("bin")).unwrap();
        std::fs::write(store.join(a.base_name()).join("bin/tool"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(store.join(a.base_name()).join("bin/tool"), fs::Permissions::from_mode(0o555))
            .unwrap();
        symlink("tool", store.join(a.base_name()).join("bin/alias")).unwrap();
        std::fs::write(store.join(b.base_name()).join("data"), b"x").unwrap();
        std::fs::set_permissions(store.join(a.base_name()).join("bin"), fs::Permissions::from_mode(0o555)).unwrap();

        let dest = tmp.path().join("view");
        let stats = build(&store, &[a.clone(), b.clone()], &dest).unwrap();
        assert_eq!(stats, ViewStats { paths: 2, dirs: 3, files: 2, symlinks: 1, copied: 0 });
        let mut names: Vec<_> =
            std::fs::read_dir(&dest).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, vec![a.base_name().to_string(), b.base_name().to_string()]);
        let src = std::fs::metadata(store.join(a.base_name()).join("bin/tool")).unwrap();
        let got = std::fs::metadata(dest.join(a.base_name()).join("bin/tool")).unwrap();
        assert_eq!((src.ino(), src.dev()), (got.ino(), got.dev()), "a hard link, not a copy");
        assert_eq!(std::fs::read_link(dest.join(a.base_name()).join("bin/alias")).unwrap(), Path::new("tool"));
        let src = std::fs::symlink_metadata(store.join(a.base_name()).join("bin/alias")).unwrap();
        let got = std::fs::symlink_metadata(dest.join(a.base_name()).join("bin/alias")).unwrap();
        assert_eq!((src.ino(), src.dev()), (got.ino(), got.dev()), "the symlink itself linked, not followed");
        assert_eq!(std::fs::metadata(dest.join(a.base_name()).join("bin")).unwrap().mode() & 0o777, 0o555);
        assert_eq!(std::fs::metadata(&dest).unwrap().mode() & 0o777, 0o555);

        remove_tree(&dest).unwrap();
        assert!(!dest.exists());
        assert!(store.join(a.base_name()).join("bin/tool").exists(), "the store is untouched");
    }

    /// Paths added while the pull runs, then finished with the closure: the same view as a
    /// build in one go; a path added but not in the closure is gone.
    #[test]
    fn a_view_built_path_by_path_holds_exactly_the_closure() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        let a = store_path(&store, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a-1.0");
        let b = store_path(&store, "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b-1.0");
        let c = store_path(&store, "cccccccccccccccccccccccccccccccc-c-1.0");
        std::fs::write(store.join(a.base_name()).join("data"), b"a").unwrap();
        std::fs::write(store.join("dddddddddddddddddddddddddddddddd-file"), b"a file path").unwrap();
        let d = StorePath::parse("/nix/store/dddddddddddddddddddddddddddddddd-file").unwrap();

        let dest = tmp.path().join("view");
        let mut early = ViewBuild::start(&store, &dest).unwrap();
        early.add(&a).unwrap();
        early.add(&c).unwrap();
        early.add(&d).unwrap();
        early.add(&a).unwrap();
        let stats = early.finish(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(stats.paths, 2);
        let mut names: Vec<_> =
            std::fs::read_dir(&dest).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, vec![a.base_name().to_string(), b.base_name().to_string()]);
        assert_eq!(std::fs::read(dest.join(a.base_name()).join("data")).unwrap(), b"a");
        assert_eq!(std::fs::metadata(&dest).unwrap().mode() & 0o777, 0o555);
        let err = ViewBuild::start(&store, &tmp.path().join("v2"))
            .unwrap()
            .add(&StorePath::parse("/nix/store/ffffffffffffffffffffffffffffffff-gone").unwrap())
            .unwrap_err();
        assert!(matches!(err, ViewError::MissingPath { .. }), "{err}");
    }

    /// A view on another file system than the store (EXDEV) gets copies, with the store's
    /// modes and contents.
    #[test]
    fn a_view_on_another_file_system_copies_the_files() {
        let tmp = tempfile::tempdir().unwrap();
        let Ok(other) = tempfile::tempdir_in("/dev/shm") else { return };
        if std::fs::metadata(tmp.path()).unwrap().dev() == std::fs::metadata(other.path()).unwrap().dev() {
            return; // one file system here: nothing to show
        }
        let store = tmp.path().join("store");
        let a = store_path(&store, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a-1.0");
        let bin = store.join(a.base_name()).join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("tool"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(bin.join("tool"), fs::Permissions::from_mode(0o555)).unwrap();
        std::fs::write(bin.join("data"), b"data").unwrap();
        std::fs::set_permissions(bin.join("data"), fs::Permissions::from_mode(0o444)).unwrap();
        symlink("tool", bin.join("alias")).unwrap();
        std::fs::set_permissions(&bin, fs::Permissions::from_mode(0o555)).unwrap();

        let dest = other.path().join("view");
        let stats = build(&store, std::slice::from_ref(&a), &dest).unwrap();
        assert_eq!(stats, ViewStats { paths: 1, dirs: 2, files: 2, symlinks: 1, copied: 2 });
        let got = dest.join(a.base_name()).join("bin");
        assert_eq!(std::fs::read(got.join("tool")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(std::fs::metadata(got.join("tool")).unwrap().mode() & 0o777, 0o555);
        assert_eq!(std::fs::metadata(got.join("data")).unwrap().mode() & 0o777, 0o444);
        assert_eq!(std::fs::read_link(got.join("alias")).unwrap(), Path::new("tool"));
        assert_eq!(std::fs::metadata(&got).unwrap().mode() & 0o777, 0o555);
        remove_tree(&dest).unwrap();
    }

    #[test]
    fn missing_store_path_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let gone = StorePath::parse("/nix/store/dddddddddddddddddddddddddddddddd-gone").unwrap();
        let err = build(tmp.path(), &[gone], &tmp.path().join("view")).unwrap_err().to_string();
        assert!(err.contains("dddddddddddddddddddddddddddddddd-gone") && err.contains("missing"), "{err}");
    }

    #[test]
    fn orphans_and_leftovers() {
        let tmp = tempfile::tempdir().unwrap();
        let views = views_dir(tmp.path());
        for d in ["k1", "k2", "k3", ".tmp-k4-12", ".gc-k1-9"] {
            std::fs::create_dir_all(views.join(d)).unwrap();
        }
        let in_use: HashSet<String> = ["k1".to_string()].into();
        assert_eq!(orphans(tmp.path(), &in_use, |k| k == "k2"), vec!["k3".to_string()]);
        clean_leftovers(tmp.path(), |k| k == "k4");
        assert_eq!(list(tmp.path()), vec!["k1", "k2", "k3"]);
        assert!(views.join(".tmp-k4-12").exists(), "a build in progress is left alone");
        assert!(!views.join(".gc-k1-9").exists());
    }
}
