//! `imageless`: the node and operator CLI. Each subcommand lives in the library that owns its
//! data; this file only parses the command line and reports errors.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "imageless", version, about = "Imageless Kubernetes: run pods from Flox environments")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch, realize and render an environment into the node cache.
    Pull(imageless_node::cli::PullArgs),
    /// Print the SBOM (SPDX 2.3 or CycloneDX 1.6 JSON) of an environment generation.
    Sbom(imageless_node::cli::SbomArgs),
    /// Inspect environments and lockfiles.
    #[command(subcommand)]
    Env(imageless_node::cli::EnvCommand),
    /// Remove cached environments no running container uses.
    Gc(imageless_node::cli::GcArgs),
    /// Add the flox runtime to containerd and install the binaries.
    Install(imageless_containerd_config::cli::InstallArgs),
    /// Undo what install changed.
    Uninstall(imageless_containerd_config::cli::UninstallArgs),
    /// Label this node for flox pods (the installer DaemonSet), or wait.
    #[command(subcommand)]
    Node(imageless_cluster::cli::NodeCommand),
    /// Check this node and say what to fix.
    Doctor(imageless_containerd_config::cli::DoctorArgs),
    /// Run Kubernetes pod manifests over CRI, without a kubelet.
    #[command(subcommand)]
    Pod(imageless_cri_pod::cli::PodCommand),
    /// A FloxHub-compatible hub: serve, publish, mint tokens.
    #[command(subcommand)]
    Hub(imageless_hub::cli::HubCommand),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IMAGELESS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse().command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", describe(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text the message already
/// contains (our errors carry the detail users need in their own message).
fn describe(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    Ok(match command {
        Command::Pull(args) => imageless_node::cli::pull(args)?,
        Command::Sbom(args) => imageless_node::cli::sbom(args)?,
        Command::Env(cmd) => imageless_node::cli::env(cmd)?,
        Command::Gc(args) => imageless_node::cli::gc(args)?,
        Command::Install(args) => imageless_containerd_config::cli::install(args)?,
        Command::Uninstall(args) => imageless_containerd_config::cli::uninstall(args)?,
        Command::Node(cmd) => imageless_cluster::cli::run(cmd)?,
        Command::Doctor(args) => imageless_containerd_config::cli::doctor(args)?,
        Command::Pod(cmd) => imageless_cri_pod::cli::run(cmd)?,
        Command::Hub(cmd) => imageless_hub::cli::run(cmd)?,
    })
}
