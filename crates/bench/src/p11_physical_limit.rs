//! P11's physical limit: copying the environment's uncompressed closure from page cache into
//! fresh files on the node's disk (`cp -a`), the least any cold start has to do here.
//!
//! The copies take turns with the cold starts they are compared with, as every side of a
//! figure does: measured in one block before the images were built, the copy of flox/xlarge
//! fell into two groups (1.13–1.19 s and 1.60–1.80 s within one run, while the same copies on
//! a quiet disk of the same kind all took 1.10–1.24 s), so the figure depended on what the
//! machine did in the minute before rather than on the copy. Each turn starts like a cold
//! start's: the previous copy removed, a quiet moment and `sync` ([`settle`]), and the closure
//! read into page cache (untimed), so that every copy reads from memory whatever the turns
//! before it wrote.
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use imageless_e2e::oci_image;

use crate::p11_cold_vs_image::{remove_tree, settle};
use crate::stats::{ms, summarize};
use crate::timing::timed;

/// Timed copies per turn (a second or two each for flox/xlarge).
pub const COPIES_PER_TURN: usize = 2;

pub struct PhysicalLimit {
    sources: Vec<PathBuf>,
    scratch: PathBuf,
    copies: usize,
    pub samples: Vec<f64>,
    /// The closure's file bytes.
    pub bytes: u64,
}

impl PhysicalLimit {
    /// The copy of `closure` (`/nix/store/…` paths) held in `store`, into directories under
    /// `scratch`.
    pub fn new(store: &Path, closure: &[String], scratch: &Path) -> anyhow::Result<PhysicalLimit> {
        let sources: Vec<PathBuf> = closure.iter().map(|p| store.join(p.trim_start_matches("/nix/store/"))).collect();
        let bytes = sources.iter().map(|p| oci_image::tree_bytes(p)).sum::<anyhow::Result<u64>>()?;
        Ok(PhysicalLimit { sources, scratch: scratch.to_path_buf(), copies: 0, samples: Vec::new(), bytes })
    }

    /// One turn: [`COPIES_PER_TURN`] timed copies.
    pub async fn turn(&mut self) -> anyhow::Result<()> {
        for _ in 0..COPIES_PER_TURN {
            // The previous copy goes first, so that every copy runs with the same memory free
            // (flox/xlarge's copies kept side by side filled the page cache: the fourth and
            // fifth took 3.5 and 4.7 s against 1.2 s). On the bench's journaled disk a
            // deletion does not slow the files created after it (see xtask's bench_disk).
            self.remove_last();
            settle().await?;
            let read = read_trees(&self.sources)?;
            if read != self.bytes {
                anyhow::bail!("read {read} bytes of the closure, expected {}", self.bytes);
            }
            let dest = self.scratch.join(format!("copy-{}", self.copies));
            std::fs::create_dir_all(&dest)?;
            self.copies += 1;
            let mut cmd = Command::new("cp");
            cmd.arg("-a").args(&self.sources).arg(&dest);
            let (took, _) = timed(&mut cmd)?;
            self.samples.push(ms(took));
        }
        Ok(())
    }

    pub fn median(&self) -> f64 {
        summarize(&self.samples).map_or(f64::NAN, |s| s.median)
    }

    /// Removes the last copy.
    pub fn finish(&mut self) {
        self.remove_last();
    }

    fn remove_last(&self) {
        if self.copies > 0 {
            remove_tree(&self.scratch.join(format!("copy-{}", self.copies - 1)));
        }
    }
}

/// Reads every regular file under `roots` (the bench's own store: nothing here follows a
/// symlink), so the copy that follows finds them in page cache; returns the bytes read.
fn read_trees(roots: &[PathBuf]) -> anyhow::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    let mut todo: Vec<PathBuf> = roots.to_vec();
    while let Some(path) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                todo.push(entry?.path());
            }
        } else if meta.is_file() {
            let mut file = std::fs::File::open(&path)?;
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
        }
    }
    Ok(total)
}
