//! install/uninstall against a temp "host root", and doctor's failure reports, with the real
//! containerd 1.6.20 for `config dump`.
use std::path::{Path, PathBuf};
use std::time::Duration;

use imageless_containerd_config::doctor::{self, DoctorContext, Status};
use imageless_containerd_config::install::{self, HostRoot, InstallPlan, RestartMode};

const CONTAINERD: &str = "/usr/bin/containerd";

fn fake_bins(dir: &Path) -> PathBuf {
    let bins = dir.join("bins");
    std::fs::create_dir_all(&bins).unwrap();
    for name in install::BINARIES {
        std::fs::write(bins.join(name), format!("#!/bin/sh\n# {name}\n")).unwrap();
    }
    bins
}

fn plan(root: &Path, bins: PathBuf, config: &Path) -> InstallPlan {
    InstallPlan {
        root: HostRoot(root.to_owned()),
        containerd_config: Some(config.to_owned()),
        prefix: root.join("prefix"),
        bin_dir: bins,
        state_dir: "/state".into(),
        restart: RestartMode::None,
        dry_run: false,
        containerd_bin: Some(CONTAINERD.into()),
        node_config: root.join("etc/imageless/config.toml"),
    }
}

#[test]
fn install_is_idempotent_and_uninstall_restores_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("host");
    let config = root.join("etc/containerd/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    let original = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/kind-v0.24.0.toml")).unwrap();
    std::fs::write(&config, &original).unwrap();
    let bins = fake_bins(dir.path());
    // The host root is the real "/" for containerd (no chroot): paths are absolute temp paths.
    let mut p = plan(Path::new("/"), bins, &config);
    p.prefix = root.join("usr/local");
    p.state_dir = root.join("var/lib/imageless");
    // Keep the node config out of the real /etc.
    p.node_config = root.join("etc/imageless/config.toml");

    let mut dry = p.clone();
    dry.dry_run = true;
    let out = install::install(&dry).unwrap();
    assert!(out.changed);
    assert!(
        out.lines.iter().any(|l| l.contains("+[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.flox]")),
        "{:?}",
        out.lines
    );
    assert_eq!(std::fs::read(&config).unwrap(), original, "dry run changed the file");

    let out = install::install(&p).unwrap();
    assert!(out.lines.iter().any(|l| l.starts_with("verified")), "{:?}", out.lines);
    assert!(p.prefix.join("bin/flox-runc").exists());
    let node_config = std::fs::read_to_string(&p.node_config).unwrap();
    let parsed = imageless_node::config::NodeConfig::parse(&node_config).unwrap();
    assert_eq!(parsed.activator, p.prefix.join("bin/flox-activate"), "{node_config}");
    let edited = std::fs::read_to_string(&config).unwrap();
    assert!(edited.contains(&format!("BinaryName = \"{}\"", p.prefix.join("bin/flox-runc").display())));
    let backups: Vec<_> = std::fs::read_dir(config.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("config.toml.bak."))
        .collect();
    assert_eq!(backups.len(), 1);
    assert_eq!(std::fs::read(backups[0].path()).unwrap(), original);

    let again = install::install(&p).unwrap();
    assert!(!again.changed, "second install changed something: {:?}", again.lines);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);

    install::uninstall(&HostRoot("/".into()), &p.state_dir, false).unwrap();
    assert_eq!(std::fs::read(&config).unwrap(), original, "uninstall did not restore the bytes");
    assert!(!p.prefix.join("bin/flox-runc").exists());
    assert!(!p.node_config.exists(), "uninstall left the node config install created");
}

#[test]
fn install_writes_into_the_import_that_shadows_the_cri_section() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc/containerd");
    std::fs::create_dir_all(etc.join("conf.d")).unwrap();
    let config = etc.join("config.toml");
    // Absolute, as node configs write it (containerd 1.6 resolves relative imports from its cwd).
    std::fs::write(&config, format!("version = 2\nimports = [\"{}/conf.d/*.toml\"]\n", etc.display())).unwrap();
    let dropin = etc.join("conf.d/99-nvidia.toml");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/nvidia-ctk-installer-dropin-v2-99-nvidia.toml");
    std::fs::copy(data, &dropin).unwrap();
    let mut p = plan(Path::new("/"), fake_bins(dir.path()), &config);
    p.prefix = dir.path().join("usr/local");
    p.state_dir = dir.path().join("state");
    p.node_config = dir.path().join("node.toml");
    let out = install::install(&p).unwrap();
    assert!(out.lines.iter().any(|l| l.contains("99-nvidia.toml redefines")), "{:?}", out.lines);
    assert!(std::fs::read_to_string(&dropin).unwrap().contains("runtimes.flox]"));
    assert!(!std::fs::read_to_string(&config).unwrap().contains("flox"));
    install::uninstall(&HostRoot("/".into()), &p.state_dir, false).unwrap();
}

#[test]
fn k3s_generated_config_gets_a_base_template() {
    let dir = tempfile::tempdir().unwrap();
    let root = HostRoot(dir.path().to_owned());
    let main = Path::new("/var/lib/rancher/k3s/agent/etc/containerd/config.toml");
    std::fs::create_dir_all(root.join(main.parent().unwrap())).unwrap();
    std::fs::write(
        root.join(main),
        "# File generated by k3s. DO NOT EDIT. Use config.toml.tmpl instead.\nversion = 3\n",
    )
    .unwrap();
    assert_eq!(install::locate_config(&root, None), main);
    let target = install::resolve_target(&root, main, Some(2)).unwrap();
    assert_eq!(target.path, main.with_file_name("config-v3.toml.tmpl"));
    assert_eq!(target.initial.as_deref(), Some("{{ template \"base\" . }}\n"));
}

// ---- doctor ----

fn ctx(dir: &Path, config_text: &str) -> DoctorContext {
    let config = dir.join("config.toml");
    std::fs::write(&config, config_text).unwrap();
    let node = dir.join("node.toml");
    std::fs::write(&node, "hub_url = \"http://127.0.0.1:1\"\nsubstituters = []\n").unwrap();
    DoctorContext {
        containerd_config: config,
        address: Some(dir.join("no-such.sock")),
        containerd_bin: Some(CONTAINERD.into()),
        token_file: None,
        node_config_path: node,
        path_env: std::env::var_os("PATH").unwrap(),
        network_timeout: Duration::from_secs(2),
    }
}

fn failure<'a>(checks: &'a [doctor::Check], name: &str) -> &'a doctor::Check {
    checks
        .iter()
        .find(|c| c.name == name && c.status == Status::Fail)
        .unwrap_or_else(|| panic!("no failed check {name}: {checks:#?}"))
}

const FLOX_V2: &str = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.flox]\nruntime_type = \"io.containerd.runc.v2\"\npod_annotations = [\"flox.dev/*\"]\ncontainer_annotations = [\"flox.dev/*\"]\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.flox.options]\nBinaryName = \"/bin/true\"\n";

#[test]
fn doctor_reports_containerd_down() {
    let dir = tempfile::tempdir().unwrap();
    let checks = doctor::run(&ctx(dir.path(), FLOX_V2));
    assert!(failure(&checks, "containerd").detail.contains("containerd is not answering on"));
}

#[test]
fn doctor_reports_runtime_missing() {
    let dir = tempfile::tempdir().unwrap();
    let checks = doctor::run(&ctx(dir.path(), "version = 2\n"));
    let c = failure(&checks, "runtime flox");
    assert!(c.detail.contains("runtime flox is not in containerd's effective config"), "{c}");
    assert!(c.fix.as_deref().unwrap().contains("imageless install"));
}

#[test]
fn doctor_reports_runtime_shadowed_by_import() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("conf.d")).unwrap();
    std::fs::write(
        dir.path().join("conf.d/99-nvidia.toml"),
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\nenable_cdi = true\n",
    )
    .unwrap();
    let text = format!("imports = [\"{}/conf.d/*.toml\"]\n{FLOX_V2}", dir.path().display());
    let checks = doctor::run(&ctx(dir.path(), &text));
    let c = failure(&checks, "runtime flox");
    assert!(c.detail.contains("is shadowed by import") && c.detail.contains("99-nvidia.toml"), "{c}");
}

#[test]
fn doctor_reports_binary_name_missing() {
    let dir = tempfile::tempdir().unwrap();
    let checks = doctor::run(&ctx(dir.path(), &FLOX_V2.replace("BinaryName = \"/bin/true\"\n", "")));
    assert!(failure(&checks, "BinaryName").detail.contains("no options.BinaryName"));
}

fn check<'a>(checks: &'a [doctor::Check], name: &str) -> &'a doctor::Check {
    checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no check {name}: {checks:#?}"))
}

/// A tmpfs mounted at `dir` (read-only when asked) for as long as the value lives.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, read_only: bool) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let mut options = "size=4m".to_string();
        if read_only {
            options.push_str(",ro");
        }
        let status =
            std::process::Command::new("mount").args(["-t", "tmpfs", "-o", &options, "tmpfs"]).arg(dir).status();
        assert!(status.unwrap().success(), "mount a tmpfs at {} (the test runs as root)", dir.display());
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Nix is no longer a node requirement: doctor does not look for it, and checks the node
/// store instead — creatable and writable, hard links into the state root, an overlay under
/// the state root, free space — each by trying it, and leaves nothing behind.
#[test]
fn doctor_checks_the_node_store_not_nix() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let mut c = ctx(dir.path(), FLOX_V2);
    c.path_env = empty.into_os_string(); // no nix-store, no git
    let state = dir.path().join("state");
    let node = |extra: &str| {
        std::fs::write(
            &c.node_config_path,
            format!(
                "hub_url = \"http://127.0.0.1:1\"\nsubstituters = []\nstate_root = {:?}\n{extra}",
                state.display().to_string()
            ),
        )
        .unwrap();
    };
    node("");
    let checks = doctor::run(&c);
    assert!(
        !checks.iter().any(|c| c.name.contains("nix") || c.name.contains("git") || c.name == "gc roots"),
        "{checks:#?}"
    );
    let store = check(&checks, "node store");
    assert_eq!(store.status, Status::Ok, "{store}");
    assert!(
        store.detail.contains(&state.join("store").display().to_string()),
        "the default is <state_root>/store: {store}"
    );
    assert_eq!(check(&checks, "store filesystem").status, Status::Ok, "{checks:#?}");
    assert_eq!(check(&checks, "overlay").status, Status::Ok, "{checks:#?}");
    assert!(check(&checks, "disk").detail.contains("GiB free for the node store"), "{checks:#?}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().contains("imageless-doctor")), "scratch dirs left: {left:?}");
    assert!(!state.exists(), "doctor created the state root");

    // A store_dir that is a file.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    node(&format!("store_dir = {:?}\n", file.display().to_string()));
    let c1 = doctor::run(&c);
    assert!(failure(&c1, "node store").detail.ends_with("is not a directory"), "{c1:#?}");

    // A store on another filesystem than the state root: views would copy, not link.
    let _other = Tmpfs::mount(&dir.path().join("other-fs"), false);
    node(&format!("store_dir = {:?}\n", dir.path().join("other-fs/store").display().to_string()));
    let c2 = doctor::run(&c);
    let fs = check(&c2, "store filesystem");
    assert_eq!(fs.status, Status::Warn, "{fs}");
    assert!(fs.detail.contains("different filesystems"), "{fs}");
    assert_eq!(check(&c2, "node store").status, Status::Ok, "{c2:#?}");

    // A read-only state root: nothing can be created, linked or mounted there.
    let _ro = Tmpfs::mount(&state, true);
    node("");
    let c3 = doctor::run(&c);
    assert!(failure(&c3, "node store").detail.contains("cannot be created"), "{c3:#?}");
    assert!(failure(&c3, "store filesystem").detail.contains("cannot hard-link"), "{c3:#?}");
    assert!(failure(&c3, "overlay").detail.contains("does not mount"), "{c3:#?}");
}

#[test]
fn doctor_reports_hub_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }; // closed again here
    let c = ctx(dir.path(), FLOX_V2);
    std::fs::write(&c.node_config_path, format!("hub_url = \"http://127.0.0.1:{port}\"\nsubstituters = []\n")).unwrap();
    let checks = doctor::run(&c);
    assert!(failure(&checks, "hub").detail.contains(&format!("hub http://127.0.0.1:{port} is unreachable")));
    // And an open port is reachable.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open = l.local_addr().unwrap().port();
    std::fs::write(&c.node_config_path, format!("hub_url = \"http://127.0.0.1:{open}\"\nsubstituters = []\n")).unwrap();
    assert!(doctor::run(&c).iter().any(|c| c.name == "hub" && c.status == Status::Ok));
}

#[test]
fn doctor_reports_token_expired() {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let dir = tempfile::tempdir().unwrap();
    let token = format!(
        "{}.{}.sig",
        b64("{\"alg\":\"HS256\"}"),
        b64("{\"https://flox.dev/handle\":\"alice\",\"exp\":1000000000}")
    );
    let file = dir.path().join("token");
    std::fs::write(&file, &token).unwrap();
    let mut c = ctx(dir.path(), FLOX_V2);
    c.token_file = Some(file.clone());
    let checks = doctor::run(&c);
    let t = failure(&checks, "token");
    assert!(t.detail.contains("token expired at 2001-09-09"), "{t}");
    assert!(!t.to_string().contains(&token), "token leaked");
    let fresh = format!("{}.{}.sig", b64("{}"), b64("{\"https://flox.dev/handle\":\"alice\",\"exp\":4102444800}"));
    std::fs::write(&file, fresh).unwrap();
    assert!(doctor::run(&c).iter().any(|c| c.name == "token" && c.status == Status::Ok));
    // A JWT without FloxHub's handle claim is refused, as the node refuses it.
    let no_handle = format!("{}.{}.sig", b64("{}"), b64("{\"sub\":\"alice\",\"exp\":4102444800}"));
    std::fs::write(&file, &no_handle).unwrap();
    let checks = doctor::run(&c);
    let t = failure(&checks, "token");
    assert!(t.detail.contains("claim 'https://flox.dev/handle' is missing"), "{t}");
    assert!(!t.to_string().contains(&no_handle), "token leaked");
    // An opaque access token's expiry is unknown here.
    std::fs::write(&file, "flox_pat_0123\n").unwrap();
    assert!(doctor::run(&c).iter().any(|c| c.name == "token" && c.status == Status::Warn));
}
