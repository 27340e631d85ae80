//! A cache that is down, stalls or serves a corrupt file never stops a fetch while another
//! substituter has the path: each failure kind against a good cache listed after it (the
//! closure fetched, one warning naming the bad one), and alone (one error saying, per
//! substituter, why). Also `Priority:` ordering and a down substituter remembered by the
//! process. Real HTTP on 127.0.0.1: the project's hub serving signed caches, and servers that
//! refuse, stay silent or stall mid-body (support/bad_server.rs).
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use imageless_core::store_path::StorePath;
use imageless_node::config::NodeConfig;
use imageless_node::fetch::{FetchError, FetchReport, Fetcher, SourceError, SourceFault};
use support::bad_server::{closed_port_url, BadServer, Behaviour};
use support::{Hub, Published, Tamper};

/// Short deadlines: a stall is caught in a second.
fn config(state: &Path, substituters: Vec<String>) -> NodeConfig {
    NodeConfig {
        state_root: state.to_path_buf(),
        substituters,
        trusted_public_keys: vec![support::public_key()],
        substituter_connect_timeout_ms: 1_000,
        substituter_stall_timeout_ms: 1_000,
        ..NodeConfig::default()
    }
}

fn cache(salt: &str, compression: &str, tamper: &dyn Fn(&StorePath) -> Tamper) -> (Hub, Vec<Published>) {
    let hub = Hub::start();
    let paths = support::closure(salt, 200_000);
    support::write_cache(&hub.cache_dir(), &paths, compression, tamper);
    (hub, paths)
}

/// A second cache of the same paths (another compression: other NAR file names, so the access
/// log tells which cache served a NAR).
fn same_paths(paths: &[Published], compression: &str, tamper: &dyn Fn(&StorePath) -> Tamper) -> Hub {
    let hub = Hub::start();
    support::write_cache(&hub.cache_dir(), paths, compression, tamper);
    hub
}

fn top(paths: &[Published]) -> StorePath {
    paths.last().unwrap().path.clone()
}

fn fetch(substituters: Vec<String>, paths: &[Published]) -> (Result<FetchReport, FetchError>, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let result = Fetcher::from_config(&config(state.path(), substituters)).unwrap().realize(&[top(paths)]);
    (result, state)
}

/// The whole closure is in the store with exactly its NARs' contents, nothing else.
fn assert_complete(state: &Path, paths: &[Published]) {
    let store = state.join("store");
    for p in paths {
        assert!(support::dump(&store.join(p.path.base_name())) == p.nar, "{} differs from its NAR", p.path);
    }
    assert_eq!(support::store_entries(&store).len(), paths.len(), "{:?}", support::store_entries(&store));
    support::chmod_tree_writable(state);
}

fn assert_empty(state: &Path) {
    let entries = support::store_entries(&state.join("store"));
    assert!(entries.is_empty(), "nothing of a failed fetch may be visible: {entries:?}");
}

#[test]
fn a_refused_connection_is_skipped_with_one_warning() {
    let (good, paths) = cache("refused", "xz", &|_| Tamper::default());
    let closed = closed_port_url();
    let (report, state) = fetch(vec![closed.clone(), good.url()], &paths);
    let report = report.unwrap();
    assert_complete(state.path(), &paths);
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    let w = &report.warnings[0];
    assert!(w.starts_with(&format!("substituter {closed} skipped: GET {closed}/nix-cache-info failed: ")), "{w}");
    assert!(w.contains("Connection refused"), "{w}");

    // Alone: one error naming the path, the substituter, `down` and why.
    let (err, state) = fetch(vec![closed.clone()], &paths);
    let msg = err.unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!("flox: {} could not be fetched from any substituter: {closed}: down: ", top(&paths))),
        "{msg}"
    );
    assert!(msg.contains("Connection refused"), "{msg}");
    assert_empty(state.path());
}

#[test]
fn a_server_that_never_answers_costs_a_fraction_of_a_second() {
    let (good, paths) = cache("silent", "zstd", &|_| Tamper::default());
    let silent = BadServer::start(Behaviour::Silent);
    let started = Instant::now();
    let (report, state) = fetch(vec![silent.url.clone(), good.url()], &paths);
    let took = started.elapsed();
    let report = report.unwrap();
    assert_complete(state.path(), &paths);
    // Not waited for beyond the hedge: well under the 1 s stall deadline.
    assert!(took < Duration::from_millis(900), "the silent cache held the fetch for {took:?}");
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    let w = &report.warnings[0];
    assert!(w.starts_with(&format!("substituter {} skipped: no answer to nix-cache-info within ", silent.url)), "{w}");
    assert!(w.ends_with("ms, while another substituter answered; asked only for paths no other one has"), "{w}");
    assert_eq!(silent.requested("/narinfo"), 0, "a slow substituter is not asked for paths another one has");

    // Alone: the stall deadline decides, once.
    let (err, state) = fetch(vec![silent.url.clone()], &paths);
    let msg = err.unwrap_err().to_string();
    assert!(
        msg.contains(&format!("{u}: down: GET {u}/nix-cache-info: no answer within 1.0 s", u = silent.url)),
        "{msg}"
    );
    assert_empty(state.path());
}

#[test]
fn a_download_that_stalls_mid_body_is_fetched_from_the_next_substituter() {
    let (stalling_source, paths) = cache("midbody", "none", &|_| Tamper::default());
    let stalling = BadServer::start(Behaviour::StallMidNar(stalling_source.cache_dir()));
    let good = same_paths(&paths, "xz", &|_| Tamper::default());
    let (report, state) = fetch(vec![stalling.url.clone(), good.url()], &paths);
    let report = report.unwrap();
    assert_complete(state.path(), &paths);
    assert!(stalling.requested(".nar") >= 1, "the stalling cache was asked for a NAR first");
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.starts_with(&format!("substituter {} skipped: GET {}/nar/", stalling.url, stalling.url))
                && w.ends_with("the download stalled (no data for 1.0 s)")),
        "{:?}",
        report.warnings
    );
    assert_eq!(report.sources[&good.url()].paths, 3);

    let (err, state) = fetch(vec![stalling.url.clone()], &paths);
    let err = err.unwrap_err();
    let msg = err.to_string();
    assert!(err.attempts().iter().any(|a| matches!(a.error, SourceError::BodyStalled { .. })), "{msg}");
    assert!(msg.contains("the download stalled (no data for 1.0 s)"), "{msg}");
    assert_empty(state.path());
}

#[test]
fn a_path_missing_everywhere_lists_every_substituter() {
    let (first, paths) = cache("missing", "xz", &|_| Tamper::default());
    let lib = paths[1].path.clone();
    let l = lib.clone();
    let second = same_paths(&paths, "zstd", &move |p| Tamper { absent: *p == l, ..Tamper::default() });
    std::fs::remove_file(first.cache_dir().join(format!("{}.narinfo", lib.hash_part()))).unwrap();
    let (err, state) = fetch(vec![first.url(), second.url()], &paths);
    let msg = err.unwrap_err().to_string();
    let (a, b) = (first.url(), second.url());
    let h = lib.hash_part();
    assert_eq!(
        msg,
        format!(
            "flox: {lib} could not be fetched from any substituter: \
             {a}: not found: GET {a}/{h}.narinfo answered HTTP 404; \
             {b}: not found: GET {b}/{h}.narinfo answered HTTP 404"
        )
    );
    assert_empty(state.path());
}

/// For each way a NAR or its narinfo can be bad: first the bad cache alone (its exact error),
/// then the bad cache first and a good one second (the closure arrives, the bad one is named).
fn bad_then_good(salt: &str, compression: &str, tamper: Tamper, fault: SourceFault, expect: &dyn Fn(&str) -> bool) {
    let (bad, paths) = cache(salt, compression, &|_| Tamper::default());
    let lib = paths[1].path.clone();
    let l = lib.clone();
    let t = tamper.clone();
    support::write_cache(&bad.cache_dir(), &paths, compression, &move |p| {
        if *p == l {
            t.clone()
        } else {
            Tamper::default()
        }
    });
    let (err, state) = fetch(vec![bad.url()], &paths);
    let err = err.unwrap_err();
    let msg = err.to_string();
    eprintln!("{salt}: {msg}");
    assert!(
        msg.starts_with(&format!(
            "flox: {lib} could not be fetched from any substituter: {}: {}: ",
            bad.url(),
            fault.as_str()
        )),
        "{salt}: {msg}"
    );
    assert!(expect(&msg), "{salt}: {msg}");
    assert_eq!(err.attempts().len(), 1, "{msg}");
    assert_eq!(err.attempts()[0].error.fault(), fault);
    let entries = support::store_entries(&state.path().join("store"));
    assert!(!entries.iter().any(|e| e.contains(lib.base_name()) || e.starts_with('.')), "{salt}: {entries:?}");
    support::chmod_tree_writable(state.path());

    let good = same_paths(&paths, if compression == "xz" { "zstd" } else { "xz" }, &|_| Tamper::default());
    let (report, state) = fetch(vec![bad.url(), good.url()], &paths);
    let report = report.unwrap_or_else(|e| panic!("{salt}: {e}"));
    assert_complete(state.path(), &paths);
    assert_eq!(report.sources[&good.url()].paths, 1, "{salt}: only the bad path came from the good cache");
    if fault == SourceFault::Corrupt {
        assert_eq!(report.sources[&bad.url()].corrupt, 1, "{salt}");
        assert_eq!(report.warnings.len(), 1, "{salt}: {:?}", report.warnings);
        let w = &report.warnings[0];
        assert!(
            w.starts_with(&format!(
                "substituter {} served 1 corrupt NAR (discarded, fetched from another substituter; last: {lib}: ",
                bad.url()
            )),
            "{w}"
        );
    }
}

#[test]
fn a_nar_hash_mismatch_is_discarded_and_fetched_elsewhere() {
    bad_then_good("hash", "xz", Tamper { flip_byte: true, ..Tamper::default() }, SourceFault::Corrupt, &|m| {
        m.contains("NarHash mismatch: narinfo says sha256:")
    });
}

#[test]
fn a_bad_signature_is_skipped_for_the_next_substituter() {
    bad_then_good("sig", "xz", Tamper { wrong_key: true, ..Tamper::default() }, SourceFault::Unsigned, &|m| {
        m.ends_with("unsigned: bad signature by trusted key test-cache-1")
    });
    bad_then_good("unsigned", "xz", Tamper { unknown_key: true, ..Tamper::default() }, SourceFault::Unsigned, &|m| {
        m.ends_with("unsigned: not signed by a trusted key (signed by: someone-else-1; trusted: test-cache-1)")
    });
}

#[test]
fn a_truncated_nar_of_each_compression_is_discarded_and_fetched_elsewhere() {
    bad_then_good(
        "trunc-none",
        "none",
        Tamper { truncate_to: Some(50_000), ..Tamper::default() },
        SourceFault::Corrupt,
        &|m| {
            m.ends_with("corrupt: truncated NAR: the stream ended after 50000 of 200312 bytes")
                || m.contains("truncated NAR: the stream ended after 50000 of ")
        },
    );
    for compression in ["xz", "zstd", "bzip2"] {
        bad_then_good(
            &format!("trunc-{compression}"),
            compression,
            Tamper { truncate_to: Some(2_000), ..Tamper::default() },
            SourceFault::Corrupt,
            &|m| {
                m.contains("corrupt: truncated NAR: the stream ended after ")
                    || m.contains(&format!("corrupt: NAR ({compression}) does not decompress: "))
            },
        );
    }
}

#[test]
fn http_5xx_marks_a_substituter_down_for_the_process() {
    let (good, paths) = cache("fivexx", "xz", &|_| Tamper::default());
    let server = std::sync::Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let broken = format!("http://{}/cache", server.server_addr().to_ip().unwrap());
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (s, h) = (server.clone(), hits.clone());
    let thread = std::thread::spawn(move || {
        for req in s.incoming_requests() {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = req.respond(tiny_http::Response::from_string("busy").with_status_code(503));
        }
    });
    let (report, state) = fetch(vec![broken.clone(), good.url()], &paths);
    assert_complete(state.path(), &paths);
    assert_eq!(
        report.unwrap().warnings,
        [format!("substituter {broken} skipped: GET {broken}/nix-cache-info answered HTTP 503")]
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    // A second pull in this process does not ask it again (60 s by default).
    let (report, state) = fetch(vec![broken.clone(), good.url()], &paths);
    assert_complete(state.path(), &paths);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1, "asked again within retry_after");
    let w = &report.unwrap().warnings;
    assert!(
        w[0].starts_with(&format!(
            "substituter {broken} skipped: unavailable since an earlier failure \
             (GET {broken}/nix-cache-info answered HTTP 503); asked again after 5"
        )),
        "{w:?}"
    );
    server.unblock();
    thread.join().unwrap();
}

#[test]
fn priority_orders_substituters_lower_first() {
    let (first, paths) = cache("priority", "xz", &|_| Tamper::default());
    let second = same_paths(&paths, "zstd", &|_| Tamper::default());
    // Listed second, but preferred: Priority 10 < 30.
    std::fs::write(second.cache_dir().join("nix-cache-info"), "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 10\n")
        .unwrap();
    let (report, state) = fetch(vec![first.url(), second.url()], &paths);
    let report = report.unwrap();
    assert_complete(state.path(), &paths);
    assert_eq!(report.sources[&second.url()].paths, 3, "{:?}", report.sources);
    assert_eq!(report.sources[&first.url()].paths, 0, "{:?}", report.sources);
    let nars = |hub: &Hub| -> usize {
        std::fs::read_dir(hub.cache_dir().join("nar"))
            .unwrap()
            .map(|e| support::served(&format!("/cache/nar/{}", e.unwrap().file_name().to_string_lossy())))
            .sum()
    };
    assert_eq!(nars(&first), 0, "no NAR fetched from the lower-priority cache");
    assert_eq!(nars(&second), 3);
    // Equal priorities: config order decides.
    std::fs::write(second.cache_dir().join("nix-cache-info"), "StoreDir: /nix/store\nPriority: 30\n").unwrap();
    let (report, state) = fetch(vec![first.url(), second.url()], &paths);
    assert_eq!(report.unwrap().sources[&first.url()].paths, 3);
    support::chmod_tree_writable(state.path());
}
