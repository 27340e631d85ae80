//! The shipped activator (static, release) in an empty root: runs
//! `tests/static-chroot.sh` on the binary `cargo xtask` builds and names in
//! `IMAGELESS_ACTIVATOR` (default: where `cargo xtask build` puts it). Without that build the
//! test fails and says how to make it: it never passes without having run.
use std::path::Path;
use std::process::Command;

#[test]
fn static_activator_runs_in_an_empty_root() {
    let activator = std::env::var_os("IMAGELESS_ACTIVATOR").map(std::path::PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/x86_64-unknown-linux-gnu/release/flox-activate")
    });
    assert!(
        activator.is_file(),
        "the static activator {} is not built: run `cargo xtask build` (or set IMAGELESS_ACTIVATOR)",
        activator.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/static-chroot.sh");
    let output = Command::new("bash").arg(&script).env("FLOX_ACTIVATE_BIN", &activator).output().unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
