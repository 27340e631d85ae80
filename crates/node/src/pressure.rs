//! gc by disk pressure, as the kubelet's image gc: when the filesystem holding the node store
//! is at least `gc_high_threshold_percent` full (or the store holds more than
//! `gc_store_budget_bytes`), environments no container uses are removed, least recently used
//! first, with their views and the store paths nothing else references, until the filesystem
//! is at most `gc_low_threshold_percent` full (and the store under `low/high` of its budget).
//! Never an environment a container uses (the container states, re-read under each key's
//! lock) nor a pinned one (the agent's pre-pull list), never during a pull (the exclusive
//! store lock, as `imageless gc`).
//!
//! Also the check before a pull: [`room_for`] refuses a fetch whose NARs exceed
//! the free space, before anything is written, with one error naming both figures.
//!
//! The decisions ([`Thresholds`], [`lru_order`]) are pure; measuring ([`Usage::measure`])
//! and removing are the edges.
use std::collections::HashSet;
use std::path::Path;
use std::time::SystemTime;

use crate::cache::{NodeCache, NodeError};
use crate::config::NodeConfig;
use crate::gc::StoreLock;

/// The pressure policy of the node config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub high_percent: u8,
    pub low_percent: u8,
    pub budget_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("flox: node config: gc_low_threshold_percent ({low}) must be below gc_high_threshold_percent ({high}), and both at most 100")]
pub struct ThresholdError {
    pub low: u8,
    pub high: u8,
}

/// What the node store takes, and what its filesystem has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Size of the filesystem holding the store (bytes).
    pub fs_capacity: u64,
    /// Bytes an unprivileged writer may still use there (`f_bavail`, as the kubelet's "available").
    pub fs_available: u64,
    /// Paths in the node store (with a record).
    pub store_paths: u64,
    /// Their NAR sizes summed (what they take unpacked, near enough).
    pub store_bytes: u64,
}

impl Usage {
    /// Percent of the filesystem in use, as the kubelet computes it: 100 − available/capacity.
    pub fn used_percent(&self) -> f64 {
        if self.fs_capacity == 0 {
            return 0.0;
        }
        100.0 - (self.fs_available as f64 * 100.0 / self.fs_capacity as f64)
    }

    /// Measures the filesystem of `store_dir` (its nearest existing ancestor) and the records
    /// under `<state_root>/store-info`.
    pub fn measure(store_dir: &Path, state_root: &Path) -> std::io::Result<Usage> {
        let (fs_capacity, fs_available) = fs_space(store_dir)?;
        let (store_paths, store_bytes) = store_totals(store_dir, state_root);
        Ok(Usage { fs_capacity, fs_available, store_paths, store_bytes })
    }
}

/// Capacity and available bytes of the filesystem holding `dir` (its nearest existing ancestor).
fn fs_space(dir: &Path) -> std::io::Result<(u64, u64)> {
    let mut existing = dir;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    let st = rustix::fs::statvfs(existing).map_err(std::io::Error::from)?;
    Ok((st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize))
}

/// Paths in the store that have a record, and their NarSizes summed.
fn store_totals(store_dir: &Path, state_root: &Path) -> (u64, u64) {
    let Ok(entries) = std::fs::read_dir(state_root.join("store-info")) else { return (0, 0) };
    let (mut paths, mut bytes) = (0, 0);
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(hash) = name.strip_suffix(".narinfo") else { continue };
        if name.starts_with('.') {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path()) else { continue };
        let field = |key: &str| text.lines().find_map(|l| l.strip_prefix(key)).map(str::trim);
        let valid = field("StorePath: ")
            .and_then(|p| p.rsplit('/').next())
            .is_some_and(|base| base.starts_with(hash) && store_dir.join(base).exists());
        if valid {
            paths += 1;
            bytes += field("NarSize: ").and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    (paths, bytes)
}

impl Thresholds {
    pub fn from_config(config: &NodeConfig) -> Result<Thresholds, ThresholdError> {
        let (high, low) = (config.gc_high_threshold_percent, config.gc_low_threshold_percent);
        if low >= high || high > 100 {
            return Err(ThresholdError { low, high });
        }
        Ok(Thresholds { high_percent: high, low_percent: low, budget_bytes: config.gc_store_budget_bytes })
    }

    /// Whether a pressure gc should start.
    pub fn over_high(&self, u: &Usage) -> bool {
        u.used_percent() >= f64::from(self.high_percent) || self.budget_bytes.is_some_and(|b| u.store_bytes > b)
    }

    /// Whether a pressure gc may stop.
    pub fn under_low(&self, u: &Usage) -> bool {
        let budget_ok = match self.budget_bytes {
            Some(b) => u.store_bytes <= self.low_budget(b),
            None => true,
        };
        u.used_percent() <= f64::from(self.low_percent) && budget_ok
    }

    fn low_budget(&self, budget: u64) -> u64 {
        (u128::from(budget) * u128::from(self.low_percent) / u128::from(self.high_percent)) as u64
    }

    /// Bytes to free to get under the low threshold (as the kubelet's `amountToFree`).
    pub fn bytes_to_free(&self, u: &Usage) -> u64 {
        let fs = (u.fs_capacity as u128 * u128::from(100 - self.low_percent) / 100) as u64;
        let fs = fs.saturating_sub(u.fs_available);
        let budget = self.budget_bytes.map(|b| u.store_bytes.saturating_sub(self.low_budget(b))).unwrap_or(0);
        fs.max(budget)
    }
}

/// An environment gc may consider: its key and when it was last used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub key: String,
    pub last_used: SystemTime,
}

/// The keys to remove in order, least recently used first, leaving out `protected` (in use by
/// a container, or pinned). Ties go by key, so the order is the same on every run.
pub fn lru_order(mut candidates: Vec<Candidate>, protected: &HashSet<String>) -> Vec<String> {
    candidates.retain(|c| !protected.contains(&c.key));
    candidates.sort_by(|a, b| a.last_used.cmp(&b.last_used).then_with(|| a.key.cmp(&b.key)));
    candidates.into_iter().map(|c| c.key).collect()
}

/// What one pressure gc did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PressureReport {
    /// Whether the store was over a threshold (else nothing ran).
    pub ran: bool,
    pub before: Usage,
    pub after: Usage,
    /// Keys removed, in the order removed (least recently used first).
    pub envs: Vec<String>,
    pub store_paths: usize,
    /// Filesystem bytes freed (available after − before).
    pub bytes_freed: u64,
    /// Still over the low threshold once nothing more could go (everything left is in use).
    pub still_over: bool,
}

/// A pull whose NARs do not fit on the store's filesystem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "flox: pulling {env} needs {} ({needed} bytes, {paths} store paths) in the node store at {store}; its filesystem has {} ({free} bytes) free. Nothing was written. Free space there (the node agent's disk-pressure gc and `imageless gc` remove environments no container uses) and retry",
    human(*needed), human(*free)
)]
pub struct NoRoom {
    pub env: String,
    pub store: String,
    pub paths: usize,
    pub needed: u64,
    pub free: u64,
}

/// `1.5 MB`-style (SI units, as Kubernetes quantities print).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The pure check before a pull: `needed` NAR bytes against what is free.
pub fn fits(needed: u64, available: u64) -> bool {
    needed <= available
}

/// Refuses a fetch of `paths` paths of `needed` NAR bytes into `store_dir` that does not fit on
/// its filesystem (called before anything is downloaded). A filesystem that cannot be measured
/// lets the pull go on (it fails on ENOSPC as before, leaving nothing).
pub fn room_for(store_dir: &Path, env: &str, paths: usize, needed: u64) -> Result<(), NoRoom> {
    if needed == 0 {
        return Ok(());
    }
    let Ok((_, free)) = fs_space(store_dir) else { return Ok(()) };
    if fits(needed, free) {
        return Ok(());
    }
    Err(NoRoom { env: env.to_string(), store: store_dir.display().to_string(), paths, needed, free })
}

impl NodeCache {
    /// The store's usage now.
    pub fn usage(&self) -> Result<Usage, NodeError> {
        let dir = self.config.store_dir();
        Usage::measure(&dir, self.root()).map_err(|source| NodeError::Io { path: dir.display().to_string(), source })
    }

    /// Rendered environments and when each was last used (`last-used`, else the directory's mtime).
    pub fn env_candidates(&self) -> Vec<Candidate> {
        let Ok(entries) = std::fs::read_dir(self.envs_dir()) else { return vec![] };
        entries
            .flatten()
            .filter_map(|e| {
                let key = e.file_name().to_string_lossy().into_owned();
                if key.starts_with('.') {
                    return None;
                }
                let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
                let last_used = modified(&e.path().join("last-used")).or_else(|| modified(&e.path()))?;
                Some(Candidate { key, last_used })
            })
            .collect()
    }

    /// One pressure gc: nothing unless over the high threshold; then, under the exclusive store
    /// lock, first the store paths nothing references, then environments least recently used
    /// first (not in use, not `pinned`), each with its view and the paths only it referenced,
    /// until under the low threshold.
    pub fn gc_pressure(&self, pinned: &HashSet<String>) -> Result<PressureReport, NodeError> {
        let thresholds = Thresholds::from_config(&self.config)
            .map_err(|e| NodeError::Io { path: "gc thresholds".into(), source: std::io::Error::other(e) })?;
        let before = self.usage()?;
        let mut report = PressureReport { before, after: before, ..PressureReport::default() };
        if !thresholds.over_high(&before) {
            return Ok(report);
        }
        report.ran = true;
        tracing::info!(
            used_percent = format!("{:.1}", before.used_percent()),
            store_bytes = before.store_bytes,
            to_free = thresholds.bytes_to_free(&before),
            "disk pressure: gc starts"
        );
        let _store = StoreLock::exclusive(self.root())?;
        report.store_paths += self.sweep_store()?.len();
        let mut usage = self.usage()?;
        let mut protected = crate::containers::keys_in_use(self.root());
        protected.extend(pinned.iter().cloned());
        for key in lru_order(self.env_candidates(), &protected) {
            if thresholds.under_low(&usage) {
                break;
            }
            if !self.remove_env_if_unused(&key)? {
                continue;
            }
            report.store_paths += self.sweep_store()?.len();
            tracing::info!(key, "disk pressure: least recently used environment removed");
            report.envs.push(key);
            usage = self.usage()?;
        }
        report.after = usage;
        report.still_over = !thresholds.under_low(&usage);
        report.bytes_freed = usage.fs_available.saturating_sub(before.fs_available);
        tracing::info!(
            envs = report.envs.len(),
            paths = report.store_paths,
            bytes_freed = report.bytes_freed,
            used_percent = format!("{:.1}", usage.used_percent()),
            still_over = report.still_over,
            "disk pressure: gc done"
        );
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn usage(capacity: u64, available: u64, store_bytes: u64) -> Usage {
        Usage { fs_capacity: capacity, fs_available: available, store_paths: 1, store_bytes }
    }

    const T: Thresholds = Thresholds { high_percent: 85, low_percent: 80, budget_bytes: None };

    #[test]
    fn thresholds_as_the_kubelets() {
        assert!(!T.over_high(&usage(100, 16, 0)), "84 % used");
        assert!(T.over_high(&usage(100, 15, 0)), "85 % used");
        assert!(!T.under_low(&usage(100, 19, 0)));
        assert!(T.under_low(&usage(100, 20, 0)));
        // amountToFree = capacity × (100 − low) / 100 − available.
        assert_eq!(T.bytes_to_free(&usage(1000, 100, 0)), 100);
        let config = NodeConfig::default();
        assert_eq!(Thresholds::from_config(&config).unwrap(), T);
        let bad = NodeConfig { gc_low_threshold_percent: 90, ..NodeConfig::default() };
        let e = Thresholds::from_config(&bad).unwrap_err().to_string();
        assert!(e.contains("gc_low_threshold_percent (90)") && e.contains("(85)"), "{e}");
    }

    #[test]
    fn a_byte_budget_triggers_and_keeps_the_same_hysteresis() {
        let t = Thresholds { budget_bytes: Some(850), ..T };
        assert!(!t.over_high(&usage(10_000, 9_000, 850)));
        assert!(t.over_high(&usage(10_000, 9_000, 851)), "over the budget on an empty disk");
        assert!(!t.under_low(&usage(10_000, 9_000, 801)), "low mark = 850 × 80/85 = 800");
        assert!(t.under_low(&usage(10_000, 9_000, 800)));
        assert_eq!(t.bytes_to_free(&usage(10_000, 9_000, 900)), 100);
    }

    #[test]
    fn least_recently_used_first_never_a_protected_one() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let at = |key: &str, s: u64| Candidate { key: key.into(), last_used: t0 + Duration::from_secs(s) };
        let candidates = vec![at("new", 30), at("old", 10), at("in-use", 0), at("mid", 20), at("also-old", 10)];
        let protected: HashSet<String> = ["in-use".to_string()].into();
        assert_eq!(lru_order(candidates, &protected), ["also-old", "old", "mid", "new"]);
    }

    /// Three environments with a path each (NarSize 100) and a shared one; a budget of 250
    /// bytes with high 100 % / low 99 % (so only the budget presses): the least recently used
    /// unused ones go until the store holds at most 250 × 99/100, the one in use stays.
    #[test]
    fn pressure_gc_removes_least_recently_used_first_and_never_one_in_use() {
        use crate::containers::ContainerState;
        use crate::fetch::narinfo::{NarHash, NarInfo};
        use imageless_core::store_path::StorePath;
        let tmp = tempfile::tempdir().unwrap();
        let config = NodeConfig {
            state_root: tmp.path().join("state"),
            gc_high_threshold_percent: 100,
            gc_low_threshold_percent: 99,
            gc_store_budget_bytes: Some(250),
            ..NodeConfig::default()
        };
        let cache = NodeCache::new(config, imageless_core::system::System::X86_64Linux);
        let store = cache.store();
        store.create_dirs().unwrap();
        let name = |c: char| format!("{}-{c}-1.0", c.to_string().repeat(32));
        for c in ['a', 'b', 'c', 'd'] {
            let unpacked = store.dir.join(format!(".tmp-{c}"));
            std::fs::create_dir_all(&unpacked).unwrap();
            let info = NarInfo {
                store_path: StorePath::parse(&format!("/nix/store/{}", name(c))).unwrap(),
                url: "nar/x.nar".into(),
                compression: "none".into(),
                nar_hash: NarHash([0; 32]),
                nar_size: if c == 'd' { 10 } else { 100 },
                references: vec![],
                deriver: None,
                sigs: vec![],
            };
            store.publish(&info, &unpacked).unwrap();
        }
        let t0 = SystemTime::now() - Duration::from_secs(3600);
        // k-a oldest and in use, then k-b, then k-c; all share d.
        for (i, c) in ['a', 'b', 'c'].iter().enumerate() {
            let dir = cache.envs_dir().join(format!("k-{c}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("closure"), format!("/nix/store/{}\n/nix/store/{}\n", name(*c), name('d')))
                .unwrap();
            let f = std::fs::File::create(dir.join("last-used")).unwrap();
            f.set_modified(t0 + Duration::from_secs(60 * i as u64)).unwrap();
        }
        let state = ContainerState {
            id: "c1".into(),
            env_key: "k-a".into(),
            env_dir: String::new(),
            activator: String::new(),
            description: String::new(),
            disable_metrics: false,
            skip_exec: false,
            overlay_dir: None,
            attach: true,
        };
        state.save(&cache.config.state_root).unwrap();
        assert_eq!(cache.usage().unwrap().store_bytes, 310);
        let report = cache.gc_pressure(&HashSet::new()).unwrap();
        assert!(report.ran && !report.still_over, "{report:?}");
        assert_eq!(report.envs, ["k-b"], "least recently used unused first; one is enough: 210 ≤ 247");
        assert_eq!((report.before.store_bytes, report.after.store_bytes), (310, 210));
        // Nothing over: nothing runs.
        assert!(!cache.gc_pressure(&HashSet::new()).unwrap().ran);
        // A pinned environment stays like one in use: with k-c pinned and k-a in use nothing can go.
        let tight = NodeCache::new(
            NodeConfig { gc_store_budget_bytes: Some(100), ..cache.config.clone() },
            imageless_core::system::System::X86_64Linux,
        );
        let report = tight.gc_pressure(&["k-c".to_string()].into()).unwrap();
        assert!(report.ran && report.still_over && report.envs.is_empty(), "{report:?}");
        assert!(cache.envs_dir().join("k-a").is_dir() && cache.envs_dir().join("k-c").is_dir());
    }

    #[test]
    fn the_no_room_error_names_needed_and_free_bytes() {
        assert!(fits(10, 10) && !fits(11, 10));
        let e = NoRoom { env: "flox/large".into(), store: "/s".into(), paths: 3, needed: 246_123_456, free: 60_234 };
        let text = e.to_string();
        assert!(text.contains("needs 246.1 MB (246123456 bytes, 3 store paths)"), "{text}");
        assert!(text.contains("has 60.2 kB (60234 bytes) free"), "{text}");
        assert!(text.starts_with("flox: pulling flox/large"), "{text}");
    }
}
