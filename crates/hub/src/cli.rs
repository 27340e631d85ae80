//! `imageless hub ...`: argument parsing only; the work is in the library modules.
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::admin::{self, Lifetime};
use crate::config::HubPaths;
use crate::error::HubServerError;
use crate::names::parse_env_ref;
use crate::publish::{self, PublishRequest};
use crate::server::{HubServer, ServeOptions};

#[derive(Debug, clap::Subcommand)]
pub enum HubCommand {
    /// Create the hub root (git/, cache/, signing key, hub.json); keeps what exists.
    Init(InitArgs),
    /// Serve git (floxmeta), the Nix binary cache and the accounts API over HTTP.
    Serve(ServeArgs),
    /// Print a new token for a handle (HS256 JWT, or an opaque flox_... token).
    Token(TokenArgs),
    /// Let HANDLE read OWNER's private environments.
    Grant(GrantArgs),
    /// Publish a lock as the next generation of OWNER/NAME (and its store paths into the cache).
    Publish(PublishArgs),
    /// Make generation GEN of OWNER/NAME live again (rollback).
    Switch(SwitchArgs),
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Hub root directory.
    #[arg(long)]
    pub root: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[arg(long)]
    pub root: PathBuf,
    /// IP:PORT to listen on; port 0 picks a free port (printed as `listening on http://ADDR`).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Binary caches to fetch missing narinfo and NAR files from, in order (comma-separated);
    /// overrides `upstream` in hub.json.
    #[arg(long, value_delimiter = ',')]
    pub upstream: Vec<String>,
    /// Git base URL (e.g. https://api.flox.dev/git) that floxmeta requests for owners this hub
    /// does not host are passed through to, the caller's token included (never stored);
    /// overrides `upstream_git` in hub.json.
    #[arg(long)]
    pub upstream_git: Option<String>,
    /// Requests handled at once; more wait their turn.
    #[arg(long, default_value_t = crate::server::DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
}

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[arg(long)]
    pub root: PathBuf,
    /// The FloxHub handle the token identifies.
    #[arg(long)]
    pub handle: String,
    /// Lifetime, e.g. 30d, 12h, 90m (default: 30d for JWTs, never for --opaque).
    #[arg(long, value_parser = parse_lifetime, conflicts_with = "expired", allow_hyphen_values = true)]
    pub expires_in: Option<Duration>,
    /// Mint a token that has already expired (for tests of the refusal path).
    #[arg(long)]
    pub expired: bool,
    /// A random `flox_...` token recorded (hashed) in hub.json instead of a JWT.
    #[arg(long)]
    pub opaque: bool,
}

#[derive(Debug, clap::Args)]
pub struct GrantArgs {
    #[arg(long)]
    pub root: PathBuf,
    pub owner: String,
    pub handle: String,
}

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    #[arg(long)]
    pub root: PathBuf,
    /// OWNER/NAME
    pub env: String,
    /// The manifest.lock to publish.
    #[arg(long)]
    pub lock: PathBuf,
    /// The manifest.toml to store beside it (default: rendered from the lock's manifest).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Hide the environment from callers OWNER has not granted access.
    #[arg(long)]
    pub private: bool,
    /// Do not copy the lock's store paths into the cache.
    #[arg(long)]
    pub no_paths: bool,
}

#[derive(Debug, clap::Args)]
pub struct SwitchArgs {
    #[arg(long)]
    pub root: PathBuf,
    /// OWNER/NAME
    pub env: String,
    /// The generation to make live.
    pub generation: u64,
}

fn parse_lifetime(s: &str) -> Result<Duration, String> {
    if s.trim_start().starts_with('-') {
        return Err(format!("{s:?} is negative; accepted: a positive duration like 30d, 12h or 90m (use --expired for an expired token)"));
    }
    let d =
        humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}; accepted: a duration like 30d, 12h or 90m"))?;
    if d.is_zero() {
        return Err(format!("{s:?} is zero; accepted: a positive duration like 30d, 12h or 90m"));
    }
    Ok(d)
}

fn read_file(path: &PathBuf) -> Result<Vec<u8>, HubServerError> {
    std::fs::read(path).map_err(HubServerError::io(path))
}

fn print_line(line: &str) -> Result<(), HubServerError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|_| out.flush()).map_err(HubServerError::io("<stdout>"))
}

pub fn run(command: HubCommand) -> Result<ExitCode, HubServerError> {
    match command {
        HubCommand::Init(a) => {
            let paths = HubPaths::new(a.root);
            admin::init(&paths)?;
            eprintln!("hub root ready: {}", paths.root.display());
        }
        HubCommand::Serve(a) => serve(a)?,
        HubCommand::Token(a) => {
            let lifetime = match (a.expired, a.expires_in, a.opaque) {
                (true, _, _) => Lifetime::Expired,
                (false, Some(d), _) => Lifetime::ExpiresIn(d),
                (false, None, true) => Lifetime::Forever,
                (false, None, false) => Lifetime::ExpiresIn(Duration::from_secs(30 * 24 * 3600)),
            };
            let token = admin::mint_token(&HubPaths::new(a.root), &a.handle, lifetime, a.opaque)?;
            print_line(&token)?;
        }
        HubCommand::Grant(a) => admin::grant(&HubPaths::new(a.root), &a.owner, &a.handle)?,
        HubCommand::Publish(a) => {
            let (owner, name) = parse_env_ref(&a.env)?;
            let manifest_toml = match &a.manifest {
                Some(p) => Some(String::from_utf8(read_file(p)?).map_err(|_| HubServerError::InvalidInput {
                    what: "--manifest",
                    value: p.display().to_string(),
                    accepted: "a UTF-8 manifest.toml",
                })?),
                None => None,
            };
            let request = PublishRequest {
                owner,
                name,
                lock_bytes: read_file(&a.lock)?,
                lock_path: a.lock,
                manifest_toml,
                private: a.private,
                copy_paths: !a.no_paths,
            };
            let generation = publish::publish(&HubPaths::new(a.root), &request)?;
            print_line(&generation.to_string())?;
        }
        HubCommand::Switch(a) => {
            let (owner, name) = parse_env_ref(&a.env)?;
            publish::switch(&HubPaths::new(a.root), &owner, &name, a.generation)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(a: ServeArgs) -> Result<(), HubServerError> {
    let paths = HubPaths::new(a.root);
    let config = paths.load()?;
    let upstreams = if a.upstream.is_empty() { config.upstream } else { a.upstream };
    let options = ServeOptions {
        listen: a.listen,
        tls: a.tls_cert.zip(a.tls_key),
        upstreams,
        upstream_git: a.upstream_git.or(config.upstream_git),
        max_in_flight: a.max_in_flight,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hub")
        .build()
        .map_err(HubServerError::io("<tokio runtime>"))?;
    runtime.block_on(async {
        let signals = crate::signals::TerminationSignals::install().map_err(HubServerError::io("<signal handlers>"))?;
        let server = HubServer::bind(paths, &options).await?;
        print_line(&format!("listening on {}", server.url()))?;
        server.run(signals.received()).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes() {
        assert_eq!(parse_lifetime("30d").unwrap(), Duration::from_secs(30 * 86400));
        assert!(parse_lifetime("-1d").unwrap_err().contains("negative"));
        assert!(parse_lifetime("0s").unwrap_err().contains("zero"));
        assert!(parse_lifetime("soon").unwrap_err().contains("accepted"));
    }
}
