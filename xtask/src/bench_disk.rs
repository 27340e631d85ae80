//! The disk the benchmark's node runs on: a fresh ext4 with its journal (as distributions and
//! cloud images format a node's disk), loop-mounted from a sparse file, holding the bench's
//! temp dirs (node state and store, containerd's root, the registry, the physical-limit
//! copies) for every side alike.
//!
//! Why not the machine's own disk: a development VM's root file system may be ext4 without a
//! journal, where creating a file within a minute of deleting many costs several times more
//! (the inode allocator then skips every recently freed inode, `recently_deleted` in
//! fs/ext4/ialloc.c). Every cold turn follows the deletion of the previous turn's files, so
//! there each figure depended on what was deleted how long before it (a `cp -a` of flox/large
//! took 2.0–3.0 s a few seconds after a deletion and 0.27–0.39 s after a quiet minute). A
//! node that is cold because it is new has deleted nothing; a journaled ext4 shows that at
//! every turn. `IMAGELESS_BENCH_DISK=host` runs on the machine's temp dir instead.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Sparse: only what the run writes takes space (a few GB with flox/xlarge's images).
const SIZE: &str = "48G";

pub struct BenchDisk {
    image: PathBuf,
    mount: PathBuf,
}

impl BenchDisk {
    /// `None` when the bench should use the machine's temp dir.
    pub fn prepare() -> Result<Option<BenchDisk>> {
        if std::env::var("IMAGELESS_BENCH_DISK").is_ok_and(|v| v == "host") {
            return Ok(None);
        }
        let base = Path::new("/var/cache/imageless");
        let disk = BenchDisk { image: base.join("bench-disk.img"), mount: base.join("bench-disk") };
        // A previous run killed before it cleaned up: start from a fresh file system anyway.
        disk.unmount();
        std::fs::create_dir_all(&disk.mount).with_context(|| format!("creating {}", disk.mount.display()))?;
        let _ = std::fs::remove_file(&disk.image);
        sh(Command::new("truncate").args(["-s", SIZE]).arg(&disk.image))?;
        // A journal, as mkfs.ext4 makes one unless told not to. Inode tables and journal
        // written now rather than by the kernel's lazy init after mounting, which would write
        // for minutes underneath the first figures (a physical-limit copy took 0.88 s instead
        // of 0.33 s while it ran). One inode per 32 KiB: 1.5 M, many times what a run creates.
        sh(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-i", "32768", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(&disk.image))?;
        // Direct I/O from the loop device to its file: otherwise every byte written is cached
        // twice (the bench disk's page and the file's), and a run that writes gigabytes
        // (flox/xlarge's copies) slows down under its own memory pressure (three 1.6 GB
        // copies in a row took 1.1, 2.5 and 4.7 s).
        let out = Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(&disk.image)
            .output()
            .context("running losetup")?;
        if !out.status.success() {
            bail!("losetup failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let device = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if let Err(e) = sh(Command::new("mount").arg(&device).arg(&disk.mount)) {
            let _ = Command::new("losetup").arg("-d").arg(&device).status();
            return Err(e);
        }
        eprintln!("xtask: bench disk: fresh ext4 (journaled) at {}", disk.mount.display());
        Ok(Some(disk))
    }

    /// The bench's TMPDIR.
    pub fn dir(&self) -> &Path {
        &self.mount
    }

    fn unmount(&self) {
        let mounted = std::fs::read_to_string("/proc/self/mounts")
            .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(1) == self.mount.to_str()));
        if mounted {
            // Lazy: a shim of the run that has not exited yet must not keep the disk. The loop
            // device goes with the last user (autoclear, set by mount on a loop device it did
            // not set up too: detached explicitly below).
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
        // Loop devices still backed by the image (an earlier run's, or this one's).
        if let Ok(out) = Command::new("losetup").args(["-j"]).arg(&self.image).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(device) = line.split(':').next() {
                    let _ = Command::new("losetup").arg("-d").arg(device).status();
                }
            }
        }
    }
}

impl Drop for BenchDisk {
    fn drop(&mut self) {
        self.unmount();
        let _ = std::fs::remove_file(&self.image);
    }
}

fn sh(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
