//! The pull-through cache with two real hubs: an upstream holding the world's cache and a
//! front hub with an empty cache and `--upstream` pointing at it. Concurrent clients of the
//! front make the upstream serve each file once; nodes verify the upstream's signatures; with
//! the upstream stopped, what the front stored still serves.
mod support;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use support::{nix_copy, world_closure, world_key, Conn, Root, Server, Store};

const STALL: Duration = Duration::from_secs(30);

/// How often the upstream's access log shows `GET /cache/REL 200`.
fn served(log: &str, rel: &str) -> usize {
    let needle = format!("GET /cache/{rel} 200 ");
    log.lines().filter(|l| l.contains(&needle)).count()
}

#[test]
fn twenty_clients_through_a_pull_through_hub_fetch_each_file_once_upstream() {
    let upstream_root = Root::new(true);
    let files: Arc<Vec<(String, Vec<u8>)>> = Arc::new(
        upstream_root
            .cache_files()
            .into_iter()
            .map(|rel| (rel.clone(), std::fs::read(upstream_root.cache().join(&rel)).unwrap()))
            .collect(),
    );
    let upstream = Server::start(upstream_root.path(), &[]);
    let front_root = Root::new(false);
    let front = Server::start(front_root.path(), &["--upstream", &format!("{}/cache", upstream.url())]);

    // 20 clients start together and walk every file (narinfos first, as Nix does), on keep-alive
    // connections, each file by GET: all of them miss at first.
    let barrier = Arc::new(Barrier::new(20));
    let clients: Vec<_> = (0..20)
        .map(|client| {
            let (files, hostport, barrier) = (files.clone(), front.hostport.clone(), barrier.clone());
            std::thread::spawn(move || -> Result<(), String> {
                let mut conn = Conn::open(&hostport, STALL).map_err(|e| e.to_string())?;
                barrier.wait();
                for (rel, bytes) in files.iter() {
                    let a = conn.request("GET", &format!("/cache/{rel}"), &[]).map_err(|e| format!("{rel}: {e}"))?;
                    if a.status != 200 || &a.body != bytes {
                        return Err(format!("client {client}: {rel}: {} ({} bytes)", a.status, a.body.len()));
                    }
                }
                Ok(())
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap().unwrap();
    }
    // Stored as served: the front's files are the upstream's, byte for byte (signatures kept).
    for (rel, bytes) in files.iter() {
        assert_eq!(&std::fs::read(front_root.cache().join(rel)).unwrap(), bytes, "{rel}");
    }

    // A node (nix copy into an empty store) verifies the upstream's signatures through the front.
    let closure = world_closure("flox/hello");
    let store = Store::new();
    nix_copy(&format!("{}/cache", front.url()), store.0.path(), &closure, &world_key(), Duration::from_secs(60))
        .unwrap();
    // ... and refuses them without the upstream's key.
    let other = Store::new();
    let wrong_key = "other-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    assert!(nix_copy(&format!("{}/cache", front.url()), other.0.path(), &closure, wrong_key, Duration::from_secs(60))
        .is_err());

    // Missing upstream too: 404, and nothing stored.
    let mut conn = Conn::open(&front.hostport, STALL).unwrap();
    let missing = "/cache/00000000000000000000000000000000.narinfo";
    assert_eq!(conn.request("GET", missing, &[]).unwrap().status, 404);
    assert_eq!(conn.request("GET", "/cache/nar/0000.nar", &[]).unwrap().status, 404);
    let leftovers: Vec<_> = std::fs::read_dir(front_root.cache())
        .unwrap()
        .chain(std::fs::read_dir(front_root.cache().join("nar")).unwrap())
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");

    let upstream_log = upstream.stop();
    for (rel, _) in files.iter() {
        assert_eq!(served(&upstream_log, rel), 1, "upstream served {rel} not exactly once:\n{upstream_log}");
    }

    // Upstream down: everything the front stored still serves; a miss says the upstream is unreachable.
    let mut conn = Conn::open(&front.hostport, STALL).unwrap();
    for (rel, bytes) in files.iter() {
        let a = conn.request("GET", &format!("/cache/{rel}"), &[]).unwrap();
        assert_eq!((a.status, &a.body), (200, bytes), "{rel}");
    }
    assert_eq!(conn.request("GET", missing, &[]).unwrap().status, 502);
    let store = Store::new();
    nix_copy(&format!("{}/cache", front.url()), store.0.path(), &closure, &world_key(), Duration::from_secs(60))
        .unwrap();
    let front_log = front.stop();
    assert!(front_log.contains(&format!("GET {missing} 502 -")), "{front_log}");
}

#[test]
fn upstreams_come_from_hub_json_and_bad_ones_are_refused() {
    let root = Root::new(false);
    let out = std::process::Command::new(support::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--upstream", "ftp://example.invalid/cache", "--root"])
        .arg(root.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("upstream cache URL \"ftp://example.invalid/cache\" is invalid")
            && err.contains("http://HOST[:PORT]"),
        "{err}"
    );

    // The same key in hub.json.
    let upstream_root = Root::new(true);
    let upstream = Server::start(upstream_root.path(), &[]);
    let hub_json = root.path().join("hub.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&hub_json).unwrap()).unwrap();
    config["upstream"] = serde_json::json!([format!("{}/cache", upstream.url())]);
    std::fs::write(&hub_json, serde_json::to_vec(&config).unwrap()).unwrap();
    let front = Server::start(root.path(), &[]);
    let rel = upstream_root.cache_files().into_iter().find(|r| r.ends_with(".narinfo")).unwrap();
    let a = Conn::open(&front.hostport, STALL).unwrap().request("HEAD", &format!("/cache/{rel}"), &[]).unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("content-length").unwrap(),
        std::fs::metadata(upstream_root.cache().join(&rel)).unwrap().len().to_string()
    );
    front.stop();
    assert_eq!(served(&upstream.stop(), &rel), 1);
}

/// The cluster case with real Nix clients: 20 separate stores (as 20 nodes have) pull one
/// cold environment through the front hub at once; each verifies the upstream's signatures, and
/// the upstream serves each of the closure's narinfos and NARs exactly once.
#[test]
fn twenty_nix_stores_pull_a_cold_environment_through_one_front_hub() {
    let upstream_root = Root::new(true);
    let upstream = Server::start(upstream_root.path(), &[]);
    let front_root = Root::new(false);
    let front = Server::start(front_root.path(), &["--upstream", &format!("{}/cache", upstream.url())]);
    let closure = Arc::new(world_closure("flox/hello"));
    let key = Arc::new(world_key());
    let substituter = format!("{}/cache", front.url());
    let barrier = Arc::new(Barrier::new(20));
    let started = std::time::Instant::now();
    let nodes: Vec<_> = (0..20)
        .map(|node| {
            let (closure, key, substituter, barrier) =
                (closure.clone(), key.clone(), substituter.clone(), barrier.clone());
            std::thread::spawn(move || {
                let store = Store::new();
                barrier.wait();
                nix_copy(&substituter, store.0.path(), &closure, &key, Duration::from_secs(120))
                    .map_err(|e| format!("node {node}: {e}"))?;
                for p in closure.iter() {
                    if !store.0.path().join(p.trim_start_matches('/')).exists() {
                        return Err(format!("node {node}: {p} missing"));
                    }
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for n in nodes {
        n.join().unwrap().unwrap();
    }
    eprintln!("20 cold pulls through the front hub: {:?}", started.elapsed());
    front.stop();
    let log = upstream.stop();
    let nars: Vec<&str> = log.lines().filter(|l| l.contains("GET /cache/nar/")).collect();
    assert!(!nars.is_empty(), "{log}");
    for (rel, _) in upstream_root.cache_files().iter().map(|r| (r, ())) {
        assert!(served(&log, rel) <= 1, "upstream served {rel} more than once:\n{log}");
    }
    // Every NAR the clients needed came from upstream once (the closure's narinfos name them).
    for p in closure.iter() {
        let hash = &p["/nix/store/".len().."/nix/store/".len() + 32];
        let narinfo = std::fs::read_to_string(front_root.cache().join(format!("{hash}.narinfo"))).unwrap();
        let url = narinfo.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
        assert_eq!(served(&log, url), 1, "{url}:\n{log}");
        assert_eq!(served(&log, &format!("{hash}.narinfo")), 1, "{hash}.narinfo:\n{log}");
    }
}

/// A port where nothing listens.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/cache")
}

/// Accepts connections and never answers (until dropped): a cache that hangs.
struct Silent {
    url: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl Silent {
    fn start() -> Silent {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/cache", listener.local_addr().unwrap());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, a) = (stop.clone(), accepted.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                a.fetch_add(1, Ordering::SeqCst);
                held.push(conn);
            }
        });
        Silent { url, stop, accepted }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(self.url.trim_start_matches("http://").trim_end_matches("/cache"));
    }
}

/// The case for the hub: in front of the good upstream sit a dead one (closed port), a
/// silent one and one serving truncated NARs. A real Nix client still gets the whole closure
/// through the front, each file as the good upstream has it; the dead and silent ones are asked
/// once (their nix-cache-info), not once per file.
#[test]
fn a_dead_a_silent_and_a_corrupt_upstream_before_a_good_one_still_serve() {
    let good_root = Root::new(true);
    let good = Server::start(good_root.path(), &[]);
    // The corrupt upstream: the same narinfos, every NAR cut to half.
    let corrupt_root = Root::new(true);
    for rel in corrupt_root.cache_files().into_iter().filter(|r| r.starts_with("nar/")) {
        let file = corrupt_root.cache().join(&rel);
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    }
    let corrupt = Server::start(corrupt_root.path(), &[]);
    let silent = Silent::start();
    let dead = closed_port_url();
    let upstreams =
        [dead.clone(), silent.url.clone(), format!("{}/cache", corrupt.url()), format!("{}/cache", good.url())]
            .join(",");
    let front_root = Root::new(false);
    let front = Server::start(front_root.path(), &["--upstream", &upstreams]);

    let closure = world_closure("flox/hello");
    let store = Store::new();
    nix_copy(&format!("{}/cache", front.url()), store.0.path(), &closure, &world_key(), Duration::from_secs(60))
        .unwrap();
    for p in &closure {
        assert!(store.0.path().join(p.trim_start_matches('/')).exists(), "{p} missing");
    }
    // Every file the front stored is the good upstream's, byte for byte.
    for rel in front_root.cache_files() {
        assert_eq!(
            std::fs::read(front_root.cache().join(&rel)).unwrap(),
            std::fs::read(good_root.cache().join(&rel)).unwrap(),
            "{rel}"
        );
    }
    assert_eq!(silent.accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "the silent upstream was asked once");
    let log = front.stop();
    assert!(log.contains(&format!("upstream {dead} is down (request failed: ")), "{log}");
    assert!(log.contains("corrupt NAR: its "), "{log}");
    let corrupt_log = corrupt.stop();
    assert!(corrupt_log.contains("GET /cache/nar/"), "the corrupt upstream was asked for NARs first");
    good.stop();
}

/// Two upstreams with the same files: the one whose nix-cache-info says the lower Priority
/// serves them all, although it is listed second.
#[test]
fn upstream_priority_decides_the_order() {
    let first_root = Root::new(true);
    let second_root = Root::new(true);
    std::fs::write(
        second_root.cache().join("nix-cache-info"),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 10\n",
    )
    .unwrap();
    std::fs::write(first_root.cache().join("nix-cache-info"), "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n")
        .unwrap();
    let first = Server::start(first_root.path(), &[]);
    let second = Server::start(second_root.path(), &[]);
    let front_root = Root::new(false);
    let upstreams = format!("{}/cache,{}/cache", first.url(), second.url());
    let front = Server::start(front_root.path(), &["--upstream", &upstreams]);
    let files = first_root.cache_files();
    let mut conn = Conn::open(&front.hostport, STALL).unwrap();
    for rel in &files {
        assert_eq!(conn.request("GET", &format!("/cache/{rel}"), &[]).unwrap().status, 200, "{rel}");
    }
    front.stop();
    let (first_log, second_log) = (first.stop(), second.stop());
    for rel in &files {
        assert_eq!(served(&first_log, rel), 0, "{rel} came from the lower-priority upstream");
        assert_eq!(served(&second_log, rel), 1, "{rel}");
    }
}
