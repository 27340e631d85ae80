//! End to end: pods on the `flox` runtime over real CRI, on containerd 1.6.20, 1.7.24 and
//! 2.1.9, with the real runc wrapper, runc and the local hub, on a node without Nix: each
//! version's test runs again inside `without-nix` (no /nix, no `nix*` runnable; see
//! imageless_e2e::without_nix). Each version runs the same scenarios in one containerd
//! (starting one costs seconds); a failing scenario names itself in the panic.

use std::path::Path;
use std::time::Duration;

use imageless_e2e::flox_node::{self as support, flox_pod, free_port, wait_for_answer, FloxNode};
use imageless_e2e::{without_nix, ContainerdVersion};

const EMPTY: &str = "flox/empty:1.0.0";
const BUSYBOX: &str = "busybox:local";

fn world_path(node: &FloxNode, env: &str, gen: &str, install_id: &str) -> String {
    let w = node.world();
    let pkgs = w["environments"][env]["generations"][gen]["packages"].as_array().unwrap().clone();
    let p = pkgs.iter().find(|p| p["install_id"] == install_id).unwrap();
    p["store_paths"]["out"].as_str().unwrap().to_string()
}

async fn docs_echoip_on_empty_image(node: &FloxNode) {
    let port = free_port();
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: flox-containerd-demo
  annotations:
    flox.dev/environment: "flox/echoip"
spec:
  runtimeClassName: flox
  containers:
  - name: empty
    image: flox/empty:1.0.0
    command: ["echoip"]
    env: [{{name: PORT, value: "{port}"}}]
"#
    );
    let pod = node.run(&yaml, &[]).await.expect("echoip pod starts");
    assert_eq!(wait_for_answer(&format!("127.0.0.1:{port}"), Duration::from_secs(5)), "127.0.0.1");
    pod.remove().await.unwrap();
}

async fn base_image_commands_env_first(node: &FloxNode) {
    let yaml = flox_pod(
        "busybox-base",
        &[("flox.dev/environment", "flox/echoip")],
        BUSYBOX,
        &["sh", "-c", "echo PATH=$PATH; which hello; which ls; hello"],
    );
    let (code, out, _) = node.run_to_end(&yaml, &[]).await.unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PATH=/run/flox/env/bin:"), "env PATH first: {out}");
    assert!(out.contains("/run/flox/env/bin/hello"), "{out}");
    assert!(out.contains("/bin/ls"), "image command still found: {out}");
    assert!(out.contains("Hello, world! (hello 2.12)"), "{out}");
}

async fn generations(node: &FloxNode) {
    for (env, want) in [("flox/echoip:1", "2.10"), ("flox/echoip:2", "2.12"), ("flox/echoip", "2.12")] {
        let yaml = flox_pod("gen", &[("flox.dev/environment", env)], EMPTY, &["hello"]);
        let (code, out, err) = node.run_to_end(&yaml, &[]).await.unwrap();
        assert_eq!(code, 0, "{env}: {err}");
        assert_eq!(out.trim(), format!("Hello, world! (hello {want})"), "{env}");
    }
}

fn private_pod(with_secret: bool) -> String {
    support::token_pod("private", "acme/private", "hello", with_secret)
}

async fn private_environment(node: &FloxNode) {
    let msg = node.run_error(&private_pod(false)).await;
    assert!(
        msg.contains("flox: environment acme/private not found on")
            && msg.contains("if it is private, mount a FloxHub token secret"),
        "{msg}"
    );
    let token = node.hub.token("alice", &[]);
    let secret = node.token_secret("alice", &token);
    let yaml = private_pod(true);
    let mut pod = node.run(&yaml, &[("floxhub-token", &secret)]).await.expect("private env with alice's token");
    pod.wait_main(Some(Duration::from_secs(60))).await.unwrap();
    assert_eq!(pod.stdout(None).unwrap().trim(), "Hello, world! (hello 2.10)");
    pod.remove().await.unwrap();
    let log = node.hub.access_log();
    assert!(!log.contains(&token), "the hub's access log must not contain the token");
    // The token never reaches the spec, env or args of the container.
    let bundles = std::fs::read_dir(node.containerd.dir()).unwrap().count();
    assert!(bundles > 0);
    // Someone else's valid token: the private env is hidden, as on FloxHub.
    let bob = node.token_secret("bob", &node.hub.token("bob", &[]));
    let err = node.run(&yaml, &[("floxhub-token", &bob)]).await.err().expect("bob is refused");
    let msg = err.cri_message().unwrap_or_default().to_string();
    assert!(msg.contains("environment acme/private not found"), "{msg}");
    // An expired token: refused before asking the hub, with the time it expired.
    let expired = node.token_secret("expired", &node.hub.token("alice", &["--expired"]));
    let err = node.run(&yaml, &[("floxhub-token", &expired)]).await.err().expect("expired");
    let msg = err.cri_message().unwrap_or_default().to_string();
    assert!(msg.contains("flox: FloxHub token (secret floxhub-token) expired at "), "{msg}");
}

async fn dev_and_run_modes_vars_and_hook(node: &FloxNode) {
    let probe = "echo CPATH=$CPATH; echo PKG=$PKG_CONFIG_PATH; devtool";
    let dev = flox_pod(
        "dev",
        &[("flox.dev/environment", "flox/devtools"), ("flox.dev/activate-mode", "dev")],
        EMPTY,
        &["bash", "-c", probe],
    );
    let (code, out, err) = node.run_to_end(&dev, &[]).await.unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("CPATH=/run/flox/env/include"), "{out}");
    assert!(out.contains("PKG=/run/flox/env/lib/pkgconfig"), "{out}");
    assert!(out.contains("devtool: devlib found"), "propagated build input linked in dev: {out}");
    let run = flox_pod("run", &[("flox.dev/environment", "flox/devtools")], EMPTY, &["bash", "-c", probe]);
    let (_, out, _) = node.run_to_end(&run, &[]).await.unwrap();
    assert!(out.contains("CPATH=\n"), "no dev variables in run mode: {out}");

    let hooks = flox_pod(
        "hooks",
        &[("flox.dev/environment", "flox/hooks")],
        EMPTY,
        &["bash", "-c", "echo G=$GREETING L=$GREETING_LOUD H=$HOOK_RAN"],
    );
    let (code, out, err) = node.run_to_end(&hooks, &[]).await.unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "G=hi L=hi! H=1");
    assert!(err.contains("hook: GREETING_LOUD=hi!"), "hook stderr kept: {err}");
    assert!(err.contains("must not reach the container's stdout"), "hook stdout goes to stderr: {err}");

    let missing = flox_pod("missing", &[("flox.dev/environment", "flox/echoip")], EMPTY, &["nope"]);
    let (code, _, err) = node.run_to_end(&missing, &[]).await.unwrap();
    assert_eq!(code, 127);
    assert!(err.contains("nope: command not found in environment flox/echoip"), "{err}");
}

async fn nix_read_only_closure_view_and_mutable(node: &FloxNode) {
    let outside = world_path(node, "flox/echoip", "1", "hello"); // realized by `generations`
    let in_node_store = node.store_dir().join(outside.trim_start_matches("/nix/store/"));
    assert!(in_node_store.exists(), "{} fetched into the node store", in_node_store.display());
    let probe = format!(
        "(echo x > /nix/store/probe) 2>/dev/null && echo wrote || echo readonly; test -e {outside} && echo visible || echo hidden"
    );
    let ro = flox_pod("ro", &[("flox.dev/environment", "flox/hooks")], EMPTY, &["bash", "-c", &probe]);
    let (_, out, _) = node.run_to_end(&ro, &[]).await.unwrap();
    assert_eq!(out.trim(), "readonly\nhidden", "{out}");

    let rw = flox_pod(
        "rw",
        &[("flox.dev/environment", "flox/hooks"), ("flox.dev/nix-mutable", "true")],
        EMPTY,
        &[
            "bash",
            "-c",
            "echo x > /nix/store/probe-imageless && echo wrote; test -s /nix/var/nix/db/db.sqlite && test \"$(< /nix/var/nix/db/schema)\" = 10 && echo registered",
        ],
    );
    let (code, out, err) = node.run_to_end(&rw, &[]).await.unwrap();
    assert_eq!((code, out.trim()), (0, "wrote\nregistered"), "{err}");
    assert!(!Path::new("/nix/store/probe-imageless").exists(), "host /nix untouched");
    assert!(!node.store_dir().join("probe-imageless").exists(), "node store untouched");
    let overlays = node.state_root.join("overlays");
    let left: Vec<_> = std::fs::read_dir(&overlays).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(left.is_empty(), "overlay dirs removed with the pod: {left:?}");

    let metrics = flox_pod(
        "metrics",
        &[("flox.dev/environment", "flox/hooks"), ("flox.dev/disable-metrics", "true")],
        EMPTY,
        &["bash", "-c", "echo M=$FLOX_DISABLE_METRICS"],
    );
    let (_, out, _) = node.run_to_end(&metrics, &[]).await.unwrap();
    assert_eq!(out.trim(), "M=1");
}

async fn skip_containers_and_exec(node: &FloxNode) {
    let yaml = r#"apiVersion: v1
kind: Pod
metadata:
  name: mixed
  annotations:
    flox.dev/environment: "flox/echoip"
    flox.dev/skip-containers: "sidecar, other"
    flox.dev/skip-containers-exec: "debuggable"
spec:
  runtimeClassName: flox
  containers:
  - name: sidecar
    image: busybox:local
    command: ["sh", "-c", "echo sidecar-ran; which hello || echo no-hello; exec sleep 300"]
  - name: app
    image: busybox:local
    command: ["sh", "-c", "hello; exec sleep 300"]
  - name: debuggable
    image: busybox:local
    command: ["sh", "-c", "hello; exec sleep 300"]
"#;
    let pod = node.run(yaml, &[]).await.expect("mixed pod starts");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(pod.stdout(Some("sidecar")).unwrap(), "sidecar-ran\nno-hello\n");
    // The sidecar's spec is what plain runc gets: no flox mounts, args and env untouched.
    let sidecar_id = pod.container(Some("sidecar")).unwrap().id.clone();
    let spec = find_bundle_config(node.containerd.dir(), &sidecar_id).expect("sidecar bundle");
    assert!(!spec.contains("/run/flox"), "sidecar spec untouched: {spec}");
    assert!(!spec.contains("FLOX_ENV_DESCRIPTION"));
    assert!(pod.stdout(Some("app")).unwrap().contains("hello 2.12"));
    assert!(pod.stdout(Some("debuggable")).unwrap().contains("hello 2.12"), "main process still inside");
    let exec = pod.exec_sync(Some("app"), vec!["hello".into()], Some(Duration::from_secs(20))).await.unwrap();
    assert_eq!((exec.exit_code, String::from_utf8_lossy(&exec.stdout).trim()), (0, "Hello, world! (hello 2.12)"));
    let exec = pod
        .exec_sync(
            Some("debuggable"),
            vec!["sh".into(), "-c".into(), "hello; ls / >/dev/null && echo image-ls".into()],
            Some(Duration::from_secs(20)),
        )
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&exec.stdout);
    assert!(
        out.contains("image-ls") && !out.contains("Hello"),
        "exec outside the env: {out} {}",
        String::from_utf8_lossy(&exec.stderr)
    );
    pod.remove().await.unwrap();
}

fn find_bundle_config(dir: &Path, id: &str) -> Option<String> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                if p.file_name().is_some_and(|n| n == id) && p.join("config.json").exists() {
                    return std::fs::read_to_string(p.join("config.json")).ok();
                }
                stack.push(p);
            }
        }
    }
    None
}

async fn bad_values(node: &FloxNode) {
    let cases: [(&[(&str, &str)], &str); 11] = [
        (&[("flox.dev/environment", "Flox/echo ip")], "flox: annotation flox.dev/environment: \"Flox/echo ip\" is not valid: the environment name \"echo ip\" contains a space"),
        (&[("flox.dev/environment", "owner/")], "the environment name is empty"),
        (&[("flox.dev/environment", "/name")], "the owner is empty"),
        (&[("flox.dev/environment", "a/b/c")], "it has 3 '/'-separated parts, not 2"),
        (&[("flox.dev/environment", "owner/name:0")], "generation 0 does not exist (generations start at 1)"),
        (&[("flox.dev/environment", "owner/name:x")], "generation \"x\" is not a number"),
        (&[("flox.dev/environment", "flox/echoip"), ("flox.dev/activate-mode", "prod")], "flox: annotation flox.dev/activate-mode: \"prod\" is not valid; accepted values: \"run\" (default) or \"dev\""),
        (&[("flox.dev/environment", "flox/echoip"), ("flox.dev/nix-mutable", "yes")], "flox: annotation flox.dev/nix-mutable: \"yes\" is not valid; accepted values: \"true\" or \"false\""),
        (&[("flox.dev/environment", "flox/echoip:9")], "flox: generation 9 of flox/echoip does not exist; available: 1, 2 (live: 2)"),
        (&[("flox.dev/environment", "flox/nope")], "flox: environment flox/nope not found on"),
        (&[("flox.dev/environment", "nobody/echoip")], "flox: owner \"nobody\" not found on"),
    ];
    for (annotations, want) in cases {
        let msg = node.run_error(&flox_pod("bad", annotations, EMPTY, &["hello"])).await;
        assert!(msg.contains(want), "annotations {annotations:?}: CRI error {msg:?} lacks {want:?}");
        assert_eq!(msg.matches("flox:").count(), 1, "one clear error: {msg}");
    }
    let msg = node.run_error(&flox_pod("none", &[], EMPTY, &["hello"])).await;
    assert!(msg.contains("flox: annotation flox.dev/environment is missing"), "{msg}");
    // Nothing else was affected: a good pod still runs.
    let (code, out, _) = node
        .run_to_end(&flox_pod("good", &[("flox.dev/environment", "flox/echoip")], EMPTY, &["hello"]), &[])
        .await
        .unwrap();
    assert_eq!((code, out.trim()), (0, "Hello, world! (hello 2.12)"));
}

/// Containerd start/stop drive their own runtime, so the node lives outside the async part.
fn all_scenarios(version: ContainerdVersion) {
    let node = FloxNode::start(version);
    support::block_on(async {
        docs_echoip_on_empty_image(&node).await;
        base_image_commands_env_first(&node).await;
        generations(&node).await;
        private_environment(&node).await;
        dev_and_run_modes_vars_and_hook(&node).await;
        nix_read_only_closure_view_and_mutable(&node).await;
        skip_containers_and_exec(&node).await;
        bad_values(&node).await;
    });
    let leftovers = std::fs::read_dir(node.state_root.join("containers")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "per-container state removed after every pod");
}

#[test]
fn flox_pods_on_containerd_1_6_20() {
    without_nix::run("flox_pods_on_containerd_1_6_20", || all_scenarios(ContainerdVersion::V1_6));
}

#[test]
fn flox_pods_on_containerd_1_7_24() {
    without_nix::run("flox_pods_on_containerd_1_7_24", || all_scenarios(ContainerdVersion::V1_7));
}

#[test]
fn flox_pods_on_containerd_2_1_9() {
    without_nix::run("flox_pods_on_containerd_2_1_9", || all_scenarios(ContainerdVersion::V2_1));
}

/// 50 create/delete cycles of flox pods (plain, nix-mutable, failing) leave no mounts, no
/// per-container state, no overlay directories and no processes behind.
#[test]
fn fifty_cycles_leave_nothing_behind() {
    let node = FloxNode::start(ContainerdVersion::V1_6);
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().count();
    support::block_on(async {
        for i in 0..50 {
            let yaml = match i % 5 {
                0 => flox_pod(
                    "cycle",
                    &[("flox.dev/environment", "flox/hooks"), ("flox.dev/nix-mutable", "true")],
                    EMPTY,
                    &["hello"],
                ),
                1 => flox_pod("cycle", &[("flox.dev/environment", "flox/nope")], EMPTY, &["hello"]),
                _ => flox_pod("cycle", &[("flox.dev/environment", "flox/echoip")], EMPTY, &["hello"]),
            };
            match node.run_to_end(&yaml, &[]).await {
                Ok((code, out, err)) => {
                    assert_eq!((code, out.trim()), (0, "Hello, world! (hello 2.12)"), "cycle {i}: {err}")
                }
                Err(e) => assert!(i % 5 == 1, "cycle {i}: {e}"),
            }
        }
    });
    let mounts_after = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts_after.contains("/run/flox"), "no flox mount left on the host");
    assert!(
        mounts_after.lines().count() <= mounts_before,
        "host mounts grew: {mounts_before} -> {}",
        mounts_after.lines().count()
    );
    let count = |sub: &str| std::fs::read_dir(node.state_root.join(sub)).map(|d| d.count()).unwrap_or(0);
    assert_eq!(count("containers"), 0, "per-container state left");
    assert_eq!(count("overlays"), 0, "overlay dirs left");
    assert!(
        node.containerd.mounts_below().is_empty(),
        "mounts under containerd's dir: {:?}",
        node.containerd.mounts_below()
    );
    std::thread::sleep(Duration::from_millis(500));
    let ps = std::process::Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    let prefetch = ps.lines().filter(|l| l.contains("--flox-prefetch")).count();
    assert_eq!(prefetch, 0, "prefetch processes left: {ps}");
    let shims = ps
        .lines()
        .filter(|l| l.contains("containerd-shim") && l.contains(&node.containerd.dir().display().to_string()))
        .count();
    assert_eq!(shims, 0, "shims of removed pods left");
}

/// Flox's documented containerd configs, without our `BinaryName`: on 1.6 `runtime_type =
/// "io.containerd.flox.v2"` (the launcher found on containerd's PATH), on 2.1 `runtime_path`.
/// Only the shim launcher (its proxy, or with `shim_proxy = false` flox-runc on the shim's
/// PATH) does the flox work there.
fn launcher_only(version: ContainerdVersion, extra_config: &str) {
    let hook = edit_flox_runtime(version, move |flox| {
        flox["options"].as_table_mut().expect("options").remove("BinaryName");
        if version == ContainerdVersion::V1_6 {
            // containerd 1.6 hands a non-runc runtime_type's options over as generic
            // runtimeoptions, which the runc shim cannot decode: Flox's config has none.
            flox.remove("runtime_path");
            flox.remove("options");
            flox["runtime_type"] = toml_edit::value("io.containerd.flox.v2");
        }
    });
    let node = FloxNode::start_with_hook(version, extra_config, Some(hook));
    assert!(
        !node.containerd.config_text().contains("BinaryName = \"")
            || !node.containerd.config_text().contains("flox-runc\"")
    );
    support::block_on(async {
        let (code, out, err) = node
            .run_to_end(&flox_pod("launcher", &[("flox.dev/environment", "flox/echoip:1")], EMPTY, &["hello"]), &[])
            .await
            .unwrap();
        assert_eq!((code, out.trim()), (0, "Hello, world! (hello 2.10)"), "{err}");
        let pod = node
            .run(
                &flox_pod("launcher-exec", &[("flox.dev/environment", "flox/echoip")], BUSYBOX, &["sleep", "300"]),
                &[],
            )
            .await
            .unwrap();
        let exec = pod.exec_sync(None, vec!["hello".into()], Some(Duration::from_secs(20))).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&exec.stdout).trim(), "Hello, world! (hello 2.12)");
        let proxied = task_addresses(&node).iter().any(|a| a.contains(".flox"));
        // 1.6 runs a runtime_type shim's start too; only `shim_proxy = false` leaves it out.
        assert_eq!(proxied, !extra_config.contains("shim_proxy = false"), "{:?}", task_addresses(&node));
        pod.remove().await.unwrap();
    });
}

/// What containerd would reconnect to for each running task; a proxy's socket ends in `.flox`.
fn task_addresses(node: &FloxNode) -> Vec<String> {
    let found = node.containerd.task_addresses();
    assert!(!found.is_empty(), "no task bundle with an address under {}", node.containerd.dir().display());
    found
}

/// A hook that edits the `flox` runtime's table of the CRI plugin (its name differs in 2.x)
/// before the daemon starts.
fn edit_flox_runtime(
    version: ContainerdVersion,
    edit: impl Fn(&mut toml_edit::Table) + Send + Sync + 'static,
) -> imageless_e2e::ConfigHook {
    imageless_e2e::ConfigHook(std::sync::Arc::new(move |config: &Path, _: &Path| {
        let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(config)?.parse()?;
        let plugin = if version == ContainerdVersion::V2_1 {
            "io.containerd.cri.v1.runtime"
        } else {
            "io.containerd.grpc.v1.cri"
        };
        edit(doc["plugins"][plugin]["containerd"]["runtimes"]["flox"].as_table_mut().expect("flox runtime"));
        std::fs::write(config, doc.to_string())?;
        Ok(())
    }))
}

/// containerd 1.7 and 2.x run the shim launcher (`runtime_path`), whose proxy does the flox
/// work in-process and points the runc shim at the real runc: the configured `BinaryName` is
/// never run. Here it names a program that records its call and fails, and flox pods (the
/// spec edit at create, the wrap of an exec, the delete) still work.
fn shim_proxy_bypasses_binary_name(version: ContainerdVersion) {
    let dir = tempfile::tempdir().unwrap();
    let calls = dir.path().join("binary-name-calls");
    let refuse = dir.path().join("refusing-runc");
    std::fs::write(&refuse, format!("#!/bin/sh\necho \"$@\" >> {}\nexit 1\n", calls.display())).unwrap();
    std::fs::set_permissions(&refuse, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let refuse = refuse.display().to_string();
    let hook = edit_flox_runtime(version, move |flox| {
        flox["options"]["BinaryName"] = toml_edit::value(refuse.as_str());
    });
    let node = FloxNode::start_with_hook(version, "", Some(hook));
    support::block_on(async {
        let (code, out, err) = node
            .run_to_end(&flox_pod("proxied", &[("flox.dev/environment", "flox/echoip:1")], EMPTY, &["hello"]), &[])
            .await
            .unwrap();
        assert_eq!((code, out.trim()), (0, "Hello, world! (hello 2.10)"), "{err}");
        let pod = node
            .run(&flox_pod("proxied-exec", &[("flox.dev/environment", "flox/echoip")], BUSYBOX, &["sleep", "300"]), &[])
            .await
            .unwrap();
        let exec = pod.exec_sync(None, vec!["hello".into()], Some(Duration::from_secs(20))).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&exec.stdout).trim(), "Hello, world! (hello 2.12)");
        let addresses = task_addresses(&node);
        assert!(addresses.iter().all(|a| a.contains(".flox")), "containerd talks to the proxy: {addresses:?}");
        pod.remove().await.unwrap();
        // A bad annotation is refused by the proxy with the same message flox-runc gives.
        let err = node
            .run_error(&flox_pod("proxied-bad", &[("flox.dev/environment", "flox/echoip:x")], EMPTY, &["hello"]))
            .await;
        assert!(err.contains("flox.dev/environment") && err.contains("\"flox/echoip:x\""), "{err}");
    });
    // containerd 2.x asks the shim binary (`-info`) for the runtime's features, which runs
    // `BinaryName features` outside any container: that query is not a runc call of a pod.
    let calls = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(calls.lines().all(|l| l == "features"), "BinaryName ran for a container: {calls}");
    let left = std::fs::read_dir(node.state_root.join("containers")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "container state left behind");
}

#[test]
fn shim_proxy_bypasses_binary_name_1_7_24() {
    shim_proxy_bypasses_binary_name(ContainerdVersion::V1_7);
}

#[test]
fn shim_proxy_bypasses_binary_name_2_1_9() {
    shim_proxy_bypasses_binary_name(ContainerdVersion::V2_1);
}

#[test]
fn flox_docs_config_via_shim_launcher_1_6_20() {
    launcher_only(ContainerdVersion::V1_6, "");
}

#[test]
fn flox_docs_config_via_shim_launcher_2_1_9() {
    launcher_only(ContainerdVersion::V2_1, "");
}

/// With the proxy off the launcher puts flox-runc first on the shim's PATH, which is then the
/// only thing doing the flox work (no `BinaryName` here).
#[test]
fn flox_docs_config_without_the_shim_proxy_2_1_9() {
    launcher_only(ContainerdVersion::V2_1, "shim_proxy = false");
}
