//! TODO(helper): replace these stubs.
use std::process::ExitCode;
#[derive(clap::Args)]
pub struct InstallArgs {}
#[derive(clap::Args)]
pub struct UninstallArgs {}
#[derive(clap::Args)]
pub struct DoctorArgs {}
pub fn install(_a: InstallArgs) -> Result<ExitCode, std::io::Error> { todo!() }
pub fn uninstall(_a: UninstallArgs) -> Result<ExitCode, std::io::Error> { todo!() }
pub fn doctor(_a: DoctorArgs) -> Result<ExitCode, std::io::Error> { todo!() }
