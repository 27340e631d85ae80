//! The launcher with `shim_proxy = false`: the stock shim runs with a PATH whose first `runc`
//! is `flox-runc`, so the wrapper stands in front of every runc call (Flox's documented config
//! has no `BinaryName`; with one, as `imageless install` writes, the shim runs that).
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;

pub fn exec_shim(shim: &Path, args: &[OsString], me: &Path) -> i32 {
    let bin_dir = me.parent().map(Path::to_path_buf).unwrap_or_default();
    // A `runc` symlink to flox-runc (next to the launcher) in <bin_dir>/flox-runc-path/, made
    // on first use. (Not `flox-runc.d`: in a cargo target dir that is the dep-info file.)
    let runc_dir = std::env::var_os("FLOX_RUNC_DIR").map(Into::into).unwrap_or_else(|| bin_dir.join("flox-runc-path"));
    if let Err(e) = ensure_runc_link(&runc_dir, &bin_dir.join("flox-runc")) {
        eprintln!("containerd-shim-flox-v2: preparing {}: {e}", runc_dir.display());
    }
    let old_path = std::env::var_os("PATH").unwrap_or_else(|| crate::DEFAULT_PATH.into());
    let mut dirs = vec![runc_dir];
    dirs.extend(std::env::split_paths(&old_path));
    let new_path = std::env::join_paths(dirs).unwrap_or(old_path);
    let err = std::process::Command::new(shim).args(args).env("PATH", &new_path).exec();
    eprintln!("containerd-shim-flox-v2: cannot exec {}: {err}", shim.display());
    1
}

fn ensure_runc_link(dir: &Path, wrapper: &Path) -> std::io::Result<()> {
    let link = dir.join("runc");
    if std::fs::read_link(&link).ok().as_deref() == Some(wrapper) {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".runc-{}", std::process::id()));
    std::os::unix::fs::symlink(wrapper, &tmp)?;
    std::fs::rename(tmp, link)
}
