//! The node store's own entries of paths a cold pull unpacked only into the closure view, made
//! after the environment was published (and its pod could start).
//!
//! A pull that builds the view while it fetches wrote every path twice: its tree in the store
//! and, linked file by file as it was unpacked, the same tree in the view. Each directory was
//! made twice on the cold start's path (mkdir is the file system's dearest call here: about
//! 24 µs on a journaled ext4, 8,300 directories in `flox/xlarge`). The sandbox's prefetch
//! unpacks into the view alone ([`crate::fetch::Fetcher::deferring_store_into`]), publishes
//! the environment and the view, and only then recreates the store's entries from the view
//! (hard links to the same inodes) while the container is created and started.
//!
//! Until then the paths are not valid in the store: their records are written, their locks are
//! held (a concurrent pull of the same path waits, then finds it valid), the node store lock is
//! held shared (gc waits), and the environment carries a marker (`envs/<key>/store-pending`,
//! listing the paths, flocked by the process that will make them). A process that dies before
//! it did leaves the marker unlocked: the next lookup of the environment makes the paths valid
//! from its view ([`recover`]), which gc never removes without the environment.
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt;
use imageless_core::store_path::StorePath;

use crate::cache::NodeError;
use crate::fetch::{DeferredPath, NodeStore};
use crate::gc::StoreLock;
use crate::view::ViewBuild;

/// In `envs/<key>` while store entries of its closure are still to be made from its view.
pub const MARKER: &str = "store-pending";

/// The marker is ours, but read bounded anyway (a line per path: 1,045 for `flox/xlarge`).
const MARKER_MAX_BYTES: u64 = 16 << 20;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io { path: path.display().to_string(), source }
}

/// Writes the marker listing `paths` into `env_dir` (the environment's directory, before it is
/// published) and returns it locked: it stays locked while the returned file is open.
pub fn write_marker(env_dir: &Path, paths: &[DeferredPath]) -> Result<File, NodeError> {
    let marker = env_dir.join(MARKER);
    let mut file = File::create(&marker).map_err(io(&marker))?;
    FileExt::lock_exclusive(&file).map_err(io(&marker))?;
    let text: String = paths.iter().map(|p| format!("{}\n", p.info.store_path)).collect();
    file.write_all(text.as_bytes()).map_err(io(&marker))?;
    Ok(file)
}

/// Store entries still to make for a published environment: its paths (locked), where their
/// trees are (the published view's `store`), the environment's locked marker and a shared
/// hold on the node store.
pub struct DeferredStore {
    pub store: NodeStore,
    /// `views/<key>/store`.
    pub from: PathBuf,
    pub paths: Vec<DeferredPath>,
    /// `envs/<key>/store-pending` and its open, locked file.
    pub marker: PathBuf,
    pub marker_file: File,
    pub store_use: StoreLock,
}

impl DeferredStore {
    /// Makes every path valid (a path whose tree is not in the view any more, having left
    /// the closure, stays invalid), then removes the marker. On an error the marker stays,
    /// unlocked once this is dropped, for [`recover`].
    pub fn settle(self) -> Result<usize, NodeError> {
        let started = std::time::Instant::now();
        let mut made = 0;
        for path in &self.paths {
            if make_valid(&self.store, &path.info.store_path, &self.from)? {
                made += 1;
            }
        }
        std::fs::remove_file(&self.marker).map_err(io(&self.marker))?;
        tracing::info!(paths = made, ms = started.elapsed().as_millis() as u64, "store entries made from the view");
        Ok(made)
    }
}

/// Makes `path` valid from its complete tree at `from/<hash>-<name>`: the store's entry is
/// recreated in a temporary directory with hard links to the same inodes (copies across file
/// systems), then renamed into place. True when the path is valid after; false when its tree
/// or its record is missing. Call with the path's lock held.
pub fn make_valid(store: &NodeStore, path: &StorePath, from: &Path) -> Result<bool, NodeError> {
    if store.is_valid(path) {
        return Ok(true);
    }
    let source = from.join(path.base_name());
    if std::fs::symlink_metadata(&source).is_err() || store.record(path).is_err() {
        return Ok(false);
    }
    // `.tmp-<name>` as fetches use it (the path's lock is held, leftovers of a killed one go
    // first), holding the tree under the path's own name while it is made.
    let tmp = store.fresh_temp(path)?;
    let made = ViewBuild::start(from, &tmp)
        .and_then(|build| build.keeping_times().add(path))
        .map_err(NodeError::from)
        .and_then(|()| store.rename_into_place(path, &tmp.join(path.base_name())).map_err(NodeError::from));
    let cleaned = crate::fetch::nar::remove_tree(&tmp);
    made?;
    cleaned.map_err(io(&tmp))?;
    Ok(true)
}

/// Completes what a process that died left: when `env_dir` has an unlocked marker, makes its
/// paths valid from `from` (the environment's view's `store`) under their locks, then removes
/// the marker. Nothing to do without a marker, or while its process still holds it.
pub fn recover(store: &NodeStore, env_dir: &Path, from: &Path) -> Result<(), NodeError> {
    let marker = env_dir.join(MARKER);
    let mut file = match File::open(&marker) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(&marker)(e)),
    };
    match FileExt::try_lock_exclusive(&file) {
        Ok(true) => {}
        Ok(false) => return Ok(()),
        Err(e) => return Err(io(&marker)(e)),
    }
    let mut text = String::new();
    (&mut file).take(MARKER_MAX_BYTES).read_to_string(&mut text).map_err(io(&marker))?;
    let mut made = 0;
    for line in text.lines() {
        let Ok(path) = StorePath::parse(line.trim()) else { continue };
        let _lock = store.lock(&path)?;
        if make_valid(store, &path, from)? {
            made += 1;
        }
    }
    match std::fs::remove_file(&marker) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&marker)(e)),
        _ => {}
    }
    tracing::info!(env = %env_dir.display(), paths = made, "store entries of an interrupted pull made from its view");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a-1.0";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b-1.0";

    /// A node store, and a view's `store` holding A and B as a deferring pull leaves them:
    /// the trees in the view only, their records written, their locks held.
    struct Setup {
        _tmp: tempfile::TempDir,
        state: PathBuf,
        store: NodeStore,
        env_dir: PathBuf,
        from: PathBuf,
        paths: Vec<DeferredPath>,
    }

    fn setup() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let store = NodeStore::new(tmp.path().join("store"), &state);
        store.create_dirs().unwrap();
        let from = tmp.path().join("view/store");
        let mut paths = Vec::new();
        for name in [A, B] {
            let tree = from.join(name);
            std::fs::create_dir_all(tree.join("lib")).unwrap();
            std::fs::write(tree.join("lib/libx.so"), name).unwrap();
            std::os::unix::fs::symlink("libx.so", tree.join("lib/libx.so.1")).unwrap();
            let info = crate::registration::tests::info(name, &[]);
            store.write_record(&info).unwrap();
            let lock = store.lock(&info.store_path).unwrap();
            paths.push(DeferredPath::new(info, lock));
        }
        let env_dir = tmp.path().join("envs/k1");
        std::fs::create_dir_all(&env_dir).unwrap();
        Setup { _tmp: tmp, state, store, env_dir, from, paths }
    }

    fn path(name: &str) -> StorePath {
        StorePath::parse(&format!("/nix/store/{name}")).unwrap()
    }

    /// The store's entry of `name` has the view's tree, its file the view's inode, and no
    /// temporary entry is left in the store.
    fn assert_valid_as_the_view(s: &Setup, name: &str) {
        assert!(s.store.is_valid(&path(name)), "{name} valid");
        let (in_store, in_view) = (s.store.dir.join(name).join("lib/libx.so"), s.from.join(name).join("lib/libx.so"));
        assert_eq!(std::fs::metadata(&in_store).unwrap().ino(), std::fs::metadata(&in_view).unwrap().ino());
        assert_eq!(std::fs::read_link(s.store.dir.join(name).join("lib/libx.so.1")).unwrap(), Path::new("libx.so"));
        let left: Vec<String> = std::fs::read_dir(&s.store.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "no temporary entry left: {left:?}");
    }

    fn lock_is_free(s: &Setup, name: &str) -> bool {
        let lock = s.state.join("locks/store").join(format!("{}.lock", path(name).hash_part()));
        FileExt::try_lock_exclusive(&File::open(lock).unwrap()).unwrap()
    }

    #[test]
    fn settling_makes_each_path_valid_from_the_view_then_removes_the_marker() {
        let mut s = setup();
        let marker_file = write_marker(&s.env_dir, &s.paths).unwrap();
        let marker = s.env_dir.join(MARKER);
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), format!("/nix/store/{A}\n/nix/store/{B}\n"));
        // While its process holds the marker, a lookup's recovery leaves everything to it.
        recover(&s.store, &s.env_dir, &s.from).unwrap();
        assert!(!s.store.is_valid(&path(A)) && marker.exists());
        assert!(!lock_is_free(&s, A), "a path's lock is held until it is valid");

        let deferred = DeferredStore {
            store: s.store.clone(),
            from: s.from.clone(),
            paths: std::mem::take(&mut s.paths),
            marker: marker.clone(),
            marker_file,
            store_use: StoreLock::shared(&s.state).unwrap(),
        };
        assert_eq!(deferred.settle().unwrap(), 2);
        for name in [A, B] {
            assert_valid_as_the_view(&s, name);
            assert!(lock_is_free(&s, name), "released once valid");
        }
        assert!(!marker.exists());
    }

    /// A process that died after publishing left its marker unlocked: the next lookup makes
    /// the paths valid from the view, once; a path whose tree left the view, or whose record
    /// is gone, stays invalid rather than valid without its record.
    #[test]
    fn an_interrupted_settle_is_completed_from_the_view() {
        let mut s = setup();
        drop(write_marker(&s.env_dir, &s.paths).unwrap());
        s.paths.clear();
        crate::fetch::nar::remove_tree(&s.from.join(B)).unwrap();
        recover(&s.store, &s.env_dir, &s.from).unwrap();
        assert_valid_as_the_view(&s, A);
        assert!(!s.store.is_valid(&path(B)), "its tree is gone: not made valid");
        assert!(!s.env_dir.join(MARKER).exists());
        recover(&s.store, &s.env_dir, &s.from).unwrap();
        assert_valid_as_the_view(&s, A);

        let mut s = setup();
        s.paths.clear();
        std::fs::remove_file(s.state.join("store-info").join(format!("{}.narinfo", path(A).hash_part()))).unwrap();
        let _lock = s.store.lock(&path(B)).unwrap();
        assert!(!make_valid(&s.store, &path(A), &s.from).unwrap(), "no record: not made valid");
        assert!(!s.store.is_valid(&path(A)));
        assert!(make_valid(&s.store, &path(B), &s.from).unwrap());
        assert_valid_as_the_view(&s, B);
    }
}
