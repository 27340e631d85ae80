//! `imageless hub serve`: hyper (HTTP/1.1 with keep-alive, and HTTP/2) on tokio, optionally
//! behind rustls, with an axum router ([`crate::routes`]) under a global bound on requests in
//! flight, and a graceful stop: on shutdown the listener closes, connections finish what they
//! are doing (up to [`DRAIN_TIMEOUT`]) and any `git http-backend` child still running is ended.
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::ServiceBuilder;

use crate::config::HubPaths;
use crate::error::HubServerError;
use crate::fill_peers::FillPeers;
use crate::git_backend::ChildRegistry;
use crate::git_upstream::GitUpstream;
use crate::pull_through::PullThrough;
use crate::routes::{self, Context};
use crate::s3_cache::S3Cache;

/// How long shutdown waits for requests in flight before ending their connections and git children.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests handled at once; more wait for a slot (they are queued, never refused). Enough for
/// a cluster's worth of nodes, few enough that file descriptors and git children stay bounded.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;
/// A client that has not finished its TLS handshake or request head by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// How `serve` runs, beyond the hub root.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// `IP:PORT`; port 0 picks a free port.
    pub listen: String,
    /// PEM certificate chain and private key: serve HTTPS instead of HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Binary caches (`http(s)://HOST[:PORT]/PATH`) asked for narinfo and NAR files missing here.
    pub upstreams: Vec<String>,
    /// A FloxHub git base URL for owners this hub does not host.
    pub upstream_git: Option<String>,
    pub max_in_flight: usize,
    /// `s3://BUCKET?…`: the public cache's narinfos and NARs live in this bucket.
    pub cache_store: Option<String>,
    /// AWS shared-credentials file for `cache_store`.
    pub cache_store_credentials: Option<PathBuf>,
    /// The replicas sharing `cache_store` (URLs or `dns:NAME:PORT`), see [`crate::fill_peers`].
    pub fill_peers: Vec<String>,
    /// This replica's URL among `fill_peers`.
    pub fill_self: Option<String>,
    /// Bytes of the disk tier in front of `cache_store` (0: off).
    pub cache_store_local_bytes: u64,
}

impl ServeOptions {
    pub fn new(listen: impl Into<String>) -> ServeOptions {
        ServeOptions {
            listen: listen.into(),
            tls: None,
            upstreams: Vec::new(),
            upstream_git: None,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            cache_store: None,
            cache_store_credentials: None,
            fill_peers: Vec::new(),
            fill_self: None,
            cache_store_local_bytes: crate::s3_tier::DEFAULT_BYTES,
        }
    }
}

/// A bound, not yet running hub server.
pub struct HubServer {
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    ctx: Arc<Context>,
    max_in_flight: usize,
}

impl HubServer {
    /// Binds the listen address (the root must be initialised). Call inside a tokio runtime.
    pub async fn bind(paths: HubPaths, options: &ServeOptions) -> Result<HubServer, HubServerError> {
        paths.load()?;
        let listen = &options.listen;
        let addr: SocketAddr = listen.parse().map_err(|_| HubServerError::Listen {
            addr: listen.to_owned(),
            message: "accepted: IP:PORT, e.g. 127.0.0.1:8080 or 127.0.0.1:0".into(),
        })?;
        let tls = match &options.tls {
            Some((cert, key)) => Some(crate::tls::acceptor(cert, key)?),
            None => None,
        };
        let mut pull = PullThrough::new(&options.upstreams, paths.cache())?;
        let s3 = match &options.cache_store {
            Some(url) => {
                let s3 = Arc::new(S3Cache::new(url, options.cache_store_credentials.as_deref())?);
                s3.check(crate::cache::NIX_CACHE_INFO).await?;
                let peers = FillPeers::new(&options.fill_peers, options.fill_self.as_deref())?;
                if let Some(pull) = pull.as_mut() {
                    pull.store_in(s3.clone(), peers);
                }
                tracing::info!(target: "imageless_hub::s3", "cache store: {}", s3.url());
                Some(s3)
            }
            None if !options.fill_peers.is_empty() => {
                return Err(HubServerError::InvalidInput {
                    what: "fill peers",
                    value: options.fill_peers.join(","),
                    accepted: "only with a cache store (--cache-store s3://…): replicas on one volume need none",
                })
            }
            None => None,
        };
        let git_upstream = GitUpstream::new(options.upstream_git.as_deref())?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| HubServerError::Listen { addr: listen.to_owned(), message: e.to_string() })?;
        let addr = listener
            .local_addr()
            .map_err(|e| HubServerError::Listen { addr: listen.to_owned(), message: e.to_string() })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let tier = s3.as_ref().and_then(|_| crate::s3_tier::Tier::new(paths.cache(), options.cache_store_local_bytes));
        let ctx = Arc::new(Context { paths, children: ChildRegistry::default(), pull, git_upstream, scheme, s3, tier });
        Ok(HubServer { listener, addr, tls, ctx, max_in_flight: options.max_in_flight.max(1) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` or `https://ADDR`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Serves until `shutdown` completes, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), HubServerError> {
        let service = ServiceBuilder::new()
            .layer(GlobalConcurrencyLimitLayer::new(self.max_in_flight))
            .service(routes::router(self.ctx.clone()));
        let service = TowerToHyperService::new(service);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).header_read_timeout(HANDSHAKE_TIMEOUT).keep_alive(true);
        let builder = Arc::new(builder);
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = &mut shutdown => break,
            };
            let (stream, _peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::error!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (builder, service, watcher, tls) =
                (builder.clone(), service.clone(), graceful.watcher(), self.tls.clone());
            tokio::spawn(async move {
                let result = match tls {
                    None => watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned()).await,
                    Some(acceptor) => {
                        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => return tracing::debug!("TLS handshake failed: {e}"),
                            Err(_) => return tracing::debug!("TLS handshake timed out"),
                        };
                        watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned()).await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!("connection ended with an error: {e}");
                }
            });
        }
        drop(self.listener);
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
            tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}: closing them");
        }
        let killed = self.ctx.children.kill_all();
        if killed > 0 {
            tracing::warn!(killed, "ended git http-backend children still running at shutdown");
            // Give the reaper tasks a moment to collect what was killed.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::info!("hub stopped");
        Ok(())
    }
}
