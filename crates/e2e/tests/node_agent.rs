//! The node agent (`imageless node agent --standalone`: no API server here) on a node with
//! real containerd 1.7.24, runc and the local hub:
//! - disk pressure: the state root on a tmpfs filled past the high threshold with environments,
//!   one in use by a running pod; the agent gets under the low threshold removing the least
//!   recently used first and never the one in use; a pod of a removed environment pulls again
//!   and runs; a pull that cannot fit fails with one error naming needed and free bytes and
//!   leaves nothing; the metrics, parsed by Python's prometheus_client, count what happened;
//! - pre-pull: with two environments in the node config's list, a fresh node has both before
//!   any pod, and their pods start warm (no fetch from the hub, only `hit` records); the agent's
//!   RSS and CPU at idle are measured.
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imageless_e2e::flox_node::{self as support, env_pod, imageless, FloxNode};
use imageless_e2e::ContainerdVersion;
use imageless_node::pull_record::{self, Phase};

const EMPTY: &str = "flox/empty:1.0.0";
const V: ContainerdVersion = ContainerdVersion::V1_7;

struct Agent {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Agent {
    fn start(node: &FloxNode) -> Agent {
        let port = support::free_port();
        let addr = format!("127.0.0.1:{port}");
        let log = node.dir.path().join("agent.log");
        let child = Command::new(imageless())
            .args(["node", "agent", "--standalone", "--gc-interval", "1s", "--metrics-listen", &addr])
            .arg("--config")
            .arg(&node.config_path)
            .env("IMAGELESS_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let agent = Agent { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while agent.try_scrape().is_none() {
            assert!(Instant::now() < deadline, "the agent never served /metrics:\n{}", agent.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn try_scrape(&self) -> Option<String> {
        let mut s = std::net::TcpStream::connect(&self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(s, "GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n").ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let (head, body) = resp.split_once("\r\n\r\n")?;
        assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.to_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
        Some(body.to_string())
    }

    /// The samples, as Python's prometheus_client parser reads the exposition:
    /// `name{label="v",…}` → value.
    fn metrics(&self) -> BTreeMap<String, f64> {
        parse_metrics(&self.try_scrape().expect("scrape"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PARSER: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
        out[s.name + ("{" + labels + "}" if labels else "")] = s.value
print(json.dumps(out))
"#;

fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut child = Command::new("python3")
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client could not parse the exposition (scripts/setup-machine.sh installs it): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(dir: &Path, size: &str) -> Unmount {
    std::fs::create_dir_all(dir).unwrap();
    let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).status();
    assert!(ok.unwrap().success(), "mount a tmpfs at {}", dir.display());
    Unmount(dir.to_path_buf())
}

fn remount(dir: &Path, bytes: u64) {
    let ok = Command::new("mount").args(["-o", &format!("remount,size={bytes}")]).arg(dir).status();
    assert!(ok.unwrap().success(), "remount the tmpfs at {} with {bytes} bytes", dir.display());
}

/// (capacity, available) of the filesystem at `dir`.
fn space(dir: &Path) -> (u64, u64) {
    let st = rustix::fs::statvfs(dir).unwrap();
    (st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)
}

fn used_percent(dir: &Path) -> f64 {
    let (cap, avail) = space(dir);
    100.0 - avail as f64 * 100.0 / cap as f64
}

/// Environment name → key, from each rendered environment's `source` (`owner/name:N mode`).
fn rendered(node: &FloxNode) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(node.state_root.join("envs")).into_iter().flatten().flatten() {
        let key = e.file_name().to_string_lossy().into_owned();
        if let Ok(source) = std::fs::read_to_string(e.path().join("source")) {
            let env = source.split(':').next().unwrap().to_string();
            out.insert(env, key);
        }
    }
    out
}

fn pull(node: &FloxNode, env: &str) -> std::process::Output {
    Command::new(imageless()).args(["pull", env]).env("IMAGELESS_CONFIG", &node.config_path).output().unwrap()
}

/// Store path base names of `env`'s live generation, and each path's NarSize.
fn closure(node: &FloxNode, env: &str) -> BTreeMap<String, u64> {
    let world = node.world();
    let gen = world["environments"][env]["live_generation"].to_string();
    let paths = world["environments"][env]["generations"][gen.as_str()]["closure"].as_array().unwrap().clone();
    paths
        .iter()
        .map(|p| {
            let base = p.as_str().unwrap().trim_start_matches("/nix/store/").to_string();
            let hash = &base[..32];
            let info = std::fs::read_to_string(node.hub.root.join(format!("cache/{hash}.narinfo"))).unwrap();
            let size = info.lines().find_map(|l| l.strip_prefix("NarSize: ")).unwrap().trim().parse().unwrap();
            (base, size)
        })
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-") || n.starts_with(".gc-"))
        .collect()
}

#[test]
fn disk_pressure_gc_keeps_the_store_under_the_low_threshold_and_never_touches_one_in_use() {
    let node = FloxNode::start(V);
    let state = node.state_root.clone();
    assert!(std::fs::read_dir(&state).map(|d| d.count() == 0).unwrap_or(true), "nothing in the state root yet");
    let _tmpfs = mount_tmpfs(&state, "400m");
    let agent = Agent::start(&node);
    // What each pull should fetch: the store's contents simulated from the world's closures.
    let mut store: BTreeSet<String> = BTreeSet::new();
    let expected_bytes = std::cell::Cell::new(0u64);
    let fetch = |node: &FloxNode, env: &str, store: &mut BTreeSet<String>| {
        for (base, size) in closure(node, env) {
            if store.insert(base) {
                expected_bytes.set(expected_bytes.get() + size);
            }
        }
    };

    support::block_on(async {
        // In use all along, and the least recently used of all: never removed.
        let echoip = env_pod("echoip", "flox/echoip", EMPTY, &["echoip"]);
        let running = node.run(&echoip, &[]).await.expect("echoip pod starts");
        fetch(&node, "flox/echoip", &mut store);
        for env in ["flox/hello", "flox/large", "flox/attach"] {
            std::thread::sleep(Duration::from_millis(50));
            let out = pull(&node, env);
            assert!(out.status.success(), "imageless pull {env}: {}", String::from_utf8_lossy(&out.stderr));
            fetch(&node, env, &mut store);
        }
        let keys = rendered(&node);
        assert_eq!(keys.len(), 4, "{keys:?}");
        let metrics = agent.metrics();
        assert_eq!(metrics.get("imageless_gc_runs_total"), Some(&0.0), "under the threshold: no gc yet");

        // Shrink the filesystem to 88 % full: over the high threshold (85 %).
        let (cap, avail) = space(&state);
        let used = cap - avail;
        remount(&state, used * 100 / 88);
        assert!(used_percent(&state) >= 85.0, "{:.1} %", used_percent(&state));
        wait_for("the agent's gc", Duration::from_secs(60), || {
            agent.metrics().get("imageless_gc_runs_total").copied().unwrap_or(0.0) >= 1.0
        });
        let after = used_percent(&state);
        assert!(after <= 80.0, "under the low threshold after gc: {after:.1} %\n{}", agent.log());
        let left = rendered(&node);
        assert!(left.contains_key("flox/echoip"), "the environment in use stays: {left:?}");
        assert!(left.contains_key("flox/attach"), "the most recently used one was not needed: {left:?}");
        assert!(!left.contains_key("flox/hello") && !left.contains_key("flox/large"), "{left:?}");
        // Least recently used first: hello (older) before large.
        let log = agent.log();
        let removed: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("least recently used environment removed"))
            .filter_map(|l| keys.iter().find(|(_, k)| l.contains(k.as_str())).map(|(e, _)| e.as_str()))
            .collect();
        assert_eq!(removed, ["flox/hello", "flox/large"], "{log}");
        store
            .retain(|b| closure(&node, "flox/echoip").contains_key(b) || closure(&node, "flox/attach").contains_key(b));
        for base in &store {
            assert!(node.store_dir().join(base).exists(), "{base} of a kept environment is still in the store");
        }
        assert!(!node
            .store_dir()
            .join(closure(&node, "flox/large").keys().find(|b| b.contains("liblarge")).unwrap())
            .exists());

        // A pod of a removed environment pulls it again and runs.
        let hello = env_pod("hello", "flox/hello", EMPTY, &["hello"]);
        let (code, out, err) = node.run_to_end(&hello, &[]).await.expect("hello pod");
        assert_eq!((code, out.trim()), (0, "Hello, world! (hello 2.12)"), "{err}");
        fetch(&node, "flox/hello", &mut store);

        // A pull that cannot fit: one error naming needed and free bytes, nothing written.
        let (cap, avail) = space(&state);
        remount(&state, cap - avail + 20_000_000);
        let envs_before = rendered(&node);
        let store_before: BTreeSet<String> = std::fs::read_dir(node.store_dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let out = pull(&node, "flox/large");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success());
        let missing: BTreeMap<String, u64> =
            closure(&node, "flox/large").into_iter().filter(|(b, _)| !store.contains(b)).collect();
        let needed: u64 = missing.values().sum();
        let expect = format!(
            "flox: pulling flox/large needs {} ({needed} bytes, {} store paths) in the node store at {}; its filesystem has ",
            imageless_node::pressure::human(needed),
            missing.len(),
            node.store_dir().display()
        );
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("flox:")).collect();
        assert_eq!(errors.len(), 1, "one error: {stderr}");
        assert!(errors[0].contains(&expect), "{stderr}\nexpected: {expect}");
        assert!(errors[0].contains(" bytes) free. Nothing was written."), "{stderr}");
        assert_eq!(rendered(&node), envs_before, "no environment appeared");
        let store_after: BTreeSet<String> = std::fs::read_dir(node.store_dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(store_after, store_before, "nothing half-written in the store");
        assert!(leftovers(&state.join("envs")).is_empty() && leftovers(&node.store_dir()).is_empty());

        // The metrics count what happened: 5 pulls (echoip's by its pod, hello, large, attach,
        // hello again by its pod), 1 refused, the bytes of what was fetched, 1+ gc run.
        std::thread::sleep(Duration::from_millis(1500));
        let m = agent.metrics();
        eprintln!("metrics: {m:#?}");
        assert_eq!(m["imageless_pulls_total{result=\"success\"}"], 5.0);
        assert_eq!(m["imageless_pulls_total{result=\"failure\"}"], 1.0);
        assert_eq!(m["imageless_errors_total{kind=\"no-room\"}"], 1.0);
        assert_eq!(m["imageless_pull_duration_seconds_count"], 6.0);
        let cache_source = format!("imageless_pull_fetched_bytes_total{{source=\"{}/cache\"}}", node.hub.url);
        assert_eq!(m.get(&cache_source).copied(), Some(expected_bytes.get() as f64), "{m:#?}");
        assert!(m["imageless_gc_runs_total"] >= 1.0);
        assert_eq!(m["imageless_gc_removed_environments_total"], 2.0);
        assert!(m["imageless_gc_freed_bytes_total"] >= 200e6, "flox/large's bytes came back");
        assert_eq!(m["imageless_environments"], 3.0);
        assert!(m["imageless_environment_cache_hits_total"] >= 2.0, "the pods' creates after their prefetch");
        running.remove().await.unwrap();
    });
}

/// `(utime + stime)` clock ticks, VmRSS and RssAnon (kB) of `pid`.
fn cpu_and_rss(pid: u32) -> (u64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |key: &str| -> u64 {
        let v = status.lines().find_map(|l| l.strip_prefix(key)).unwrap();
        v.trim().trim_end_matches(" kB").trim().parse().unwrap()
    };
    (ticks, kb("VmRSS:"), kb("RssAnon:"))
}

#[test]
fn prepulled_environments_are_warm_before_any_pod_and_the_agent_idles_small() {
    let node = FloxNode::start_with(V, "prepull = [\"flox/hello\", \"flox/echoip:2\"]");
    let agent = Agent::start(&node);
    wait_for("both pre-pulls", Duration::from_secs(120), || {
        let m = agent.metrics();
        m.get("imageless_prepull_ready{environment=\"flox/hello\"}") == Some(&1.0)
            && m.get("imageless_prepull_ready{environment=\"flox/echoip:2\"}") == Some(&1.0)
    });
    let keys = rendered(&node);
    assert!(keys.contains_key("flox/hello") && keys.contains_key("flox/echoip"), "{keys:?}");
    for key in keys.values() {
        assert!(node.state_root.join("views").join(key).is_dir(), "the closure view is built too");
    }

    // Idle: RSS and CPU over 10 s.
    let pid = agent.child.id();
    let (t0, _, _) = cpu_and_rss(pid);
    std::thread::sleep(Duration::from_secs(10));
    let (t1, rss_kb, anon_kb) = cpu_and_rss(pid);
    let hz = 100.0; // USER_HZ on Linux
    let cpu_percent = (t1 - t0) as f64 / hz / 10.0 * 100.0;
    eprintln!(
        "node agent at idle: RSS {:.1} MB (anonymous {:.1} MB; the rest is this debug binary's mapped file), CPU {cpu_percent:.2} % of a core",
        rss_kb as f64 / 1024.0,
        anon_kb as f64 / 1024.0
    );
    // The debug binary (hundreds of MB with debug info) maps tens of MB of its own file; what
    // the agent allocates is the anonymous part. The release figure is the bench's.
    assert!(anon_kb <= 20 * 1024, "anonymous RSS {anon_kb} kB");
    assert!(cpu_percent <= 1.0, "CPU {cpu_percent:.2} %");

    let mark = node.hub.log_mark();
    let records = pull_record::Tail::from_end(&node.state_root);
    let mut records = records;
    support::block_on(async {
        let hello = env_pod("hello", "flox/hello", EMPTY, &["hello"]);
        let (code, out, err) = node.run_to_end(&hello, &[]).await.expect("hello pod");
        assert_eq!((code, out.trim()), (0, "Hello, world! (hello 2.12)"), "{err}");
        let echoip = env_pod("echoip", "flox/echoip:2", EMPTY, &["echoip"]);
        let running = node.run(&echoip, &[]).await.expect("echoip pod starts");
        running.remove().await.unwrap();
    });
    let (narinfos, nars) = node.hub.cache_gets_since(mark);
    assert_eq!((narinfos, nars), (0, 0), "warm: nothing fetched from the hub's cache");
    let phases: Vec<String> = records
        .poll()
        .iter()
        .map(|r| match &r.phase {
            Phase::Hit => format!("hit {}", r.env),
            other => format!("{other:?} {}", r.env),
        })
        .collect();
    assert!(!phases.is_empty() && phases.iter().all(|p| p.starts_with("hit ")), "only hits: {phases:?}");
    let (_, rss_kb, anon_kb) = cpu_and_rss(pid);
    eprintln!(
        "node agent after the pods: RSS {:.1} MB, anonymous {:.1} MB",
        rss_kb as f64 / 1024.0,
        anon_kb as f64 / 1024.0
    );
}
