//! Publishing generations into an owner's floxmeta repository, in the Flox CLI's layout:
//! branch `<name>` holds `metadata.json` and `<N>/env/manifest.{toml,lock}`.
//!
//! Commits are made with git plumbing on the bare repository (a private index file, no work
//! tree), and the branch moves by compare-and-swap, so a concurrent `git http-backend` only
//! ever sees complete commits.
use std::path::{Path, PathBuf};

use imageless_core::lockfile::Lockfile;
use imageless_core::store_path::StorePath;
use imageless_core::system::System;
use serde_json::Value;

use crate::cache;
use crate::config::{FileLock, HubPaths};
use crate::error::HubServerError;
use crate::generations::{self, EventAuthor};
use crate::lock;
use crate::names::{validate_env_name, validate_owner};
use crate::process::{git, run, stdout_string};

const IDENTITY_NAME: &str = "Flox User";
const IDENTITY_EMAIL: &str = "floxuser@example.invalid";

/// What `hub publish` was asked to do.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub owner: String,
    pub name: String,
    /// Path of the lock (for error messages) and its bytes.
    pub lock_path: PathBuf,
    pub lock_bytes: Vec<u8>,
    /// The manifest.toml to store; None = render one from the lock's `manifest`.
    pub manifest_toml: Option<String>,
    pub private: bool,
    /// Copy the lock's store paths for this system into the cache (and sign them).
    pub copy_paths: bool,
}

/// Publishes a new generation; returns its number.
pub fn publish(paths: &HubPaths, req: &PublishRequest) -> Result<u64, HubServerError> {
    validate_owner(&req.owner)?;
    validate_env_name(&req.name)?;
    let lock_err = |message: String| HubServerError::Lockfile { path: req.lock_path.clone(), message };
    // The node's parser: a lock it would refuse is not published.
    let lock = Lockfile::parse(&req.lock_bytes).map_err(|e| lock_err(e.to_string()))?;
    let system = System::host().map_err(|e| lock_err(e.to_string()))?;
    let mut store_paths = lock.locked_store_paths(system).map_err(|e| lock_err(e.to_string()))?;
    // Custom-catalog packages (`pkg-path = "catalog/name"`) come from their catalog's store
    // (`hub publish-package`), never from the public cache, as with FloxHub.
    for custom in lock.custom_packages(system) {
        for p in &custom.store_paths {
            store_paths.remove(p);
        }
    }
    paths.load()?; // fail early, with the init hint, on an uninitialised root

    if req.copy_paths {
        let store_paths: Vec<StorePath> = store_paths.into_iter().collect();
        tracing::info!(
            count = store_paths.len(),
            %system,
            "copying store paths into the hub cache"
        );
        cache::copy_and_sign(&paths.cache(), &paths.secret_key(), &store_paths)?;
    }

    let manifest = req.manifest_toml.clone().or_else(|| lock::render_manifest_toml(&lock.manifest.raw));
    let repo = ensure_repo(paths, &req.owner)?;
    let _guard = FileLock::exclusive(&repo_lock_path(paths, &req.owner))?;
    let env = format!("{}/{}", req.owner, req.name);
    let head = match branch_head(&repo, &req.name)? {
        Some(h) => h,
        None => init_branch(&repo, &req.name)?,
    };
    let mut metadata = read_metadata(&repo, &head, &env)?;
    let (generation, summary) = generations::add_generation(&mut metadata, &event_author())
        .map_err(|message| HubServerError::Generations { env: env.clone(), message })?;
    let mut files = vec![(format!("{generation}/env/manifest.lock"), req.lock_bytes.clone())];
    if let Some(m) = manifest {
        files.push((format!("{generation}/env/manifest.toml"), m.into_bytes()));
    }
    files.push(("metadata.json".to_string(), metadata_bytes(&metadata)));
    let message = format!("Create generation {generation}\n\n{summary}");
    let commit = commit_files(&repo, Some(&head), &files, &message)?;
    move_branch(&repo, &req.name, &commit, Some(&head))?;

    if req.private {
        paths.update(|c| {
            c.private.insert(env.clone());
            Ok(())
        })?;
    }
    tracing::info!(env, generation, commit, "published generation");
    Ok(generation)
}

/// Makes generation `target` live again (a `switch_generation` history entry, no new files).
pub fn switch(paths: &HubPaths, owner: &str, name: &str, target: u64) -> Result<(), HubServerError> {
    validate_owner(owner)?;
    validate_env_name(name)?;
    let env = format!("{owner}/{name}");
    let repo = paths.floxmeta(owner);
    if !repo.exists() {
        return Err(HubServerError::Generations {
            env,
            message: format!("owner {owner:?} has no floxmeta repository"),
        });
    }
    let _guard = FileLock::exclusive(&repo_lock_path(paths, owner))?;
    let head = branch_head(&repo, name)?.ok_or_else(|| HubServerError::Generations {
        env: env.clone(),
        message: "environment does not exist".into(),
    })?;
    let mut metadata = read_metadata(&repo, &head, &env)?;
    let message = generations::switch_generation(&mut metadata, target, &event_author())
        .map_err(|message| HubServerError::Generations { env: env.clone(), message })?;
    let commit = commit_files(&repo, Some(&head), &[("metadata.json".into(), metadata_bytes(&metadata))], &message)?;
    move_branch(&repo, name, &commit, Some(&head))?;
    tracing::info!(env, generation = target, "switched generation");
    Ok(())
}

fn repo_lock_path(paths: &HubPaths, owner: &str) -> PathBuf {
    paths.git_root().join(owner).join("floxmeta.publish.lock")
}

fn ensure_repo(paths: &HubPaths, owner: &str) -> Result<PathBuf, HubServerError> {
    let repo = paths.floxmeta(owner);
    if repo.join("HEAD").exists() {
        return Ok(repo);
    }
    let owner_dir = paths.git_root().join(owner);
    std::fs::create_dir_all(&owner_dir).map_err(HubServerError::io(&owner_dir))?;
    let _guard = FileLock::exclusive(&repo_lock_path(paths, owner))?;
    if !repo.join("HEAD").exists() {
        let mut cmd = std::process::Command::new("git");
        crate::process::isolate_git(&mut cmd);
        run(cmd.args(["init", "--quiet", "--bare"]).arg(&repo), None)?;
    }
    Ok(repo)
}

fn branch_head(repo: &Path, name: &str) -> Result<Option<String>, HubServerError> {
    let out = run(git(repo).args(["for-each-ref", "--format=%(objectname)"]).arg(format!("refs/heads/{name}")), None)?;
    let head = stdout_string(out);
    Ok((!head.is_empty()).then_some(head))
}

/// The branch's first commit: only an empty-history metadata.json, as `flox` creates it.
fn init_branch(repo: &Path, name: &str) -> Result<String, HubServerError> {
    let files = [("metadata.json".to_string(), metadata_bytes(&generations::initial_metadata()))];
    let commit = commit_files(repo, None, &files, &format!("Initialize generations branch for environment '{name}'"))?;
    move_branch(repo, name, &commit, None)?;
    Ok(commit)
}

fn read_metadata(repo: &Path, commit: &str, env: &str) -> Result<Value, HubServerError> {
    let bytes = run(git(repo).args(["cat-file", "blob"]).arg(format!("{commit}:metadata.json")), None)?;
    generations::parse_metadata(&bytes).map_err(|message| HubServerError::Generations { env: env.to_owned(), message })
}

fn metadata_bytes(metadata: &Value) -> Vec<u8> {
    // Compact, as the Flox CLI writes it.
    serde_json::to_vec(metadata).expect("metadata serializes")
}

/// Removes the private index file however the commit ends.
struct TempIndex(PathBuf);
impl Drop for TempIndex {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes `files` over the tree of `parent` (or an empty tree) and commits it.
fn commit_files(
    repo: &Path,
    parent: Option<&str>,
    files: &[(String, Vec<u8>)],
    message: &str,
) -> Result<String, HubServerError> {
    let nonce = hex::encode(&crate::config::random_bytes()?[..8]);
    let index = TempIndex(repo.join(format!("imageless-index-{}-{nonce}", std::process::id())));
    let with_index = |cmd: &mut std::process::Command| {
        cmd.env("GIT_INDEX_FILE", &index.0);
    };
    let mut read_tree = git(repo);
    with_index(&mut read_tree);
    match parent {
        Some(p) => run(read_tree.arg("read-tree").arg(p), None)?,
        None => run(read_tree.args(["read-tree", "--empty"]), None)?,
    };
    for (path, bytes) in files {
        let blob = stdout_string(run(git(repo).args(["hash-object", "-w", "--stdin"]), Some(bytes))?);
        let mut add = git(repo);
        with_index(&mut add);
        run(add.args(["update-index", "--add", "--cacheinfo"]).arg(format!("100644,{blob},{path}")), None)?;
    }
    let mut write_tree = git(repo);
    with_index(&mut write_tree);
    let tree = stdout_string(run(write_tree.arg("write-tree"), None)?);
    let mut commit = git(repo);
    commit
        .env("GIT_AUTHOR_NAME", IDENTITY_NAME)
        .env("GIT_AUTHOR_EMAIL", IDENTITY_EMAIL)
        .env("GIT_COMMITTER_NAME", IDENTITY_NAME)
        .env("GIT_COMMITTER_EMAIL", IDENTITY_EMAIL)
        .args(["commit-tree", &tree]);
    if let Some(p) = parent {
        commit.args(["-p", p]);
    }
    commit.args(["-F", "-"]);
    Ok(stdout_string(run(&mut commit, Some(message.as_bytes()))?))
}

/// Compare-and-swap of `refs/heads/<name>`: fails if someone else moved it meanwhile.
fn move_branch(repo: &Path, name: &str, new: &str, old: Option<&str>) -> Result<(), HubServerError> {
    // An empty old value means "must not exist yet".
    run(git(repo).args(["update-ref", &format!("refs/heads/{name}"), new, old.unwrap_or("")]), None)?;
    Ok(())
}

fn event_author() -> EventAuthor {
    let author = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    EventAuthor { author, hostname: hostname(), timestamp: crate::now_unix() }
}

fn hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}
