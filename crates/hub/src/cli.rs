//! `imageless hub ...`: argument parsing only; the work is in the library modules.
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use imageless_core::store_path::StorePath;

use crate::admin::{self, Lifetime};
use crate::catalog::publish::{publish_package, PackagePublish};
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
    /// Publish a package (its outputs' closure, signed with the catalog's key) to CATALOG's
    /// store: the hub's per-catalog cache, or an s3:// bucket.
    PublishPackage(PublishPackageArgs),
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
    /// `s3://BUCKET?endpoint=…&region=…&scheme=…`: keep the public cache's narinfos and NARs
    /// in this bucket (shared by replicas); overrides `cache_store` in hub.json.
    #[arg(long)]
    pub cache_store: Option<String>,
    /// AWS shared-credentials file for the cache store; overrides `cache_store_credentials`.
    #[arg(long)]
    pub cache_store_credentials: Option<PathBuf>,
    /// The replicas sharing the cache store (comma-separated `http(s)://HOST:PORT` or
    /// `dns:NAME:PORT`): each missing file is filled by one of them; overrides `fill_peers`.
    #[arg(long, value_delimiter = ',')]
    pub fill_peers: Vec<String>,
    /// This replica's URL as the other replicas reach it (with --fill-peers).
    #[arg(long)]
    pub fill_self: Option<String>,
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

#[derive(Debug, clap::Args)]
pub struct PublishPackageArgs {
    #[arg(long)]
    pub root: PathBuf,
    /// The catalog (an owner handle: its own token and the handles granted it may read it).
    #[arg(long)]
    pub catalog: String,
    /// The package's name in the catalog (installed as CATALOG/NAME).
    #[arg(long)]
    pub name: String,
    /// An output as NAME=STORE_PATH (repeat for each output), present in this machine's store.
    #[arg(long = "output", value_name = "NAME=STORE_PATH", required = true, value_parser = parse_output)]
    pub outputs: Vec<(String, StorePath)>,
    /// The catalog's Nix secret key file (`nix-store --generate-binary-cache-key`).
    #[arg(long)]
    pub key: PathBuf,
    /// s3://BUCKET?endpoint=…&region=…&scheme=… to upload to (credentials: hub.json's
    /// catalog_store_credentials); default: the hub's own per-catalog cache.
    #[arg(long)]
    pub store: Option<String>,
}

fn parse_output(s: &str) -> Result<(String, StorePath), String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} has no '='; accepted: NAME=STORE_PATH, e.g. out=/nix/store/…-hello-1.0"))?;
    let name_ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
    if !name_ok {
        return Err(format!("output name {name:?} is not valid; accepted: [A-Za-z0-9_-]+ such as out, man, dev"));
    }
    let path = StorePath::parse(path).map_err(|e| e.to_string())?;
    Ok((name.to_owned(), path))
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
            let paths = HubPaths::new(a.root);
            // With the cache on object storage, what the publish added to the local cache goes to
            // the bucket too (NARs first, narinfos last), so every replica serves it.
            let config = paths.load()?;
            let bucket = config.cache_store.clone().map(|url| (url, config.cache_store_credentials.clone()));
            let before = match &bucket {
                Some(_) => crate::catalog::upload::keys(&paths.cache())?,
                None => Default::default(),
            };
            let generation = publish::publish(&paths, &request)?;
            if let Some((url, credentials)) = bucket {
                let plan = crate::catalog::upload::plan_new(&paths.cache(), &before)?;
                let fail = |message: String| HubServerError::InvalidInput {
                    what: "cache_store upload",
                    value: message,
                    accepted: "a bucket the hub's cache_store_credentials may write",
                };
                crate::catalog::upload::upload_to(
                    &url,
                    credentials.as_deref(),
                    &plan,
                    "cache_store_credentials",
                    &fail,
                )?;
            }
            print_line(&generation.to_string())?;
        }
        HubCommand::PublishPackage(a) => {
            let mut outputs = std::collections::BTreeMap::new();
            for (name, path) in a.outputs {
                if outputs.insert(name.clone(), path).is_some() {
                    return Err(HubServerError::InvalidInput {
                        what: "--output",
                        value: name,
                        accepted: "each output name once",
                    });
                }
            }
            let request = PackagePublish { catalog: a.catalog, name: a.name, outputs, key_file: a.key, store: a.store };
            let record = publish_package(&HubPaths::new(a.root), &request)?;
            print_line(&format!(
                "{}/{}: {} paths in {} ({} not in the public cache), signed by {}",
                request.catalog,
                request.name,
                record.closure.len(),
                record.store,
                record.private_paths.len(),
                record.public_key.split(':').next().unwrap_or("")
            ))?;
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
        cache_store: a.cache_store.or(config.cache_store),
        cache_store_credentials: a.cache_store_credentials.or(config.cache_store_credentials),
        fill_peers: if a.fill_peers.is_empty() { config.fill_peers } else { a.fill_peers },
        fill_self: a.fill_self,
        cache_store_local_bytes: config.cache_store_local_bytes.unwrap_or(crate::s3_tier::DEFAULT_BYTES),
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

    #[test]
    fn outputs() {
        let p = format!("/nix/store/{}-hello-1.0", "a".repeat(32));
        assert_eq!(parse_output(&format!("out={p}")).unwrap().0, "out");
        assert!(parse_output(&p).unwrap_err().contains("accepted: NAME=STORE_PATH"));
        assert!(parse_output(&format!("o/ut={p}")).unwrap_err().contains("output name \"o/ut\""));
        assert!(parse_output("out=/tmp/x").unwrap_err().contains("invalid store path"));
    }
}
