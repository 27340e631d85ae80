//! `imageless-hub`: the same subcommands as `imageless hub`, as a binary of its own (used by
//! this crate's tests as a real child process, and handy on air-gapped hub machines).
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(name = "imageless-hub", version, about = "A FloxHub-compatible hub")]
struct Cli {
    #[command(subcommand)]
    command: imageless_hub::cli::HubCommand,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IMAGELESS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match imageless_hub::cli::run(Cli::parse().command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
