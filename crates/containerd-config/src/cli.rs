//! `imageless install | uninstall | doctor`: argument parsing and printing only.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::doctor::{self, DoctorContext, Status};
use crate::install::{self, HostRoot, InstallError, InstallPlan, RestartMode};

#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    /// containerd config to edit (node path). Default: k3s/RKE2's when present, else /etc/containerd/config.toml.
    #[arg(long)]
    pub containerd_config: Option<PathBuf>,
    /// Binaries go to PREFIX/bin.
    #[arg(long, default_value = install::DEFAULT_PREFIX)]
    pub prefix: PathBuf,
    /// Where the node's root filesystem is mounted (the DaemonSet uses /host).
    #[arg(long, default_value = "/")]
    pub host_root: PathBuf,
    #[arg(long, value_enum, default_value = "auto")]
    pub restart: RestartMode,
    /// Print what would change (a unified diff) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Directory holding flox-runc, containerd-shim-flox-v2, flox-activate, imageless.
    /// Default: the directory of the running imageless.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Where the install record lives (node path).
    #[arg(long, default_value = install::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// containerd binary used for its version and `config dump` (node path).
    #[arg(long)]
    pub containerd_bin: Option<PathBuf>,
}

/// `uninstall` takes the flags install took, so the install line with `uninstall` undoes it.
/// What to undo comes from the install record (`--host-root`, `--state-dir`); `--containerd-config`
/// and `--containerd-bin` name the daemon to restart; `--prefix` and `--bin-dir` are accepted and
/// not needed (the record lists the binaries install created).
pub type UninstallArgs = InstallArgs;

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// FloxHub token file: its expiry is checked (the token is never printed).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    #[arg(long)]
    pub containerd_config: Option<PathBuf>,
    /// containerd's socket. Default: `[grpc] address` of the config.
    #[arg(long)]
    pub address: Option<PathBuf>,
    #[arg(long)]
    pub containerd_bin: Option<PathBuf>,
}

/// The command line's paths as node paths (relative ones from the current directory).
fn resolve_paths(a: InstallArgs) -> Result<InstallArgs, InstallError> {
    let root = HostRoot(a.host_root.clone());
    let cwd = std::env::current_dir().map_err(|source| InstallError::Io {
        action: "reading the current directory",
        path: PathBuf::from("."),
        source,
    })?;
    let node = |flag, p: &PathBuf| install::node_path_of_arg(&root, &cwd, flag, p);
    Ok(InstallArgs {
        containerd_config: a.containerd_config.as_ref().map(|p| node("containerd-config", p)).transpose()?,
        prefix: node("prefix", &a.prefix)?,
        state_dir: node("state-dir", &a.state_dir)?,
        containerd_bin: a.containerd_bin.as_ref().map(|p| node("containerd-bin", p)).transpose()?,
        // Read in this process, not on the node: relative to the current directory as given.
        bin_dir: a.bin_dir.map(|d| cwd.join(d)),
        ..a
    })
}

pub fn install(a: InstallArgs) -> Result<ExitCode, InstallError> {
    let a = resolve_paths(a)?;
    let bin_dir = match a.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(".")),
    };
    let plan = InstallPlan {
        root: HostRoot(a.host_root),
        containerd_config: a.containerd_config,
        prefix: a.prefix,
        bin_dir,
        state_dir: a.state_dir,
        restart: a.restart,
        dry_run: a.dry_run,
        containerd_bin: a.containerd_bin,
        node_config: imageless_node::config::locate(None).0,
    };
    let outcome = install::install(&plan)?;
    for line in &outcome.lines {
        println!("{line}");
    }
    if !outcome.changed {
        println!("nothing to change");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn uninstall(a: UninstallArgs) -> Result<ExitCode, InstallError> {
    let a = resolve_paths(a)?;
    let root = HostRoot(a.host_root);
    for line in install::uninstall(&root, &a.state_dir, a.dry_run)? {
        println!("{line}");
    }
    if !a.dry_run {
        let main = install::locate_config(&root, a.containerd_config.as_deref());
        println!("{}", install::restart(&root, a.restart, &main)?);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn doctor(a: DoctorArgs) -> Result<ExitCode, InstallError> {
    let root = HostRoot("/".into());
    let ctx = DoctorContext {
        containerd_config: install::locate_config(&root, a.containerd_config.as_deref()),
        address: a.address,
        containerd_bin: a.containerd_bin,
        token_file: a.token_file,
        node_config_path: imageless_node::config::locate(None).0,
        path_env: std::env::var_os("PATH").unwrap_or_default(),
        network_timeout: Duration::from_secs(3),
    };
    let checks = doctor::run(&ctx);
    for check in &checks {
        println!("{check}");
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if failed > 0 {
        println!("{failed} check(s) failed");
        return Ok(ExitCode::FAILURE);
    }
    println!("all checks passed");
    Ok(ExitCode::SUCCESS)
}
