//! The node's own garbage collection: no Nix, no GC roots.
//!
//! `imageless gc` removes, in order:
//! 1. rendered environments (`envs/<key>`) no container uses (and unused for `--older-than`),
//!    with their views;
//! 2. views whose environment is gone and no container uses, and leftovers of killed builds;
//! 3. store paths of the node store that no remaining environment's closure lists, with their
//!    records, and leftovers of killed fetches.
//!
//! What is live is read from the environments that stay (`envs/<key>/closure`), so a path
//! one environment still needs is never swept, whoever fetched it. Views and nix-mutable
//! lower layers hold hard links, so a container of a dropped environment (only possible for
//! an orphan view still in use) keeps its files even when their store paths go.
//!
//! The race rule: `<state_root>/store.lock` (flock). Pulls (from the fetch until the
//! environment that references the fetched paths is published), view builds and container
//! creates (from `ensure` until the container state is saved and the view built) hold it
//! shared; gc holds it exclusive for its whole run. Lock order is always the store lock
//! first, then a key's lock, so neither side can wait for the other in a cycle. A store path
//! is removed by renaming it away first (`.gc-<name>-<pid>`): validity is the entry's
//! existence, so a gc killed mid-way never leaves a half-removed path that looks valid.
use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fs4::fs_std::FileExt;
use imageless_core::store_path::StorePath;

use crate::cache::{lock_file, NodeCache, NodeError};
use crate::view;

/// A hold on `<state_root>/store.lock`; released when dropped.
pub struct StoreLock(#[allow(dead_code)] File);

impl StoreLock {
    fn path(state_root: &Path) -> PathBuf {
        state_root.join("store.lock")
    }

    fn open(state_root: &Path) -> Result<File, NodeError> {
        let path = Self::path(state_root);
        std::fs::create_dir_all(state_root).map_err(io(state_root))?;
        File::options().create(true).truncate(false).write(true).open(&path).map_err(io(&path))
    }

    /// Pulls, view builds and creates: many at once, never during a gc.
    pub fn shared(state_root: &Path) -> Result<StoreLock, NodeError> {
        let f = Self::open(state_root)?;
        FileExt::lock_shared(&f).map_err(io(&Self::path(state_root)))?;
        Ok(StoreLock(f))
    }

    /// gc: alone.
    pub fn exclusive(state_root: &Path) -> Result<StoreLock, NodeError> {
        let f = Self::open(state_root)?;
        FileExt::lock_exclusive(&f).map_err(io(&Self::path(state_root)))?;
        Ok(StoreLock(f))
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io { path: path.display().to_string(), source }
}

/// What a gc removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Keys of the rendered environments removed.
    pub envs: Vec<String>,
    /// Store paths removed from the node store.
    pub store_paths: Vec<String>,
}

/// The entries of the store directory to remove: store paths not in `live`, and leftovers
/// of killed fetches or sweeps (`.tmp-`, `.gc-`). Anything else (not a store path name) is
/// not ours and stays.
pub fn sweep_plan(entries: &[String], live: &HashSet<String>) -> Vec<String> {
    let mut doomed: Vec<String> = entries
        .iter()
        .filter(|name| {
            if name.starts_with(".tmp-") || name.starts_with(".gc-") {
                return true;
            }
            let is_store_path = StorePath::parse(&format!("{}/{name}", imageless_core::store_path::STORE_DIR)).is_ok();
            is_store_path && !live.contains(name.as_str())
        })
        .cloned()
        .collect();
    doomed.sort();
    doomed
}

impl NodeCache {
    /// Removes cached environments (and their views) not in `in_use` and unused for
    /// `older_than`, views whose environment is gone and no container uses, leftovers of
    /// killed view builds, then every store path no remaining environment references.
    pub fn gc(&self, in_use: &HashSet<String>, older_than: Duration) -> Result<GcReport, NodeError> {
        let _store = StoreLock::exclusive(self.root())?;
        let mut report = GcReport::default();
        let envs = self.envs_dir();
        let entries: Vec<std::fs::DirEntry> =
            std::fs::read_dir(&envs).map(|d| d.flatten().collect()).unwrap_or_default();
        for entry in entries {
            let key = entry.file_name().to_string_lossy().into_owned();
            if key.starts_with('.') {
                // A render killed mid-way (none runs now: they hold the store lock).
                let _ = std::fs::remove_dir_all(entry.path());
                continue;
            }
            if in_use.contains(&key) {
                continue;
            }
            let last_used = std::fs::metadata(entry.path().join("last-used")).and_then(|m| m.modified()).ok();
            if last_used.is_some_and(|t| t.elapsed().unwrap_or_default() < older_than) {
                continue;
            }
            if self.remove_env_if_unused(&key)? {
                report.envs.push(key);
            }
        }
        for key in view::orphans(self.root(), in_use, |k| envs.join(k).is_dir()) {
            if self.remove_view_if_unused(&key)? {
                tracing::info!(key, "orphan closure view removed");
            }
        }
        view::clean_leftovers(self.root(), |k| self.key_busy(k));
        report.store_paths = self.sweep_store()?;
        Ok(report)
    }

    /// Removes `envs/<key>` and its view under the key's lock, unless a container uses the key
    /// now (a container may have been created since the caller read the states). The caller
    /// holds the store lock exclusively.
    pub(crate) fn remove_env_if_unused(&self, key: &str) -> Result<bool, NodeError> {
        let _guard = lock_file(&self.key_lock(key))?;
        if crate::containers::keys_in_use(self.root()).contains(key) {
            return Ok(false);
        }
        self.remove_view(key)?;
        let dir = self.envs_dir().join(key);
        let trash = self.envs_dir().join(format!(".gc-{key}-{}", std::process::id()));
        std::fs::rename(&dir, &trash).map_err(io(&trash))?;
        std::fs::remove_dir_all(&trash).map_err(io(&trash))?;
        Ok(true)
    }

    /// Step 3, under the exclusive store lock: store paths no remaining environment lists.
    pub(crate) fn sweep_store(&self) -> Result<Vec<String>, NodeError> {
        let store = self.store();
        let names: Vec<String> = match std::fs::read_dir(&store.dir) {
            Ok(d) => d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io(&store.dir)(e)),
        };
        let live = self.live_paths()?;
        let mut removed = Vec::new();
        for name in sweep_plan(&names, &live) {
            let entry = store.dir.join(&name);
            if name.starts_with('.') {
                crate::fetch::nar::remove_tree(&entry).map_err(io(&entry))?;
                continue;
            }
            // Invalid first (validity is the entry's existence), then the record, then the data.
            let trash = store.dir.join(format!(".gc-{name}-{}", std::process::id()));
            std::fs::rename(&entry, &trash).map_err(io(&entry))?;
            if let Ok(p) = StorePath::parse(&format!("{}/{name}", imageless_core::store_path::STORE_DIR)) {
                store.remove_record(&p).map_err(io(&entry))?;
            }
            crate::fetch::nar::remove_tree(&trash).map_err(io(&trash))?;
            removed.push(name);
        }
        if !removed.is_empty() {
            tracing::info!(paths = removed.len(), "store paths swept");
        }
        Ok(removed)
    }

    /// Base names of every path some remaining environment's closure lists.
    fn live_paths(&self) -> Result<HashSet<String>, NodeError> {
        let mut live = HashSet::new();
        let envs = self.envs_dir();
        let Ok(entries) = std::fs::read_dir(&envs) else { return Ok(live) };
        for e in entries.flatten() {
            let key = e.file_name().to_string_lossy().into_owned();
            if key.starts_with('.') {
                continue;
            }
            let path = e.path().join("closure");
            // An environment without its closure list is incomplete and cannot be served
            // (`lookup` ignores it): it protects nothing.
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            for line in text.lines() {
                if let Ok(p) = StorePath::parse(line.trim()) {
                    live.insert(p.base_name().to_string());
                }
            }
        }
        Ok(live)
    }

    pub(crate) fn key_lock(&self, key: &str) -> PathBuf {
        self.root().join("locks").join(format!("{key}.lock"))
    }

    /// Removes a view under the key's lock unless a container uses the key now.
    fn remove_view_if_unused(&self, key: &str) -> Result<bool, NodeError> {
        let _guard = lock_file(&self.key_lock(key))?;
        if crate::containers::keys_in_use(self.root()).contains(key) {
            return Ok(false);
        }
        self.remove_view(key)?;
        Ok(true)
    }

    /// Removes `views/<key>` (the caller holds the key's lock): renamed away first, so a
    /// removal killed half-way leaves a dot-dir for the next gc, never a partial view.
    fn remove_view(&self, key: &str) -> Result<(), NodeError> {
        let dir = view::view_dir(self.root(), key);
        if !dir.exists() {
            return Ok(());
        }
        let trash = view::views_dir(self.root()).join(format!(".gc-{key}-{}", std::process::id()));
        std::fs::rename(&dir, &trash).map_err(io(&trash))?;
        view::remove_tree(&trash).map_err(io(&trash))
    }

    /// Whether someone holds the key's lock (a realization or a view build in progress).
    fn key_busy(&self, key: &str) -> bool {
        match File::options().write(true).open(self.key_lock(key)) {
            Ok(f) => FileExt::try_lock_exclusive(&f).map(|locked| !locked).unwrap_or(true),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imageless_core::system::System;

    use crate::config::NodeConfig;
    use crate::fetch::narinfo::{NarHash, NarInfo};

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a-1.0";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b-1.0";
    const C: &str = "cccccccccccccccccccccccccccccccc-c-1.0";

    #[test]
    fn sweep_plan_keeps_live_paths_and_foreign_entries() {
        let live: HashSet<String> = [A.to_string()].into();
        let entries: Vec<String> =
            [A, B, C, ".tmp-x-12", ".gc-y-3", "README", "not-a-store-path"].iter().map(|s| s.to_string()).collect();
        assert_eq!(sweep_plan(&entries, &live), vec![".gc-y-3", ".tmp-x-12", B, C]);
    }

    /// A node with envs `k1` (closure A, B) and `k2` (closure B) and a store holding A, B, C.
    fn node(tmp: &Path) -> NodeCache {
        let config = NodeConfig { state_root: tmp.join("state"), ..NodeConfig::default() };
        let cache = NodeCache::new(config, System::X86_64Linux);
        let store = cache.store();
        store.create_dirs().unwrap();
        for name in [A, B, C] {
            let p = StorePath::parse(&format!("/nix/store/{name}")).unwrap();
            let unpacked = store.dir.join(format!(".tmp-{name}-1"));
            std::fs::create_dir_all(unpacked.join("bin")).unwrap();
            std::fs::write(unpacked.join("bin/tool"), name).unwrap();
            let info = NarInfo {
                store_path: p,
                url: "nar/x.nar".into(),
                compression: "none".into(),
                nar_hash: NarHash([0; 32]),
                nar_size: 1,
                references: vec![],
                deriver: None,
                sigs: vec![],
            };
            store.publish(&info, &unpacked).unwrap();
        }
        for (key, closure) in [("k1", vec![A, B]), ("k2", vec![B])] {
            let dir = cache.envs_dir().join(key);
            std::fs::create_dir_all(dir.join("env")).unwrap();
            let text: String = closure.iter().map(|n| format!("/nix/store/{n}\n")).collect();
            std::fs::write(dir.join("closure"), text).unwrap();
        }
        cache
    }

    fn store_names(cache: &NodeCache) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(cache.store().dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn sweep_removes_what_no_remaining_environment_references() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = node(tmp.path());
        // A fetch killed mid-way left a temp tree.
        std::fs::create_dir_all(cache.store().dir.join(format!(".tmp-{C}-999/x"))).unwrap();
        let in_use: HashSet<String> = ["k2".to_string()].into();
        let report = cache.gc(&in_use, Duration::ZERO).unwrap();
        assert_eq!(report.envs, vec!["k1"]);
        assert_eq!(report.store_paths, vec![A.to_string(), C.to_string()]);
        assert_eq!(store_names(&cache), vec![B], "B is k2's; nothing else left");
        let b = StorePath::parse(&format!("/nix/store/{B}")).unwrap();
        assert!(cache.store().record(&b).is_ok(), "a kept path keeps its record");
        let a = StorePath::parse(&format!("/nix/store/{A}")).unwrap();
        assert!(cache.store().record(&a).is_err(), "a swept path loses its record");
        // Nothing in use any more: everything goes.
        let report = cache.gc(&HashSet::new(), Duration::ZERO).unwrap();
        assert_eq!((report.envs, report.store_paths), (vec!["k2".to_string()], vec![B.to_string()]));
        assert!(store_names(&cache).is_empty());
    }

    /// gc's sweep waits for a pull (shared store lock) and pulls share the store.
    #[test]
    fn gc_waits_for_pulls_and_pulls_share() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = node(tmp.path());
        let root = cache.config.state_root.clone();
        let pull = StoreLock::shared(&root).unwrap();
        let second_pull = StoreLock::shared(&root).unwrap();
        // The pull fetched D but has not published its environment yet.
        let store = cache.store();
        std::fs::create_dir_all(store.dir.join("dddddddddddddddddddddddddddddddd-d-1.0")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let gc = std::thread::spawn(move || {
            let report = cache.gc(&HashSet::new(), Duration::ZERO).unwrap();
            tx.send(()).unwrap();
            (cache, report)
        });
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "gc ran while pulls held the store");
        drop(pull);
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "gc ran while one pull held the store");
        drop(second_pull);
        rx.recv_timeout(Duration::from_secs(10)).expect("gc runs once the pulls are done");
        let (cache, report) = gc.join().unwrap();
        assert_eq!(report.envs.len(), 2);
        assert!(store_names(&cache).is_empty(), "swept after the pull: {:?}", store_names(&cache));
        // And a pull waits for a gc.
        let gc_hold = StoreLock::exclusive(&root).unwrap();
        let f = File::options().write(true).open(root.join("store.lock")).unwrap();
        assert!(!FileExt::try_lock_shared(&f).unwrap(), "a pull may not start during gc");
        drop(gc_hold);
        assert!(FileExt::try_lock_shared(&f).unwrap());
    }
}
