//! The edited default configs, loaded by the real containerd of that version: `config dump`
//! (no daemon needed) must show runtime flox with BinaryName and the annotation passthrough.
use std::path::{Path, PathBuf};
use std::process::Command;

use imageless_containerd_config::edit::{self, FloxRuntime};

fn check(version: &str, binary: PathBuf, fixture: &str) {
    // A missing containerd is a setup bug (`cargo xtask test` installs all three): fail, never skip.
    assert!(
        binary.exists(),
        "containerd {version} is absent at {}: run scripts/setup-machine.sh and scripts/fetch-containerd.sh",
        binary.display()
    );
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(fixture);
    let input = std::fs::read_to_string(&data).unwrap();
    let rt = FloxRuntime {
        runc_wrapper: "/opt/imageless/bin/flox-runc".into(),
        shim_launcher: "/opt/imageless/bin/containerd-shim-flox-v2".into(),
    };
    let edited = edit::add_flox_runtime(&input, &rt).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, edited).unwrap();
    let out = Command::new(&binary).arg("--config").arg(&config).args(["config", "dump"]).output().unwrap();
    assert!(out.status.success(), "containerd {version}: {}", String::from_utf8_lossy(&out.stderr));
    let dump = String::from_utf8(out.stdout).unwrap();
    let facts = edit::inspect(&dump).unwrap();
    let flox = facts.flox.unwrap_or_else(|| panic!("containerd {version}: no flox runtime in\n{dump}"));
    assert_eq!(flox.binary_name.as_deref(), Some("/opt/imageless/bin/flox-runc"), "{version}");
    assert_eq!(flox.runtime_path.as_deref(), Some("/opt/imageless/bin/containerd-shim-flox-v2"));
    assert_eq!(flox.pod_annotations, ["flox.dev/*"], "{version}");
    assert_eq!(flox.container_annotations, ["flox.dev/*"], "{version}");
    assert_eq!(flox.runtime_type.as_deref(), Some("io.containerd.runc.v2"));
}

fn downloaded(version: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.work/containerd").join(version).join("usr/bin/containerd")
}

#[test]
fn containerd_1_6_20_loads_edited_default() {
    check("1.6.20", "/usr/bin/containerd".into(), "containerd-1.6.20-default.toml");
}

#[test]
fn containerd_1_7_24_loads_edited_default() {
    check("1.7.24", downloaded("1.7.24"), "containerd-1.7.24-default.toml");
}

#[test]
fn containerd_2_1_9_loads_edited_default() {
    check("2.1.9", downloaded("2.1.9"), "containerd-2.1.9-default.toml");
}

/// containerd 2.1.9 also reads a 1.x (version 2) config with flox, migrating it to version 3.
#[test]
fn containerd_2_1_9_migrates_edited_v2_config() {
    check("2.1.9", downloaded("2.1.9"), "containerd-1.7.24-default.toml");
}
