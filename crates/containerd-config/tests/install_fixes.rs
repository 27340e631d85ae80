//! Install bugs found on real node configs, each checked with the real containerd that showed it:
//! RKE2's version-3 template, a failed install that must leave the node as it was, uninstall
//! taking install's flags, a version-3 config on containerd 1.x, and upgrades over running binaries.
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use imageless_containerd_config::cli::{InstallArgs, UninstallArgs};
use imageless_containerd_config::edit::{self, ConfigVersion};
use imageless_containerd_config::install::{self, HostRoot, InstallError, InstallPlan, RestartMode};

const CONTAINERD_1_6: &str = "/usr/bin/containerd";

fn containerd_2_1_9() -> PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.work/containerd/2.1.9/usr/bin/containerd");
    assert!(bin.exists(), "containerd 2.1.9 is needed at {} (cargo xtask build fetches it)", bin.display());
    bin
}

fn data(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)).unwrap()
}

/// A node laid out under a temp dir; paths are absolute so containerd reads them without chroot.
/// The binaries to install live apart from it (they are input, not node state).
struct Node {
    dir: tempfile::TempDir,
    inputs: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        Node { dir: tempfile::tempdir().unwrap(), inputs: tempfile::tempdir().unwrap() }
    }
    /// A bin dir of small scripts, distinct per `tag`.
    fn bins(&self, tag: &str) -> PathBuf {
        let bins = self.inputs.path().join(tag);
        std::fs::create_dir_all(&bins).unwrap();
        for name in install::BINARIES {
            std::fs::write(bins.join(name), format!("#!/bin/sh\n# {name} {tag}\n")).unwrap();
        }
        bins
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn put(&self, p: &str, text: &str) -> PathBuf {
        let path = self.path(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }
    fn plan(&self, config: &Path, containerd: &Path, bins: PathBuf) -> InstallPlan {
        InstallPlan {
            root: HostRoot("/".into()),
            containerd_config: Some(config.to_owned()),
            prefix: self.path("usr/local"),
            bin_dir: bins,
            state_dir: self.path("var/lib/imageless"),
            restart: RestartMode::None,
            dry_run: false,
            containerd_bin: Some(containerd.to_owned()),
            node_config: self.path("etc/imageless/config.toml"),
        }
    }
    /// Every path under the node with its type, mode, owner and bytes.
    fn snapshot(&self) -> BTreeMap<PathBuf, (u32, u32, Vec<u8>)> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, (u32, u32, Vec<u8>)>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                let bytes = if meta.is_file() { std::fs::read(&path).unwrap() } else { Vec::new() };
                out.insert(path.clone(), (meta.mode(), meta.uid(), bytes));
                if meta.is_dir() {
                    walk(&path, out);
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.dir.path(), &mut out);
        out
    }
}

/// RKE2 1.32 (containerd 2.x) renders a version-3 config.toml from `config-v3.toml.tmpl`. The
/// runtime install puts in the template must land in `io.containerd.cri.v1.runtime` once RKE2
/// renders it: checked by rendering `{{ template "base" . }}` as RKE2 does (the config it rendered
/// last) and loading the result with containerd 2.1.9.
#[test]
fn rke2_1_32_v3_template_puts_the_runtime_in_the_cri_runtime_plugin() {
    let node = Node::new();
    let rendered = data("rke2-v1.32-rendered-v3.toml");
    let main = node.put("var/lib/rancher/rke2/agent/etc/containerd/config.toml", &rendered);
    let c2 = containerd_2_1_9();
    let plan = node.plan(&main, &c2, node.bins("v1"));
    let out = install::install(&plan).unwrap_or_else(|e| panic!("{e}"));
    let template_path = main.with_file_name("config-v3.toml.tmpl");
    assert!(out.lines.iter().any(|l| l.contains("config-v3.toml.tmpl")), "{:?}", out.lines);
    assert_eq!(std::fs::read_to_string(&main).unwrap(), rendered, "the generated file is left to rke2");
    let template = std::fs::read_to_string(&template_path).unwrap();
    assert!(template.starts_with("{{ template \"base\" . }}\n"), "{template}");
    assert!(template.contains("[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.flox]"), "{template}");
    assert!(!template.contains("[plugins.\"cri\""), "{template}");

    // What rke2 renders on restart: the base config, then the rest of the template.
    let rendered_after = template.replace("{{ template \"base\" . }}\n", &rendered);
    let config = node.put("rendered/config.toml", &rendered_after);
    let dump = Command::new(&c2).arg("--config").arg(&config).args(["config", "dump"]).output().unwrap();
    assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
    let dump = String::from_utf8(dump.stdout).unwrap();
    assert!(
        !dump.contains("[plugins.cri") && !dump.contains("[plugins.'cri'"),
        "runtime kept as unknown plugin:\n{dump}"
    );
    let facts = edit::inspect(&dump).unwrap();
    assert_eq!(facts.version, ConfigVersion::V3);
    let flox = facts.flox.unwrap_or_else(|| panic!("no runtime flox under io.containerd.cri.v1.runtime:\n{dump}"));
    assert_eq!(flox.binary_name.as_deref(), Some(&*plan.prefix.join("bin/flox-runc").to_string_lossy()));
    assert_eq!(flox.pod_annotations, ["flox.dev/*"]);
    // The node uses the systemd cgroup driver (runc has SystemdCgroup = true): flox must too.
    let table = dump.parse::<toml::Table>().unwrap();
    let flox_table = &table["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["flox"];
    assert_eq!(flox_table["sandboxer"].as_str(), Some("podsandbox"), "{flox_table}");
    assert_eq!(flox_table["options"]["SystemdCgroup"].as_bool(), Some(true), "{flox_table}");

    install::uninstall(&HostRoot("/".into()), &plan.state_dir, false).unwrap();
    assert!(!template_path.exists(), "uninstall removes the template install created");
}

fn assert_unchanged(node: &Node, before: &BTreeMap<PathBuf, (u32, u32, Vec<u8>)>) {
    let after = node.snapshot();
    let changed: Vec<_> = after
        .keys()
        .chain(before.keys())
        .filter(|p| before.get(*p) != after.get(*p))
        .map(|p| p.display().to_string())
        .collect();
    assert!(changed.is_empty(), "a failed install changed {changed:?}");
}

/// An upgrade layout: an older install already there, so rollback has binaries, a record and a
/// node config to put back, not only files to delete.
fn installed_node(config_text: &str) -> (Node, PathBuf) {
    let node = Node::new();
    let config = node.put("etc/containerd/config.toml", config_text);
    let plan = node.plan(&config, Path::new(CONTAINERD_1_6), node.bins("old"));
    install::install(&plan).unwrap_or_else(|e| panic!("{e}"));
    (node, config)
}

/// containerd 1.6 reads a relative `imports` entry from its working directory, so the drop-in
/// install writes the runtime into is not what this containerd loads: verification fails, and
/// everything install wrote must be put back.
#[test]
fn failed_verification_leaves_files_binaries_and_state_as_they_were() {
    let node = Node::new();
    let config = node.put("etc/containerd/config.toml", "version = 2\nimports = [\"conf.d/*.toml\"]\n");
    node.put("etc/containerd/conf.d/99-nvidia.toml", &data("nvidia-ctk-installer-dropin-v2-99-nvidia.toml"));
    // An older install of the binaries (a previous version) is there too.
    std::fs::create_dir_all(node.path("usr/local/bin")).unwrap();
    std::fs::write(node.path("usr/local/bin/flox-runc"), "old flox-runc\n").unwrap();
    std::fs::set_permissions(node.path("usr/local/bin/flox-runc"), std::fs::Permissions::from_mode(0o750)).unwrap();
    let before = node.snapshot();
    let plan = node.plan(&config, Path::new(CONTAINERD_1_6), node.bins("new"));
    let err = install::install(&plan).unwrap_err();
    assert!(matches!(err, InstallError::Verify(_)), "{err}");
    let text = err.to_string();
    assert!(text.contains("runtime flox is not in containerd's effective config"), "{text}");
    assert!(text.contains("1.6.20"), "the message names the containerd it checked with: {text}");
    assert_unchanged(&node, &before);
}

/// The config's directory is read-only (a read-only bind mount, so it holds for root too): the
/// binaries already copied, and an older install's record, are put back.
#[test]
fn unwritable_config_leaves_files_binaries_and_state_as_they_were() {
    let (node, config) = installed_node(&data("containerd-1.6.20-default.toml"));
    // Make the installed config differ so the next install has to write it.
    let edited = std::fs::read_to_string(&config).unwrap().replace("/usr/local/bin/flox-runc", "/old/flox-runc");
    std::fs::write(&config, edited).unwrap();
    let before = node.snapshot();
    let dir = config.parent().unwrap().to_owned();
    let mount = ReadOnlyMount::new(&dir);
    let plan = node.plan(&config, Path::new(CONTAINERD_1_6), node.bins("new"));
    let err = install::install(&plan).unwrap_err();
    drop(mount);
    let text = err.to_string();
    assert!(text.contains("Read-only file system") && text.contains("config.toml"), "{text}");
    assert_unchanged(&node, &before);
}

struct ReadOnlyMount(PathBuf);

impl ReadOnlyMount {
    fn new(dir: &Path) -> ReadOnlyMount {
        let run = |args: &[&str]| {
            let status = Command::new("mount").args(args).arg(dir).arg(dir).status().unwrap();
            assert!(status.success(), "mount {args:?} {} (this test needs root)", dir.display());
        };
        run(&["--bind"]);
        let guard = ReadOnlyMount(dir.to_owned());
        let status = Command::new("mount").args(["-o", "remount,bind,ro"]).arg(dir).status().unwrap();
        assert!(status.success(), "remount read-only {}", dir.display());
        guard
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// containerd 1.x reads config versions 1 and 2 only: a version-3 file loads "fine" and simply has
/// no CRI runtimes. Install must say which version needs which containerd, before changing anything.
#[test]
fn version_3_config_on_containerd_1_x_names_both_versions() {
    let node = Node::new();
    let config = node.put("etc/containerd/config.toml", &data("containerd-2.1.9-default.toml"));
    let before = node.snapshot();
    let plan = node.plan(&config, Path::new(CONTAINERD_1_6), node.bins("v1"));
    let err = install::install(&plan).unwrap_err().to_string();
    assert!(err.contains("version 3 config, which needs containerd 2.0 or newer"), "{err}");
    assert!(err.contains("containerd is 1.6.20"), "{err}");
    assert!(err.contains("reads config versions 1 and 2 only"), "{err}");
    assert!(!err.contains("not in the effective config"), "{err}");
    assert_unchanged(&node, &before);

    // doctor says the same.
    let ctx = imageless_containerd_config::doctor::DoctorContext {
        containerd_config: config.clone(),
        address: Some(node.path("no.sock")),
        containerd_bin: Some(CONTAINERD_1_6.into()),
        token_file: None,
        node_config_path: node.path("none.toml"),
        path_env: std::env::var_os("PATH").unwrap(),
        network_timeout: std::time::Duration::from_secs(1),
    };
    let checks = imageless_containerd_config::doctor::run(&ctx);
    let check = checks.iter().find(|c| c.name == "containerd config").unwrap_or_else(|| panic!("{checks:#?}"));
    assert!(check.detail.contains("needs containerd 2.0 or newer") && check.detail.contains("1.6.20"), "{check}");
}

#[derive(clap::Parser)]
struct Cli {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    Install(InstallArgs),
    Uninstall(UninstallArgs),
}

/// A user repeats the install line with `uninstall`: every flag install took is accepted.
#[test]
fn uninstall_accepts_the_install_line() {
    use clap::Parser;
    let flags = [
        "--containerd-config",
        "/etc/containerd/config.toml",
        "--prefix",
        "/opt/imageless",
        "--host-root",
        "/host",
        "--restart",
        "none",
        "--bin-dir",
        "/opt/imageless/bin",
        "--state-dir",
        "/var/lib/imageless",
        "--containerd-bin",
        "/usr/bin/containerd",
        "--dry-run",
    ];
    for sub in ["install", "uninstall"] {
        let args = std::iter::once("imageless").chain(std::iter::once(sub)).chain(flags);
        let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{sub}: {e}"));
        let a = match cli.command {
            Sub::Install(a) | Sub::Uninstall(a) => a,
        };
        assert_eq!(a.prefix, Path::new("/opt/imageless"));
        assert_eq!(a.host_root, Path::new("/host"));
    }
}

/// Installing a newer version over an older one while its binaries run: each binary is replaced
/// by rename (a running process keeps its old inode; writing in place would fail with "Text file
/// busy" or corrupt it), and the node config the node already has is kept.
#[test]
fn upgrade_replaces_running_binaries_atomically_and_keeps_the_node_config() {
    let node = Node::new();
    let config = node.put("etc/containerd/config.toml", &data("containerd-1.6.20-default.toml"));
    // Old version: real executables (copies of sleep) that keep running through the upgrade.
    let old = node.inputs.path().join("old");
    std::fs::create_dir_all(&old).unwrap();
    for name in install::BINARIES {
        std::fs::copy("/bin/sleep", old.join(name)).unwrap();
    }
    let plan = node.plan(&config, Path::new(CONTAINERD_1_6), old);
    install::install(&plan).unwrap_or_else(|e| panic!("{e}"));
    let runc = plan.prefix.join("bin/flox-runc");
    let shim = plan.prefix.join("bin/containerd-shim-flox-v2");
    let old_inode = std::fs::metadata(&runc).unwrap().ino();
    let mut running: Vec<_> =
        [&runc, &shim].iter().map(|b| Command::new(b).arg("30").spawn().unwrap()).collect::<Vec<_>>();
    // The operator tuned the node config after the first install.
    let tuned = "# tuned by the operator\nactivator = \"/usr/local/bin/flox-activate\"\n";
    std::fs::write(&plan.node_config, tuned).unwrap();
    let containerd_config_after_first = std::fs::read(&config).unwrap();

    let new = node.inputs.path().join("new");
    std::fs::create_dir_all(&new).unwrap();
    for name in install::BINARIES {
        std::fs::copy("/bin/true", new.join(name)).unwrap();
    }
    let upgrade = InstallPlan { bin_dir: new.clone(), ..plan.clone() };
    let out = install::install(&upgrade).unwrap_or_else(|e| panic!("upgrade over running binaries: {e}"));
    assert!(out.lines.iter().any(|l| l.contains("installed") && l.contains("flox-runc")), "{:?}", out.lines);
    for name in install::BINARIES {
        assert_eq!(
            std::fs::read(plan.prefix.join("bin").join(name)).unwrap(),
            std::fs::read(new.join(name)).unwrap(),
            "{name} not upgraded"
        );
        let mode = std::fs::metadata(plan.prefix.join("bin").join(name)).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o755, "{name}");
    }
    assert_ne!(std::fs::metadata(&runc).unwrap().ino(), old_inode, "replaced by rename, not rewritten in place");
    for child in &mut running {
        assert!(child.try_wait().unwrap().is_none(), "a running old binary died during the upgrade");
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert_eq!(std::fs::read_to_string(&plan.node_config).unwrap(), tuned, "node config kept");
    assert_eq!(std::fs::read(&config).unwrap(), containerd_config_after_first, "same prefix: config unchanged");
    let leftovers: Vec<_> = std::fs::read_dir(plan.prefix.join("bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");

    // Uninstall still goes back to before the first install.
    install::uninstall(&HostRoot("/".into()), &plan.state_dir, false).unwrap();
    assert_eq!(std::fs::read_to_string(&config).unwrap(), data("containerd-1.6.20-default.toml"));
    assert!(!runc.exists());
    let left: Vec<_> = std::fs::read_dir(config.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["config.toml"], "uninstall left the backup install made");
}

/// Uninstall leaves nothing install (or the installed launcher) added: the directories install
/// created (the prefix, /etc/imageless, the state dir) and the launcher's `runc` link directory
/// go too, so the node is as it was, path for path.
#[test]
fn uninstall_removes_the_directories_install_created_and_the_launchers_link() {
    let node = Node::new();
    let config = node.put("etc/containerd/config.toml", &data("containerd-1.6.20-default.toml"));
    let before = node.snapshot();
    let plan = node.plan(&config, Path::new(CONTAINERD_1_6), node.bins("v1"));
    install::install(&plan).unwrap_or_else(|e| panic!("{e}"));
    let record = install::load_record(&plan.state_dir.join("install.json")).unwrap().unwrap();
    assert!(record.created_dirs.contains(&plan.state_dir), "{:?}", record.created_dirs);
    assert!(record.created_dirs.contains(&node.path("etc/imageless")), "{:?}", record.created_dirs);
    // What containerd-shim-flox-v2 makes next to itself on its first start.
    let bin = plan.prefix.join("bin");
    std::fs::create_dir(bin.join(install::LAUNCHER_RUNC_DIR)).unwrap();
    std::os::unix::fs::symlink(bin.join("flox-runc"), bin.join(install::LAUNCHER_RUNC_DIR).join("runc")).unwrap();

    let lines = install::uninstall(&HostRoot("/".into()), &plan.state_dir, false).unwrap();
    assert!(lines.iter().any(|l| l.contains("removed") && l.ends_with(install::LAUNCHER_RUNC_DIR)), "{lines:?}");
    let after = node.snapshot();
    let left: Vec<_> = after.keys().filter(|p| !before.contains_key(*p)).collect();
    assert!(left.is_empty(), "uninstall left {left:?}");
    assert_eq!(std::fs::read(&config).unwrap(), data("containerd-1.6.20-default.toml").as_bytes());
}
