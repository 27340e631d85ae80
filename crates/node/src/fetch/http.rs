//! The HTTP edge: one pooled client (keep-alive, HTTP/2 when the server offers it, rustls,
//! in-process DNS) for every substituter. 404 is "not here"; any other non-200 is a
//! [`SourceError`] naming the URL and the status. An `s3://` substituter is read through the
//! same client with presigned GETs ([`imageless_s3::S3Store`]); its objects are named
//! `s3://bucket/key` in messages, and S3's error answers (a missing bucket, refused
//! credentials) name its endpoint and bucket.
//!
//! No request has a total timeout (a large NAR on a slow link may take minutes). A stall is
//! caught by two short deadlines instead: connecting ([`Deadlines::connect`]) and silence
//! ([`Deadlines::stall`]: no byte of the answer's head or body for that long), so a cache that
//! accepts and never answers costs one stall, not one minute per path.
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use imageless_s3::S3Store;

use super::error::SourceError;

/// How long a substituter may keep the node waiting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Deadlines {
    /// TCP (and TLS) connect.
    pub connect: Duration,
    /// Silence: the first byte of an answer, and then between any two reads of its body.
    pub stall: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines { connect: Duration::from_secs(5), stall: Duration::from_secs(10) }
    }
}

#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    pub deadlines: Deadlines,
    /// The `s3://` substituters by their configured URL (catalog answers may add more).
    s3: Arc<RwLock<HashMap<String, S3Store>>>,
    /// http(s) substituters read with the pod's FloxHub token as basic auth (stores a catalog
    /// answered on a host of `catalog_token_hosts`).
    basic: Arc<RwLock<HashMap<String, String>>>,
}

impl Http {
    pub fn new(deadlines: Deadlines) -> Result<Http, SourceError> {
        let client = reqwest::Client::builder()
            .connect_timeout(deadlines.connect)
            // reqwest's read timeout restarts after every successful read, head and body alike:
            // exactly a silence deadline.
            .read_timeout(deadlines.stall)
            .pool_max_idle_per_host(32)
            // Short: a server that gives each open connection a thread of its own (the
            // project's hub, on tiny_http) may queue a new connection behind our idle ones.
            .pool_idle_timeout(Duration::from_secs(2))
            .user_agent(concat!("imageless/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SourceError::Network { url: "-".into(), detail: format!("building the HTTP client: {e}") })?;
        Ok(Http { client, deadlines, s3: Arc::default(), basic: Arc::default() })
    }

    /// Reads `s3://` substituter `name` through `store` from now on.
    pub fn add_s3(&self, name: &str, store: S3Store) {
        self.s3.write().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), store);
    }

    /// Reads http(s) substituter `name` with `token` as basic auth's password from now on.
    pub fn add_basic(&self, name: &str, token: &str) {
        self.basic.write().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), token.to_string());
    }

    /// POSTs `body` as JSON to `url`, with `bearer` as a bearer token (a sensitive header:
    /// never logged); the answer's head.
    pub async fn post_json<T: serde::Serialize>(
        &self,
        url: &str,
        body: &T,
        bearer: Option<&str>,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let bytes = serde_json::to_vec(body).expect("a request body serializes");
        let mut req = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes)
            .timeout(self.deadlines.connect + self.deadlines.stall * 3);
        if let Some(token) = bearer {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static("Bearer invalid"));
            value.set_sensitive(true);
            req = req.header(reqwest::header::AUTHORIZATION, value);
        }
        req.send().await
    }

    fn s3_store(&self, substituter: &str) -> Option<S3Store> {
        if !substituter.starts_with("s3://") {
            return None;
        }
        self.s3.read().unwrap_or_else(|e| e.into_inner()).get(substituter).cloned()
    }

    /// How messages name `<substituter>/<rel>`.
    pub fn url(&self, substituter: &str, rel: &str) -> String {
        match self.s3_store(substituter) {
            Some(store) => store.object_name(rel),
            None => plain_url(substituter, rel),
        }
    }

    /// GET `<substituter>/<rel>` up to the answer's head; None on 404.
    pub async fn get(&self, substituter: &str, rel: &str) -> Result<Option<reqwest::Response>, SourceError> {
        let s3 = self.s3_store(substituter);
        let (request_url, url) = match &s3 {
            Some(store) => (store.presign_get(rel).to_string(), store.object_name(rel)),
            None => (plain_url(substituter, rel), plain_url(substituter, rel)),
        };
        // The client's deadlines catch a stall; this bound only guards against a server that
        // trickles a head byte by byte forever.
        let bound = self.deadlines.connect + self.deadlines.stall * 3;
        let mut request = self.client.get(&request_url);
        if s3.is_none() {
            if let Some(token) = self.basic.read().unwrap_or_else(|e| e.into_inner()).get(substituter) {
                request = request.basic_auth("unused", Some(token));
            }
        }
        let sent = tokio::time::timeout(bound, request.send()).await;
        let resp = match sent {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return Err(self.request_failed(&url, e)),
            Err(_) => return Err(SourceError::Stalled { url, secs: bound.as_secs_f64() }),
        };
        match (resp.status().as_u16(), &s3) {
            (200, _) => Ok(Some(resp)),
            (status @ (400..=499), Some(store)) => s3_refusal(store, rel, url, status, resp).await,
            (404, None) => Ok(None),
            (status, _) => Err(SourceError::Http { url, status }),
        }
    }

    /// GET a small text file (narinfo, nix-cache-info); None on 404.
    pub async fn get_text(&self, substituter: &str, rel: &str) -> Result<Option<String>, SourceError> {
        let Some(mut resp) = self.get(substituter, rel).await? else { return Ok(None) };
        let url = self.url(substituter, rel);
        let mut bytes = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    bytes.extend_from_slice(&chunk);
                    if bytes.len() > 1 << 20 {
                        return Err(SourceError::Network { url, detail: "an answer over 1 MiB".into() });
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(self.body_failed(&url, e)),
            }
        }
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// The error of a request that got no answer head.
    /// (reqwest's own text names the request's URL, which for S3 is a presigned one carrying a
    /// signature: it is dropped, `url` names the object instead.)
    pub fn request_failed(&self, url: &str, e: reqwest::Error) -> SourceError {
        let e = e.without_url();
        if e.is_timeout() && !e.is_connect() {
            SourceError::Stalled { url: url.to_string(), secs: self.deadlines.stall.as_secs_f64() }
        } else {
            SourceError::Network { url: url.to_string(), detail: error_chain(&e) }
        }
    }

    /// The error of a body that stopped early.
    pub fn body_failed(&self, url: &str, e: reqwest::Error) -> SourceError {
        let e = e.without_url();
        if e.is_timeout() {
            SourceError::BodyStalled { url: url.to_string(), secs: self.deadlines.stall.as_secs_f64() }
        } else {
            SourceError::Network { url: url.to_string(), detail: error_chain(&e) }
        }
    }
}

fn plain_url(substituter: &str, rel: &str) -> String {
    format!("{}/{rel}", substituter.trim_end_matches('/'))
}

/// A 4xx from S3: a missing object is None (as a 404 from a plain cache); so is `AccessDenied`
/// on anything but `nix-cache-info` (S3 answers 403 for a missing key to a reader without the
/// list permission, and the credentials were good enough for `nix-cache-info`). Anything else
/// (a missing bucket, refused credentials) is an error naming the endpoint and the bucket.
async fn s3_refusal(
    store: &S3Store,
    rel: &str,
    url: String,
    status: u16,
    mut resp: reqwest::Response,
) -> Result<Option<reqwest::Response>, SourceError> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() > 16 * 1024 {
            break;
        }
    }
    let parsed = imageless_s3::error_body::parse(&String::from_utf8_lossy(&body));
    let (code, message) = match parsed {
        Some(e) => (e.code, e.message),
        None if status == 404 => return Ok(None),
        None => (format!("HTTP {status}"), String::new()),
    };
    if imageless_s3::error_body::is_missing_object(&code) || (code == "AccessDenied" && rel != "nix-cache-info") {
        return Ok(None);
    }
    Err(SourceError::S3 { object: url, store: store.url.describe(), code, message })
}

/// The error and its causes on one line (reqwest's Display omits the cause).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}
