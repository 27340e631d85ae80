//! Resolve: from `owner/name[:N]` + token to the generation and its `manifest.lock` (hub →
//! commit → lock), the first step of a pull. Rendering what the lock names is the cache's.
//!
//! - [`remote`]: the hub (the network edge, behind the [`Remote`] trait);
//! - [`repo`]: the owner's local floxmeta cache (reads, no network);
//! - [`record`]: what the hub said last, so that pinned, recently asked and warm environments
//!   need less or nothing of the above.
//!
//! The order of questions, cheapest first: a pinned public environment already fetched needs
//! no hub; an answer younger than `hub_answer_ttl_secs` for the same token is reused; otherwise
//! the hub is asked for the branch head (and the branch fetched when the cache lacks it). When
//! the hub is unreachable, the last answer stands in, but only for the token it was given to.
//! Then a warm environment (its rendered key is in the record and still on disk) needs no
//! repository read; a cold one reads `metadata.json` and `<generation>/env/manifest.lock`.
pub mod http;
pub mod record;
pub mod remote;
pub mod repo;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fs4::fs_std::FileExt;
use imageless_core::activation::Mode;
use imageless_core::env_ref::EnvRef;
use imageless_core::generations::{GenerationsError, GenerationsMetadata};
use imageless_core::system::System;
use imageless_core::token::Token;
use sha2::{Digest, Sha256};

pub use record::RefRecord;
pub use remote::{git_url_for_hub, GitRemote, Remote, RemoteError};
pub use repo::RepoError;

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("flox: {source}")]
    Generations {
        env: String,
        #[source]
        source: GenerationsError,
    },
    #[error("flox: {env} generation {generation} has no {path} on the hub")]
    MissingFile { env: String, generation: u32, path: String },
    #[error("flox: FloxHub token (secret floxhub-token) expired at {at}; create a new secret with `flox auth token`")]
    TokenExpired { at: String },
    #[error("flox: hub is unreachable and {env} was cached with a different FloxHub token (or with one when none is given now); refusing to serve a private environment")]
    OfflineTokenMismatch { env: String },
    #[error("flox: node cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ResolveError + '_ {
    move |source| ResolveError::Io { path: path.to_path_buf(), source }
}

/// What an anonymous pull of an environment would have to do, judged from its ref record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnonymousPull {
    /// Pinned, or answered within the TTL, and rendered under `key`: nothing to ask or fetch.
    Warm { key: String },
    /// Last fetched with a token: an anonymous pull cannot see it (the container's create,
    /// which has the token, will).
    Private,
    /// The hub must be asked, or something fetched or rendered.
    Needed,
}

/// What a pull renders: the generation, the key its rendering is stored under, and the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub generation: u32,
    /// The rendered environment's key (see [`render_key`]).
    pub key: String,
    /// The generation's `manifest.lock`; `None` on the warm path, where the record named `key`
    /// and the caller said it is rendered, so nothing was read.
    pub lock: Option<Vec<u8>>,
    /// For the user, e.g. the hub was unreachable and the last known generation is used.
    pub warning: Option<String>,
    /// When the generation was created (Unix seconds, `metadata.json`), read with the lock;
    /// `None` on the warm path.
    pub created: Option<u64>,
}

/// The key a lock renders under for one system and mode: the same lock, system and mode always
/// give the same environment, whichever environment or generation named it.
pub fn render_key(lock: &[u8], system: System, mode: Mode) -> String {
    let mut h = Sha256::new();
    // v2: closures live in the node store, views hold `store/` and `var/nix/db`.
    h.update(b"imageless-env-v2\0");
    h.update(lock);
    h.update(b"\0");
    h.update(system.as_str().as_bytes());
    h.update(b"\0");
    h.update(mode.as_str().as_bytes());
    hex::encode(&h.finalize()[..16])
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub fn format_unix(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// The resolve step of one node: its hub, its state root, how long a hub answer holds.
pub struct Resolver<'a> {
    pub remote: &'a dyn Remote,
    pub state_root: &'a Path,
    pub answer_ttl_secs: u64,
    pub system: System,
}

/// Where the commit to read came from.
enum Answer {
    /// The record on disk, unchanged (pinned fast path, a fresh answer, or offline).
    Kept,
    /// The hub answered now: the record is to be written even if nothing else changed.
    Fresh,
}

impl Resolver<'_> {
    fn repo(&self, owner: &str) -> PathBuf {
        self.state_root.join("meta").join(format!("{owner}.git"))
    }

    /// Resolves `env` for `mode`. `is_rendered(key)` says whether a rendered environment is on
    /// disk under `key`: then the record's key for the generation is trusted and no repository
    /// is read.
    pub fn resolve(
        &self,
        env: &EnvRef,
        mode: Mode,
        token: Option<&Token>,
        is_rendered: &dyn Fn(&str) -> bool,
    ) -> Result<Resolved, ResolveError> {
        if let Some(at) = token.and_then(|t| t.expired_at(now())) {
            return Err(ResolveError::TokenExpired { at: format_unix(at) });
        }
        let record_path = record::path(self.state_root, &env.owner, &env.name);
        let previous = record::read(&record_path);
        let (mut current, warning, answer) = self.commit(env, token, previous.as_ref())?;

        // Warm path: this commit was read before and its rendering is still there.
        let known = env.generation.or(current.live_generation);
        if let Some(generation) = known {
            if let Some(key) = current.keys.get(&RefRecord::slot(generation, mode)).filter(|k| is_rendered(k)) {
                let resolved = Resolved { generation, key: key.clone(), lock: None, warning, created: None };
                self.save(&record_path, previous.as_ref(), &current, &answer)?;
                return Ok(resolved);
            }
        }
        let read = self.read_lock(env, mode, &current.commit);
        if let Ok((resolved, live)) = &read {
            current.live_generation = *live;
            current.keys.insert(RefRecord::slot(resolved.generation, mode), resolved.key.clone());
        }
        // Once per resolve, also when the generation asked for does not exist: the commit was
        // fetched and is worth remembering either way.
        self.save(&record_path, previous.as_ref(), &current, &answer)?;
        read.map(|(resolved, _)| Resolved { warning, ..resolved })
    }

    fn save(
        &self,
        path: &Path,
        previous: Option<&RefRecord>,
        current: &RefRecord,
        answer: &Answer,
    ) -> Result<(), ResolveError> {
        if matches!(answer, Answer::Fresh) || previous != Some(current) {
            record::write(path, current).map_err(io(path))?;
        }
        Ok(())
    }

    /// Whether `record` answers for `env` without asking the hub: a pinned public environment
    /// (a record is written only after its commit was fetched, so its files are in the repo),
    /// or an answer younger than the TTL for the same token.
    fn needs_no_hub(&self, record: &RefRecord, env: &EnvRef, fingerprint: Option<&str>) -> bool {
        let pinned_public = env.generation.is_some() && fingerprint.is_none() && record.token_fingerprint.is_none();
        let fresh = record.token_fingerprint.as_deref() == fingerprint
            && now().saturating_sub(record.fetched_at) < self.answer_ttl_secs;
        pinned_public || fresh
    }

    /// What an anonymous pull of `env` would find now, from its ref record alone: no hub, no
    /// repository, no writes. A sandbox's background prefetch asks this first so that a warm
    /// start spends no process on it.
    pub fn anonymous_pull(&self, env: &EnvRef, mode: Mode, is_rendered: &dyn Fn(&str) -> bool) -> AnonymousPull {
        let Some(record) = record::read(&record::path(self.state_root, &env.owner, &env.name)) else {
            return AnonymousPull::Needed;
        };
        if record.token_fingerprint.is_some() {
            return AnonymousPull::Private;
        }
        if !self.needs_no_hub(&record, env, None) {
            return AnonymousPull::Needed;
        }
        let key = env
            .generation
            .or(record.live_generation)
            .and_then(|generation| record.keys.get(&RefRecord::slot(generation, mode)))
            .filter(|key| is_rendered(key));
        match key {
            Some(key) => AnonymousPull::Warm { key: key.clone() },
            None => AnonymousPull::Needed,
        }
    }

    /// Reads metadata.json and the generation's lock at `commit`; also returns the live generation.
    fn read_lock(&self, env: &EnvRef, mode: Mode, commit: &str) -> Result<(Resolved, Option<u32>), ResolveError> {
        let repo = self.repo(&env.owner);
        let full = env.full_name();
        let metadata = repo::read_file(&repo, commit, "metadata.json")?.ok_or_else(|| ResolveError::MissingFile {
            env: full.clone(),
            generation: 0,
            path: "metadata.json".into(),
        })?;
        let generations = |source| ResolveError::Generations { env: full.clone(), source };
        let metadata = GenerationsMetadata::parse(&metadata).map_err(generations)?;
        let generation = metadata.resolve(env.generation, &full).map_err(generations)?;
        let lock_path = format!("{generation}/env/manifest.lock");
        let lock = repo::read_file(&repo, commit, &lock_path)?.ok_or_else(|| ResolveError::MissingFile {
            env: full.clone(),
            generation,
            path: lock_path.clone(),
        })?;
        let key = render_key(&lock, self.system, mode);
        let created = metadata.created_at(generation);
        Ok((Resolved { generation, key, lock: Some(lock), warning: None, created }, metadata.live()))
    }

    /// The floxmeta commit to read. Asks the hub with the caller's token every time a token is
    /// involved (beyond the answer TTL), so a cached private environment is only served to
    /// tokens the hub accepts now; a pinned public environment already cached needs no hub.
    fn commit(
        &self,
        env: &EnvRef,
        token: Option<&Token>,
        previous: Option<&RefRecord>,
    ) -> Result<(RefRecord, Option<String>, Answer), ResolveError> {
        let repo = self.repo(&env.owner);
        let fingerprint = token.map(Token::fingerprint);
        if let Some(r) = previous.filter(|r| self.needs_no_hub(r, env, fingerprint.as_deref())) {
            return Ok((r.clone(), None, Answer::Kept));
        }
        if previous.is_none() {
            return self.first_fetch(env, token).map(|record| (record, None, Answer::Fresh));
        }
        match self.remote.remote_head(&env.owner, &env.name, token) {
            Ok(head) => {
                // A matching record means the commit's files are all there; an object alone may
                // be mid-fetch by another process.
                let fetched =
                    |r: Option<&RefRecord>| r.is_some_and(|r| r.commit == head) && repo::has_commit(&repo, &head);
                if fetched(previous) {
                    return Ok((RefRecord::at(&head, fingerprint, now(), previous), None, Answer::Fresh));
                }
                let lock_path = self.state_root.join("meta").join(format!("{}.lock", env.owner));
                let _guard = lock_file(&lock_path)?;
                // Another process may have fetched while we waited for the lock.
                let latest = record::read(&record::path(self.state_root, &env.owner, &env.name));
                if !fetched(latest.as_ref()) {
                    let got = self.fetch_locked(env, token)?;
                    if got != head {
                        // The branch moved between the two questions: read what was fetched.
                        tracing::info!(env = %env.full_name(), head, got, "branch moved while fetching");
                        return Ok((RefRecord::at(&got, fingerprint, now(), latest.as_ref()), None, Answer::Fresh));
                    }
                }
                Ok((RefRecord::at(&head, fingerprint, now(), latest.as_ref()), None, Answer::Fresh))
            }
            Err(e) if e.is_unreachable() => {
                let Some(r) = previous.filter(|r| repo::has_commit(&repo, &r.commit)) else {
                    return Err(e.into());
                };
                if r.token_fingerprint.is_some() && r.token_fingerprint != fingerprint {
                    return Err(ResolveError::OfflineTokenMismatch { env: env.full_name() });
                }
                let warning = env.generation.is_none().then(|| {
                    format!(
                        "{e}; using the last known live generation of {} (fetched {})",
                        env.full_name(),
                        format_unix(r.fetched_at)
                    )
                });
                if let Some(w) = &warning {
                    tracing::warn!("{w}");
                }
                Ok((r.clone(), warning, Answer::Kept))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The first resolve of `env` on this node (no record): fetch at once. The fetch's own
    /// ref listing answers what asking for the head first would (the head, or not found), so
    /// a cold start makes one exchange with the hub's git instead of two (each is a few
    /// requests). Under the owner's lock, a record that a concurrent first resolve wrote
    /// meanwhile is used as any record would be.
    fn first_fetch(&self, env: &EnvRef, token: Option<&Token>) -> Result<RefRecord, ResolveError> {
        let fingerprint = token.map(Token::fingerprint);
        let repo = self.repo(&env.owner);
        let lock_path = self.state_root.join("meta").join(format!("{}.lock", env.owner));
        let _guard = lock_file(&lock_path)?;
        let latest = record::read(&record::path(self.state_root, &env.owner, &env.name));
        if let Some(r) =
            latest.filter(|r| self.needs_no_hub(r, env, fingerprint.as_deref()) && repo::has_commit(&repo, &r.commit))
        {
            return Ok(r);
        }
        let got = self.fetch_locked(env, token)?;
        Ok(RefRecord::at(&got, fingerprint, now(), None))
    }

    /// Fetches `env`'s branch into the owner's repository; the caller holds the owner's lock.
    /// A refused fetch (unknown environment, token needed, hub down) into a repository that
    /// did not exist before leaves none behind.
    fn fetch_locked(&self, env: &EnvRef, token: Option<&Token>) -> Result<String, ResolveError> {
        let repo = self.repo(&env.owner);
        let stale = repo::clear_stale_locks(&repo)?;
        if stale > 0 {
            tracing::warn!(env = %env.full_name(), stale, "removed lock files a killed fetch left");
        }
        let existed = repo.join("HEAD").exists();
        self.remote.fetch(&repo, &env.owner, &env.name, token).map_err(|e| {
            if !existed {
                let _ = std::fs::remove_dir_all(&repo);
            }
            e.into()
        })
    }
}

fn lock_file(path: &Path) -> Result<std::fs::File, ResolveError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let f = std::fs::File::options().create(true).truncate(false).write(true).open(path).map_err(io(path))?;
    f.lock_exclusive().map_err(io(path))?;
    Ok(f)
}

#[cfg(test)]
mod tests;
