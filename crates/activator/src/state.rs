//! The container's activation state directory (`/run/flox/activation`, a tmpfs the runtime
//! mounts mode 0700 for the container's user): the main process marks that it is starting,
//! then records what its activation changed ([`crate::attach`]) once the hook has finished;
//! exec processes read the record to attach.
//!
//! Files are written as a temporary file and renamed, so a reader sees a whole record or
//! none. Reading treats the directory as the workload's to tamper with (a root exec into a
//! container whose workload runs as another user must not take its environment from that
//! user): no symlinks, no FIFOs, regular files only, owned by this user or root, size-bounded.
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::attach::{self, EnvOp};

/// Holds the PID of the main process while it activates.
pub const STARTING_FILE: &str = "starting";
/// The record of the finished activation.
pub const RECORD_FILE: &str = "environment";
/// No real environment comes near this (execve's limit is a few MiB).
pub const MAX_RECORD_BYTES: u64 = 8 << 20;

/// What an exec process finds in the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The main process finished activating: attach with these mutations.
    Recorded(Vec<EnvOp>),
    /// The main process (this PID, in the container's PID namespace) is still activating.
    Starting(u32),
    /// Nothing yet.
    Nothing,
    /// Something is there but cannot be used (other owner, wrong type, bad format): why.
    Unusable(String),
}

#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// The directory if it exists; containers created before attach existed have none.
    pub fn open(path: &Path) -> Option<StateDir> {
        fs::symlink_metadata(path).ok().filter(|meta| meta.is_dir()).map(|_| StateDir { path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The main process begins activating.
    pub fn mark_starting(&self) -> io::Result<()> {
        self.write_atomically(STARTING_FILE, std::process::id().to_string().as_bytes())
    }

    /// The main process gives up recording (the record could not be written): execs must not
    /// wait for it.
    pub fn clear_starting(&self) -> io::Result<()> {
        fs::remove_file(self.path.join(STARTING_FILE))
    }

    /// The main process finished activating with these mutations.
    pub fn record(&self, ops: &[EnvOp]) -> io::Result<()> {
        self.write_atomically(RECORD_FILE, &attach::encode(ops))
    }

    fn write_atomically(&self, name: &str, contents: &[u8]) -> io::Result<()> {
        let temp = self.path.join(format!(".{name}.{}", std::process::id()));
        let _ = fs::remove_file(&temp);
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)
            .and_then(|mut file| file.write_all(contents))
            .and_then(|()| fs::rename(&temp, self.path.join(name)));
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written
    }

    /// What is there now (one look; [`crate::run`] decides whether to wait).
    pub fn look(&self) -> Found {
        match read_trusted(&self.path.join(RECORD_FILE), MAX_RECORD_BYTES) {
            Ok(Some(bytes)) => {
                return match attach::decode(&bytes) {
                    Ok(ops) => Found::Recorded(ops),
                    Err(err) => Found::Unusable(format!("the record is not valid: {}", err.0)),
                }
            }
            Ok(None) => {}
            Err(why) => return Found::Unusable(why),
        }
        match read_trusted(&self.path.join(STARTING_FILE), 64) {
            Ok(Some(bytes)) => match String::from_utf8_lossy(&bytes).trim().parse::<u32>() {
                Ok(pid) => Found::Starting(pid),
                Err(_) => Found::Unusable("the starting marker holds no process id".into()),
            },
            Ok(None) => Found::Nothing,
            Err(why) => Found::Unusable(why),
        }
    }
}

/// Whether a process with this PID exists in our PID namespace (the container's).
pub fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A file's contents if it exists; an error (as a reason) when it is not a regular file owned
/// by us or root, or is larger than `limit`.
fn read_trusted(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, String> {
    let file =
        fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY).open(path);
    let file: File = match file {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(format!("{}: {err}", path.display())),
    };
    let meta = file.metadata().map_err(|err| format!("{}: {err}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(format!("{} belongs to uid {}, not to this user ({euid})", path.display(), meta.uid()));
    }
    if meta.len() > limit {
        return Err(format!("{} is larger than {limit} bytes", path.display()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|err| format!("{}: {err}", path.display()))?;
    if bytes.len() as u64 > limit {
        return Err(format!("{} is larger than {limit} bytes", path.display()));
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_and_marker_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert!(StateDir::open(&dir.path().join("missing")).is_none());
        let state = StateDir::open(dir.path()).unwrap();
        assert_eq!(state.look(), Found::Nothing);
        state.mark_starting().unwrap();
        assert_eq!(state.look(), Found::Starting(std::process::id()));
        assert!(process_alive(std::process::id()));
        state.clear_starting().unwrap();
        assert_eq!(state.look(), Found::Nothing);
        state.mark_starting().unwrap();
        let ops = vec![EnvOp::Set("A".into(), "1".into())];
        state.record(&ops).unwrap();
        assert_eq!(state.look(), Found::Recorded(ops));
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(leftovers.len(), 2, "no temporary files left: {leftovers:?}");
    }

    #[test]
    fn symlinks_fifos_and_bad_records_are_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let target = dir.path().join("elsewhere");
        fs::write(&target, attach::encode(&[])).unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(RECORD_FILE)).unwrap();
        assert!(matches!(state.look(), Found::Unusable(_)), "symlink");
        fs::remove_file(dir.path().join(RECORD_FILE)).unwrap();

        let fifo = std::ffi::CString::new(dir.path().join(RECORD_FILE).to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(matches!(state.look(), Found::Unusable(_)), "a FIFO is refused without blocking");
        fs::remove_file(dir.path().join(RECORD_FILE)).unwrap();

        fs::write(dir.path().join(RECORD_FILE), b"garbage").unwrap();
        assert!(matches!(state.look(), Found::Unusable(_)));
        fs::write(dir.path().join(RECORD_FILE), vec![b'x'; MAX_RECORD_BYTES as usize + 1]).unwrap();
        assert!(matches!(state.look(), Found::Unusable(_)), "oversized");
    }
}
