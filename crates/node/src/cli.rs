//! `imageless pull`, `imageless sbom`, `imageless env inspect`, `imageless gc`.
use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use imageless_core::activation::Mode;
use imageless_core::env_ref::EnvRef;
use imageless_core::lockfile::Lockfile;
use imageless_core::sbom::{FormatError, SbomFormat};
use imageless_core::system::System;
use imageless_core::token::Token;

use crate::cache::{NodeCache, NodeError};
use crate::config::{ConfigError, NodeConfig};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("{0}")]
    Usage(String),
}

#[derive(clap::Args)]
pub struct PullArgs {
    /// owner/name or owner/name:GENERATION
    pub environment: String,
    /// File holding a FloxHub token (as mounted from the floxhub-token secret).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    #[arg(long, value_parser = ["run", "dev"], default_value = "run")]
    pub mode: String,
    /// Node config file (default: $IMAGELESS_CONFIG or /etc/imageless/config.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Also build the closure view that containers mount, while the closure is fetched (as a
    /// pod's create does): the next pod of this environment finds it ready.
    #[arg(long)]
    pub view: bool,
}

#[derive(clap::Args)]
pub struct SbomArgs {
    /// owner/name or owner/name:GENERATION
    pub environment: String,
    /// spdx (SPDX 2.3 JSON) or cyclonedx (CycloneDX 1.6 JSON).
    #[arg(long, default_value = "spdx")]
    pub format: String,
    /// Nix system (default: this node's). Its closure is fetched into the node store.
    #[arg(long)]
    pub system: Option<String>,
    /// File holding a FloxHub token (private environments).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Node config file (default: $IMAGELESS_CONFIG or /etc/imageless/config.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
pub enum EnvCommand {
    /// Show what a lockfile selects for a system: packages, outputs, priorities, vars, hooks.
    Inspect {
        #[arg(long)]
        lock: PathBuf,
        /// Nix system (default: this machine's).
        #[arg(long)]
        system: Option<String>,
        /// Print one JSON object (the only format for now; kept for scripts).
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub struct GcArgs {
    /// Only remove environments unused for at least this long (e.g. 7d, 12h).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub older_than: Option<Duration>,
    #[arg(long)]
    pub config: Option<PathBuf>,
}

fn system(explicit: Option<&str>) -> Result<System, CliError> {
    match explicit {
        Some(s) => s.parse().map_err(|e: imageless_core::system::SystemError| CliError::Usage(e.to_string())),
        None => System::host().map_err(|e| CliError::Usage(e.to_string())),
    }
}

fn env_ref(value: &str) -> Result<EnvRef, CliError> {
    EnvRef::parse(value).map_err(|e| CliError::Usage(format!("environment {value:?} is not valid: {e}")))
}

/// The token in `--token-file` (errors name the file, never its content).
fn token(file: Option<&std::path::Path>) -> Result<Option<Token>, CliError> {
    let Some(path) = file else { return Ok(None) };
    let text =
        std::fs::read_to_string(path).map_err(|e| CliError::Usage(format!("--token-file {}: {e}", path.display())))?;
    Ok(Some(Token::parse(&text).map_err(|e| CliError::Usage(format!("--token-file {}: {e}", path.display())))?))
}

pub fn pull(args: PullArgs) -> Result<ExitCode, CliError> {
    let env = env_ref(&args.environment)?;
    let token = token(args.token_file.as_deref())?;
    let mode = if args.mode == "dev" { Mode::Dev } else { Mode::Run };
    let config = NodeConfig::load(args.config.as_deref())?;
    let progress = std::sync::Arc::new(crate::pull_progress::PullProgress::new(format!("{env} ({mode})")));
    let mut cache = NodeCache::new(config, system(None)?).with_progress(progress.clone());
    if args.view {
        cache = cache.building_views();
    }
    let start = Instant::now();
    let result = cache.ensure(&env, mode, token.as_ref());
    progress.finish();
    let rendered = result?;
    if let Some(w) = &rendered.warning {
        eprintln!("warning: {w}");
    }
    println!("{}", rendered.env_dir.display());
    eprintln!(
        "{env}: generation {}, {} store paths in closure, {} fetched, {:.2}s",
        rendered.generation,
        rendered.closure.len(),
        rendered.realized,
        start.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// `imageless sbom`: the document on stdout, exactly the bytes a container of the same
/// generation reads at /run/flox/env/sbom.{spdx,cdx}.json.
pub fn sbom(args: SbomArgs) -> Result<ExitCode, CliError> {
    let format: SbomFormat = args.format.parse().map_err(|e: FormatError| CliError::Usage(format!("--format: {e}")))?;
    let env = env_ref(&args.environment)?;
    let token = token(args.token_file.as_deref())?;
    let sys = system(args.system.as_deref()).map_err(|e| CliError::Usage(format!("--system: {e}")))?;
    let config = NodeConfig::load(args.config.as_deref())?;
    let sbom = NodeCache::new(config, sys).sbom(&env, token.as_ref())?;
    let mut out = std::io::stdout().lock();
    out.write_all(&sbom.to_json(format))
        .and_then(|()| out.flush())
        .map_err(|e| CliError::Usage(format!("writing the SBOM to stdout: {e}")))?;
    Ok(ExitCode::SUCCESS)
}

pub fn env(cmd: EnvCommand) -> Result<ExitCode, CliError> {
    match cmd {
        EnvCommand::Inspect { lock, system: sys, json: _ } => {
            let bytes = std::fs::read(&lock).map_err(|e| CliError::Usage(format!("--lock {}: {e}", lock.display())))?;
            let err = |e: String| CliError::Usage(format!("{}: {e}", lock.display()));
            let lockfile = Lockfile::parse(&bytes).map_err(|e| err(e.to_string()))?;
            let sys = system(sys.as_deref())?;
            let selection = lockfile.select(sys).map_err(|e| err(e.to_string()))?;
            let mut packages: Vec<serde_json::Value> = Vec::new();
            for o in &selection.outputs {
                match packages.iter_mut().find(|p| p["install_id"] == o.install_id.as_str()) {
                    Some(p) => {
                        p["outputs"][o.output.as_str()] =
                            serde_json::json!({"store_path": o.store_path.as_str(), "priority": o.priority});
                    }
                    None => packages.push(serde_json::json!({
                        "install_id": o.install_id,
                        "outputs": {o.output.as_str(): {"store_path": o.store_path.as_str(), "priority": o.priority}},
                    })),
                }
            }
            let vars = lockfile.vars_in_order().map_err(|e| err(e.to_string()))?;
            let out = serde_json::json!({
                "system": sys.as_str(),
                "packages": packages,
                "vars": vars.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect::<serde_json::Map<_, _>>(),
                "hook_on_activate": lockfile.hook_on_activate().is_some(),
                "profile": lockfile.profile() != Default::default(),
                "activate_mode": lockfile.activate_mode(),
            });
            println!("{}", serde_json::to_string_pretty(&out).expect("serializable"));
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn gc(args: GcArgs) -> Result<ExitCode, CliError> {
    let config = NodeConfig::load(args.config.as_deref())?;
    let in_use: HashSet<String> = crate::containers::keys_in_use(&config.state_root);
    let cache = NodeCache::new(config, system(None)?);
    let report = cache.gc(&in_use, args.older_than.unwrap_or_default())?;
    for key in &report.envs {
        println!("removed {key}");
    }
    eprintln!(
        "{} environments removed, {} in use kept; {} store paths removed",
        report.envs.len(),
        in_use.len(),
        report.store_paths.len()
    );
    Ok(ExitCode::SUCCESS)
}
