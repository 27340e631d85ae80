//! `containerd-shim-flox-v2`: lets Flox's documented containerd config (`runtime_type =
//! "io.containerd.flox.v2"` or `runtime_path`) work. It execs the stock
//! `containerd-shim-runc-v2` with the same argv, stdin, cwd and environment, except that PATH
//! starts with a directory whose `runc` is `flox-runc`. App containers of a pod join the
//! sandbox's shim process (containerd 2.x), so they inherit that PATH too.
//!
//! Written by hand (no crates): it runs for every shim start and must stay tiny.
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

const SHIM: &str = "containerd-shim-runc-v2";

fn main() {
    let me = std::env::current_exe().unwrap_or_default();
    let bin_dir = me.parent().map(Path::to_path_buf).unwrap_or_default();
    // flox-runc sits next to the launcher; a `runc` symlink to it is made on first use in
    // <bin_dir>/flox-runc-path/ so that directory can go first on PATH. (Not `flox-runc.d`: in a
    // cargo target dir that name is the wrapper's dep-info file.)
    let runc_dir =
        std::env::var_os("FLOX_RUNC_DIR").map(PathBuf::from).unwrap_or_else(|| bin_dir.join("flox-runc-path"));
    if let Err(e) = ensure_runc_link(&runc_dir, &bin_dir.join("flox-runc")) {
        eprintln!("containerd-shim-flox-v2: preparing {}: {e}", runc_dir.display());
    }
    let old_path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    let mut dirs = vec![runc_dir];
    dirs.extend(std::env::split_paths(&old_path));
    let new_path = std::env::join_paths(dirs).unwrap_or(old_path);
    let shim = find_shim(&new_path, &me).unwrap_or_else(|| PathBuf::from(SHIM));
    let err = std::process::Command::new(&shim).args(std::env::args_os().skip(1)).env("PATH", &new_path).exec();
    eprintln!("containerd-shim-flox-v2: cannot exec {}: {err}", shim.display());
    std::process::exit(1);
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

fn find_shim(path: &std::ffi::OsStr, me: &Path) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|d| d.join(SHIM))
        .find(|p| p.is_file() && p.canonicalize().ok() != me.canonicalize().ok())
}
