//! The installer DaemonSet of deploy/, run as a cluster would run it, on a prepared node root:
//!
//! 1. The installer image comes from its archive (`cargo xtask image`, which `cargo xtask test`
//!    builds first), imported into a private containerd (the "cluster's" runtime).
//! 2. The DaemonSet is `kubectl kustomize deploy/` (kubectl 1.20, as the manifests test renders
//!    it), never retyped; its pod template runs through `imageless pod run` with
//!    `--host-path-root NODE`: every hostPath is taken beneath NODE, so the DaemonSet's
//!    `hostPath: /` mounted at /host is NODE. NODE is a small real node: a containerd config
//!    (the version's default config, with this machine's private paths and limits) at
//!    /etc/containerd/config.toml, that containerd's binary at /usr/bin/containerd with the libc
//!    it needs (install runs `containerd --version` and `config dump` chrooted into /host),
//!    an empty /usr/local/bin, /var/lib and /run.
//!    The DaemonSet's main container, `imageless node agent`, needs the API server, of
//!    which there is none here: it runs, and must end with exactly the in-cluster config error,
//!    after the install init container succeeded. `--restart auto` finds nothing serving the
//!    node's socket and leaves the restart to the test.
//! 3. A second containerd reads NODE's config as install left it, with NODE's /usr/local/bin
//!    bind-mounted over /usr/local/bin in its own mount namespace (the config names node paths),
//!    and so runs the installed binaries, not target/debug; it runs the docs' echoip pod on the
//!    flox runtime through CRI. The node config is the one install wrote plus the hub settings
//!    an operator adds (README: /etc/imageless/config.toml), given through IMAGELESS_CONFIG.
//! 4. The uninstaller DaemonSet (deploy/uninstall/), rendered the same way, runs with
//!    `--skip-container unlabel-node` (the init container that needs the API server); then the
//!    config has its original bytes and NODE is, path for path, what it was before install, but
//!    for the empty directories the agent container's hostPath volumes (DirectoryOrCreate) made
//!    before install ran (/var/lib/imageless, /etc/imageless), as the kubelet makes them.
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use imageless_e2e::docs::{docs_pods, publish_docs_environment, ECHOIP_ADDR};
use imageless_e2e::flox_node::{block_on, imageless, wait_for_answer, Hub};
use imageless_e2e::{repo_root, Containerd, ContainerdOptions, ContainerdVersion, PodManifest, PodRunner};
use serde::Deserialize;

const INSTALLER_IMAGE: &str = concat!("docker.io/library/imageless-installer:", env!("CARGO_PKG_VERSION"));
const NAMESPACE: &str = "imageless-system";

fn installer_archive() -> PathBuf {
    let archive = repo_root().join("target/image/imageless-installer.tar");
    assert!(
        archive.is_file(),
        "{} is missing: build it with `cargo xtask image` (`cargo xtask test` builds it before the e2e suite)",
        archive.display()
    );
    archive
}

/// The workload `name` of `kubectl kustomize deploy/<dir>` (kubectl 1.20, fetched by
/// scripts/fetch-kubectl.sh), as its own YAML document.
fn rendered_workload(dir: &str, kind: &str, name: &str) -> String {
    let kubectl = repo_root().join(".work/kubernetes-client/usr/bin/kubectl");
    assert!(kubectl.is_file(), "{} is missing: run scripts/fetch-kubectl.sh", kubectl.display());
    let deploy = repo_root().join("deploy").join(dir);
    let out = Command::new(&kubectl).arg("kustomize").arg(&deploy).output().expect("running kubectl kustomize");
    assert!(out.status.success(), "kubectl kustomize {}: {}", deploy.display(), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("UTF-8 render");
    let doc = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).expect("rendered YAML"))
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("deploy/{dir} renders no {kind} {name}:\n{text}"));
    serde_yaml::to_string(&doc).unwrap()
}

/// The hostPath directories of type DirectoryOrCreate in a rendered workload, as node-root
/// relative paths (what `imageless pod run --host-path-root` creates beneath the root).
fn created_host_dirs(workload: &str) -> Vec<PathBuf> {
    let doc: serde_yaml::Value = serde_yaml::from_str(workload).expect("rendered YAML");
    let volumes = doc["spec"]["template"]["spec"]["volumes"].as_sequence().cloned().unwrap_or_default();
    volumes
        .iter()
        .filter(|v| v["hostPath"]["type"].as_str() == Some("DirectoryOrCreate"))
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .map(|p| PathBuf::from(p.trim_start_matches('/')))
        .collect()
}

/// One path of a node root: type and permission bits, owner, and a file's bytes or a link's target.
type Snapshot = BTreeMap<PathBuf, (u32, u32, u32, Vec<u8>)>;

fn snapshot(root: &Path) -> Snapshot {
    fn walk(root: &Path, dir: &Path, out: &mut Snapshot) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let content = if meta.is_file() {
                std::fs::read(&path).unwrap()
            } else if meta.file_type().is_symlink() {
                std::fs::read_link(&path).unwrap().into_os_string().into_encoded_bytes()
            } else {
                Vec::new()
            };
            out.insert(path.strip_prefix(root).unwrap().to_path_buf(), (meta.mode(), meta.uid(), meta.gid(), content));
            if meta.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Snapshot::new();
    walk(root, root, &mut out);
    out
}

/// A prepared node root (see the module docs); `daemon_dir` holds the root, state and sockets
/// its containerd config names.
fn prepare_node_root(version: ContainerdVersion, node: &Path, daemon_dir: &Path) {
    let default = std::fs::read_to_string(
        repo_root().join(format!("crates/containerd-config/tests/data/containerd-{version}-default.toml")),
    )
    .unwrap();
    let config = imageless_e2e::config::private_config(&default, version, daemon_dir, None).unwrap();
    for dir in ["etc/containerd", "usr/local/bin", "usr/bin", "var/lib", "run", "lib/x86_64-linux-gnu", "lib64"] {
        std::fs::create_dir_all(node.join(dir)).unwrap();
    }
    std::fs::write(node.join("etc/containerd/config.toml"), config).unwrap();
    std::fs::copy(version.containerd(), node.join("usr/bin/containerd")).unwrap();
    // containerd's only libraries (ldd): the loader and libc.
    for lib in ["lib/x86_64-linux-gnu/libc.so.6", "lib64/ld-linux-x86-64.so.2"] {
        std::fs::copy(Path::new("/").join(lib), node.join(lib)).unwrap_or_else(|e| panic!("/{lib}: {e}"));
    }
}

/// `imageless pod ARGS` against `ctrd`, its pods' state under the daemon's dir.
fn pod_cli(ctrd: &Containerd, args: &[&str]) -> Output {
    Command::new(imageless())
        .arg("pod")
        .args(args)
        .args(["--cri", &ctrd.endpoint()])
        .env("IMAGELESS_POD_STATE_ROOT", ctrd.pod_state_root())
        .output()
        .expect("running imageless pod")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The node config the second containerd's runtime reads: install's (kept as written, so its
/// `activator` is the installed one) plus what an operator adds for a hub.
fn node_config(installed: &str, hub: &Hub, state: &Path) -> String {
    let mut doc = installed.parse::<toml_edit::DocumentMut>().expect("install wrote TOML");
    let key = std::fs::read_to_string(hub.root.join("cache-key.pub")).unwrap();
    let cache = format!("{}/cache", hub.url);
    doc["state_root"] = toml_edit::value(state.to_string_lossy().as_ref());
    doc["hub_url"] = toml_edit::value(hub.url.as_str());
    doc["substituters"] = toml_edit::value(toml_edit::Array::from_iter([cache.as_str()]));
    doc["trusted_public_keys"] = toml_edit::value(toml_edit::Array::from_iter([key.trim()]));
    doc["hub_timeout_secs"] = toml_edit::value(10i64);
    doc.to_string()
}

fn daemonset_installs_runs_echoip_and_uninstalls(version: ContainerdVersion) {
    if let Err(why) = version.ensure_available() {
        panic!("containerd {version} is needed and not available: {why:#}");
    }
    let archive = installer_archive();
    let work = tempfile::Builder::new().prefix("daemonset-install-").tempdir().unwrap();
    let node = tempfile::Builder::new().prefix("node-root-").tempdir().unwrap();
    let node_root = node.path();
    let node_daemon_dir = Containerd::new_dir().unwrap();
    prepare_node_root(version, node_root, node_daemon_dir.path());
    let config_path = node_root.join("etc/containerd/config.toml");
    let original_config = std::fs::read(&config_path).unwrap();
    let before = snapshot(node_root);
    let root_arg = node_root.to_str().unwrap();

    // 1. The cluster's runtime, with the installer image from the archive.
    let cluster = Containerd::start(version, ContainerdOptions { flox: None, ..ContainerdOptions::default() })
        .unwrap_or_else(|e| panic!("{e:#}"));
    cluster.import_image(&archive).unwrap_or_else(|e| panic!("{e:#}"));
    cluster.wait_images_visible(&[INSTALLER_IMAGE], Duration::from_secs(20)).unwrap();

    // 2. The installer DaemonSet's own pod.
    let installer = work.path().join("installer-daemonset.yaml");
    let installer_yaml = rendered_workload(".", "DaemonSet", "imageless-installer");
    std::fs::write(&installer, &installer_yaml).unwrap();
    let out = pod_cli(
        &cluster,
        &["run", installer.to_str().unwrap(), "--host-network", "--host-path-root", root_arg, "--timeout", "120s"],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let report = format!("stdout:\n{stdout}\nstderr:\n{stderr}\ncluster containerd:\n{}", cluster.log_tail(30));
    for line in [
        "[install] installed /usr/local/bin/flox-runc",
        "[install] installed /usr/local/bin/containerd-shim-flox-v2",
        "[install] wrote runtime flox into /etc/containerd/config.toml",
        "[install] verified: `containerd --config /etc/containerd/config.toml config dump` has runtime flox",
        "[install] containerd not restarted",
    ] {
        assert!(stdout.contains(line), "installer pod: no {line:?}\n{report}");
    }
    // No API server here: the agent container runs and fails for exactly that reason.
    assert!(
        stderr.contains("[agent] error: no in-cluster Kubernetes config"),
        "the agent must fail only for the missing API server\n{report}"
    );
    assert_eq!(out.status.code(), Some(1), "the agent container's exit code\n{report}");

    let bin = node_root.join("usr/local/bin");
    for name in ["imageless", "flox-runc", "containerd-shim-flox-v2", "flox-activate"] {
        let meta = std::fs::metadata(bin.join(name)).unwrap_or_else(|e| panic!("installed {name}: {e}"));
        assert_eq!(meta.mode() & 0o7777, 0o755, "{name}");
    }
    let installed_node_config = std::fs::read_to_string(node_root.join("etc/imageless/config.toml")).unwrap();
    assert!(installed_node_config.contains("activator = \"/usr/local/bin/flox-activate\""), "{installed_node_config}");
    assert_ne!(std::fs::read(&config_path).unwrap(), original_config, "install changed the config");

    // 3. The node's containerd on the installed config and binaries: the docs' echoip pod.
    let hub = Hub::start(work.path());
    publish_docs_environment(&hub);
    let token = hub.token("limeytexan", &[]);
    let secret = work.path().join("secrets/floxhub-token");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("floxhub-token"), format!("{token}\n")).unwrap();
    let node_config_path = work.path().join("node.toml");
    std::fs::write(&node_config_path, node_config(&installed_node_config, &hub, &work.path().join("state"))).unwrap();
    let node_ctrd = Containerd::start_with_config(
        version,
        node_daemon_dir,
        &config_path,
        ContainerdOptions {
            env: BTreeMap::from([("IMAGELESS_CONFIG".to_string(), node_config_path.display().to_string())]),
            flox: None,
            bind_mounts: vec![(bin.clone(), PathBuf::from("/usr/local/bin"))],
            ..ContainerdOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("the node's containerd on the installed config: {e:#}"));
    let docs_pod = &docs_pods()[0];
    assert!(docs_pod.contains("secretName: floxhub-token"), "the docs' first pod is the auth example");
    let answer = block_on(async {
        let pod = PodManifest::from_yaml(docs_pod).unwrap();
        let mut opts = node_ctrd.run_options();
        opts.force_host_network = true;
        opts.secrets.insert("floxhub-token".into(), secret.clone());
        let runner = PodRunner::new(node_ctrd.client().await.expect("CRI client"));
        let running = runner
            .run(&pod, &opts)
            .await
            .unwrap_or_else(|e| panic!("docs pod on the installed runtime: {e}\n{}", node_ctrd.log_tail(30)));
        let answer = wait_for_answer(ECHOIP_ADDR, Duration::from_secs(30));
        let logs = running.logs(None).unwrap();
        let addresses = node_ctrd.task_addresses();
        running.remove().await.unwrap();
        (answer, logs, addresses)
    });
    assert_eq!(answer.0, "127.0.0.1", "the docs' echoip pod answers; its log: {:?}", answer.1);
    // The installed launcher ran and put its proxy in front of the shim (1.6 ignores
    // runtime_path and calls BinaryName, flox-runc, directly).
    let proxied = !answer.2.is_empty() && answer.2.iter().all(|a| a.contains(".flox"));
    assert_eq!(proxied, version != ContainerdVersion::V1_6, "task addresses: {:?}", answer.2);
    node_ctrd.stop().unwrap();

    // 4. The uninstaller DaemonSet's own pod.
    let uninstaller = work.path().join("uninstaller-daemonset.yaml");
    std::fs::write(&uninstaller, rendered_workload("uninstall", "DaemonSet", "imageless-uninstaller")).unwrap();
    let out = pod_cli(
        &cluster,
        &[
            "run",
            uninstaller.to_str().unwrap(),
            "--host-network",
            "--host-path-root",
            root_arg,
            "--skip-container",
            "unlabel-node",
            "--detach",
            "--timeout",
            "120s",
        ],
    );
    assert!(out.status.success(), "uninstaller pod: {}\n{}", text(&out.stderr), cluster.log_tail(30));
    let logs = pod_cli(&cluster, &["logs", "imageless-uninstaller", "-n", NAMESPACE, "-c", "uninstall"]);
    let uninstall_log = text(&logs.stdout);
    assert!(uninstall_log.contains("restored /etc/containerd/config.toml"), "{uninstall_log}");
    let rm = pod_cli(&cluster, &["rm", "imageless-uninstaller", "-n", NAMESPACE]);
    assert!(rm.status.success(), "{}", text(&rm.stderr));

    assert_eq!(std::fs::read(&config_path).unwrap(), original_config, "the config's original bytes");
    for name in ["imageless", "flox-runc", "containerd-shim-flox-v2", "flox-activate"] {
        assert!(!bin.join(name).exists(), "{name} left after uninstall");
    }
    let after = snapshot(node_root);
    // The agent's hostPath volumes of type DirectoryOrCreate (/var/lib/imageless, /etc/imageless)
    // are created when the pod's volumes are set up, before install runs, as the kubelet does: so
    // install did not create them and uninstall leaves them, empty.
    let volume_dirs = created_host_dirs(&installer_yaml);
    assert!(!volume_dirs.is_empty(), "the agent mounts the state root and node config by hostPath");
    for dir in &volume_dirs {
        let (mode, ..) = after.get(dir).unwrap_or_else(|| panic!("/{} was created for the pod", dir.display()));
        assert_eq!(mode & 0o170000, 0o040000, "/{} is a directory", dir.display());
        let inside: Vec<_> = after.keys().filter(|p| p.starts_with(dir) && p != &dir).collect();
        assert!(inside.is_empty(), "uninstall left files in /{}: {inside:?}", dir.display());
    }
    let changed: Vec<String> = after
        .keys()
        .chain(before.keys())
        .filter(|p| before.contains_key(*p) || !volume_dirs.contains(*p))
        .filter(|p| before.get(*p) != after.get(*p))
        .map(|p| format!("/{}", p.display()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(
        changed.is_empty(),
        "install + uninstall changed the node root: {changed:?}\nuninstall said:\n{uninstall_log}"
    );
}

#[test]
fn daemonset_install_on_containerd_2_1() {
    daemonset_installs_runs_echoip_and_uninstalls(ContainerdVersion::V2_1);
}

#[test]
fn daemonset_install_on_containerd_1_7() {
    daemonset_installs_runs_echoip_and_uninstalls(ContainerdVersion::V1_7);
}

#[test]
fn daemonset_install_on_containerd_1_6() {
    daemonset_installs_runs_echoip_and_uninstalls(ContainerdVersion::V1_6);
}
