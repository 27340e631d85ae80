//! The owner's local floxmeta cache (`<state_root>/meta/<owner>.git`, bare, shallow): reads of
//! files at a commit, with gix in-process. No network here: what is not in the repository is
//! simply not there.
//!
//! The repository is opened isolated (no system or global git config, no environment), so
//! nothing outside the state root changes how it is read.
use std::path::{Path, PathBuf};

/// The largest `metadata.json` or `manifest.lock` read from the cache: both are a few KiB;
/// anything past this is not a Flox file and is refused before it is loaded.
pub const MAX_FILE: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("flox: floxmeta cache {path}: cannot {action}: {source}")]
    Git {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: gix::Error,
    },
    #[error("flox: floxmeta cache {path}: {io_action}: {source}")]
    Io {
        path: PathBuf,
        io_action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "flox: floxmeta cache {path}: {file} at {commit} is {size} bytes, more than the {max} a Flox file may have"
    )]
    TooLarge { path: PathBuf, file: String, commit: String, size: u64, max: u64 },
}

fn git<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(gix::Error) -> RepoError + 'a {
    move |source| RepoError::Git { path: path.to_path_buf(), action, source }
}

fn open(path: &Path) -> Result<gix::Repository, RepoError> {
    gix::open_opts(path, gix::open::Options::isolated()).map_err(git(path, "open the repository"))
}

/// Opens the bare cache repository at `path`, creating it first if it does not exist.
///
/// Created under a temporary name and renamed into place, so an init cut short (a full disk, a
/// kill) never leaves a repository that looks usable but is not.
pub fn open_or_init(path: &Path) -> Result<gix::Repository, RepoError> {
    if !path.join("HEAD").exists() {
        init_bare(path)?;
    }
    open(path)
}

fn init_bare(path: &Path) -> Result<(), RepoError> {
    let io = |io_action: &'static str| move |source| RepoError::Io { path: path.to_path_buf(), io_action, source };
    let parent = path.parent().expect("repo has a parent");
    std::fs::create_dir_all(parent).map_err(io("create its directory"))?;
    let file_name = path.file_name().expect("repo has a name").to_string_lossy();
    let tmp = parent.join(format!(".{file_name}.init-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let created = gix::create::into(&tmp, gix::create::Kind::Bare, gix::create::Options::default());
    if let Err(e) = created {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(git(path, "create the repository")(e));
    }
    // A broken leftover (no HEAD) from an older version goes; a concurrent init that won the
    // race (the rename fails because the repo exists and is not empty) is as good as ours.
    if path.exists() && !path.join("HEAD").exists() {
        let _ = std::fs::remove_dir_all(path);
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_dir_all(&tmp);
        if !path.join("HEAD").exists() {
            return Err(io("move the new repository into place")(e));
        }
    }
    Ok(())
}

/// Removes git lock files (`shallow.lock`, `packed-refs.lock`, `refs/**/*.lock`) a killed
/// fetch left behind; gix would refuse every later fetch while one exists.
///
/// Call only while holding the owner's fetch lock: every writer of the repository holds it, so
/// a `*.lock` seen then belongs to a process that is gone. `objects/` is skipped: gix writes
/// packs through temporary files there, never lock files, and it is the large part of the tree.
/// The repository is node state under the state root, never a path a pod can influence.
pub fn clear_stale_locks(path: &Path) -> Result<usize, RepoError> {
    fn walk(dir: &Path, top: bool, removed: &mut usize) -> std::io::Result<()> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                if !(top && name == "objects") {
                    walk(&entry.path(), false, removed)?;
                }
            } else if name.to_string_lossy().ends_with(".lock") {
                std::fs::remove_file(entry.path())?;
                *removed += 1;
            }
        }
        Ok(())
    }
    let mut removed = 0;
    walk(path, true, &mut removed).map_err(|source| RepoError::Io {
        path: path.to_path_buf(),
        io_action: "remove stale lock files",
        source,
    })?;
    Ok(removed)
}

fn object_id(path: &Path, commit: &str) -> Result<gix::ObjectId, RepoError> {
    gix::ObjectId::from_hex(commit.as_bytes()).map_err(|e| git(path, "parse a commit id")(gix::Error::from_error(e)))
}

/// Whether the cache has `commit` (then no fetch is needed).
pub fn has_commit(path: &Path, commit: &str) -> bool {
    let Ok(repo) = open(path) else { return false };
    let Ok(id) = object_id(path, commit) else { return false };
    let found = repo.find_commit(id).is_ok();
    found
}

/// The commit `refs/heads/<name>` points at, if the branch exists.
pub fn branch_head(path: &Path, name: &str) -> Result<Option<String>, RepoError> {
    let repo = open(path)?;
    let reference =
        repo.try_find_reference(format!("refs/heads/{name}").as_str()).map_err(git(path, "read the branch"))?;
    Ok(reference.and_then(|r| r.try_id().map(|id| id.to_string())))
}

/// Reads `<commit>:<file>`; `None` when the commit has no such file.
pub fn read_file(path: &Path, commit: &str, file: &str) -> Result<Option<Vec<u8>>, RepoError> {
    let repo = open(path)?;
    let id = object_id(path, commit)?;
    let tree = repo.find_commit(id).and_then(|c| c.tree()).map_err(git(path, "read the commit"))?;
    let Some(entry) = tree.lookup_entry_by_path(file).map_err(git(path, "read the commit's tree"))? else {
        return Ok(None);
    };
    if !entry.mode().is_blob() {
        return Ok(None);
    }
    let size = repo.find_header(entry.object_id()).map_err(git(path, "read a file"))?.size();
    if size > MAX_FILE {
        return Err(RepoError::TooLarge {
            path: path.to_path_buf(),
            file: file.into(),
            commit: commit.into(),
            size,
            max: MAX_FILE,
        });
    }
    let blob = repo.find_blob(entry.object_id()).map_err(git(path, "read a file"))?;
    Ok(Some(blob.data.clone()))
}
