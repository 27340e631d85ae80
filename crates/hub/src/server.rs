//! `imageless hub serve`: one tiny_http server, a small pool of worker threads, routing to the
//! git bridge, the static cache and the accounts endpoint, and one access-log line per request.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tiny_http::{Header, Method, Request, Response, StatusCode};

use crate::auth::{self, Credential, Identity};
use crate::cache;
use crate::config::{HubConfig, HubPaths};
use crate::error::HubError;
use crate::git_backend::{self, CgiRequest, ChildRegistry, GitRoute};

/// How long shutdown waits for requests in flight before ending their git children.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_WORKERS: usize = 8;

/// A bound, not yet running hub server.
pub struct HubServer {
    paths: HubPaths,
    http: Arc<tiny_http::Server>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    children: ChildRegistry,
    workers: usize,
}

impl HubServer {
    /// Binds `listen` (`HOST:PORT`, port 0 picks a free one). The root must be initialised.
    pub fn bind(paths: HubPaths, listen: &str) -> Result<HubServer, HubError> {
        paths.load()?;
        let addr: SocketAddr = listen.parse().map_err(|_| HubError::Listen {
            addr: listen.to_owned(),
            message: "accepted: IP:PORT, e.g. 127.0.0.1:8080 or 127.0.0.1:0".into(),
        })?;
        let http = tiny_http::Server::http(addr)
            .map_err(|e| HubError::Listen { addr: listen.to_owned(), message: e.to_string() })?;
        let addr = http
            .server_addr()
            .to_ip()
            .ok_or_else(|| HubError::Listen { addr: listen.to_owned(), message: "not an IP listener".into() })?;
        Ok(HubServer {
            paths,
            http: Arc::new(http),
            addr,
            stop: Arc::new(AtomicBool::new(false)),
            children: ChildRegistry::default(),
            workers: DEFAULT_WORKERS,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Setting this flag makes [`HubServer::run`] return after the requests in flight.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Serves until the stop flag is set.
    pub fn run(self) -> Result<(), HubError> {
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let ctx = Arc::new(Context { paths: self.paths, children: self.children.clone() });
        for i in 0..self.workers {
            let http = self.http.clone();
            let stop = self.stop.clone();
            let ctx = ctx.clone();
            let done = done_tx.clone();
            std::thread::Builder::new()
                .name(format!("hub-worker-{i}"))
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        match http.recv_timeout(Duration::from_millis(200)) {
                            Ok(Some(request)) => ctx.handle(request),
                            Ok(None) => {}
                            Err(e) => {
                                tracing::error!("accepting a request failed: {e}");
                                std::thread::sleep(Duration::from_millis(100));
                            }
                        }
                    }
                    let _ = done.send(());
                })
                .map_err(|source| HubError::Spawn { program: "worker thread".into(), source })?;
        }
        drop(done_tx);
        while !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut finished = 0;
        while finished < self.workers {
            let left = deadline.saturating_duration_since(Instant::now());
            match done_rx.recv_timeout(left) {
                Ok(()) => finished += 1,
                Err(_) => break,
            }
        }
        let killed = self.children.kill_all();
        if killed > 0 {
            tracing::warn!(killed, "ended git http-backend children still running at shutdown");
            // Give the workers a moment to reap what was killed.
            let _ = done_rx.recv_timeout(Duration::from_secs(1));
        }
        tracing::info!("hub stopped");
        Ok(())
    }
}

struct Context {
    paths: HubPaths,
    children: ChildRegistry,
}

/// What the access log says about a handled request.
struct Outcome {
    status: u16,
    handle: Option<String>,
}

fn header<'a>(request: &'a Request, name: &'static str) -> Option<&'a str> {
    request.headers().iter().find(|h| h.field.equiv(name)).map(|h| h.value.as_str())
}

fn text(status: u16, body: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_string(format!("{body}\n"))
        .with_status_code(StatusCode(status))
        .with_header(Header::from_bytes("Content-Type", "text/plain; charset=utf-8").expect("static header"))
}

fn respond<R: std::io::Read>(request: Request, response: Response<R>) {
    if let Err(e) = request.respond(response) {
        tracing::debug!("writing a response failed: {e}");
    }
}

fn unauthorized(request: Request, handle: Option<String>) -> Outcome {
    let response = text(401, "authentication failed: the token is missing, invalid or expired")
        .with_header(Header::from_bytes("WWW-Authenticate", "Basic realm=\"floxhub\"").expect("static header"));
    respond(request, response);
    Outcome { status: 401, handle }
}

fn plain(request: Request, status: u16, body: &str, handle: Option<String>) -> Outcome {
    respond(request, text(status, body));
    Outcome { status, handle }
}

/// The caller's identity; Err when a credential was sent but is not accepted.
fn authenticate(credential: &Credential, config: &HubConfig) -> Result<Option<Identity>, ()> {
    match credential {
        Credential::Missing | Credential::Anonymous => Ok(None),
        Credential::Unreadable => Err(()),
        Credential::Token(token) => {
            auth::identify(token, &config.secret_bytes(), &config.tokens, crate::now_unix()).map(Some).map_err(|e| {
                // The reason is safe to log: TokenError never contains the token.
                tracing::debug!("refused a token: {e}");
            })
        }
    }
}

impl Context {
    fn handle(&self, request: Request) {
        let started = Instant::now();
        let method = request.method().to_string();
        let url = request.url().to_owned();
        let path = url.split('?').next().unwrap_or("").to_owned();
        let outcome = self.route(request, &url);
        // Only method, path (no query), status, handle and time: never credentials.
        tracing::info!(
            target: "imageless_hub::access",
            "{method} {path} {} {} {}ms",
            outcome.status,
            outcome.handle.as_deref().unwrap_or("-"),
            started.elapsed().as_millis()
        );
    }

    fn route(&self, request: Request, url: &str) -> Outcome {
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        if let Some(rest) = path.strip_prefix("/git/") {
            self.git(request, rest, query)
        } else if let Some(rest) = path.strip_prefix("/cache/") {
            self.cache(request, rest)
        } else if path == "/api/v1/accounts/me" || path == "/accounts/api/v1/accounts/me" {
            self.me(request)
        } else {
            plain(request, 404, "not found", None)
        }
    }

    fn load_config(&self) -> Result<HubConfig, HubError> {
        self.paths.load().inspect_err(|e| tracing::error!("{e}"))
    }

    fn me(&self, request: Request) -> Outcome {
        if request.method() != &Method::Get {
            return plain(request, 405, "only GET is allowed", None);
        }
        let Ok(config) = self.load_config() else {
            return plain(request, 500, "hub configuration unreadable", None);
        };
        let credential = auth::parse_authorization(header(&request, "Authorization"));
        match authenticate(&credential, &config) {
            Ok(Some(identity)) => {
                let body = serde_json::json!({"handle": identity.handle, "expires_at": identity.expires_at});
                let response = Response::from_string(body.to_string())
                    .with_header(Header::from_bytes("Content-Type", "application/json").expect("static header"));
                respond(request, response);
                Outcome { status: 200, handle: Some(identity.handle) }
            }
            _ => unauthorized(request, None),
        }
    }

    fn cache(&self, request: Request, rest: &str) -> Outcome {
        if !matches!(request.method(), Method::Get | Method::Head) {
            return plain(request, 405, "the cache is read-only: GET and HEAD only", None);
        }
        let Some(file) = cache::resolve_cache_path(&self.paths.cache(), rest) else {
            return plain(request, 404, "not found", None);
        };
        match std::fs::File::open(&file) {
            Ok(f) if f.metadata().map(|m| m.is_file()).unwrap_or(false) => {
                let response = Response::from_file(f)
                    .with_header(Header::from_bytes("Content-Type", cache::content_type(rest)).expect("ascii header"));
                respond(request, response);
                Outcome { status: 200, handle: None }
            }
            _ => plain(request, 404, "not found", None),
        }
    }

    fn git(&self, mut request: Request, rest: &str, query: &str) -> Outcome {
        let route = git_backend::route(rest, query);
        let owner = match &route {
            GitRoute::NotFound => return plain(request, 404, "not found", None),
            GitRoute::AdvertiseUploadPack { owner }
            | GitRoute::UploadPack { owner }
            | GitRoute::ReceivePack { owner }
            | GitRoute::Dumb { owner } => owner.clone(),
        };
        let Ok(config) = self.load_config() else {
            return plain(request, 500, "hub configuration unreadable", None);
        };
        let credential = auth::parse_authorization(header(&request, "Authorization"));
        let identity = match authenticate(&credential, &config) {
            Ok(identity) => identity,
            Err(()) => return unauthorized(request, None),
        };
        let handle = identity.map(|i| i.handle);
        if !self.paths.floxmeta(&owner).join("HEAD").exists() {
            return plain(request, 404, "not found", handle);
        }
        match route {
            GitRoute::ReceivePack { .. } => {
                return plain(
                    request,
                    403,
                    "this hub is read-only over HTTP: publish with `imageless hub publish`",
                    handle,
                )
            }
            GitRoute::Dumb { .. } => return plain(request, 403, "only smart HTTP git-upload-pack is served", handle),
            _ => {}
        }
        let hidden = config.hidden_branches(&owner, handle.as_deref());
        if credential == Credential::Missing && !hidden.is_empty() {
            // git sends credentials only after a 401; without this challenge a client holding a
            // valid token would never present it and would see the private branches as missing.
            return unauthorized(request, None);
        }

        let path_info = format!("/{rest}");
        let method = request.method().to_string();
        let content_type = header(&request, "Content-Type").map(str::to_owned);
        let content_encoding = header(&request, "Content-Encoding").map(str::to_owned);
        let git_protocol = header(&request, "Git-Protocol").map(str::to_owned);
        let content_length = request.body_length();
        let cgi = CgiRequest {
            method: &method,
            path_info: &path_info,
            query,
            content_type: content_type.as_deref(),
            content_length,
            content_encoding: content_encoding.as_deref(),
            git_protocol: git_protocol.as_deref(),
            remote_user: handle.as_deref(),
            hidden_branches: &hidden,
        };
        let result = git_backend::run_cgi(&self.paths.git_root(), &cgi, request.as_reader(), &self.children);
        match result {
            Ok((response, running)) => {
                let status = response.status;
                let headers: Vec<Header> = response
                    .headers
                    .iter()
                    .filter_map(|(k, v)| Header::from_bytes(k.as_bytes(), v.as_bytes()).ok())
                    .collect();
                let http_response = Response::new(StatusCode(status), headers, response.body, None, None);
                respond(request, http_response);
                let exit = running.wait();
                tracing::debug!("git http-backend exited: {exit}");
                Outcome { status, handle }
            }
            Err(e) => {
                tracing::error!("{e}");
                plain(request, 500, "git backend failed", handle)
            }
        }
    }
}
