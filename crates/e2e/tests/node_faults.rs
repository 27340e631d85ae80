//! The node survives its neighbours and its own faults (real containerd, runc, flox runtime,
//! local hub): containerd killed mid-create, a full state disk during a pull, hundreds of
//! create/delete cycles and a hundred pods at once — every pod runs or fails cleanly, and
//! nothing (mounts, state, overlays, processes) is left behind.
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::future::join_all;
use imageless_e2e::flox_node::{self as support, flox_pod, imageless, FloxNode, Hub, NodeConfigFile};
use imageless_e2e::ContainerdVersion;

const EMPTY: &str = "flox/empty:1.0.0";
const BUSYBOX: &str = "busybox:local";

fn sleeper(name: &str, mutable: bool) -> String {
    let mut ann = vec![("flox.dev/environment", "flox/echoip")];
    if mutable {
        ann.push(("flox.dev/nix-mutable", "true"));
    }
    // As PID 1 a plain `sleep` ignores SIGTERM and every stop would wait out the grace period.
    flox_pod(name, &ann, BUSYBOX, &["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"])
}

fn host_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().map(String::from).collect()
}

fn processes() -> Vec<String> {
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    String::from_utf8_lossy(&ps.stdout).lines().map(String::from).collect()
}

/// The `-id` of a shim or proxy command line.
fn shim_id(args: &str) -> Option<&str> {
    let mut words = args.split_whitespace();
    words.by_ref().find(|w| *w == "-id")?;
    words.next()
}

/// For a failure message: each leftover shim's bundle (present or not, its files) and what
/// containerd's log says of it.
fn shim_diagnosis(node: &FloxNode, left: &[&String]) -> String {
    let bundles = node.containerd.dir().join("state/io.containerd.runtime.v2.task/k8s.io");
    let log = node.containerd.log_tail(4000);
    let mut out = String::new();
    for id in left.iter().filter_map(|l| shim_id(l)).collect::<std::collections::BTreeSet<_>>() {
        let files: Vec<String> = std::fs::read_dir(bundles.join(id))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        out.push_str(&format!("shim {id}: bundle files {files:?}\n"));
        for line in log.lines().filter(|l| l.contains(id)).take(15) {
            out.push_str(&format!("  {}\n", &line[..line.len().min(400)]));
        }
    }
    out
}

/// containerd 2.x SIGKILLed between a shim's `start` and its own record of that shim (the
/// bundle's bootstrap.json, written after `start` returns) cannot reconnect after its restart:
/// it deletes the bundle and the shim is orphaned, stock runc shim or ours alike (containerd
/// cleans such "leaked shims" only when it can connect, containerd#6860). When every process
/// left belongs to such a shim (its bundle is gone), this kills the runc shim, as an operator
/// would, and then our proxy must go with it (it exits with its shim): what is ours is still
/// checked. Returns whether it did so; the caller looks again.
fn forgotten_by_containerd(node: &FloxNode, left: &[&String]) -> bool {
    let bundles = node.containerd.dir().join("state/io.containerd.runtime.v2.task/k8s.io");
    let ids: Vec<&str> = left.iter().filter_map(|l| shim_id(l)).collect();
    if ids.len() != left.len() || ids.iter().any(|id| bundles.join(id).exists()) {
        return false;
    }
    let ps = Command::new("ps").args(["-eo", "pid=,args="]).output().unwrap();
    for line in String::from_utf8_lossy(&ps.stdout).lines() {
        let (pid, args) = line.trim_start().split_once(' ').unwrap_or_default();
        let stock_shim = args.contains("containerd-shim-runc-v2") && !args.contains("containerd-shim-flox-v2");
        if stock_shim && shim_id(args).is_some_and(|id| ids.contains(&id)) {
            let log = node.containerd.log_tail(4000);
            let mentions: Vec<&str> = log.lines().filter(|l| ids.iter().any(|id| l.contains(id))).take(20).collect();
            eprintln!("an orphaned shim containerd forgot ({args}); containerd's log of it:\n{}", mentions.join("\n"));
            // SAFETY: kill(2) on a pid read from ps; a pid gone meanwhile is only ESRCH.
            unsafe { libc::kill(pid.trim().parse().unwrap(), libc::SIGKILL) };
        }
    }
    // Our proxy exits with its shim.
    let deadline = Instant::now() + Duration::from_secs(5);
    while processes().iter().any(|l| shim_id(l).is_some_and(|id| ids.contains(&id))) {
        assert!(Instant::now() < deadline, "a proxy outlived its killed shim: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// Nothing of the node's is left once every pod is gone: per-container state, overlays,
/// mounts under containerd's dir or of ours on the host, prefetches, wrappers, shims.
fn assert_nothing_left(node: &FloxNode, mounts_before: &[String], what: &str) {
    let count = |sub: &str| std::fs::read_dir(node.state_root.join(sub)).map(|d| d.count()).unwrap_or(0);
    let listing = |sub: &str| -> Vec<String> {
        std::fs::read_dir(node.state_root.join(sub))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };
    assert_eq!(count("containers"), 0, "{what}: per-container state left: {:?}", listing("containers"));
    assert_eq!(count("overlays"), 0, "{what}: overlay dirs left");
    let below = node.containerd.mounts_below();
    assert!(below.is_empty(), "{what}: mounts under containerd's dir: {below:?}");
    let mounts = host_mounts();
    assert!(!mounts.iter().any(|m| m.contains("/run/flox")), "{what}: a flox mount left on the host");
    let new: Vec<&String> = mounts.iter().filter(|m| !mounts_before.contains(m)).collect();
    assert!(new.is_empty(), "{what}: host mounts added: {new:?}");
    // Shims exit a moment after their last container is deleted.
    let dir = node.containerd.dir().display().to_string();
    let wrapper = support::bin_dir().join("flox-runc").display().to_string();
    // Shim proxies of this build (one per pod on 1.7/2.x) exit with their shim.
    let launcher = support::bin_dir().join("containerd-shim-flox-v2").display().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut orphans_killed = false;
    loop {
        let ps = processes();
        let left: Vec<&String> = ps
            .iter()
            .filter(|l| {
                // Wrappers (and their prefetches) and proxies of this build; shims of this daemon.
                l.starts_with(&wrapper)
                    || l.starts_with(&launcher)
                    || (l.contains("containerd-shim") && l.contains(&dir))
            })
            .collect();
        if left.is_empty() {
            break;
        }
        if Instant::now() >= deadline && !orphans_killed && forgotten_by_containerd(node, &left) {
            orphans_killed = true;
            continue;
        }
        assert!(Instant::now() < deadline, "{what}: processes left: {left:?}\n{}", shim_diagnosis(node, &left));
        std::thread::sleep(Duration::from_millis(200));
    }
    // A proxy removes its pod's record (for the pod's later container starts) as it exits:
    // every record this node's pods wrote and left names a proxy that still answers (another
    // node's, if any). Records older than this node are another run's (/run outlives them).
    let born = std::fs::metadata(node.dir.path()).and_then(|m| m.created().or(m.modified())).unwrap();
    for record in std::fs::read_dir("/run/imageless/shims").into_iter().flatten().flatten() {
        if record.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < born) {
            continue;
        }
        let text = std::fs::read_to_string(record.path()).unwrap_or_default();
        let record: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let proxy = record["proxy"].as_str().unwrap_or_default();
        assert!(std::os::unix::net::UnixStream::connect(proxy).is_ok(), "{what}: a shim proxy record left: {text}");
    }
}

/// containerd is SIGKILLed while 10 flox pods are being created and started again: each pod
/// either runs or, retried as the kubelet would, runs then; after removal nothing is left.
#[test]
fn containerd_killed_during_ten_creates() {
    killed_during_ten_creates(ContainerdVersion::V1_7);
}

/// containerd 2.x reconnects after a restart to what `start` printed (bootstrap.json), which
/// names the shim proxy; 1.7 reads the bundle's `address` file.
#[test]
fn containerd_2_killed_during_ten_creates() {
    killed_during_ten_creates(ContainerdVersion::V2_1);
}

fn killed_during_ten_creates(version: ContainerdVersion) {
    let mut node = FloxNode::start(version);
    let mounts_before = host_mounts();
    let names: Vec<String> = (0..10).map(|i| format!("crash-{i}")).collect();
    let pid = node.containerd.pid() as libc::pid_t;
    let first = support::block_on(async {
        let runs = names.iter().enumerate().map(|(i, n)| {
            let yaml = sleeper(n, i % 2 == 0);
            let node = &node;
            async move { node.run(&yaml, &[]).await }
        });
        let kill = async {
            // Mid-way: once the first sandboxes exist, flox-runc is realising and editing specs.
            let client = node.containerd.client().await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            // (No pause after: since the launcher's delete costs no Go process, all 10
            // pods of 2.1 were up 300 ms after the third sandbox.)
            while client.list_pod_sandboxes(&[]).await.unwrap().len() < 3 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // SAFETY: the daemon is our own unreaped child; a crash is what is simulated.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        };
        let (results, ()) = tokio::join!(join_all(runs), kill);
        results
    });
    let up_before_kill = first.iter().filter(|r| r.is_ok()).count();
    eprintln!("{up_before_kill} of 10 pods were up when containerd was killed");
    assert!(up_before_kill < 10, "the kill came after every create finished: nothing was tested");
    drop(first);
    node.containerd.kill_and_restart().expect("containerd restarts on its old state");
    // The kubelet reconciles after a restart: it removes what it does not know and retries.
    node.containerd.remove_all_pods().expect("remove pods after restart");
    // One runtime for runs, checks and removal: a CRI channel lives on the runtime it was made on.
    support::block_on(async {
        let runs = names.iter().enumerate().map(|(i, n)| {
            let yaml = sleeper(&format!("{n}-retry"), i % 2 == 0);
            let node = &node;
            async move {
                // As the kubelet does, retry with a backoff. containerd itself can need that after
                // a SIGKILL: its snapshotter may still hold a directory its database forgot
                // ("failed to rename ... snapshots/N: file exists") until its gc, which the
                // removals above set off, cleans up. Our own errors ("flox: ...") are never
                // retried.
                let mut attempt = 1;
                loop {
                    match node.run(&yaml, &[]).await {
                        Err(e) if attempt < 6 && !e.to_string().contains("flox:") => {
                            eprintln!("{yaml_name}: attempt {attempt} failed: {e}", yaml_name = n);
                            tokio::time::sleep(Duration::from_secs(attempt)).await;
                            attempt += 1;
                        }
                        outcome => break outcome,
                    }
                }
            }
        });
        let outcomes = join_all(runs).await;
        for (name, outcome) in names.iter().zip(outcomes) {
            let pod = outcome.unwrap_or_else(|e| panic!("{name}: retry after the restart failed: {e}"));
            let status = pod.status(None).await.unwrap();
            assert_eq!(status.state, 1, "{name}: running after retry");
            pod.remove().await.unwrap();
        }
    });
    node.containerd.remove_all_pods().unwrap();
    assert_nothing_left(&node, &mounts_before, "after the crash and retries");
}

/// The runc shim under a running flox container is SIGKILLed (OOM, an admin): its proxy exits
/// with it, and containerd's cleanup (the launcher's native `delete`, which must run runc here
/// because runc still holds the container) stops the container and leaves nothing behind.
/// (containerd 1.7 runs `shim delete` for each of the pod's tasks. 2.1 runs it for the
/// sandbox only and leaves the app container running, with the stock runc shim too.)
#[test]
fn shim_killed_under_a_running_container() {
    let node = FloxNode::start(ContainerdVersion::V1_7);
    let mounts_before = host_mounts();
    let marker = format!("shim-killed-{}", std::process::id());
    let script = format!("trap 'exit 0' TERM; while :; do sleep 1; done # {marker}");
    let yaml = flox_pod("shim-killed", &[("flox.dev/environment", "flox/echoip")], BUSYBOX, &["sh", "-c", &script]);
    support::block_on(async {
        let pod = node.run(&yaml, &[]).await.expect("the pod runs");
        let container_runs = || processes().iter().any(|l| l.contains(&marker) && !l.contains("ps -eo"));
        assert!(container_runs(), "the container's process runs");
        let ps = Command::new("ps").args(["-eo", "pid,args"]).output().unwrap();
        let shims: Vec<i32> = String::from_utf8_lossy(&ps.stdout)
            .lines()
            .filter(|l| l.contains("containerd-shim-runc-v2") && l.contains(&format!("-id {}", pod.sandbox_id)))
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        assert_eq!(shims.len(), 1, "the pod's runc shim: {shims:?}");
        // SAFETY: kill(2) on a pid just listed; a crash of the shim is what is simulated.
        unsafe { libc::kill(shims[0], libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while container_runs() {
            let log = node.containerd.log_tail(60);
            assert!(Instant::now() < deadline, "the container still runs 30 s after its shim was killed; log:\n{log}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // containerd marks it exited once it has handled the exit its cleanup published.
        loop {
            let status = pod.status(None).await.expect("containerd still knows the container");
            if status.state == 2 {
                break;
            }
            assert!(Instant::now() < deadline, "the container is not reported exited: {status:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        pod.remove().await.expect("the pod is removed");
    });
    node.containerd.remove_all_pods().unwrap();
    assert_nothing_left(&node, &mounts_before, "after the shim was killed");
}

/// A node whose state root is a small tmpfs that fills during a pull: a clear "no space left"
/// naming the state root, nothing half-visible, and after freeing space the pull succeeds.
#[test]
fn full_state_disk_during_pull() {
    let dir = tempfile::Builder::new().prefix("node-full-").tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let mounted =
        Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k,nr_inodes=64", "tmpfs"]).arg(&state).status();
    assert!(mounted.unwrap().success(), "mount a small tmpfs as the state root");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(state.clone());
    let node_config = NodeConfigFile { hub_timeout_secs: 5, ..NodeConfigFile::new(dir.path(), &hub) };
    assert_eq!(node_config.state_root, state);
    let config = dir.path().join("node.toml");
    node_config.write(&config);
    let pull =
        || Command::new(imageless()).args(["pull", "flox/echoip"]).env("IMAGELESS_CONFIG", &config).output().unwrap();
    let out = pull();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the pull fails on a full disk: {err}");
    assert!(err.contains("no space left on the node's state root"), "{err}");
    assert!(err.contains(&state.display().to_string()), "names the state root: {err}");
    let visible = |sub: &str| -> Vec<String> {
        std::fs::read_dir(state.join(sub))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(visible("envs").is_empty(), "no half-rendered environment, no temp tree: {:?}", visible("envs"));
    // A ref record is written only after a completed fetch; whatever is there is whole.
    for owner in visible("refs") {
        for entry in std::fs::read_dir(state.join("refs").join(&owner)).unwrap().flatten() {
            let bytes = std::fs::read(entry.path()).unwrap();
            assert!(
                serde_json::from_slice::<serde_json::Value>(&bytes).is_ok(),
                "a partial ref record {}",
                entry.path().display()
            );
        }
    }
    let grown = Command::new("mount").args(["-o", "remount,size=64m,nr_inodes=100000"]).arg(&state).status();
    assert!(grown.unwrap().success());
    let out = pull();
    assert!(out.status.success(), "the pull succeeds once there is space: {}", String::from_utf8_lossy(&out.stderr));
}

/// 500 create/delete cycles (plain, nix-mutable, failing) leave nothing behind. Four workers
/// cycle side by side, as a node's pods come and go, which also keeps the run short.
#[test]
fn five_hundred_cycles_leave_nothing_behind() {
    const WORKERS: usize = 4;
    const CYCLES: usize = 500;
    let node = FloxNode::start(ContainerdVersion::V1_7);
    let mounts_before = host_mounts();
    let started = Instant::now();
    support::block_on(async {
        let worker = |w: usize| {
            let node = &node;
            async move {
                for i in (w..CYCLES).step_by(WORKERS) {
                    let name = format!("cycle-{w}");
                    let yaml = match i % 5 {
                        0 => flox_pod(
                            &name,
                            &[("flox.dev/environment", "flox/hooks"), ("flox.dev/nix-mutable", "true")],
                            EMPTY,
                            &["hello"],
                        ),
                        1 => flox_pod(&name, &[("flox.dev/environment", "flox/nope")], EMPTY, &["hello"]),
                        _ => flox_pod(&name, &[("flox.dev/environment", "flox/echoip")], EMPTY, &["hello"]),
                    };
                    match node.run_to_end(&yaml, &[]).await {
                        Ok((code, out, err)) => {
                            assert_eq!((code, out.trim()), (0, "Hello, world! (hello 2.12)"), "cycle {i}: {err}")
                        }
                        Err(e) => assert!(i % 5 == 1, "cycle {i}: {e}"),
                    }
                }
            }
        };
        join_all((0..WORKERS).map(worker)).await;
    });
    eprintln!("{CYCLES} cycles ({WORKERS} at a time) in {:?}", started.elapsed());
    assert_nothing_left(&node, &mounts_before, "after 500 cycles");
}

/// 100 flox pods started at once all start (one realization), and all go away cleanly.
#[test]
fn a_hundred_pods_at_once() {
    let node = FloxNode::start(ContainerdVersion::V1_7);
    let mounts_before = host_mounts();
    // One runtime for runs, checks and removal: a CRI channel lives on the runtime it was made on.
    support::block_on(async {
        let started = Instant::now();
        let runs = (0..100).map(|i| {
            let yaml = sleeper(&format!("many-{i}"), i % 10 == 0);
            let node = &node;
            async move { node.run(&yaml, &[]).await }
        });
        let outcomes = join_all(runs).await;
        let took = started.elapsed();
        let mut pods = Vec::new();
        for (i, o) in outcomes.into_iter().enumerate() {
            pods.push(o.unwrap_or_else(|e| panic!("pod many-{i} did not start: {e}")));
        }
        eprintln!("100 pods started in {took:?}");
        let envs = std::fs::read_dir(node.state_root.join("envs"))
            .unwrap()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count();
        assert_eq!(envs, 1, "one rendered environment for 100 pods");
        for pod in &pods {
            let status = pod.status(None).await.unwrap();
            assert_eq!(status.state, 1, "{}: running", pod.name);
        }
        let started = Instant::now();
        for result in join_all(pods.into_iter().map(|pod| pod.remove())).await {
            result.unwrap();
        }
        eprintln!("100 pods removed in {:?}", started.elapsed());
    });
    assert_nothing_left(&node, &mounts_before, "after 100 pods");
}
