//! The closure view built while the pull runs: each store path is mirrored into the view (see
//! [`crate::view::ViewBuild`]) by a thread of its own as soon as the fetch has published it,
//! so a cold start does not walk the closure's thousands of files and directories a second
//! time after the last NAR landed. The fetch only reports paths ([`Progress::path_done`]);
//! this module turns those reports into view work, and the node cache completes and publishes
//! the view once the closure is known.
//!
//! The thread works from a channel: a slow file system delays the view, never the fetch.
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use imageless_core::store_path::StorePath;

use crate::fetch::Progress;
use crate::view::{self, ViewBuild, ViewError, ViewStats};

enum Msg {
    /// In the store: mirror it.
    Path(StorePath),
    /// Already linked into the view by the fetch as it unpacked the path: take it as it is.
    Linked(StorePath),
    Done,
}

/// A view under construction in `tmp` (`<tmp>/store` is the closure's mirror).
pub struct EarlyView {
    tmp: PathBuf,
    tx: Sender<Msg>,
    thread: Option<JoinHandle<Result<ViewBuild, ViewError>>>,
}

impl EarlyView {
    /// Creates `tmp` (which must not exist) and starts the thread that mirrors paths of
    /// `store_dir` into `<tmp>/store` as they are reported.
    pub fn start(store_dir: &Path, tmp: &Path) -> Result<EarlyView, ViewError> {
        std::fs::create_dir(tmp).map_err(|source| ViewError::Io { path: tmp.display().to_string(), source })?;
        let build = match ViewBuild::start(store_dir, &tmp.join("store")) {
            Ok(build) => build,
            Err(e) => {
                let _ = view::remove_tree(tmp);
                return Err(e);
            }
        };
        let (tx, rx) = mpsc::channel::<Msg>();
        let thread = std::thread::Builder::new().name("closure-view".into()).spawn(move || {
            let mut build = build;
            let mut failed = None;
            for msg in rx {
                match msg {
                    Msg::Path(path) if failed.is_none() => failed = build.add(&path).err(),
                    Msg::Linked(path) => build.adopt(&path),
                    Msg::Path(_) => {}
                    Msg::Done => break,
                }
            }
            failed.map_or(Ok(build), Err)
        });
        match thread {
            Ok(thread) => Ok(EarlyView { tmp: tmp.to_path_buf(), tx, thread: Some(thread) }),
            Err(source) => {
                let _ = view::remove_tree(tmp);
                Err(ViewError::Io { path: tmp.display().to_string(), source })
            }
        }
    }

    /// `inner` with each finished path also fed to this view.
    pub fn progress(&self, inner: Arc<dyn Progress>) -> Arc<dyn Progress> {
        Arc::new(Feed { inner, tx: self.tx.clone() })
    }

    /// The temp directory the view is built in (published by the caller with a rename).
    pub fn dir(&self) -> &Path {
        &self.tmp
    }

    /// Where the closure's paths go (`<tmp>/store`): a fetch may link the paths it unpacks
    /// there itself ([`crate::fetch::Fetcher::linking_into`]), reporting them with
    /// [`Progress::path_linked`].
    pub fn store_dir(&self) -> PathBuf {
        self.tmp.join("store")
    }

    /// Waits for the paths reported so far, then completes `<tmp>/store` as the view of
    /// exactly `closure`. The temp directory stays until the caller publishes it (renames it
    /// away, then [`EarlyView::published`]) or drops this, which removes it: on an error the
    /// caller may still take what it needs from it first.
    pub fn finish(&mut self, closure: &[StorePath]) -> Result<ViewStats, ViewError> {
        self.join().and_then(|build| build.finish(closure))
    }

    /// The temp directory was renamed into place: nothing left for drop to remove.
    pub fn published(mut self) {
        self.tmp = PathBuf::new();
    }

    fn join(&mut self) -> Result<ViewBuild, ViewError> {
        let _ = self.tx.send(Msg::Done);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) | None => Err(ViewError::Io {
                path: self.tmp.display().to_string(),
                source: std::io::Error::other("the closure view thread stopped"),
            }),
        }
    }
}

/// A pull that failed, or a view never finished: the thread stops and its work goes.
impl Drop for EarlyView {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.join();
        }
        if !self.tmp.as_os_str().is_empty() {
            let _ = view::remove_tree(&self.tmp);
        }
    }
}

struct Feed {
    inner: Arc<dyn Progress>,
    tx: Sender<Msg>,
}

impl Progress for Feed {
    fn planned(&self, paths: usize, nar_bytes: u64) {
        self.inner.planned(paths, nar_bytes);
    }
    fn advanced(&self, bytes: u64) {
        self.inner.advanced(bytes);
    }
    fn path_done(&self, path: &StorePath) {
        self.inner.path_done(path);
        let _ = self.tx.send(Msg::Path(path.clone()));
    }
    fn path_linked(&self, path: &StorePath) {
        self.inner.path_linked(path);
        let _ = self.tx.send(Msg::Linked(path.clone()));
    }
    fn rewound(&self, bytes: u64) {
        self.inner.rewound(bytes);
    }
    fn admit(&self, paths: usize, nar_bytes: u64) -> Result<(), String> {
        self.inner.admit(paths, nar_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Quiet;
    impl Progress for Quiet {
        fn planned(&self, _: usize, _: u64) {}
        fn advanced(&self, _: u64) {}
        fn path_done(&self, _: &StorePath) {}
    }

    fn path(store: &Path, name: &str) -> StorePath {
        std::fs::create_dir_all(store.join(name).join("bin")).unwrap();
        std::fs::write(store.join(name).join("bin/tool"), name).unwrap();
        StorePath::parse(&format!("/nix/store/{name}")).unwrap()
    }

    /// A store of two paths and an early view of it started in `<tmp>/.tmp-view`.
    fn two_paths_and_a_view() -> (tempfile::TempDir, StorePath, StorePath, PathBuf, EarlyView) {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        let a = path(&store, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a");
        let b = path(&store, "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b");
        let dir = tmp.path().join(".tmp-view");
        let early = EarlyView::start(&store, &dir).unwrap();
        (tmp, a, b, dir, early)
    }

    #[test]
    fn paths_reported_during_the_pull_are_in_the_finished_view() {
        let (_tmp, a, b, dir, mut early) = two_paths_and_a_view();
        let progress = early.progress(Arc::new(Quiet));
        progress.path_done(&a);
        let stats = early.finish(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(stats.paths, 2);
        for p in [&a, &b] {
            let tool = dir.join("store").join(p.base_name()).join("bin/tool");
            assert_eq!(std::fs::read_to_string(tool).unwrap(), p.base_name());
        }
        // A report after the finish goes nowhere (the fetcher may outlive the view).
        progress.path_done(&b);
    }

    /// A path the fetch linked into the view itself is taken as it is (mirroring it again
    /// would fail on the existing entry), and counts in the view.
    #[test]
    fn paths_linked_by_the_fetch_are_taken_as_they_are() {
        let (_tmp, a, b, dir, mut early) = two_paths_and_a_view();
        assert_eq!(early.store_dir(), dir.join("store"));
        // What the fetch leaves there for a path it linked: the same tree (a marker shows it
        // was not made again).
        std::fs::create_dir_all(early.store_dir().join(a.base_name()).join("bin")).unwrap();
        std::fs::write(early.store_dir().join(a.base_name()).join("bin/tool"), "linked").unwrap();
        let progress = early.progress(Arc::new(Quiet));
        progress.path_linked(&a);
        progress.path_done(&b);
        let stats = early.finish(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(stats.paths, 2);
        let read =
            |p: &StorePath| std::fs::read_to_string(dir.join("store").join(p.base_name()).join("bin/tool")).unwrap();
        assert_eq!(read(&a), "linked");
        assert_eq!(read(&b), b.base_name());
    }

    #[test]
    fn a_failed_or_abandoned_view_leaves_no_temp_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        let a = path(&store, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a");
        let dir = tmp.path().join(".tmp-view");
        let early = EarlyView::start(&store, &dir).unwrap();
        early.progress(Arc::new(Quiet)).path_done(&a);
        drop(early);
        assert!(!dir.exists(), "an abandoned view is removed");

        let mut early = EarlyView::start(&store, &dir).unwrap();
        let gone = StorePath::parse("/nix/store/cccccccccccccccccccccccccccccccc-gone").unwrap();
        early.progress(Arc::new(Quiet)).path_done(&a);
        early.progress(Arc::new(Quiet)).path_done(&gone);
        let err = early.finish(&[a.clone(), gone]).unwrap_err();
        assert!(matches!(err, ViewError::MissingPath { .. }), "{err}");
        assert!(dir.join("store").join(a.base_name()).is_dir(), "kept for the caller until dropped");
        drop(early);
        assert!(!dir.exists(), "a failed view is removed");

        // Published: renamed away by the caller, nothing removed after.
        let mut early = EarlyView::start(&store, &dir).unwrap();
        early.finish(std::slice::from_ref(&a)).unwrap();
        let published = tmp.path().join("view");
        std::fs::rename(&dir, &published).unwrap();
        early.published();
        assert!(published.join("store").join(a.base_name()).join("bin/tool").is_file());
    }
}
