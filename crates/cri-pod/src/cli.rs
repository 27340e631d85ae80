//! TODO(helper): replace these stubs.
use std::process::ExitCode;
#[derive(clap::Subcommand)]
pub enum PodCommand { Ls }
pub fn run(_c: PodCommand) -> Result<ExitCode, std::io::Error> { todo!() }
