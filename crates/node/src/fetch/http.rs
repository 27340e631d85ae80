//! The HTTP edge: one pooled client (keep-alive, HTTP/2 when the server offers it, rustls,
//! in-process DNS) for every substituter. 404 is "not here"; any other non-200 is an error
//! naming the substituter, the URL and the status.
use std::time::Duration;

use super::error::FetchError;

#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
}

impl Http {
    pub fn new() -> Result<Http, FetchError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(32)
            // Short: a server that gives each open connection a thread of its own (the
            // project's hub, on tiny_http) may queue a new connection behind our idle ones.
            .pool_idle_timeout(Duration::from_secs(2))
            .user_agent(concat!("imageless/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Network {
                substituter: "-".into(),
                url: "-".into(),
                detail: format!("building the HTTP client: {e}"),
            })?;
        Ok(Http { client })
    }

    fn url(substituter: &str, rel: &str) -> String {
        format!("{}/{rel}", substituter.trim_end_matches('/'))
    }

    /// GET `<substituter>/<rel>`; None on 404.
    pub async fn get(&self, substituter: &str, rel: &str) -> Result<Option<reqwest::Response>, FetchError> {
        let url = Self::url(substituter, rel);
        let net = |e: reqwest::Error| FetchError::Network {
            substituter: substituter.to_string(),
            url: url.clone(),
            detail: error_chain(&e),
        };
        let resp = self.client.get(&url).send().await.map_err(net)?;
        match resp.status().as_u16() {
            200 => Ok(Some(resp)),
            404 => Ok(None),
            status => Err(FetchError::Http { substituter: substituter.to_string(), url, status }),
        }
    }

    /// GET a small text file (narinfo, nix-cache-info); None on 404.
    pub async fn get_text(&self, substituter: &str, rel: &str) -> Result<Option<String>, FetchError> {
        let Some(resp) = self.get(substituter, rel).await? else { return Ok(None) };
        let url = Self::url(substituter, rel);
        let bytes = resp.bytes().await.map_err(|e| FetchError::Network {
            substituter: substituter.to_string(),
            url: url.clone(),
            detail: error_chain(&e),
        })?;
        if bytes.len() > 1 << 20 {
            return Err(FetchError::Network { substituter: substituter.to_string(), url, detail: "over 1 MiB".into() });
        }
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
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
