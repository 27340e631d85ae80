//! The node's own store: `<store_dir>/<hash>-<name>` entries laid out exactly as /nix/store,
//! the verified narinfo of each under `<state_root>/store-info/<hash>.narinfo` (so a
//! closure walk needs no network and the store directory holds nothing but store paths) and
//! one lock file per path under `<state_root>/locks/store/` (flock: one fetch per path
//! across threads and processes).
//!
//! A path is valid when its directory entry exists. Its record is written before the entry
//! is renamed into place, so a valid path always has one; a fetch killed at any point leaves
//! at most a `.tmp-` entry, removed by the next fetch of that path (under its lock).
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt;
use imageless_core::store_path::StorePath;

use super::error::FetchError;
use super::narinfo::NarInfo;

/// Sets `FS_TOPDIR_FL` (`chattr +T`) on a directory, best effort. Each store path is
/// an unrelated tree, and this flag tells ext4's (Orlov) allocator exactly that: a directory
/// made in it (each fetch's temporary tree) starts in a roomy block group of its own, and its
/// files follow it, instead of every path's inodes crowding the store directory's group. On
/// ext4 without a journal that matters a lot: allocating an inode skips every inode freed in
/// the last 30 s one by one, so after a gc (or any churn) in that group a cold pull spent most
/// of its time in the kernel (P9: 2–9 s of system time for flox/large, 1.5–2 s with the flag).
/// Filesystems without the flag refuse it; nothing else depends on it.
fn mark_top_of_hierarchies(dir: &Path) {
    use rustix::fs::{IFlags, Mode, OFlags};
    let result =
        rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).and_then(|fd| {
            let flags = rustix::fs::ioctl_getflags(&fd)?;
            if flags.contains(IFlags::TOPDIR) {
                return Ok(());
            }
            rustix::fs::ioctl_setflags(&fd, flags | IFlags::TOPDIR)
        });
    if let Err(e) = result {
        tracing::debug!(dir = %dir.display(), error = %e, "store directory not marked as top of hierarchies");
    }
}

#[derive(Debug, Clone)]
pub struct NodeStore {
    pub dir: PathBuf,
    info_dir: PathBuf,
    lock_dir: PathBuf,
}

/// Held while one path is fetched; dropping it releases the flock.
pub struct PathLock(#[allow(dead_code)] File);

impl NodeStore {
    pub fn new(dir: PathBuf, state_root: &Path) -> NodeStore {
        NodeStore { dir, info_dir: state_root.join("store-info"), lock_dir: state_root.join("locks").join("store") }
    }

    pub fn path_of(&self, p: &StorePath) -> PathBuf {
        self.dir.join(p.base_name())
    }

    fn record_path(&self, p: &StorePath) -> PathBuf {
        self.info_dir.join(format!("{}.narinfo", p.hash_part()))
    }

    pub fn is_valid(&self, p: &StorePath) -> bool {
        std::fs::symlink_metadata(self.path_of(p)).is_ok()
    }

    /// The verified narinfo a valid path was fetched with.
    pub fn record(&self, p: &StorePath) -> Result<NarInfo, FetchError> {
        let record = self.record_path(p);
        let missing = || FetchError::MissingRecord { path: p.to_string(), record: record.clone() };
        let text = std::fs::read_to_string(&record).map_err(|_| missing())?;
        NarInfo::parse(&text, p).map_err(|_| missing())
    }

    /// Has the file system commit its journal now, on a thread of its own; returns at once.
    /// A cold pull creates tens of thousands of inodes and directory blocks (the store's and the
    /// view's), and on a journaled file system (ext4 in data=ordered mode, the usual node disk)
    /// they wait in one running transaction until something asks for a commit. The first to ask
    /// was containerd's own `fdatasync` while it created the container, so the pod's start waited
    /// for the whole commit (about 55 ms of the journal thread for `flox/xlarge`, with one core
    /// idle). An `fdatasync` of a small file of ours starts it as soon as the fetch is done,
    /// while the pull's tail (render, SBOM, view registration) runs on the other core. Only
    /// metadata is written: file data still delayed-allocated is not part of a commit. Best
    /// effort: nothing waits for it or depends on it.
    pub fn commit_metadata_in_background(&self) {
        // Written here, synced there: the file exists before this returns, so a caller that
        // removes the state right after (tests, a failed pull's cleanup) never races its
        // creation.
        let path = self.lock_dir.join(".journal-commit");
        let written = File::create(&path).and_then(|mut f| std::io::Write::write_all(&mut f, b"1").map(|()| f));
        let file = match written {
            Ok(file) => file,
            Err(e) => {
                tracing::debug!(file = %path.display(), error = %e, "journal commit not requested");
                return;
            }
        };
        let spawned = std::thread::Builder::new().name("journal-commit".into()).spawn(move || {
            if let Err(e) = file.sync_data() {
                tracing::debug!(file = %path.display(), error = %e, "journal commit not requested");
            }
        });
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "journal commit thread not started");
        }
    }

    /// Creates the store, record and lock directories. The store directory, and the state
    /// root and its `locks/` before the record and lock directories are made in them, are
    /// marked as tops of unrelated hierarchies (see [`mark_top_of_hierarchies`]): a cold
    /// pull creates a record and a lock file per path too.
    pub fn create_dirs(&self) -> Result<(), FetchError> {
        let create = |d: &Path| std::fs::create_dir_all(d).map_err(FetchError::store(d, "creating the directory"));
        for parent in [self.info_dir.parent(), self.lock_dir.parent()].into_iter().flatten() {
            create(parent)?;
            mark_top_of_hierarchies(parent);
        }
        for d in [&self.dir, &self.info_dir, &self.lock_dir] {
            create(d)?;
        }
        mark_top_of_hierarchies(&self.dir);
        Ok(())
    }

    /// Blocks until this process holds the path's lock.
    pub fn lock(&self, p: &StorePath) -> Result<PathLock, FetchError> {
        let path = self.lock_dir.join(format!("{}.lock", p.hash_part()));
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(FetchError::store(&self.lock_dir, format!("opening lock {}", path.display())))?;
        f.lock_exclusive().map_err(FetchError::store(&self.lock_dir, format!("locking {}", path.display())))?;
        Ok(PathLock(f))
    }

    /// Where `p` is unpacked (inside the store dir, so publishing is a rename): one name per
    /// path, as only the holder of its lock unpacks it; whatever a killed fetch left there is
    /// removed first. One `lstat` rather than a scan of the store directory for leftovers: a
    /// scan per path made a closure's fetch quadratic (1,045 scans of up to 1,045 entries, 4 %
    /// of a cold `flox/xlarge` pull's CPU, each holding the directory's lock against the other
    /// jobs' renames). Call with the path's lock held.
    pub fn fresh_temp(&self, p: &StorePath) -> Result<PathBuf, FetchError> {
        let temp = self.dir.join(format!(".tmp-{}", p.base_name()));
        super::nar::remove_tree(&temp)
            .map_err(FetchError::store(&self.dir, format!("removing stale {}", temp.display())))?;
        Ok(temp)
    }

    /// Writes the record, then renames the unpacked tree into place. Call with the lock held.
    pub fn publish(&self, info: &NarInfo, unpacked: &Path) -> Result<(), FetchError> {
        self.write_record(info)?;
        self.rename_into_place(&info.store_path, unpacked)
    }

    /// Writes the verified narinfo of a path about to become valid (a record of a path that
    /// is not valid is never read). Call with the path's lock held.
    pub fn write_record(&self, info: &NarInfo) -> Result<(), FetchError> {
        let record = self.record_path(&info.store_path);
        let tmp = self.info_dir.join(format!(".tmp-{}-{}", info.store_path.hash_part(), std::process::id()));
        std::fs::write(&tmp, info.to_text()).map_err(FetchError::store(&self.info_dir, "writing a record"))?;
        std::fs::rename(&tmp, &record).map_err(FetchError::store(&self.info_dir, "renaming a record"))
    }

    /// Makes `p` valid: its complete tree at `unpacked` (in the store directory) renamed into
    /// place, after its record was written. Call with the path's lock held.
    pub fn rename_into_place(&self, p: &StorePath, unpacked: &Path) -> Result<(), FetchError> {
        let dest = self.path_of(p);
        std::fs::rename(unpacked, &dest)
            .map_err(FetchError::store(&self.dir, format!("renaming into {}", dest.display())))
    }

    /// Drops the record of a path that is no longer valid (gc, after renaming it away).
    pub fn remove_record(&self, p: &StorePath) -> std::io::Result<()> {
        match std::fs::remove_file(self.record_path(p)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The closure of `roots` over the records of valid paths, sorted.
    pub fn closure(&self, roots: &[StorePath]) -> Result<Vec<StorePath>, FetchError> {
        Records::new(self).closure(roots)
    }
}

/// The store's records read once each, for a caller that needs them several times: after a
/// pull the closure walk, the SBOM and the view's registration each went through every record
/// of the closure (3,135 reads and parses for `flox/xlarge`, on the cold start's path).
pub struct Records<'a> {
    store: &'a NodeStore,
    read: RefCell<HashMap<StorePath, NarInfo>>,
}

impl<'a> Records<'a> {
    pub fn new(store: &'a NodeStore) -> Records<'a> {
        Records { store, read: RefCell::new(HashMap::new()) }
    }

    /// With the records a fetch just published already known (what [`NodeStore::publish`]
    /// wrote is their text, which reads back as the same value): a cold pull's tail reads
    /// none of them back (1,045 files for `flox/xlarge`).
    pub fn with_published(store: &'a NodeStore, published: &[NarInfo]) -> Records<'a> {
        let read = published.iter().map(|info| (info.store_path.clone(), info.clone())).collect();
        Records { store, read: RefCell::new(read) }
    }

    /// [`NodeStore::record`], read at most once.
    pub fn record(&self, p: &StorePath) -> Result<NarInfo, FetchError> {
        if let Some(info) = self.read.borrow().get(p) {
            return Ok(info.clone());
        }
        let info = self.store.record(p)?;
        self.read.borrow_mut().insert(p.clone(), info.clone());
        Ok(info)
    }

    /// The closure of `roots` over the records of valid paths, sorted.
    pub fn closure(&self, roots: &[StorePath]) -> Result<Vec<StorePath>, FetchError> {
        let mut seen = std::collections::BTreeSet::new();
        let mut todo: Vec<StorePath> = roots.to_vec();
        while let Some(p) = todo.pop() {
            if !seen.contains(&p) {
                todo.extend(self.record(&p)?.references.into_iter().filter(|r| !seen.contains(r)));
                seen.insert(p);
            }
        }
        Ok(seen.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records a fetch published are known without reading them back, and equal what reading
    /// them gives; any other record is still read from the store.
    #[test]
    fn published_records_are_known_as_written() {
        let tmp = tempfile::tempdir().unwrap();
        let store = NodeStore::new(tmp.path().join("store"), &tmp.path().join("state"));
        store.create_dirs().unwrap();
        let a = crate::registration::tests::info("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a-1.0", &[]);
        let b = crate::registration::tests::info(
            "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b-1.0",
            &["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a-1.0"],
        );
        for info in [&a, &b] {
            let unpacked = tmp.path().join(format!("unpacked-{}", info.store_path.hash_part()));
            std::fs::create_dir(&unpacked).unwrap();
            store.publish(info, &unpacked).unwrap();
        }
        let from_disk = Records::new(&store);
        let known = Records::with_published(&store, std::slice::from_ref(&b));
        assert_eq!(known.record(&b.store_path).unwrap(), from_disk.record(&b.store_path).unwrap());
        std::fs::remove_file(store.record_path(&b.store_path)).unwrap();
        assert_eq!(known.record(&b.store_path).unwrap(), b, "not read back");
        assert_eq!(
            known.closure(std::slice::from_ref(&b.store_path)).unwrap(),
            vec![a.store_path.clone(), b.store_path.clone()]
        );
        assert!(Records::new(&store).record(&b.store_path).is_err(), "the record is gone from disk");
    }

    /// On ext4 (the filesystem the P9 figure was measured on) the store directory, the state
    /// root and `locks/` carry FS_TOPDIR_FL; the record and lock directories are made after.
    #[test]
    fn marks_store_and_state_dirs_as_tops_of_hierarchies_on_ext4() {
        let tmp = tempfile::tempdir().unwrap();
        const EXT4_SUPER_MAGIC: i64 = 0xEF53;
        let on_ext4 = rustix::fs::statfs(tmp.path()).map(|s| s.f_type == EXT4_SUPER_MAGIC).unwrap_or(false);
        let state = tmp.path().join("state");
        let store = NodeStore::new(tmp.path().join("store"), &state);
        store.create_dirs().unwrap();
        for d in [&store.dir, &store.info_dir, &store.lock_dir] {
            assert!(d.is_dir(), "{} created", d.display());
        }
        if !on_ext4 {
            return; // other filesystems may refuse the flag: create_dirs ignores that
        }
        let flags = |d: &Path| {
            let fd = rustix::fs::open(
                d,
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
                rustix::fs::Mode::empty(),
            )
            .unwrap();
            rustix::fs::ioctl_getflags(&fd).unwrap()
        };
        for d in [store.dir.as_path(), state.as_path(), &state.join("locks")] {
            assert!(flags(d).contains(rustix::fs::IFlags::TOPDIR), "{} marked", d.display());
        }
        assert!(!flags(&store.info_dir).contains(rustix::fs::IFlags::TOPDIR), "only the parents are marked");
    }
}
