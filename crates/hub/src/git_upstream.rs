//! Git pass-through (`hub serve --upstream-git URL`, `upstream_git` in hub.json): a floxmeta
//! request for an owner this hub does not host is forwarded to the upstream's git base URL
//! (e.g. FloxHub's `https://api.flox.dev/git`) and its answer streamed back, so one hub can be
//! a cluster's single address for both environments and packages.
//!
//! The caller's `Authorization` header goes to the upstream unchanged and nowhere else: it is
//! not logged, not stored, not used by this hub. The upstream decides what the caller may see,
//! exactly as if it had been asked directly (its 401 challenge comes back too, so git clients
//! send their token). Only fetches pass: receive-pack and dumb HTTP are refused before any
//! forwarding. floxmeta answers are small and per caller (private branches), so they are not
//! cached; the binary cache's pull-through is where the bytes are.
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, Method, Request, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::error::HubServerError;
use crate::upstream_http::{self, Connector};

/// The longest the upstream may take to answer with a response head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// A git-upload-pack request body (wants and haves of one floxmeta branch) is a few KiB.
pub const MAX_REQUEST_BODY: usize = 8 << 20;

/// Request headers a git client's fetch needs upstream; everything else stays here.
const REQUEST_HEADERS: [HeaderName; 5] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::ACCEPT,
    HeaderName::from_static("git-protocol"),
];
/// Response headers passed back (the body's length and framing are hyper's).
const RESPONSE_HEADERS: [HeaderName; 6] = [
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::CACHE_CONTROL,
    header::EXPIRES,
    header::PRAGMA,
    header::WWW_AUTHENTICATE,
];

#[derive(Debug, thiserror::Error)]
pub enum GitUpstreamError {
    #[error("the request body is over {MAX_REQUEST_BODY} bytes")]
    BodyTooLarge,
    #[error("the upstream git {upstream} could not be reached: {reason}")]
    Unreachable { upstream: String, reason: String },
}

/// The upstream git base URL and a pooled client for it.
pub struct GitUpstream {
    base: String,
    client: Client<Connector, Full<Bytes>>,
}

/// Checks an `--upstream-git` value.
pub fn parse_upstream_git(url: &str) -> Result<String, HubServerError> {
    upstream_http::parse_url(
        url,
        "upstream git URL",
        "http://HOST[:PORT][/PATH] or https://HOST[:PORT][/PATH] (a FloxHub git base URL, such as \
         https://api.flox.dev/git), no query, no credentials",
    )
}

impl GitUpstream {
    /// None when no upstream git is configured.
    pub fn new(url: Option<&str>) -> Result<Option<GitUpstream>, HubServerError> {
        let Some(url) = url else { return Ok(None) };
        let base = parse_upstream_git(url)?;
        if base.starts_with("http://") {
            tracing::warn!("upstream git {base} is plain HTTP: callers' tokens cross the network unencrypted");
        }
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(upstream_http::connector()?);
        Ok(Some(GitUpstream { base, client }))
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Forwards one smart-HTTP fetch request (`rest` is the path below `/git/`, already routed
    /// as an advertisement or an upload-pack) and returns the upstream's answer as it is.
    pub async fn forward(
        &self,
        method: &Method,
        rest: &str,
        query: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response<Body>, GitUpstreamError> {
        let body = Limited::new(body, MAX_REQUEST_BODY)
            .collect()
            .await
            .map_err(|_| GitUpstreamError::BodyTooLarge)?
            .to_bytes();
        let uri =
            if query.is_empty() { format!("{}/{rest}", self.base) } else { format!("{}/{rest}?{query}", self.base) };
        let mut request = Request::builder().method(method.clone()).uri(&uri);
        for name in &REQUEST_HEADERS {
            for value in headers.get_all(name) {
                request = request.header(name, value);
            }
        }
        let unreachable = |reason: String| GitUpstreamError::Unreachable { upstream: self.base.clone(), reason };
        let request = request.body(Full::new(body)).map_err(|e| unreachable(e.to_string()))?;
        let answer = tokio::time::timeout(HEAD_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| unreachable(format!("no answer within {}s", HEAD_TIMEOUT.as_secs())))?
            .map_err(|e| unreachable(e.to_string()))?;
        let (parts, incoming) = answer.into_parts();
        let mut response = Response::new(Body::new(incoming));
        *response.status_mut() = parts.status;
        for name in &RESPONSE_HEADERS {
            for value in parts.headers.get_all(name) {
                response.headers_mut().append(name, value.clone());
            }
        }
        Ok(response)
    }
}
