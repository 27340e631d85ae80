//! What the hub answers: routing to the git bridge, the binary cache (static files, pulled
//! through from upstream caches when configured), the accounts endpoint and environment SBOMs, with one
//! access-log line per request (`METHOD PATH STATUS HANDLE MSms`, never credentials).
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use crate::auth::{self, Credential, Identity};
use crate::cache;
use crate::cache_file::{self, Lookup};
use crate::config::{HubConfig, HubPaths};
use crate::error::HubServerError;
use crate::git_backend::{self, CgiRequest, ChildRegistry, GitRoute};
use crate::git_upstream::{GitUpstream, GitUpstreamError};
use crate::pull_through::{PullThrough, Pulled};
use crate::s3_cache::S3Cache;
use crate::sbom;

/// What every request handler shares.
pub struct Context {
    pub paths: HubPaths,
    pub children: ChildRegistry,
    /// Set when the hub has upstream caches to pull missing files from.
    pub pull: Option<PullThrough>,
    /// Set when floxmeta of owners not hosted here is passed through to an upstream FloxHub.
    pub git_upstream: Option<GitUpstream>,
    /// `http` or `https`: how callers reach this server (for URLs handed out when hub.json
    /// has no `public_url`).
    pub scheme: &'static str,
    /// Set when the public cache's narinfos and NARs live in a bucket (`cache_store`).
    pub s3: Option<Arc<S3Cache>>,
    /// The replica's disk tier in front of the bucket (with `s3`, unless turned off).
    pub tier: Option<Arc<crate::s3_tier::Tier>>,
}

/// One handler for every path: the routes are few and their rules (auth, visibility) are ours.
pub fn router(ctx: Arc<Context>) -> Router {
    Router::new().fallback(handle).with_state(ctx)
}

/// A response and the handle the access log names (None: anonymous or not authenticated).
pub(crate) type Outcome = (Response, Option<String>);

async fn handle(State(ctx): State<Arc<Context>>, request: Request) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    // Only method, path (no query), status, handle and time: never credentials.
    let path = request.uri().path().to_owned();
    let (response, handle) = ctx.route(request).await;
    tracing::info!(
        target: "imageless_hub::access",
        "{method} {path} {} {} {}ms",
        response.status().as_u16(),
        handle.as_deref().unwrap_or("-"),
        started.elapsed().as_millis()
    );
    response
}

pub(crate) fn header(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub(crate) fn text(status: u16, body: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{body}\n")).into_response()
}

pub(crate) fn plain(status: u16, body: &str, handle: Option<String>) -> Outcome {
    (text(status, body), handle)
}

pub(crate) fn unauthorized(handle: Option<String>) -> Outcome {
    let mut response = text(401, "authentication failed: the token is missing, invalid or expired");
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"floxhub\""));
    (response, handle)
}

/// The caller's identity; Err when a credential was sent but is not accepted.
pub(crate) fn authenticate(credential: &Credential, config: &HubConfig) -> Result<Option<Identity>, ()> {
    match credential {
        Credential::Missing | Credential::Anonymous => Ok(None),
        Credential::Unreadable => Err(()),
        Credential::Token(token) => {
            auth::identify(token, &config.secret_bytes(), &config.tokens, crate::now_unix()).map(Some).map_err(|e| {
                // The reason is safe to log: TokenVerifyError never contains the token.
                tracing::debug!("refused a token: {e}");
            })
        }
    }
}

impl Context {
    async fn route(&self, request: Request) -> Outcome {
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or("").to_owned();
        if let Some(rest) = path.strip_prefix("/git/") {
            self.git(request, rest, &query).await
        } else if let (Some(rest), Some(s3)) = (path.strip_prefix("/cache/"), self.s3.clone()) {
            let rest = rest.to_owned();
            (self.s3_cache_file(&s3, request, &rest).await, None)
        } else if let Some(rest) = path.strip_prefix("/cache/") {
            let cache_dir = self.paths.cache();
            (self.cache_file(request, &cache_dir, rest, true).await, None)
        } else if path == imageless_core::catalog::STORE_INFO_PATH {
            self.catalog_store_info(request).await
        } else if let Some(rest) = path.strip_prefix("/catalogs/") {
            self.catalog_cache(request, rest).await
        } else if path == "/api/v1/accounts/me" || path == "/accounts/api/v1/accounts/me" {
            self.me(&request)
        } else if let Some(rest) = path.strip_prefix(sbom::PREFIX) {
            self.sbom(request.method(), request.headers(), rest, &query).await
        } else {
            plain(404, "not found", None)
        }
    }

    pub(crate) fn load_config(&self) -> Result<HubConfig, HubServerError> {
        self.paths.load().inspect_err(|e| tracing::error!("{e}"))
    }

    fn me(&self, request: &Request) -> Outcome {
        if request.method() != Method::GET {
            return plain(405, "only GET is allowed", None);
        }
        let Ok(config) = self.load_config() else {
            return plain(500, "hub configuration unreadable", None);
        };
        let credential = auth::parse_authorization(header(request.headers(), header::AUTHORIZATION));
        match authenticate(&credential, &config) {
            Ok(Some(identity)) => {
                let body = serde_json::json!({"handle": identity.handle, "expires_at": identity.expires_at});
                let response = ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
                (response, Some(identity.handle))
            }
            _ => unauthorized(None),
        }
    }

    /// An environment generation's SBOM, under the environment's own visibility: a private one
    /// needs a token of a handle that may read it.
    async fn sbom(&self, method: &Method, headers: &HeaderMap, rest: &str, query: &str) -> Outcome {
        if !matches!(*method, Method::GET | Method::HEAD) {
            return plain(405, "only GET and HEAD are allowed", None);
        }
        let Some((owner, name)) = sbom::parse_path(rest) else {
            return plain(404, "not found", None);
        };
        let Ok(config) = self.load_config() else {
            return plain(500, "hub configuration unreadable", None);
        };
        let credential = auth::parse_authorization(header(headers, header::AUTHORIZATION));
        let handle = match authenticate(&credential, &config) {
            Ok(identity) => identity.map(|i| i.handle),
            Err(()) => return unauthorized(None),
        };
        let env = format!("{owner}/{name}");
        if !self.paths.floxmeta(&owner).join("HEAD").exists() {
            return plain(404, &format!("environment {env} not found"), handle);
        }
        // As for git: no credential at all, to an owner with environments this caller may not
        // see, is challenged (whatever the name, so the answer does not tell which exist); a
        // caller that may not read it finds it missing, as a hidden branch.
        if credential == Credential::Missing && !config.hidden_branches(&owner, None).is_empty() {
            return unauthorized(None);
        }
        if !config.may_read(&owner, &name, handle.as_deref()) {
            return plain(404, &format!("environment {env} not found"), handle);
        }
        let query = match sbom::parse_query(query) {
            Ok(q) => q,
            Err(e) => return plain(e.status(), &e.to_string(), handle),
        };
        let paths = self.paths.clone();
        let built = tokio::task::spawn_blocking(move || {
            sbom::environment_sbom(&paths, &owner, &name, &query).map(|s| (s.to_json(query.format), query.format))
        })
        .await;
        match built {
            Ok(Ok((body, format))) => {
                let response = ([(header::CONTENT_TYPE, format.media_type())], body).into_response();
                (response, handle)
            }
            Ok(Err(e)) => {
                if e.status() >= 500 {
                    tracing::error!("SBOM of {env}: {e}");
                }
                plain(e.status(), &e.to_string(), handle)
            }
            Err(e) => {
                tracing::error!("SBOM of {env}: {e}");
                plain(500, "the SBOM could not be built", handle)
            }
        }
    }

    /// A file of the binary cache at `cache_dir` (the public one, or a catalog's once its
    /// caller is let in). A plain GET or HEAD is answered by [`cache_file`]'s fast path; Range
    /// (206, 416) and conditional requests by tower-http's `ServeFile`. With `pull`, a missing
    /// narinfo or NAR is pulled from the upstream caches first when the hub has any.
    pub(crate) async fn cache_file(&self, request: Request, cache_dir: &Path, rest: &str, pull: bool) -> Response {
        if !matches!(*request.method(), Method::GET | Method::HEAD) {
            return text(405, "the cache is read-only: GET and HEAD only");
        }
        let Some(file) = cache::resolve_cache_path(cache_dir, rest) else {
            return text(404, "not found");
        };
        let fast = !cache_file::needs_serve_file(request.headers());
        // Only a GET answered here reads the body: HEAD and ServeFile's requests just check the file.
        let read = fast && *request.method() == Method::GET;
        let mut pulled = false;
        let opened = loop {
            match cache_file::open_async(cache_dir, rest, read).await {
                Ok(Lookup::Found(opened)) => break opened,
                Ok(Lookup::NotServed) => return text(404, "not found"),
                Ok(Lookup::Missing) if pulled => return text(404, "not found"),
                Ok(Lookup::Missing) => {
                    let Some(pull) = self.pull.as_ref().filter(|_| pull && PullThrough::pulls(rest)) else {
                        return text(404, "not found");
                    };
                    match pull.pull(rest).await {
                        Pulled::Stored => pulled = true,
                        Pulled::NotFound => return text(404, "not found"),
                        Pulled::Unavailable => return text(502, "no upstream cache could be reached for this file"),
                    }
                }
                Err(e) => {
                    tracing::error!("cache file {rest}: {e}");
                    return text(500, "the cache file could not be read");
                }
            }
        };
        let content_type = cache::content_type(rest);
        if fast {
            return opened.response(request.method(), content_type);
        }
        drop(opened);
        let mime: mime::Mime = content_type.parse().expect("the cache's content types are valid MIME types");
        match ServeFile::new_with_mime(&file, &mime).oneshot(request).await {
            Ok(response) => response.map(Body::new),
            Err(never) => match never {},
        }
    }

    /// A file of the public cache when it is in a bucket: `nix-cache-info` from the root (the
    /// hub's own), narinfos and NARs streamed from the bucket, pulled through first when
    /// missing and the hub has upstreams.
    async fn s3_cache_file(&self, s3: &Arc<S3Cache>, request: Request, rest: &str) -> Response {
        if !matches!(*request.method(), Method::GET | Method::HEAD) {
            return text(405, "the cache is read-only: GET and HEAD only");
        }
        if rest == "nix-cache-info" {
            let cache_dir = self.paths.cache();
            return self.cache_file(request, &cache_dir, rest, false).await;
        }
        if cache::resolve_cache_path(Path::new("/"), rest).is_none() || !PullThrough::pulls(rest) {
            return text(404, "not found");
        }
        // Kept on this replica's disk: served as from a cache on disk (sendfile), no store
        // round trip.
        if let Some(tier) = self.tier.as_ref().filter(|t| t.has(rest)) {
            let dir = tier.dir().to_path_buf();
            return self.cache_file(request, &dir, rest, false).await;
        }
        let fill_here = request.headers().contains_key(crate::fill_peers::FILL_HERE);
        let content_type = cache::content_type(rest);
        let whole_get = *request.method() == Method::GET && !request.headers().contains_key(header::RANGE);
        let mut pulled = false;
        loop {
            match s3.serve(request.method(), request.headers(), rest, content_type).await {
                Ok(Some(response)) => {
                    if let (Some(tier), true, true) = (&self.tier, whole_get, response.status() == StatusCode::OK) {
                        tier.fill(s3.clone(), rest);
                    }
                    return response;
                }
                Ok(None) if pulled => return text(404, "not found"),
                Ok(None) => {
                    let Some(pull) = self.pull.as_ref() else {
                        return text(404, "not found");
                    };
                    match pull.pull_from(rest, fill_here).await {
                        Pulled::Stored => pulled = true,
                        Pulled::NotFound => return text(404, "not found"),
                        Pulled::Unavailable => return text(502, "no upstream cache could be reached for this file"),
                    }
                }
                Err(e) => {
                    tracing::error!(target: "imageless_hub::s3", "cache file {rest}: {e}");
                    return text(502, "the cache store could not be read");
                }
            }
        }
    }

    /// An owner not hosted here: fetches go to the upstream FloxHub with the caller's
    /// credentials, which this hub neither checks nor keeps (the access log names no handle).
    async fn pass_through(
        &self,
        upstream: &GitUpstream,
        request: Request,
        route: &GitRoute,
        rest: &str,
        query: &str,
    ) -> Outcome {
        if let Some(refused) = refused(route, None) {
            return refused;
        }
        let (parts, body) = request.into_parts();
        match upstream.forward(&parts.method, rest, query, &parts.headers, body).await {
            Ok(response) => (response, None),
            Err(e @ GitUpstreamError::BodyTooLarge) => plain(413, &e.to_string(), None),
            Err(e) => {
                tracing::warn!("{e}");
                plain(502, &e.to_string(), None)
            }
        }
    }

    async fn git(&self, request: Request, rest: &str, query: &str) -> Outcome {
        let route = git_backend::route(rest, query);
        let owner = match &route {
            GitRoute::NotFound => return plain(404, "not found", None),
            GitRoute::AdvertiseUploadPack { owner }
            | GitRoute::UploadPack { owner }
            | GitRoute::ReceivePack { owner }
            | GitRoute::Dumb { owner } => owner.clone(),
        };
        let hosted = self.paths.floxmeta(&owner).join("HEAD").exists();
        if let (false, Some(upstream)) = (hosted, &self.git_upstream) {
            return self.pass_through(upstream, request, &route, rest, query).await;
        }
        let Ok(config) = self.load_config() else {
            return plain(500, "hub configuration unreadable", None);
        };
        let credential = auth::parse_authorization(header(request.headers(), header::AUTHORIZATION));
        let identity = match authenticate(&credential, &config) {
            Ok(identity) => identity,
            Err(()) => return unauthorized(None),
        };
        let handle = identity.map(|i| i.handle);
        if !hosted {
            return plain(404, "not found", handle);
        }
        if let Some(refused) = refused(&route, handle.clone()) {
            return refused;
        }
        let hidden = config.hidden_branches(&owner, handle.as_deref());
        if credential == Credential::Missing && !hidden.is_empty() {
            // git sends credentials only after a 401; without this challenge a client holding a
            // valid token would never present it and would see the private branches as missing.
            return unauthorized(None);
        }

        let path_info = format!("/{rest}");
        let method = request.method().to_string();
        let (parts, body) = request.into_parts();
        let headers = &parts.headers;
        let content_length = header(headers, header::CONTENT_LENGTH).and_then(|v| v.parse().ok());
        let cgi = CgiRequest {
            method: &method,
            path_info: &path_info,
            query,
            content_type: header(headers, header::CONTENT_TYPE),
            content_length,
            content_encoding: header(headers, header::CONTENT_ENCODING),
            git_protocol: headers.get("git-protocol").and_then(|v| v.to_str().ok()),
            remote_user: handle.as_deref(),
            hidden_branches: &hidden,
        };
        match git_backend::run_cgi(&self.paths.git_root(), &cgi, body, &self.children).await {
            Ok(cgi) => {
                let mut response = Response::new(cgi.body);
                *response.status_mut() = StatusCode::from_u16(cgi.status).unwrap_or(StatusCode::BAD_GATEWAY);
                for (k, v) in &cgi.headers {
                    if let (Ok(k), Ok(v)) = (header::HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                        response.headers_mut().append(k, v);
                    }
                }
                (response, handle)
            }
            Err(e) => {
                tracing::error!("{e}");
                plain(500, "git backend failed", handle)
            }
        }
    }
}

/// Pushes and dumb HTTP are never served, hosted here or passed through.
fn refused(route: &GitRoute, handle: Option<String>) -> Option<Outcome> {
    match route {
        GitRoute::ReceivePack { .. } => {
            Some(plain(403, "this hub is read-only over HTTP: publish with `imageless hub publish`", handle))
        }
        GitRoute::Dumb { .. } => Some(plain(403, "only smart HTTP git-upload-pack is served", handle)),
        _ => None,
    }
}
