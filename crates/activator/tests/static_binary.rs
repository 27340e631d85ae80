//! The shipped activator (static, release) in an empty root: runs
//! `tests/static-chroot.sh` on the binary `cargo xtask` builds and names in
//! `IMAGELESS_ACTIVATOR`. Plain `cargo test -p flox-activate` has no static build, so the
//! check only runs where that variable is set (always under `cargo xtask test`).
use std::path::Path;
use std::process::Command;

#[test]
fn static_activator_runs_in_an_empty_root() {
    let Some(activator) = std::env::var_os("IMAGELESS_ACTIVATOR") else {
        eprintln!("IMAGELESS_ACTIVATOR is not set: static check skipped (run tests/static-chroot.sh)");
        return;
    };
    assert!(Path::new(&activator).is_file(), "IMAGELESS_ACTIVATOR={activator:?} is not a file");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/static-chroot.sh");
    let output = Command::new("bash").arg(&script).env("FLOX_ACTIVATE_BIN", &activator).output().unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
