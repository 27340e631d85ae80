//! The runc wrapper. For each runc call containerd's shim makes, decide (pure, in
//! `imageless-core`), do the node work (in `imageless-node`), then run the real runc:
//! - `create` of a flox container: resolve + render the environment, edit config.json;
//! - `create` of the pod sandbox: start a background prefetch, change nothing;
//! - `exec --process F`: wrap F like the container's main process;
//! - `delete` of a flox container: real delete, then drop per-container state and overlay;
//! - anything else: exec the real runc untouched.
//!
//! The shim launcher's proxy (containerd 1.7 and 2.x) does the same work in-process through
//! `prepare_bundle`, `ExecWrap` and `cleanup`, and points the runc shim at the real runc, so
//! no wrapper process stands in front of each runc call there.
mod create;
mod error_log;
mod exec;
mod real_runc;
mod steps;

use imageless_core::runc_args::{Command, RuncInvocation};
use imageless_node::config::NodeConfig;

pub use create::{cleanup, has_state, prefetch_main, prepare_bundle, CreateError};
pub use error_log::ErrorLog;
pub use exec::{ExecError, ExecWrap};
pub use real_runc::{find as find_runc, RuncError};

/// Hidden first argument for the detached prefetch started at sandbox create.
pub const PREFETCH_ARG: &str = "--flox-prefetch";

/// Logs to stderr when `IMAGELESS_LOG` is set (a filter, e.g. `flox_runc::timing=debug`);
/// otherwise sets up nothing, as the wrapper runs for every runc call.
pub fn init_logging() {
    if std::env::var_os("IMAGELESS_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("IMAGELESS_LOG"))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// Runs one wrapper invocation and returns the exit status (or never returns when it execs).
pub fn run(args: Vec<String>) -> i32 {
    init_logging();
    if args.first().map(String::as_str) == Some(PREFETCH_ARG) {
        return prefetch_main(&args[1..]);
    }
    let mut steps = steps::Steps::start();
    let inv = RuncInvocation::parse(&args);
    let log = ErrorLog::new(inv.log.as_deref());
    let config = match NodeConfig::load(None) {
        Ok(c) => c,
        Err(e) => {
            // Without a config we cannot even find the real runc: report and fail.
            log.error(&e.to_string());
            return 1;
        }
    };
    let runc = match real_runc::find(&config) {
        Ok(r) => r,
        Err(e) => {
            log.error(&e.to_string());
            return 1;
        }
    };
    match &inv.command {
        Command::Create { bundle, id } | Command::Run { bundle, id } => {
            steps.mark("config");
            create::create(&config, &runc, &args, bundle, id, &log, steps)
        }
        Command::Exec { process: Some(process), id } => {
            if let Err(e) = exec::wrap_exec_process(&config, process, id) {
                log.error(&e.to_string());
                return 1;
            }
            real_runc::exec(&runc, &args, &log)
        }
        Command::Delete { id, .. } => {
            if !create::has_state(&config, id) {
                // A sandbox or pass-through container: nothing of ours to remove after runc's
                // delete, so become runc (no second process, as for their create).
                return real_runc::exec(&runc, &args, &log);
            }
            let status = real_runc::spawn_wait(&runc, &args, &log);
            if status == 0 {
                create::cleanup(&config, id);
            }
            status
        }
        _ => real_runc::exec(&runc, &args, &log),
    }
}
