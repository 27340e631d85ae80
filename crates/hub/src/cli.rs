//! TODO(helper): replace these stubs.
use std::process::ExitCode;
#[derive(clap::Subcommand)]
pub enum HubCommand { Serve }
pub fn run(_c: HubCommand) -> Result<ExitCode, std::io::Error> { todo!() }
