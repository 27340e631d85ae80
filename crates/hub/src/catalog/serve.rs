//! The catalog routes: `POST /api/v1/catalog/store` (where catalog packages' store paths live)
//! and `/catalogs/<catalog>/cache/…` (the per-catalog binary cache), both for a FloxHub token
//! whose handle may read the catalog.
//!
//! - Store info: no credential (or Basic with an empty password) → 401 with
//!   `WWW-Authenticate: Bearer` (Flox's catalog service needs a login); a token the hub does not
//!   accept → 401; a body over 4 MiB → 413; a body that is not a `StoreInfoRequest` → 422; else
//!   200 with one key per requested path (see [`super::store_info`]). Errors are
//!   `{"detail": "…"}`.
//! - Cache: no credential or a bad token → 401 (`WWW-Authenticate: Basic`: Nix sends its netrc
//!   entry, `login unused password <token>`); a token whose handle may not read the catalog, or
//!   a catalog that does not exist → 404 for every file, so nothing tells which exist; else the
//!   file, as the public cache serves it (HEAD, Range), never pulled from upstreams.
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::store_info;
use crate::auth::{self, Credential};
use crate::routes::{authenticate, header, text, unauthorized, Context, Outcome};

/// Largest request body read: 10 000 store paths of the longest names fit.
const MAX_BODY: usize = 4 * 1024 * 1024;

fn detail(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({ "detail": message }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn login_required(message: &str) -> Outcome {
    let mut response = detail(401, message);
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    (response, None)
}

/// `http(s)://host[:port]` as the caller reached this server, or None when the request names
/// no usable host.
fn request_base_url(request: &Request, scheme: &str) -> Option<String> {
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| header(request.headers(), header::HOST).map(str::to_owned))?;
    let ok = !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    ok.then(|| format!("{scheme}://{host}"))
}

impl Context {
    pub(crate) async fn catalog_store_info(&self, request: Request) -> Outcome {
        if request.method() != Method::POST {
            return (detail(405, "only POST is allowed"), None);
        }
        let Ok(config) = self.load_config() else {
            return (detail(500, "hub configuration unreadable"), None);
        };
        let credential = auth::parse_authorization(header(request.headers(), header::AUTHORIZATION));
        let handle = match (&credential, authenticate(&credential, &config)) {
            (Credential::Missing | Credential::Anonymous, _) => {
                return login_required("authentication required: send Authorization: Bearer <FloxHub token>")
            }
            (_, Ok(Some(identity))) => identity.handle,
            _ => return login_required("authentication failed: the token is invalid or expired"),
        };
        let hub_url = match config.public_url.clone() {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => match request_base_url(&request, self.scheme) {
                Some(u) => u,
                None => {
                    return (
                        detail(400, "the request names no host; accepted: a Host header such as hub.example.org:8080"),
                        Some(handle),
                    )
                }
            },
        };
        let body = match axum::body::to_bytes(request.into_body(), MAX_BODY).await {
            Ok(b) => b,
            Err(_) => {
                return (detail(413, "the body is over 4 MiB; accepted: at most 10000 store paths"), Some(handle))
            }
        };
        let requested = match store_info::parse_request(&body) {
            Ok(p) => p,
            Err(e) => return (detail(422, &e.to_string()), Some(handle)),
        };
        let (paths, who) = (self.paths.clone(), handle.clone());
        let answered =
            tokio::task::spawn_blocking(move || store_info::answer(&paths, &config, &who, &hub_url, &requested)).await;
        match answered {
            Ok(Ok(response)) => {
                let body = serde_json::to_vec(&response).expect("StoreInfoResponse serializes");
                ((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response(), Some(handle))
            }
            Ok(Err(e)) => {
                // The message names files and catalogs, never a credential's value.
                tracing::error!("catalog store info: {e}");
                (detail(500, "the catalog records could not be read"), Some(handle))
            }
            Err(e) => {
                tracing::error!("catalog store info: {e}");
                (detail(500, "the catalog records could not be read"), Some(handle))
            }
        }
    }

    /// `rest` = `<catalog>/cache/<file>`.
    pub(crate) async fn catalog_cache(&self, request: Request, rest: &str) -> Outcome {
        let Some((catalog, file)) = rest.split_once('/').and_then(|(c, tail)| Some((c, tail.strip_prefix("cache/")?)))
        else {
            return (text(404, "not found"), None);
        };
        let Ok(config) = self.load_config() else {
            return (text(500, "hub configuration unreadable"), None);
        };
        let credential = auth::parse_authorization(header(request.headers(), header::AUTHORIZATION));
        let handle = match authenticate(&credential, &config) {
            Ok(Some(identity)) => identity.handle,
            // No credential, an empty one or one not accepted: challenged, whatever the catalog.
            _ => return unauthorized(None),
        };
        let readable = crate::names::validate_owner(catalog).is_ok()
            && config.may_read_catalog(catalog, &handle)
            && self.paths.catalog_cache(catalog).is_dir();
        if !readable {
            return (text(404, "not found"), Some(handle));
        }
        let dir = self.paths.catalog_cache(catalog);
        (self.cache_file(request, &dir, file, false).await, Some(handle))
    }
}
