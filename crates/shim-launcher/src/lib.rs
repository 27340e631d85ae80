//! `containerd-shim-flox-v2`, the shim containerd runs for runtime `flox` (`runtime_path`, or
//! `runtime_type = "io.containerd.flox.v2"` as in Flox's documented config). It is the stock
//! `containerd-shim-runc-v2` with a proxy in front (see `proxy`): `start` starts both, every
//! other action is the stock shim's, except `delete`, done natively (see `delete`) without the
//! stock shim's Go process, which also drops what flox-runc's delete would.
//!
//! With `shim_proxy = false` in the node config it only starts the stock shim with `flox-runc`
//! first on PATH (`wrapper_path`).
//!
//! containerd 1.6 does not run it through CRI (it ignores `runtime_path`); there the
//! `flox-runc` wrapper named by `BinaryName` does the same work in front of each runc call.
mod delete;
mod group;
mod proxy;
mod start;
mod wrapper_path;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

const SHIM: &str = "containerd-shim-runc-v2";
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs one launcher invocation and returns its exit status (or never returns when it execs
/// the stock shim; the proxy is a fork of `start` that never returns either).
pub fn run(args: Vec<OsString>) -> i32 {
    flox_runc::init_logging();
    // The sandbox's create, in the proxy, spawns the prefetch as flox-runc does: itself.
    if args.first().and_then(|a| a.to_str()) == Some(flox_runc::PREFETCH_ARG) {
        let rest: Vec<String> = args[1..].iter().map(|a| a.to_string_lossy().into_owned()).collect();
        return flox_runc::prefetch_main(&rest);
    }
    let me = std::env::current_exe().unwrap_or_default();
    let Some(shim) = find_shim(&me) else {
        eprintln!("containerd-shim-flox-v2: no {SHIM} on PATH");
        return 1;
    };
    match args.last().and_then(|a| a.to_str()) {
        Some("start") if proxy_enabled() => start::start(&shim, &args),
        Some("start") => wrapper_path::exec_shim(&shim, &args, &me),
        Some("delete") => delete::delete(&args),
        _ => start::exec_shim(&shim, &args),
    }
}

/// At most `limit` bytes of the file at `path`, as text. Every file the launcher reads is
/// containerd's, the shim's or ours, but none is read without a bound.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path).ok()?.take(limit).read_to_string(&mut text).ok()?;
    Some(text)
}

/// The stock runc shim: the first on PATH that is not this launcher.
fn find_shim(me: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    let me = me.canonicalize().ok();
    std::env::split_paths(&path).map(|d| d.join(SHIM)).find(|p| p.is_file() && p.canonicalize().ok() != me)
}

/// The node config's `shim_proxy` (on when the config cannot be read: the proxy's create then
/// reports why, in the pod's events).
fn proxy_enabled() -> bool {
    imageless_node::config::NodeConfig::load(None).map_or(true, |c| c.shim_proxy)
}
