use std::process::ExitCode;
#[derive(clap::Args)]
pub struct PullArgs {}
#[derive(clap::Subcommand)]
pub enum EnvCommand { Inspect }
#[derive(clap::Args)]
pub struct GcArgs {}
pub fn pull(_a: PullArgs) -> Result<ExitCode, std::io::Error> { todo!() }
pub fn env(_a: EnvCommand) -> Result<ExitCode, std::io::Error> { todo!() }
pub fn gc(_a: GcArgs) -> Result<ExitCode, std::io::Error> { todo!() }
