//! The binary-cache client against a real signed cache served by the project's hub on
//! 127.0.0.1: happy path for each compression (the node store holds exactly the published
//! NARs, with Nix's modes), each way a cache can be wrong (a precise error, nothing of the
//! bad path left in the store), 404 → next substituter, HTTP 500, kill -9 mid-download, and
//! 20 concurrent cold fetches downloading each NAR once.
mod support;

use std::path::Path;

use imageless_core::store_path::StorePath;
use imageless_node::config::NodeConfig;
use imageless_node::fetch::{FetchError, Fetcher, SourceError};
use support::{Hub, Published, Tamper};

fn config(state: &Path, substituters: Vec<String>) -> NodeConfig {
    NodeConfig {
        state_root: state.to_path_buf(),
        substituters,
        trusted_public_keys: vec![support::public_key()],
        ..NodeConfig::default()
    }
}

fn hub_with(salt: &str, compression: &str, big: usize, tamper: &dyn Fn(&StorePath) -> Tamper) -> (Hub, Vec<Published>) {
    let hub = Hub::start();
    let paths = support::closure(salt, big);
    support::write_cache(&hub.cache_dir(), &paths, compression, tamper);
    (hub, paths)
}

fn top(paths: &[Published]) -> StorePath {
    paths.last().unwrap().path.clone()
}

/// Asserts every published path is in the store with exactly its NAR's contents.
fn assert_store_holds(store: &Path, paths: &[Published]) {
    for p in paths {
        let entry = store.join(p.path.base_name());
        assert!(support::dump(&entry) == p.nar, "{} differs from its NAR", p.path);
    }
    let names = support::store_entries(store);
    assert_eq!(names.len(), paths.len(), "unexpected entries: {names:?}");
}

#[test]
fn fetches_the_closure_for_each_compression() {
    for compression in ["none", "xz", "zstd", "bzip2"] {
        let salt = format!("happy-{compression}");
        let (hub, paths) = hub_with(&salt, compression, 300_000, &|_| Tamper::default());
        let state = tempfile::tempdir().unwrap();
        let fetcher = Fetcher::from_config(&config(state.path(), vec![hub.url()])).unwrap();
        let report = fetcher.realize(&[top(&paths)]).unwrap();
        assert_eq!(report.downloaded(), 3, "{compression}");
        let mut want: Vec<&str> = paths.iter().map(|p| p.path.as_str()).collect();
        want.sort();
        assert_eq!(report.closure.iter().map(StorePath::as_str).collect::<Vec<_>>(), want);
        assert_store_holds(&state.path().join("store"), &paths);
        // Warm: nothing downloaded, same closure, no network needed.
        drop(hub);
        let again = fetcher.realize(&[top(&paths)]).unwrap();
        assert_eq!(again.downloaded(), 0);
        assert_eq!(again.closure, report.closure);
        assert_eq!(fetcher.store.closure(&[top(&paths)]).unwrap(), report.closure);
        support::chmod_tree_writable(state.path());
    }
}

/// Fetches `top` from a cache where `bad` is tampered with; returns the error and the store entries.
fn fetch_tampered(salt: &str, compression: &str, tamper: Tamper) -> (FetchError, Vec<String>, StorePath) {
    let paths = support::closure(salt, 100_000);
    let bad = paths[1].path.clone(); // `lib`, in the middle of the closure
    let hub = Hub::start();
    let b = bad.clone();
    support::write_cache(&hub.cache_dir(), &paths, compression, &move |p| {
        if *p == b {
            tamper.clone()
        } else {
            Tamper::default()
        }
    });
    let state = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::from_config(&config(state.path(), vec![hub.url()])).unwrap();
    let err = fetcher.realize(&[top(&paths)]).unwrap_err();
    let entries = support::store_entries(&state.path().join("store"));
    support::chmod_tree_writable(state.path());
    (err, entries, bad)
}

fn assert_absent(entries: &[String], bad: &StorePath) {
    assert!(!entries.iter().any(|e| e.contains(bad.base_name())), "{bad} left in the store: {entries:?}");
    assert!(!entries.iter().any(|e| e.starts_with('.')), "temporary entries left: {entries:?}");
}

#[test]
fn a_bad_signature_is_refused_and_nothing_is_written() {
    let (err, entries, bad) = fetch_tampered("badsig", "none", Tamper { wrong_key: true, ..Tamper::default() });
    let msg = err.to_string();
    assert!(matches!(err.attempts(), [a] if matches!(a.error, SourceError::BadSignature { .. })), "{msg}");
    assert!(msg.contains(bad.as_str()) && msg.contains("unsigned: bad signature by trusted key test-cache-1"), "{msg}");
    assert!(entries.is_empty(), "a narinfo failed, so nothing may be written: {entries:?}");
}

#[test]
fn an_unknown_key_is_refused() {
    let (err, entries, bad) = fetch_tampered("unknownkey", "none", Tamper { unknown_key: true, ..Tamper::default() });
    let msg = err.to_string();
    assert!(matches!(err.attempts(), [a] if matches!(a.error, SourceError::UntrustedKey { .. })), "{msg}");
    assert!(msg.contains(bad.as_str()) && msg.contains("someone-else-1") && msg.contains(support::KEY_NAME), "{msg}");
    assert!(entries.is_empty(), "{entries:?}");
}

#[test]
fn a_nar_hash_mismatch_is_refused_for_each_compression() {
    for compression in ["none", "xz", "zstd", "bzip2"] {
        let (err, entries, bad) = fetch_tampered(
            &format!("flip-{compression}"),
            compression,
            Tamper { flip_byte: true, ..Tamper::default() },
        );
        let msg = err.to_string();
        eprintln!("error: {msg}");
        assert!(
            matches!(err.attempts(), [a] if matches!(a.error, SourceError::NarHashMismatch { .. })),
            "{compression}: {msg}"
        );
        assert!(msg.contains(bad.as_str()) && msg.contains("NarHash mismatch"), "{msg}");
        assert_absent(&entries, &bad);
    }
}

#[test]
fn a_truncated_nar_is_refused() {
    let (err, entries, bad) =
        fetch_tampered("trunc", "none", Tamper { truncate_to: Some(50_000), ..Tamper::default() });
    let msg = err.to_string();
    assert!(matches!(err.attempts(), [a] if matches!(a.error, SourceError::TruncatedNar { got: 50_000, .. })), "{msg}");
    assert!(msg.contains(bad.as_str()) && msg.contains("truncated NAR"), "{msg}");
    assert_absent(&entries, &bad);
    for compression in ["xz", "zstd", "bzip2"] {
        let (err, entries, bad) = fetch_tampered(
            &format!("trunc-{compression}"),
            compression,
            Tamper { truncate_to: Some(200), ..Tamper::default() },
        );
        let msg = err.to_string();
        eprintln!("error: {msg}");
        assert!(
            matches!(err.attempts(), [a] if matches!(a.error, SourceError::TruncatedNar { .. } | SourceError::Decompress { .. })),
            "{compression}: {msg}"
        );
        assert!(msg.contains(bad.as_str()), "{msg}");
        assert_absent(&entries, &bad);
    }
}

#[test]
fn a_path_missing_everywhere_is_named() {
    let (err, entries, bad) = fetch_tampered("absent", "none", Tamper { absent: true, ..Tamper::default() });
    let msg = err.to_string();
    assert!(matches!(err.attempts(), [a] if matches!(a.error, SourceError::NotFound { .. })), "{msg}");
    assert!(msg.contains(bad.as_str()) && msg.contains("could not be fetched from any substituter"), "{msg}");
    assert!(msg.contains("not found: GET ") && msg.contains("answered HTTP 404"), "{msg}");
    assert!(entries.is_empty(), "{entries:?}");
}

#[test]
fn a_404_on_the_first_substituter_falls_through_to_the_second() {
    let paths = support::closure("fallthrough", 10_000);
    let empty = Hub::start();
    support::write_cache(&empty.cache_dir(), &[], "none", &|_| Tamper::default());
    let full = Hub::start();
    support::write_cache(&full.cache_dir(), &paths, "zstd", &|_| Tamper::default());
    let state = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::from_config(&config(state.path(), vec![empty.url(), full.url()])).unwrap();
    let report = fetcher.realize(&[top(&paths)]).unwrap();
    assert_eq!(report.downloaded(), 3);
    assert_store_holds(&state.path().join("store"), &paths);
    support::chmod_tree_writable(state.path());
}

#[test]
fn the_first_substituter_that_has_a_path_wins() {
    // Both have it; the second's copy is tampered, so using it would fail.
    let paths = support::closure("order", 10_000);
    let first = Hub::start();
    support::write_cache(&first.cache_dir(), &paths, "xz", &|_| Tamper::default());
    let second = Hub::start();
    support::write_cache(&second.cache_dir(), &paths, "none", &|_| Tamper { wrong_key: true, ..Tamper::default() });
    let state = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::from_config(&config(state.path(), vec![first.url(), second.url()])).unwrap();
    fetcher.realize(&[top(&paths)]).unwrap();
    assert_store_holds(&state.path().join("store"), &paths);
    support::chmod_tree_writable(state.path());
}

/// A server answering 500 to everything: what a broken cache does (the hub never does).
fn broken_server() -> (String, std::thread::JoinHandle<()>, std::sync::Arc<tiny_http::Server>) {
    let server = std::sync::Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let addr = server.server_addr().to_ip().unwrap();
    let s = server.clone();
    let t = std::thread::spawn(move || {
        for req in s.incoming_requests() {
            let _ = req.respond(tiny_http::Response::from_string("boom").with_status_code(500));
        }
    });
    (format!("http://{addr}/cache"), t, server)
}

#[test]
fn http_500_marks_the_substituter_down_and_the_next_one_serves() {
    let (hub, paths) = hub_with("http500", "none", 1000, &|_| Tamper::default());
    let (broken, thread, server) = broken_server();
    let state = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::from_config(&config(state.path(), vec![broken.clone(), hub.url()])).unwrap();
    let report = fetcher.realize(&[top(&paths)]).unwrap();
    assert_eq!(report.downloaded(), 3);
    assert_store_holds(&state.path().join("store"), &paths);
    assert_eq!(
        report.warnings,
        [format!("substituter {broken} skipped: GET {broken}/nix-cache-info answered HTTP 500")],
        "one warning, naming the substituter, the URL and the status"
    );
    // Alone, it is the one reason given.
    let state2 = tempfile::tempdir().unwrap();
    let err = Fetcher::from_config(&config(state2.path(), vec![broken.clone()])).unwrap().realize(&[top(&paths)]);
    let msg = err.unwrap_err().to_string();
    assert!(msg.contains(&format!("{broken}: down: ")) && msg.contains("HTTP 500"), "{msg}");
    assert!(support::store_entries(&state2.path().join("store")).is_empty());
    server.unblock();
    thread.join().unwrap();
    support::chmod_tree_writable(state.path());
}

#[test]
fn bad_config_is_named() {
    let state = tempfile::tempdir().unwrap();
    let mut c = config(state.path(), vec!["ftp://x".into()]);
    let e = Fetcher::from_config(&c).err().unwrap().to_string();
    assert!(e.contains("substituters") && e.contains("ftp://x") && e.contains("http://"), "{e}");
    c.substituters = vec!["http://127.0.0.1:1".into()];
    c.trusted_public_keys = vec!["k:notbase64!".into()];
    let e = Fetcher::from_config(&c).err().unwrap().to_string();
    assert!(e.contains("trusted_public_keys") && e.contains("k:notbase64!"), "{e}");
    c.trusted_public_keys = vec![support::public_key()];
    c.substituter_stall_timeout_ms = 0;
    let e = Fetcher::from_config(&c).err().unwrap().to_string();
    assert_eq!(
        e,
        "flox: node config: substituter_stall_timeout_ms = \"0\" is not valid; accepted: a number of milliseconds, at least 1"
    );
    c.substituter_stall_timeout_ms = 1000;
    c.substituters = vec!["s3://nix-cache?secret-key=/k".into()];
    let e = Fetcher::from_config(&c).err().unwrap().to_string();
    assert_eq!(
        e,
        "flox: node config: substituters: s3://nix-cache?secret-key=/k: parameter \"secret-key\" is not valid; accepted: region, endpoint, scheme, profile, addressing-style"
    );
    c.substituters = vec!["s3://nix-cache?profile=ci".into()];
    c.s3_credentials_file = Some(state.path().join("no-such-file"));
    let e = Fetcher::from_config(&c).err().unwrap().to_string();
    assert!(
        e.starts_with("flox: node config: substituters: S3 credentials file ") && e.contains("no-such-file"),
        "{e}"
    );
}

#[test]
fn twenty_concurrent_cold_fetches_download_each_nar_once() {
    let (hub, paths) = hub_with("twenty", "zstd", 2_000_000, &|_| Tamper::default());
    let state = tempfile::tempdir().unwrap();
    let cfg = config(state.path(), vec![hub.url()]);
    let downloaded: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|_| {
                let cfg = cfg.clone();
                let want = top(&paths);
                s.spawn(move || Fetcher::from_config(&cfg).unwrap().realize(&[want]).unwrap().downloaded())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(downloaded, 3, "each path is downloaded by exactly one of the 20");
    assert_store_holds(&state.path().join("store"), &paths);
    for entry in std::fs::read_dir(hub.cache_dir().join("nar")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert_eq!(support::served(&format!("/cache/nar/{name}")), 1, "{name} served more than once");
    }
    support::chmod_tree_writable(state.path());
}

/// Run as a child process by `a_fetch_killed_mid_download_is_retried_cleanly`.
#[test]
#[ignore]
fn child_fetch() {
    let Ok(state) = std::env::var("FETCH_CHILD_STATE") else { return };
    let sub = std::env::var("FETCH_CHILD_SUB").unwrap();
    let want = StorePath::parse(&std::env::var("FETCH_CHILD_WANT").unwrap()).unwrap();
    let jobs = std::env::var("FETCH_CHILD_JOBS").map(|j| j.parse().unwrap()).unwrap_or(1);
    Fetcher::from_config(&config(Path::new(&state), vec![sub])).unwrap().with_jobs(jobs).realize(&[want]).unwrap();
}

#[test]
fn twenty_concurrent_cold_fetching_processes_download_each_nar_once() {
    let (hub, paths) = hub_with("twenty-processes", "xz", 2_000_000, &|_| Tamper::default());
    let state = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..20)
        .map(|_| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "child_fetch", "--ignored"])
                .env("FETCH_CHILD_STATE", state.path())
                .env("FETCH_CHILD_SUB", hub.url())
                .env("FETCH_CHILD_WANT", top(&paths).as_str())
                .env("FETCH_CHILD_JOBS", "8")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "a fetching process failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert_store_holds(&state.path().join("store"), &paths);
    for entry in std::fs::read_dir(hub.cache_dir().join("nar")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert_eq!(support::served(&format!("/cache/nar/{name}")), 1, "{name} not served exactly once");
    }
    support::chmod_tree_writable(state.path());
}

#[test]
fn a_fetch_killed_mid_download_is_retried_cleanly() {
    // A NAR large enough that the kill lands while it is being unpacked.
    let (hub, paths) = hub_with("killed", "none", 64_000_000, &|_| Tamper::default());
    let state = tempfile::tempdir().unwrap();
    let store = state.path().join("store");
    let lib = &paths[1];
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_fetch", "--ignored", "--nocapture"])
        .env("FETCH_CHILD_STATE", state.path())
        .env("FETCH_CHILD_SUB", hub.url())
        .env("FETCH_CHILD_WANT", lib.path.as_str())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let temp_prefix = format!(".tmp-{}", lib.path.base_name());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // Wait until the big file is partly written under the temporary name.
    loop {
        let partial = support::store_entries(&store)
            .into_iter()
            .find(|e| e.starts_with(&temp_prefix))
            .and_then(|t| std::fs::metadata(store.join(t).join("lib/libx.so")).ok().filter(|m| m.len() > 0));
        if partial.is_some() {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the child finished before it could be killed");
        assert!(std::time::Instant::now() < deadline, "the child never started unpacking");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let after_kill = support::store_entries(&store);
    assert!(!after_kill.contains(&lib.path.base_name().to_string()), "half a path became visible: {after_kill:?}");
    let fetcher = Fetcher::from_config(&config(state.path(), vec![hub.url()])).unwrap();
    fetcher.realize(&[top(&paths)]).unwrap();
    assert_store_holds(&store, &paths);
    support::chmod_tree_writable(state.path());
}

/// Each path's tree under `store` and under `linked` (the fetch's link directory): the same
/// entries with the same kinds and modes, files and symlinks the same inodes.
fn assert_linked_like_the_store(store: &Path, linked: &Path, path: &StorePath) {
    use std::os::unix::fs::MetadataExt;
    fn walk(store: &Path, linked: &Path, rel: &Path) {
        let (s, l) = (store.join(rel), linked.join(rel));
        let (sm, lm) = (std::fs::symlink_metadata(&s).unwrap(), std::fs::symlink_metadata(&l).unwrap());
        assert_eq!(sm.mode(), lm.mode(), "mode of {}", l.display());
        if sm.is_dir() {
            assert!(lm.is_dir());
            let names = |d: &Path| {
                let mut n: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
                n.sort();
                n
            };
            assert_eq!(names(&s), names(&l), "entries of {}", l.display());
            for name in names(&s) {
                walk(store, linked, &rel.join(name));
            }
        } else {
            assert_eq!((sm.dev(), sm.ino()), (lm.dev(), lm.ino()), "{} is not a hard link of the store's", l.display());
        }
    }
    walk(store, linked, Path::new(path.base_name()));
}

/// A fetcher from `hub` into `state` that links into `dir`, and what it reports.
fn linking_fetcher(state: &Path, hub: &Hub, dir: &Path) -> (Fetcher, std::sync::Arc<Reports>) {
    let reports = std::sync::Arc::new(Reports::default());
    let fetcher = Fetcher::from_config(&config(state, vec![hub.url()]))
        .unwrap()
        .with_progress(reports.clone())
        .linking_into(dir.to_path_buf());
    (fetcher, reports)
}

#[derive(Default)]
struct Reports {
    done: std::sync::Mutex<Vec<String>>,
    linked: std::sync::Mutex<Vec<String>>,
}

impl imageless_node::fetch::Progress for Reports {
    fn planned(&self, _: usize, _: u64) {}
    fn advanced(&self, _: u64) {}
    fn path_done(&self, path: &StorePath) {
        self.done.lock().unwrap().push(path.to_string());
    }
    fn path_linked(&self, path: &StorePath) {
        self.linked.lock().unwrap().push(path.to_string());
    }
}

/// A fetch that links into a directory (a closure view being built) leaves there, in the
/// same pass, each path it fetched as the store has it, and reports those paths as linked.
#[test]
fn a_fetch_linking_into_a_directory_leaves_each_fetched_path_there_as_hard_links() {
    for compression in ["none", "zstd"] {
        let (hub, paths) = hub_with(&format!("linked-{compression}"), compression, 300_000, &|_| Tamper::default());
        let state = tempfile::tempdir().unwrap();
        let linked = state.path().join("view");
        std::fs::create_dir(&linked).unwrap();
        let (fetcher, reports) = linking_fetcher(state.path(), &hub, &linked);
        assert_eq!(fetcher.realize(&[top(&paths)]).unwrap().downloaded(), 3);
        let store = state.path().join("store");
        assert_store_holds(&store, &paths);
        for p in &paths {
            assert_linked_like_the_store(&store, &linked, &p.path);
        }
        assert_eq!(support::store_entries(&linked).len(), 3);
        let mut got = reports.linked.lock().unwrap().clone();
        got.sort();
        let mut want: Vec<String> = paths.iter().map(|p| p.path.to_string()).collect();
        want.sort();
        assert_eq!(got, want, "{compression}");
        assert!(reports.done.lock().unwrap().is_empty(), "every fetched path was linked");
        support::chmod_tree_writable(state.path());
    }
}

/// A hub whose second path's NAR has a flipped byte (the path, named), and an empty state
/// with an empty `view` directory in it.
fn a_path_flipped(salt: &str) -> (Hub, Vec<Published>, StorePath, tempfile::TempDir, std::path::PathBuf) {
    let paths = support::closure(salt, 100_000);
    let bad = paths[1].path.clone();
    let hub = Hub::start();
    let b = bad.clone();
    support::write_cache(&hub.cache_dir(), &paths, "zstd", &move |p| Tamper {
        flip_byte: *p == b,
        ..Tamper::default()
    });
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("view");
    std::fs::create_dir(&dir).unwrap();
    (hub, paths, bad, state, dir)
}

/// A path that fails its check leaves nothing in the link directory either; and where links
/// cannot be made (the directory is gone) the fetch goes on and reports its paths as only
/// done, leaving nothing there.
#[test]
fn a_failed_path_or_failed_linking_leaves_nothing_in_the_link_directory() {
    let (hub, paths, bad, state, linked) = a_path_flipped("linked-flip");
    let (fetcher, _) = linking_fetcher(state.path(), &hub, &linked);
    let err = fetcher.realize(&[top(&paths)]).unwrap_err();
    assert!(err.to_string().contains("NarHash mismatch"), "{err}");
    assert!(!linked.join(bad.base_name()).exists(), "the bad path's linked tree was removed");
    assert!(support::store_entries(&linked).iter().all(|e| !e.starts_with('.')));

    let (hub, paths) = hub_with("linked-gone", "zstd", 100_000, &|_| Tamper::default());
    let state = tempfile::tempdir().unwrap();
    let gone = state.path().join("gone");
    let (fetcher, reports) = linking_fetcher(state.path(), &hub, &gone);
    assert_eq!(fetcher.realize(&[top(&paths)]).unwrap().downloaded(), 3);
    assert_store_holds(&state.path().join("store"), &paths);
    assert!(!gone.exists());
    assert!(reports.linked.lock().unwrap().is_empty());
    assert_eq!(reports.done.lock().unwrap().len(), 3);
    support::chmod_tree_writable(state.path());
}

/// A fetch that defers the store's entries unpacks each path into the directory alone: the
/// store has no entry for any of them (not valid) but their records, their locks stay held
/// while the caller has them, and once made valid from the directory the store holds each
/// path exactly as its NAR, as hard links of the directory's inodes. A path that fails its
/// check leaves nothing in the directory and is not handed over.
#[test]
fn a_fetch_deferring_the_store_unpacks_into_the_directory_alone_until_made_valid() {
    use fs4::fs_std::FileExt;
    let (hub, paths) = hub_with("deferred", "zstd", 300_000, &|_| Tamper::default());
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("view");
    std::fs::create_dir(&dir).unwrap();
    let reports = std::sync::Arc::new(Reports::default());
    let fetcher = Fetcher::from_config(&config(state.path(), vec![hub.url()]))
        .unwrap()
        .with_progress(reports.clone())
        .deferring_store_into(dir.clone());
    assert_eq!(fetcher.realize(&[top(&paths)]).unwrap().downloaded(), 3);
    let store = state.path().join("store");
    assert!(support::store_entries(&store).is_empty(), "no store entry yet");
    for p in &paths {
        assert!(support::dump(&dir.join(p.path.base_name())) == p.nar, "{} differs from its NAR", p.path);
        assert!(!fetcher.store.is_valid(&p.path));
        assert!(fetcher.store.record(&p.path).is_ok(), "{}'s record is written", p.path);
    }
    assert_eq!(reports.linked.lock().unwrap().len(), 3, "reported as in the directory");
    let lock_free = |p: &StorePath| {
        let lock = state.path().join("locks/store").join(format!("{}.lock", p.hash_part()));
        FileExt::try_lock_exclusive(&std::fs::File::open(lock).unwrap()).unwrap()
    };
    let deferred = fetcher.take_deferred();
    assert_eq!(deferred.len(), 3);
    assert!(paths.iter().all(|p| !lock_free(&p.path)), "held: another fetch of these paths waits");
    for d in deferred {
        assert!(imageless_node::deferred_store::make_valid(&fetcher.store, &d.info.store_path, &dir).unwrap());
    }
    assert_store_holds(&store, &paths);
    for p in &paths {
        assert_linked_like_the_store(&store, &dir, &p.path);
        assert!(lock_free(&p.path), "released");
    }
    assert!(fetcher.take_deferred().is_empty());
    support::chmod_tree_writable(state.path());

    let (hub, paths, bad, state, dir) = a_path_flipped("deferred-flip");
    let fetcher =
        Fetcher::from_config(&config(state.path(), vec![hub.url()])).unwrap().deferring_store_into(dir.clone());
    let err = fetcher.realize(&[top(&paths)]).unwrap_err();
    assert!(err.to_string().contains("NarHash mismatch"), "{err}");
    assert!(!dir.join(bad.base_name()).exists(), "the bad path's tree was removed");
    assert!(fetcher.take_deferred().iter().all(|d| d.info.store_path != bad));
    assert!(support::store_entries(&state.path().join("store")).is_empty());
    support::chmod_tree_writable(state.path());
}
