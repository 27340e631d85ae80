//! `imageless install --containerd-config config.toml` reads the file from the current directory,
//! as every command-line tool does (it used to be joined to the host root: install wrote
//! `/config.toml`, left the named file alone and failed). Its own test binary: it changes the
//! process's current directory.
use std::path::Path;

use imageless_containerd_config::cli::{self, InstallArgs};
use imageless_containerd_config::install::{self, HostRoot, RestartMode};

#[test]
fn relative_containerd_config_is_read_from_the_current_directory() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let original = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/containerd-1.6.20-default.toml"),
    )
    .unwrap();
    std::fs::write(work.join("config.toml"), &original).unwrap();
    let bins = dir.path().join("bins");
    std::fs::create_dir_all(&bins).unwrap();
    for name in install::BINARIES {
        std::fs::write(bins.join(name), format!("#!/bin/sh\n# {name}\n")).unwrap();
    }
    // SAFETY (of the env change): this test binary runs this one test.
    std::env::set_var(imageless_node::config::PATH_ENV, dir.path().join("node.toml"));
    std::env::set_current_dir(&work).unwrap();
    let args = InstallArgs {
        containerd_config: Some("config.toml".into()),
        prefix: "prefix".into(),
        host_root: "/".into(),
        restart: RestartMode::None,
        dry_run: false,
        bin_dir: Some(bins),
        state_dir: "state".into(),
        containerd_bin: Some("/usr/bin/containerd".into()),
    };
    cli::install(args).unwrap_or_else(|e| panic!("{e}"));
    assert!(!Path::new("/config.toml").exists(), "wrote into the host root");
    let edited = std::fs::read_to_string(work.join("config.toml")).unwrap();
    assert!(edited.contains(&format!("BinaryName = \"{}\"", work.join("prefix/bin/flox-runc").display())), "{edited}");
    assert!(work.join("prefix/bin/flox-runc").exists());
    assert!(work.join("state/install.json").exists());

    // Under another host root, a relative path must lie inside it, and becomes a node path.
    let root = HostRoot(dir.path().to_owned());
    let node = install::node_path_of_arg(&root, &work, "containerd-config", Path::new("config.toml")).unwrap();
    assert_eq!(node, Path::new("/work/config.toml"));
    let err = install::node_path_of_arg(&root, Path::new("/elsewhere"), "containerd-config", Path::new("../c.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--containerd-config ../c.toml") && err.contains("not under --host-root"), "{err}");

    install::uninstall(&HostRoot("/".into()), &work.join("state"), false).unwrap();
    assert_eq!(std::fs::read_to_string(work.join("config.toml")).unwrap(), original);
}
