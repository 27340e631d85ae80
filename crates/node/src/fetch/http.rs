//! The HTTP edge: one pooled client (keep-alive, HTTP/2 when the server offers it, rustls,
//! in-process DNS) for every substituter. 404 is "not here"; any other non-200 is a
//! [`SourceError`] naming the URL and the status.
//!
//! No request has a total timeout (a large NAR on a slow link may take minutes). A stall is
//! caught by two short deadlines instead: connecting ([`Deadlines::connect`]) and silence
//! ([`Deadlines::stall`]: no byte of the answer's head or body for that long), so a cache that
//! accepts and never answers costs one stall, not one minute per path.
use std::time::Duration;

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
        Ok(Http { client, deadlines })
    }

    pub fn url(substituter: &str, rel: &str) -> String {
        format!("{}/{rel}", substituter.trim_end_matches('/'))
    }

    /// GET `<substituter>/<rel>` up to the answer's head; None on 404.
    pub async fn get(&self, substituter: &str, rel: &str) -> Result<Option<reqwest::Response>, SourceError> {
        let url = Self::url(substituter, rel);
        // The client's deadlines catch a stall; this bound only guards against a server that
        // trickles a head byte by byte forever.
        let bound = self.deadlines.connect + self.deadlines.stall * 3;
        let sent = tokio::time::timeout(bound, self.client.get(&url).send()).await;
        let resp = match sent {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return Err(self.request_failed(&url, &e)),
            Err(_) => return Err(SourceError::Stalled { url, secs: bound.as_secs_f64() }),
        };
        match resp.status().as_u16() {
            200 => Ok(Some(resp)),
            404 => Ok(None),
            status => Err(SourceError::Http { url, status }),
        }
    }

    /// GET a small text file (narinfo, nix-cache-info); None on 404.
    pub async fn get_text(&self, substituter: &str, rel: &str) -> Result<Option<String>, SourceError> {
        let Some(mut resp) = self.get(substituter, rel).await? else { return Ok(None) };
        let url = Self::url(substituter, rel);
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
                Err(e) => return Err(self.body_failed(&url, &e)),
            }
        }
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// The error of a request that got no answer head.
    pub fn request_failed(&self, url: &str, e: &reqwest::Error) -> SourceError {
        if e.is_timeout() && !e.is_connect() {
            SourceError::Stalled { url: url.to_string(), secs: self.deadlines.stall.as_secs_f64() }
        } else {
            SourceError::Network { url: url.to_string(), detail: error_chain(e) }
        }
    }

    /// The error of a body that stopped early.
    pub fn body_failed(&self, url: &str, e: &reqwest::Error) -> SourceError {
        if e.is_timeout() {
            SourceError::BodyStalled { url: url.to_string(), secs: self.deadlines.stall.as_secs_f64() }
        } else {
            SourceError::Network { url: url.to_string(), detail: error_chain(e) }
        }
    }
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
