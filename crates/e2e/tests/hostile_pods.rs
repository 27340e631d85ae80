//! A hostile pod cannot make the runtime read, block on or leak anything outside its own
//! secret volume (real containerd 1.7.24 and 2.1.9, runc, the flox runtime and the local hub).
//!
//! The attacker mounts an emptyDir where the FloxHub token secret belongs and plants something
//! there from a skipped busybox init container; its flox container must then fail with one
//! clear message in the pod's terms, never send another tenant's token to the hub, never show
//! a host path, and never disturb the victim pod running beside it. The wrapper's own cost on
//! such input (time, peak memory) is measured on the real binary in `flox_runc_on_hostile_*`.
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use imageless_e2e::flox_node::{self as support, bin_dir, FloxNode};
use imageless_e2e::ContainerdVersion;

const LEAVES: &str =
    "flox: /var/run/secrets/flox.dev/floxhub-token is a symlink leaving the secret volume; only links inside the volume mounted at /var/run/secrets/flox.dev are followed";
const NOT_REGULAR: &str = "flox: /var/run/secrets/flox.dev/floxhub-token is not a regular file";
const TOO_LARGE: &str = "flox: /var/run/secrets/flox.dev/floxhub-token is larger than 16 KiB";
const NOT_A_TOKEN: &str = "flox: /var/run/secrets/flox.dev/floxhub-token is not a FloxHub token";

fn attacker_pod(name: &str, script: &str) -> String {
    let script = serde_json::to_string(script).unwrap();
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  annotations:
    flox.dev/environment: "acme/private"
    flox.dev/skip-containers: "planter"
spec:
  runtimeClassName: flox
  volumes:
  - name: tok
    emptyDir: {{}}
  initContainers:
  - name: planter
    image: busybox:local
    command: ["sh", "-c", {script}]
    volumeMounts:
    - {{name: tok, mountPath: /var/run/secrets/flox.dev}}
  containers:
  - name: main
    image: flox/empty:1.0.0
    command: ["hello"]
    volumeMounts:
    - {{name: tok, mountPath: /var/run/secrets/flox.dev}}
"#
    )
}

fn victim_pod() -> String {
    r#"apiVersion: v1
kind: Pod
metadata:
  name: victim
  annotations:
    flox.dev/environment: "acme/private"
spec:
  runtimeClassName: flox
  volumes:
  - name: secret-volume
    secret:
      secretName: floxhub-token
  containers:
  - name: main
    image: busybox:local
    command: ["sh", "-c", "hello; exec sleep 3600"]
    volumeMounts:
    - {name: secret-volume, mountPath: /var/run/secrets/flox.dev, readOnly: true}
"#
    .to_string()
}

/// Lines of the hub's access log authenticated as `handle`.
fn authenticated_as(node: &FloxNode, handle: &str) -> usize {
    node.hub.access_log().lines().filter(|l| l.contains(&format!(" {handle} "))).count()
}

fn attacks(version: ContainerdVersion) {
    let node = FloxNode::start(version);
    let token = node.hub.token("alice", &[]);
    let secret = node.token_secret("alice", &token);
    let victim_token = secret.join("floxhub-token").display().to_string();
    let host_paths = [node.dir.path().display().to_string(), node.containerd.dir().display().to_string()];
    support::block_on(async {
        let victim = node.run(&victim_pod(), &[("floxhub-token", &secret)]).await.expect("victim starts");
        let alice_before = authenticated_as(&node, "alice");
        assert!(alice_before > 0, "the victim's own pull authenticated as alice");

        let cases: Vec<(&str, String, &str)> = vec![
            ("other-tenant-secret", format!("ln -s {victim_token} /var/run/secrets/flox.dev/floxhub-token"), LEAVES),
            ("host-file", "ln -s /etc/hostname /var/run/secrets/flox.dev/floxhub-token".into(), LEAVES),
            (
                "climbing-link",
                format!("ln -s ../../../../../../../../../..{victim_token} /var/run/secrets/flox.dev/floxhub-token"),
                LEAVES,
            ),
            ("dev-zero-link", "ln -s /dev/zero /var/run/secrets/flox.dev/floxhub-token".into(), LEAVES),
            ("fifo", "mkfifo /var/run/secrets/flox.dev/floxhub-token".into(), NOT_REGULAR),
            ("directory", "mkdir /var/run/secrets/flox.dev/floxhub-token".into(), NOT_REGULAR),
            ("char-device", "mknod /var/run/secrets/flox.dev/floxhub-token c 1 5".into(), NOT_REGULAR),
            (
                "one-gib-file",
                "dd if=/dev/zero of=/var/run/secrets/flox.dev/floxhub-token bs=1 count=0 seek=1073741824 2>/dev/null"
                    .into(),
                TOO_LARGE,
            ),
            (
                "garbage",
                "echo 'root:x:0:0:root:/root:/bin/sh' > /var/run/secrets/flox.dev/floxhub-token".into(),
                NOT_A_TOKEN,
            ),
        ];
        for (name, script, want) in &cases {
            let started = Instant::now();
            let msg = node.run_error(&attacker_pod(name, script)).await;
            let took = started.elapsed();
            assert!(msg.contains(want), "{version} {name}: want {want:?} in {msg:?}");
            for host in &host_paths {
                assert!(!msg.contains(host.as_str()), "{version} {name}: host path in {msg:?}");
            }
            assert!(!msg.contains("root:x") && !msg.contains(&token), "{version} {name}: content in {msg:?}");
            // Before the fix a FIFO blocked runc create until containerd gave up (minutes).
            assert!(took < Duration::from_secs(30), "{version} {name}: the failing pod took {took:?}");
        }
        assert_eq!(
            authenticated_as(&node, "alice"),
            alice_before,
            "{version}: no attacker's request reached the hub with the victim's token"
        );
        let status = victim.status(None).await.expect("victim status");
        assert_eq!(status.state, 1, "{version}: the victim keeps running (CONTAINER_RUNNING), got {status:?}");

        // A token the pod itself put in its own volume is its own business and is used.
        let own =
            attacker_pod("own-token", &format!("printf '%s\\n' '{token}' > /var/run/secrets/flox.dev/floxhub-token"));
        let mut pod = node.run(&own, &[]).await.expect("a pod's own token in its own emptyDir is used");
        pod.wait_main(Some(Duration::from_secs(60))).await.unwrap();
        assert_eq!(pod.stdout(None).unwrap().trim(), "Hello, world! (hello 2.10)");
        pod.remove().await.unwrap();
        victim.remove().await.unwrap();
    });
}

#[test]
fn hostile_token_volumes_on_containerd_1_7_24() {
    attacks(ContainerdVersion::V1_7);
}

#[test]
fn hostile_token_volumes_on_containerd_2_1_9() {
    attacks(ContainerdVersion::V2_1);
}

/// What one `flox-runc create` run cost: wall time, peak RSS and its error log.
struct Run {
    took: Duration,
    max_rss_kib: i64,
    status: i32,
    log: String,
}

/// Runs the real wrapper's `create` on a bundle whose token volume holds `plant`'s work. It
/// fails at the token, before any runc, so what is measured is the token read alone.
fn flox_runc_create(plant: impl Fn(&Path)) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("volumes/kubernetes.io~empty-dir/tok");
    std::fs::create_dir_all(&volume).unwrap();
    plant(&volume);
    let bundle = dir.path().join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["hello"], "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/var/run/secrets/flox.dev", "type": "bind", "source": volume, "options": ["rbind", "rw"]}],
        "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": "main",
            "flox.dev/environment": "acme/private"
        }
    });
    std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "state_root = {:?}\nrunc = \"/usr/bin/runc\"\nhub_url = \"http://127.0.0.1:9\"\n",
            state.display().to_string()
        ),
    )
    .unwrap();
    let log = dir.path().join("log.json");
    let started = Instant::now();
    // Reaped by wait4 below (std's wait would not report the peak memory).
    #[allow(clippy::zombie_processes)]
    let child = Command::new(bin_dir().join("flox-runc"))
        .args(["--root", &dir.path().join("runc-root").display().to_string(), "--log", &log.display().to_string()])
        .args(["--log-format", "json", "create", "--bundle", &bundle.display().to_string(), "hostile"])
        .env("IMAGELESS_CONFIG", &config)
        .process_group(0)
        .spawn()
        .expect("flox-runc");
    let pid = child.id() as libc::pid_t;
    let (status, max_rss_kib) = wait_with_watchdog(pid, Duration::from_secs(20));
    Run { took: started.elapsed(), max_rss_kib, status, log: std::fs::read_to_string(log).unwrap_or_default() }
}

/// wait4 with rusage (std's wait gives no peak memory); kills the child after `limit`.
fn wait_with_watchdog(pid: libc::pid_t, limit: Duration) -> (i32, i64) {
    let killer = std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            // SAFETY: signal 0 only checks that the process (our unreaped child) exists.
            if unsafe { libc::kill(pid, 0) } != 0 {
                return;
            }
        }
        // SAFETY: our own child, not reaped yet, so the pid cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let mut status = 0;
    // SAFETY: rusage is plain data the kernel fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child with valid out-pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4");
    let _ = killer.join();
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
    (code, usage.ru_maxrss)
}

#[test]
fn flox_runc_on_hostile_token_files_is_fast_small_and_says_why() {
    type Plant = Box<dyn Fn(&Path)>;
    let fifo: Plant = Box::new(|v| {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            v.join("floxhub-token"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap()
    });
    let big: Plant = Box::new(|v| std::fs::File::create(v.join("floxhub-token")).unwrap().set_len(1 << 30).unwrap());
    let zero: Plant = Box::new(|v| {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            v.join("floxhub-token"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o600),
            rustix::fs::makedev(1, 5),
        )
        .unwrap()
    });
    let link_zero: Plant = Box::new(|v| std::os::unix::fs::symlink("/dev/zero", v.join("floxhub-token")).unwrap());
    for (name, plant, want) in [
        ("fifo", fifo, NOT_REGULAR),
        ("1 GiB file", big, TOO_LARGE),
        ("device", zero, NOT_REGULAR),
        ("link to /dev/zero", link_zero, LEAVES),
    ] {
        let run = flox_runc_create(plant);
        assert_eq!(run.status, 1, "{name}: flox-runc fails (log: {})", run.log);
        assert!(run.log.contains(want), "{name}: {want:?} in {}", run.log);
        assert!(!run.log.contains("/tmp/"), "{name}: no host path in {}", run.log);
        assert!(run.took < Duration::from_secs(2), "{name}: runc create took {:?}", run.took);
        assert!(run.max_rss_kib < 20 * 1024, "{name}: peak RSS {} KiB", run.max_rss_kib);
        eprintln!("{name}: {:?}, peak RSS {} KiB", run.took, run.max_rss_kib);
    }
}
