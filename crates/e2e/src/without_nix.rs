//! Running an e2e test on a node without Nix (issue 12's first "Done when"): the test binary
//! runs one of its own tests again inside `without-nix` (src/bin/without-nix.rs), a mount
//! namespace whose root has no /nix and whose PATH runs no `nix*` and no `git`
//! ([`HIDE_GIT`]), with containerd, the shim, runc and flox-runc started in there.
use std::process::Command;

use crate::flox_node;

/// Whether git is hidden from the node too: the node fetches floxmeta in-process
/// (crates/node/src/resolve/), so it is; only the test hub's `git http-backend` keeps one.
pub const HIDE_GIT: bool = true;

/// Where `without-nix` puts the programs it hides from the node but that test fixtures (the
/// local hub's `git http-backend`) still need.
pub const FIXTURE_PATH_ENV: &str = "IMAGELESS_E2E_FIXTURE_PATH";

/// Set in the test process that runs inside the namespace.
pub const INSIDE_ENV: &str = "IMAGELESS_E2E_WITHOUT_NIX";

/// Whether this process runs inside `without-nix`.
pub fn inside() -> bool {
    std::env::var_os(INSIDE_ENV).is_some()
}

/// The body of test `name`: `scenario` when already inside the namespace, else the same test
/// again inside `without-nix`.
pub fn run(name: &str, scenario: impl FnOnce()) {
    if inside() {
        scenario();
    } else {
        run_test_without_nix(name);
    }
}

/// Runs test `name` of the current test binary inside `without-nix`; panics with its output
/// unless it ran and passed.
pub fn run_test_without_nix(name: &str) {
    let launcher = flox_node::bin_dir().join("without-nix");
    assert!(
        launcher.exists(),
        "{} not built: run `cargo build -p imageless-e2e --bins` (cargo xtask build does)",
        launcher.display()
    );
    // The world is built with Nix, once, before Nix goes away (inside, it is found up to date).
    let hub_root = flox_node::world_root();
    let root = tempfile::Builder::new().prefix("without-nix-").tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("the test binary");
    let mut cmd = Command::new(&launcher);
    cmd.arg("--root-dir").arg(root.path());
    if HIDE_GIT {
        cmd.arg("--hide-git");
    }
    let out = cmd
        .arg("--")
        .arg(exe)
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env(INSIDE_ENV, "1")
        .env("IMAGELESS_HUB_ROOT", &hub_root)
        .output()
        .expect("running without-nix");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{name} without Nix failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(stderr.contains("without-nix: /nix absent"), "the namespace was not checked: {stderr}");
}
