//! The HTTP(S) connector the hub asks its upstreams through (binary caches pulled through, git
//! passed through): rustls with the system's CA roots, HTTP/1.1, plain HTTP allowed for a
//! cluster's own hub.
use std::sync::Arc;

use hyper::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio_rustls::rustls;

use crate::error::HubServerError;

pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A connector that verifies HTTPS upstreams against the system's CA certificates. Without
/// any, plain-HTTP upstreams still work and HTTPS ones fail clearly at connect.
pub fn connector() -> Result<Connector, HubServerError> {
    connector_with(None)
}

/// [`connector`] with a bound on connecting (TCP), so an upstream that drops SYNs counts as
/// down in seconds, not after the kernel's minutes.
pub fn connector_with(connect_timeout: Option<std::time::Duration>) -> Result<Connector, HubServerError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(connect_timeout);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match builder.with_provider_and_native_roots(provider.clone()) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!("no system CA certificates ({e}): HTTPS upstreams cannot be verified");
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| HubServerError::InvalidInput {
                    what: "TLS client configuration",
                    value: e.to_string(),
                    accepted: "rustls defaults",
                })?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
        }
    };
    Ok(builder.https_or_http().enable_http1().wrap_connector(http))
}

/// Checks an upstream URL: absolute http(s), a host, no query and no credentials in it (a token
/// belongs in a header, never in a URL that ends up in logs); the trailing `/` is dropped.
pub fn parse_url(url: &str, what: &'static str, accepted: &'static str) -> Result<String, HubServerError> {
    let invalid = || HubServerError::InvalidInput { what, value: without_userinfo(url), accepted };
    let uri: Uri = url.parse().map_err(|_| invalid())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    if !scheme_ok || uri.host().is_none() || uri.query().is_some() || url.contains('@') {
        return Err(invalid());
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// `url` with anything between `://` and `@` replaced, so an error never repeats a credential.
fn without_userinfo(url: &str) -> String {
    match url.split_once("://").and_then(|(scheme, rest)| rest.rsplit_once('@').map(|(_, host)| (scheme, host))) {
        Some((scheme, host)) => format!("{scheme}://<credentials removed>@{host}"),
        None => url.to_owned(),
    }
}

/// An error and its causes on one line (hyper's Display omits the cause).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_credentials_are_refused_without_repeating_them() {
        let err = parse_url("https://oauth:flox_pat_secret@hub.example.invalid/git", "upstream git URL", "x")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret") && err.contains("<credentials removed>@hub.example.invalid/git"), "{err}");
        assert_eq!(parse_url("http://10.0.0.1:8080/git/", "w", "a").unwrap(), "http://10.0.0.1:8080/git");
        for bad in ["ftp://h/git", "/git", "http://h/git?x=1", "hub.example"] {
            assert!(parse_url(bad, "w", "a").is_err(), "{bad}");
        }
    }
}
