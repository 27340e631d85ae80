//! The hub's binary cache on object storage (Garage on loopback):
//! - three `imageless hub serve --cache-store s3://…` replicas on one bucket of a three-node
//!   Garage cluster (replication factor 3), pulling through from the world's hub, behind a
//!   round-robin TCP front: 20 node caches (the node's own fetch client, each its own empty
//!   store) pull one cold environment at once; a Garage node is killed with SIGKILL once the
//!   upstream has served its first NAR. Nothing fails, every store holds the same tree, and the
//!   upstream served each NAR of the closure exactly once (the fill owner of each file fills it,
//!   see crates/hub/src/fill_peers.rs). Each replica also answers floxmeta git reads of public
//!   environments (passed through to the hub that holds floxmeta: `--upstream-git`).
//! - `nix copy --from` one replica (real Nix) of every public environment's every generation.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use imageless_core::store_path::StorePath;
use imageless_e2e::flox_node::{free_port, imageless, world_root, Hub};
use imageless_e2e::garage::Garage;
use imageless_e2e::store_tree::tree;
use imageless_node::config::NodeConfig;
use imageless_node::fetch::Fetcher;

const BUCKET: &str = "hub-cache";
const NODES: usize = 20;
const ENV: &str = "flox/devtools";

/// One `imageless hub serve` replica over a fresh `hub init` root.
struct Replica {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Replica {
    fn start(dir: &Path, port: u16, extra: &[String]) -> Replica {
        let root = dir.join("root");
        let out = Command::new(imageless()).args(["hub", "init", "--root"]).arg(&root).output().unwrap();
        assert!(out.status.success(), "hub init: {}", String::from_utf8_lossy(&out.stderr));
        let log = dir.join("hub.log");
        let mut child = Command::new(imageless())
            .args(["hub", "serve", "--root"])
            .arg(&root)
            .arg(format!("--listen=127.0.0.1:{port}"))
            .args(extra)
            .env("IMAGELESS_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().strip_prefix("listening on ").map(String::from).unwrap_or_else(|| {
            let _ = child.kill();
            panic!("replica said {line:?}: {}", std::fs::read_to_string(&log).unwrap_or_default())
        });
        Replica { child, url, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A round-robin TCP front: each accepted connection goes to the next backend.
fn round_robin(backends: Vec<String>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let next = AtomicUsize::new(0);
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let backend = &backends[next.fetch_add(1, Ordering::Relaxed) % backends.len()];
            let Ok(server) = TcpStream::connect(backend.trim_start_matches("http://")) else { continue };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut c1, mut s1) = (client, server);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c1, &mut s1);
                let _ = s1.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    format!("http://{addr}")
}

fn credentials(dir: &Path, garage: &Garage) -> PathBuf {
    let path = dir.join("aws-credentials");
    garage.write_credentials_file(&path).unwrap();
    path
}

fn cache_store(garage: &Garage) -> String {
    format!(
        "s3://{BUCKET}?endpoint={}&region={}&scheme=http",
        garage.s3_endpoint.trim_start_matches("http://"),
        imageless_e2e::garage::REGION
    )
}

fn closure_of(world: &serde_json::Value, env: &str) -> Vec<String> {
    let e = &world["environments"][env];
    let gen = e["live_generation"].to_string();
    e["generations"][gen.as_str()]["closure"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().into()).collect()
}

/// The NAR file (`nar/…`) of each path, from the upstream's narinfos.
fn nar_files(cache: &Path, closure: &[String]) -> Vec<String> {
    closure
        .iter()
        .map(|p| {
            let hash = &p.trim_start_matches("/nix/store/")[..32];
            let text = std::fs::read_to_string(cache.join(format!("{hash}.narinfo"))).unwrap();
            text.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap().trim().to_string()
        })
        .collect()
}

/// How often the upstream's access log shows each of `files` served (GET, 200) since `mark`.
fn served(hub: &Hub, mark: usize, files: &[String]) -> BTreeMap<String, usize> {
    let bytes = std::fs::read(&hub.log).unwrap();
    let log = String::from_utf8_lossy(&bytes[mark..]);
    files
        .iter()
        .map(|f| {
            let needle = format!("GET /cache/{f} 200 ");
            (f.clone(), log.lines().filter(|l| l.contains(&needle)).count())
        })
        .collect()
}

#[test]
fn three_replicas_on_one_bucket_fill_each_nar_once_and_survive_a_garage_node() {
    let _ = world_root();
    let work = tempfile::tempdir().unwrap();
    let upstream = Hub::start(work.path());
    let world = upstream.world().unwrap();
    let closure = closure_of(&world, ENV);
    let nars = nar_files(&upstream.root.join("cache"), &closure);

    let mut garage = Garage::start_cluster(3).unwrap();
    garage.create_bucket(BUCKET).unwrap();
    let creds = credentials(work.path(), &garage);

    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    let replicas: Vec<Replica> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let dir = work.path().join(format!("replica-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let extra = vec![
                format!("--upstream={}/cache", upstream.url),
                format!("--upstream-git={}/git", upstream.url),
                format!("--cache-store={}", cache_store(&garage)),
                format!("--cache-store-credentials={}", creds.display()),
                format!("--fill-peers={peers}"),
                format!("--fill-self=http://127.0.0.1:{port}"),
            ];
            Replica::start(&dir, *port, &extra)
        })
        .collect();

    // floxmeta of public environments through every replica (passed through to the git hub).
    for r in &replicas {
        let out = Command::new("git").args(["ls-remote", &format!("{}/git/flox/floxmeta", r.url)]).output().unwrap();
        let refs = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && refs.contains("refs/heads/devtools"), "{}: {refs} {}", r.url, r.log());
    }

    let front = round_robin(replicas.iter().map(|r| r.url.clone()).collect());
    let key = upstream.public_key().unwrap();
    let wanted: Vec<StorePath> = closure.iter().map(|p| StorePath::parse(p).unwrap()).collect();
    let nodes = work.path().join("nodes");
    let fetchers: Vec<Fetcher> = (0..NODES)
        .map(|i| {
            let config = NodeConfig {
                state_root: nodes.join(format!("node-{i}")),
                substituters: vec![format!("{front}/cache")],
                trusted_public_keys: vec![key.clone()],
                ..NodeConfig::default()
            };
            Fetcher::from_config(&config).unwrap()
        })
        .collect();

    let mark = upstream.log_mark();
    let done = Arc::new(AtomicBool::new(false));
    let outcomes = std::thread::scope(|s| {
        // Kill Garage node 2 once the upstream served its first NAR: the fills are under way.
        let killer = s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                if served(&upstream, mark, &nars).values().any(|n| *n > 0) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let during = !done.load(Ordering::Relaxed);
            garage.kill_node(2).unwrap();
            during
        });
        let handles: Vec<_> = fetchers.iter().map(|f| s.spawn(|| f.realize(&wanted))).collect();
        let outcomes: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        done.store(true, Ordering::Relaxed);
        let during = killer.join().unwrap();
        eprintln!("garage node 2 killed {} the pulls finished", if during { "before" } else { "after" });
        outcomes
    });
    let logs = || replicas.iter().map(|r| r.log()).collect::<Vec<_>>().join("\n---\n");
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let report = outcome.unwrap_or_else(|e| panic!("node {i}: {e}\n{}", logs()));
        assert_eq!(report.closure.len(), closure.len(), "node {i}");
    }
    let reference = tree(&nodes.join("node-0/store"), &closure);
    assert!(reference.len() > closure.len());
    for i in 1..NODES {
        assert_eq!(tree(&nodes.join(format!("node-{i}/store")), &closure), reference, "node {i}");
    }
    let counts = served(&upstream, mark, &nars);
    assert!(counts.values().all(|n| *n == 1), "each NAR served once by the upstream: {counts:?}\n{}", logs());
    let narinfos: Vec<String> =
        closure.iter().map(|p| format!("{}.narinfo", &p.trim_start_matches("/nix/store/")[..32])).collect();
    let counts = served(&upstream, mark, &narinfos);
    assert!(counts.values().all(|n| *n == 1), "each narinfo served once by the upstream: {counts:?}");
    // The bucket holds every narinfo and NAR of the closure (a Nix S3 binary cache by itself).
    let store = garage.store(BUCKET).unwrap();
    let http = reqwest::blocking::Client::new();
    for key in narinfos.iter().chain(&nars).chain(std::iter::once(&"nix-cache-info".to_string())) {
        let status = http.get(store.presign_get(key).as_str()).send().unwrap().status();
        assert!(status.is_success(), "{key}: {status}");
    }

    // After the kill, a fresh node still pulls (reads with one of three Garage nodes gone).
    let late = NodeConfig {
        state_root: nodes.join("late"),
        substituters: vec![format!("{front}/cache")],
        trusted_public_keys: vec![key.clone()],
        ..NodeConfig::default()
    };
    Fetcher::from_config(&late).unwrap().realize(&wanted).unwrap();
    assert_eq!(tree(&nodes.join("late/store"), &closure), reference);
    let _ = Command::new("chmod").arg("-R").arg("u+w").arg(&nodes).status();
}

#[test]
fn nix_copy_from_a_replica_on_s3_for_every_public_environment() {
    let _ = world_root();
    let work = tempfile::tempdir().unwrap();
    let upstream = Hub::start(work.path());
    let world = upstream.world().unwrap();
    let private: Vec<String> =
        world["catalog_store_paths"].as_array().into_iter().flatten().map(|p| p.as_str().unwrap().into()).collect();
    let mut paths = std::collections::BTreeSet::new();
    for (name, env) in world["environments"].as_object().unwrap() {
        // flox/xlarge is 1.6 GB: its own tests are large_env and the bench's P11.
        if env["private"].as_bool().unwrap_or(false) || name == "flox/xlarge" {
            continue;
        }
        for generation in env["generations"].as_object().unwrap().values() {
            for p in generation["closure"].as_array().unwrap() {
                let p = p.as_str().unwrap().to_string();
                if !private.contains(&p) {
                    paths.insert(p);
                }
            }
        }
        eprintln!("{name}: included");
    }

    let garage = Garage::start().unwrap();
    garage.create_bucket(BUCKET).unwrap();
    let creds = credentials(work.path(), &garage);
    let dir = work.path().join("replica");
    std::fs::create_dir_all(&dir).unwrap();
    let replica = Replica::start(
        &dir,
        free_port(),
        &[
            format!("--upstream={}/cache", upstream.url),
            format!("--cache-store={}", cache_store(&garage)),
            format!("--cache-store-credentials={}", creds.display()),
        ],
    );
    let target = work.path().join("nix-root");
    let out = Command::new("nix")
        .args(["--extra-experimental-features", "nix-command", "copy", "--from"])
        .arg(format!("{}/cache", replica.url))
        .arg("--to")
        .arg(&target)
        .args(["--option", "trusted-public-keys", &upstream.public_key().unwrap()])
        .args(["--option", "narinfo-cache-negative-ttl", "0"])
        .args(&paths)
        .output()
        .unwrap();
    assert!(out.status.success(), "nix copy: {}\n{}", String::from_utf8_lossy(&out.stderr), replica.log());
    for p in &paths {
        assert!(target.join(p.trim_start_matches('/')).exists(), "{p} not in the copy");
    }
    eprintln!("nix copy: {} paths of every public environment", paths.len());

    // The replica's disk tier kept what it served whole from the bucket (in the background).
    let tier = dir.join("root/cache/nar");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let kept = loop {
        let kept = std::fs::read_dir(&tier)
            .map(|d| d.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count())
            .unwrap_or(0);
        if kept >= paths.len() || std::time::Instant::now() > deadline {
            break kept;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(kept, paths.len(), "NARs kept in the replica's disk tier");

    // HEAD, Range and a missing file, answered from the bucket as from disk.
    let some: Vec<String> = paths.iter().take(1).cloned().collect();
    let nar = &nar_files(&upstream.root.join("cache"), &some)[0];
    let bytes = std::fs::read(upstream.root.join("cache").join(nar)).unwrap();
    let http = reqwest::blocking::Client::new();
    let head = http.head(format!("{}/cache/{nar}", replica.url)).send().unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], bytes.len().to_string().as_str());
    let range = http.get(format!("{}/cache/{nar}", replica.url)).header("range", "bytes=10-19").send().unwrap();
    assert_eq!(range.status(), 206);
    assert_eq!(range.bytes().unwrap().as_ref(), &bytes[10..20]);
    let missing = http.get(format!("{}/cache/{}.narinfo", replica.url, "0".repeat(32))).send().unwrap();
    assert_eq!(missing.status(), 404);
    let info = http.get(format!("{}/cache/nix-cache-info", replica.url)).send().unwrap().text().unwrap();
    assert!(info.contains("StoreDir: /nix/store"), "{info}");
    let _ = Command::new("chmod").arg("-R").arg("u+w").arg(&target).status();
}

/// `hub publish` on a hub whose cache is a bucket: the NARs and narinfos the publish added to
/// its local cache are in the bucket afterwards (NARs first, narinfos last), so every replica
/// serves the new generation without pulling it through.
#[test]
fn hub_publish_puts_what_it_adds_into_the_cache_bucket() {
    let world = world_root();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("hub");
    let imageless = imageless_e2e::flox_node::imageless();
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(Command::new(&imageless).args(["hub", "init", "--root"]).arg(&root));
    let garage = Garage::start().unwrap();
    garage.create_bucket(BUCKET).unwrap();
    let creds = credentials(work.path(), &garage);
    let hub_json = root.join("hub.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&hub_json).unwrap()).unwrap();
    config["cache_store"] = serde_json::json!(cache_store(&garage));
    config["cache_store_credentials"] = serde_json::json!(creds.display().to_string());
    std::fs::write(&hub_json, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    // flox/hello's closure into this machine's store (publish copies from there).
    let world_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(world.join("world.json")).unwrap()).unwrap();
    let closure = closure_of(&world_json, "flox/hello");
    run(Command::new("nix")
        .args(["--extra-experimental-features", "nix-command", "copy", "--no-check-sigs", "--from"])
        .arg(format!("file://{}", world.join("cache").display()))
        .args(&closure));
    let lock = world.join("world/envs/flox/hello/1/manifest.lock");
    run(Command::new(&imageless)
        .args(["hub", "publish", "--root"])
        .arg(&root)
        .args(["flox/hello", "--lock"])
        .arg(&lock));
    let store = garage.store(BUCKET).unwrap();
    let http = reqwest::blocking::Client::new();
    let local: Vec<String> = nar_files(&root.join("cache"), &closure);
    assert_eq!(local.len(), closure.len());
    for key in
        closure.iter().map(|p| format!("{}.narinfo", &p["/nix/store/".len().."/nix/store/".len() + 32])).chain(local)
    {
        let resp = http.get(store.presign_get(&key).as_str()).send().unwrap();
        assert_eq!(resp.status(), 200, "{key} is not in the bucket");
        assert_eq!(
            resp.bytes().unwrap().as_ref(),
            std::fs::read(root.join("cache").join(&key)).unwrap().as_slice(),
            "{key}"
        );
    }
}
