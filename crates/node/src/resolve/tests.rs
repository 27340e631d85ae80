//! Resolve against a fake [`Remote`] that writes real commits into the real local cache: the
//! order of questions (pinned, TTL, online, offline), the token checks, and the record.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::*;

/// Two generations, live is `live`; each lock is just a distinct byte string.
fn floxmeta(live: u32) -> Vec<(String, Vec<u8>)> {
    let mut history = vec![];
    for g in 1..=2u32 {
        history.push(format!(
            r#"{{"kind": "import", "author": "a", "hostname": "h", "command": ["flox", "push"], "timestamp": {}, "current_generation": "{g}"}}"#,
            1750000000 + g
        ));
    }
    history.push(format!(
        r#"{{"kind": "switch_generation", "author": "a", "hostname": "h", "command": ["flox"], "timestamp": 1750009999, "current_generation": "{live}"}}"#
    ));
    let metadata = format!(r#"{{"version": 2, "total_generations": 2, "history": [{}]}}"#, history.join(","));
    vec![
        ("metadata.json".into(), metadata.into_bytes()),
        ("1/env/manifest.lock".into(), b"lock of generation 1".to_vec()),
        ("2/env/manifest.lock".into(), b"lock of generation 2".to_vec()),
    ]
}

/// Writes `files` as one commit (fixed author and time, so the same files give the same id)
/// on `refs/heads/<branch>` of the bare repository at `path`; returns the commit id.
fn commit_into(path: &Path, branch: &str, files: &[(String, Vec<u8>)]) -> String {
    use gix::objs::tree::{Entry, EntryKind};
    let repo = repo::open_or_init(path).unwrap();
    // Build nested trees: path components → entries, sorted as git wants them.
    type Files<'a> = Vec<(Vec<&'a str>, &'a [u8])>;
    fn write_tree(repo: &gix::Repository, files: &[(Vec<&str>, &[u8])]) -> gix::ObjectId {
        let mut entries: Vec<Entry> = Vec::new();
        let mut dirs: std::collections::BTreeMap<&str, Files> = Default::default();
        for (parts, data) in files {
            if parts.len() == 1 {
                let oid = repo.write_blob(data).unwrap().detach();
                entries.push(Entry { mode: EntryKind::Blob.into(), filename: parts[0].into(), oid });
            } else {
                dirs.entry(parts[0]).or_default().push((parts[1..].to_vec(), data));
            }
        }
        for (name, sub) in dirs {
            let oid = write_tree(repo, &sub);
            entries.push(Entry { mode: EntryKind::Tree.into(), filename: name.into(), oid });
        }
        entries.sort();
        repo.write_object(gix::objs::Tree { entries }).unwrap().detach()
    }
    let split: Files = files.iter().map(|(p, d)| (p.split('/').collect(), d.as_slice())).collect();
    let tree = write_tree(&repo, &split);
    let who = gix::actor::Signature {
        name: "hub".into(),
        email: "hub@example.invalid".into(),
        time: gix::date::Time { seconds: 1750000000, offset: 0 },
    };
    let commit = gix::objs::Commit {
        tree,
        parents: Default::default(),
        author: who.clone(),
        committer: who,
        encoding: None,
        message: "generation".into(),
        extra_headers: vec![],
    };
    let id = repo.write_object(commit).unwrap().detach();
    repo.reference(format!("refs/heads/{branch}").as_str(), id, gix::refs::transaction::PreviousValue::Any, "fetch")
        .unwrap();
    id.to_string()
}

/// A hub in memory: one environment, whose files the test changes; online or not; an
/// environment that is private to one token when `private_to` is set.
struct FakeHub {
    origin: tempfile::TempDir,
    files: Mutex<Vec<(String, Vec<u8>)>>,
    online: AtomicBool,
    private_to: Option<String>,
    heads: AtomicUsize,
    fetches: AtomicUsize,
}

impl FakeHub {
    fn new(private_to: Option<&Token>) -> FakeHub {
        FakeHub {
            origin: tempfile::tempdir().unwrap(),
            files: Mutex::new(floxmeta(2)),
            online: AtomicBool::new(true),
            private_to: private_to.map(Token::fingerprint),
            heads: AtomicUsize::new(0),
            fetches: AtomicUsize::new(0),
        }
    }

    fn check(&self, owner: &str, name: &str, token: Option<&Token>) -> Result<(), RemoteError> {
        if !self.online.load(Ordering::SeqCst) {
            return Err(RemoteError::Unreachable {
                hub: self.url().into(),
                reason: "cannot connect".into(),
                source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into(),
            });
        }
        if self.private_to.is_some() && self.private_to != token.map(Token::fingerprint) {
            return Err(RemoteError::EnvironmentNotFound {
                env: format!("{owner}/{name}"),
                owner: owner.into(),
                name: name.into(),
                hub: self.url().into(),
                hint: "",
            });
        }
        Ok(())
    }

    fn calls(&self) -> (usize, usize) {
        (self.heads.load(Ordering::SeqCst), self.fetches.load(Ordering::SeqCst))
    }
}

impl Remote for FakeHub {
    fn url(&self) -> &str {
        "http://hub.invalid/git"
    }

    fn remote_head(&self, owner: &str, name: &str, token: Option<&Token>) -> Result<String, RemoteError> {
        self.heads.fetch_add(1, Ordering::SeqCst);
        self.check(owner, name, token)?;
        Ok(commit_into(&self.origin.path().join("origin.git"), name, &self.files.lock().unwrap()))
    }

    fn fetch(&self, repo: &Path, owner: &str, name: &str, token: Option<&Token>) -> Result<String, RemoteError> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        self.check(owner, name, token)?;
        Ok(commit_into(repo, name, &self.files.lock().unwrap()))
    }
}

struct Setup {
    state: tempfile::TempDir,
    hub: FakeHub,
    ttl: u64,
}

impl Setup {
    fn new(private_to: Option<&Token>) -> Setup {
        Setup { state: tempfile::tempdir().unwrap(), hub: FakeHub::new(private_to), ttl: 0 }
    }

    fn resolve(&self, env: &str, token: Option<&Token>) -> Result<Resolved, ResolveError> {
        self.resolve_rendered(env, token, &|_| false)
    }

    fn resolve_rendered(
        &self,
        env: &str,
        token: Option<&Token>,
        is_rendered: &dyn Fn(&str) -> bool,
    ) -> Result<Resolved, ResolveError> {
        let resolver = Resolver {
            remote: &self.hub,
            state_root: self.state.path(),
            answer_ttl_secs: self.ttl,
            system: System::X86_64Linux,
        };
        resolver.resolve(&EnvRef::parse(env).unwrap(), Mode::Run, token, is_rendered)
    }

    fn record(&self) -> RefRecord {
        record::read(&record::path(self.state.path(), "acme", "app")).expect("a record")
    }
}

fn token(name: &str) -> Token {
    Token::parse(&format!("flox_pat_{name}")).unwrap()
}

#[test]
fn cold_resolve_fetches_once_reads_the_live_lock_and_writes_the_record_once() {
    let s = Setup::new(None);
    record::WRITES.with(|w| w.set(0));
    let r = s.resolve("acme/app", None).unwrap();
    assert_eq!(r.generation, 2);
    assert_eq!(r.lock.as_deref(), Some(&b"lock of generation 2"[..]));
    assert_eq!(r.key, render_key(b"lock of generation 2", System::X86_64Linux, Mode::Run));
    assert_eq!(r.warning, None);
    assert_eq!(s.hub.calls(), (0, 1), "a first resolve fetches without asking for the head first");
    assert_eq!(record::WRITES.with(|w| w.get()), 1, "one record write per resolve");
    let rec = s.record();
    assert_eq!(rec.live_generation, Some(2));
    assert_eq!(rec.token_fingerprint, None);
    assert_eq!(rec.keys.get("2:run"), Some(&r.key));

    // Asked again (TTL 0): the hub is asked, nothing fetched, the record refreshed once.
    record::WRITES.with(|w| w.set(0));
    let again = s.resolve("acme/app", None).unwrap();
    assert_eq!(again, r);
    assert_eq!(s.hub.calls(), (1, 1), "same head: no second fetch");
    assert_eq!(record::WRITES.with(|w| w.get()), 1);
}

#[test]
fn lock_files_a_killed_fetch_left_are_cleared_before_the_next_fetch() {
    let s = Setup::new(None);
    let repo = s.state.path().join("meta/acme.git");
    repo::open_or_init(&repo).unwrap();
    std::fs::write(repo.join("shallow.lock"), b"").unwrap();
    std::fs::create_dir_all(repo.join("refs/heads")).unwrap();
    std::fs::write(repo.join("refs/heads/app.lock"), b"").unwrap();
    std::fs::create_dir_all(repo.join("objects/pack")).unwrap();
    std::fs::write(repo.join("objects/pack/keep.lock"), b"").unwrap();
    s.resolve("acme/app", None).unwrap();
    assert!(!repo.join("shallow.lock").exists());
    assert!(!repo.join("refs/heads/app.lock").exists());
    assert!(repo.join("objects/pack/keep.lock").exists(), "objects/ is not walked");
}

#[test]
fn a_new_commit_on_the_hub_is_fetched_and_its_live_generation_used() {
    let s = Setup::new(None);
    assert_eq!(s.resolve("acme/app", None).unwrap().generation, 2);
    *s.hub.files.lock().unwrap() = floxmeta(1);
    let r = s.resolve("acme/app", None).unwrap();
    assert_eq!((r.generation, r.lock.as_deref()), (1, Some(&b"lock of generation 1"[..])));
    assert_eq!(s.hub.calls(), (1, 2));
    assert_eq!(s.record().live_generation, Some(1));
}

#[test]
fn pinned_public_environment_needs_no_hub_once_fetched() {
    let s = Setup::new(None);
    s.resolve("acme/app:1", None).unwrap();
    s.hub.online.store(false, Ordering::SeqCst);
    let r = s.resolve("acme/app:1", None).unwrap();
    assert_eq!((r.generation, r.warning.as_deref()), (1, None));
    assert_eq!(s.hub.calls(), (0, 1), "the pinned fast path asks nothing");
    // Another pinned generation of the same commit: still no hub, read from the cache.
    let r = s.resolve("acme/app:2", None).unwrap();
    assert_eq!(r.lock.as_deref(), Some(&b"lock of generation 2"[..]));
    assert_eq!(s.hub.calls(), (0, 1));
    let keys: Vec<String> = s.record().keys.into_keys().collect();
    assert_eq!(keys, ["1:run", "2:run"]);
}

#[test]
fn an_answer_younger_than_the_ttl_is_reused_for_the_same_token_only() {
    let alice = token("alice");
    let mut s = Setup::new(Some(&alice));
    s.ttl = 3600;
    s.resolve("acme/app", Some(&alice)).unwrap();
    s.resolve("acme/app", Some(&alice)).unwrap();
    assert_eq!(s.hub.calls(), (0, 1), "reused within the TTL");
    // Another token is never served from the answer given to alice: the hub is asked.
    let err = s.resolve("acme/app", Some(&token("bob"))).unwrap_err();
    assert!(matches!(err, ResolveError::Remote(RemoteError::EnvironmentNotFound { .. })), "{err}");
    assert_eq!(s.hub.calls(), (1, 1));
}

#[test]
fn warm_path_reads_no_repository() {
    let s = Setup::new(None);
    let cold = s.resolve("acme/app", None).unwrap();
    // Without the repository a read would fail: the warm path must not read.
    std::fs::remove_dir_all(s.state.path().join("meta/acme.git")).unwrap();
    s.hub.online.store(false, Ordering::SeqCst);
    let key = cold.key.clone();
    let warm = s.resolve_rendered("acme/app:2", None, &move |k| k == key).unwrap();
    assert_eq!(warm, Resolved { lock: None, created: None, ..cold });
}

#[test]
fn offline_unpinned_uses_the_last_live_generation_with_a_warning() {
    let s = Setup::new(None);
    s.resolve("acme/app", None).unwrap();
    s.hub.online.store(false, Ordering::SeqCst);
    record::WRITES.with(|w| w.set(0));
    let r = s.resolve("acme/app", None).unwrap();
    assert_eq!(r.generation, 2);
    let warning = r.warning.expect("a warning");
    assert!(warning.contains("is unreachable") && warning.contains("using the last known live generation of acme/app"));
    assert_eq!(record::WRITES.with(|w| w.get()), 0, "nothing new to remember offline");
}

#[test]
fn offline_private_environment_needs_the_token_that_fetched_it() {
    let alice = token("alice");
    let s = Setup::new(Some(&alice));
    s.resolve("acme/app", Some(&alice)).unwrap();
    assert_eq!(s.record().token_fingerprint, Some(alice.fingerprint()));
    s.hub.online.store(false, Ordering::SeqCst);
    for other in [Some(token("bob")), None] {
        let err = s.resolve("acme/app", other.as_ref()).unwrap_err();
        assert!(matches!(err, ResolveError::OfflineTokenMismatch { .. }), "{err}");
        // Pinned makes no difference for a private environment.
        let err = s.resolve("acme/app:1", other.as_ref()).unwrap_err();
        assert!(matches!(err, ResolveError::OfflineTokenMismatch { .. }), "{err}");
    }
    assert!(s.resolve("acme/app", Some(&alice)).is_ok());
}

#[test]
fn offline_and_never_fetched_is_the_hubs_error() {
    let s = Setup::new(None);
    s.hub.online.store(false, Ordering::SeqCst);
    let err = s.resolve("acme/app", None).unwrap_err();
    assert!(matches!(&err, ResolveError::Remote(e) if e.is_unreachable()), "{err}");
    assert!(!s.state.path().join("refs").exists(), "nothing remembered");
}

#[test]
fn an_expired_token_is_refused_before_asking() {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let jwt = format!("{}.{}.sig", b64(r#"{"alg":"HS256"}"#), b64(r#"{"exp":1000,"https://flox.dev/handle":"alice"}"#));
    let expired = Token::parse(&jwt).unwrap();
    let s = Setup::new(None);
    let err = s.resolve("acme/app", Some(&expired)).unwrap_err();
    assert!(matches!(err, ResolveError::TokenExpired { .. }), "{err}");
    assert_eq!(s.hub.calls(), (0, 0));
}

#[test]
fn a_missing_generation_is_precise_and_the_fetch_still_remembered() {
    let s = Setup::new(None);
    let err = s.resolve("acme/app:7", None).unwrap_err();
    assert!(err.to_string().contains("generation 7 of acme/app does not exist"), "{err}");
    assert_eq!(s.record().commit.len(), 40);
}

impl Setup {
    fn anonymous_pull(&self, env: &str, is_rendered: &dyn Fn(&str) -> bool) -> AnonymousPull {
        let resolver = Resolver {
            remote: &self.hub,
            state_root: self.state.path(),
            answer_ttl_secs: self.ttl,
            system: System::X86_64Linux,
        };
        resolver.anonymous_pull(&EnvRef::parse(env).unwrap(), Mode::Run, is_rendered)
    }
}

#[test]
fn a_sandbox_prefetch_is_needed_only_when_an_anonymous_pull_has_work() {
    let mut s = Setup::new(None);
    let rendered = |_: &str| true;
    assert_eq!(s.anonymous_pull("acme/app:1", &rendered), AnonymousPull::Needed, "never fetched");
    let pinned = s.resolve("acme/app:1", None).unwrap();
    assert_eq!(s.anonymous_pull("acme/app:1", &rendered), AnonymousPull::Warm { key: pinned.key.clone() });
    assert_eq!(s.anonymous_pull("acme/app:1", &|_| false), AnonymousPull::Needed, "not rendered (gc)");
    assert_eq!(s.anonymous_pull("acme/app:2", &rendered), AnonymousPull::Needed, "generation never resolved");
    // Unpinned: the hub must be asked once the answer is older than the TTL (0 here).
    s.resolve("acme/app", None).unwrap();
    assert_eq!(s.anonymous_pull("acme/app", &rendered), AnonymousPull::Needed);
    s.ttl = 3600;
    let live = s.resolve("acme/app", None).unwrap();
    assert_eq!(s.anonymous_pull("acme/app", &rendered), AnonymousPull::Warm { key: live.key });
    assert_eq!(s.hub.calls().1, 1, "anonymous_pull never fetches");

    let alice = token("alice");
    let private = Setup::new(Some(&alice));
    private.resolve("acme/app:1", Some(&alice)).unwrap();
    assert_eq!(private.anonymous_pull("acme/app:1", &rendered), AnonymousPull::Private);
}
