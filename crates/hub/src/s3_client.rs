//! The hub's requests to an `s3://` store: presigned GETs and PUTs (imageless-s3's SigV4
//! signing) over the hub's hyper client (rustls, the system's CA roots, plain HTTP allowed for a
//! cluster's own store). Used by the S3 cache backend ([`crate::s3_cache`]) and by catalog
//! uploads ([`crate::catalog::upload`]).
//!
//! A request that could not be sent, or that S3 answers with a 5xx (a Garage node that just
//! went away, a store under load), is tried again, up to [`ATTEMPTS`] times with a short pause:
//! a PUT rereads its file, a GET is sent anew before any of its body was used.
//!
//! Errors name the object (`s3://bucket/key`) and S3's error code, never a presigned URL (its
//! signature) or a key.
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderName, HeaderValue};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use imageless_s3::S3Store;

use crate::error::HubServerError;
use crate::upstream_http::error_chain;

/// A request body: a file streamed in 1 MiB frames, a small buffer, or nothing.
pub type RequestBody = BoxBody<Bytes, std::io::Error>;
/// The client every S3 request of the hub goes through.
pub type S3Client = Client<crate::upstream_http::Connector, RequestBody>;

/// Tries of one request before its error is returned.
pub const ATTEMPTS: u32 = 4;
/// The longest a store may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a store may take to send an answer's head (a PUT's: after its body, which gets
/// one more second per MiB, i.e. at least 1 MiB/s).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum S3RequestError {
    /// Could not be sent, or no answer came (refused, reset, timed out).
    #[error("{method} {object} failed: {message}")]
    Transport { method: &'static str, object: String, message: String },
    /// S3 answered with an error status.
    #[error("{method} {object} answered HTTP {status} ({detail})")]
    Answer { method: &'static str, object: String, status: u16, detail: String },
    /// The local file to upload could not be read.
    #[error("{path}: {source}")]
    File { path: String, source: std::io::Error },
}

impl S3RequestError {
    /// Worth another try: the store (or the node answering for it) failed, not the request.
    pub fn retryable(&self) -> bool {
        match self {
            S3RequestError::Transport { .. } => true,
            S3RequestError::Answer { status, .. } => *status >= 500,
            S3RequestError::File { .. } => false,
        }
    }
}

/// A client for S3 requests (connect bounded by [`CONNECT_TIMEOUT`], idle connections kept 30 s).
pub fn client() -> Result<S3Client, HubServerError> {
    let connector = crate::upstream_http::connector_with(Some(CONNECT_TIMEOUT))?;
    Ok(Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector))
}

/// `PUT key` with the bytes of `file` (streamed).
pub async fn put_file(client: &S3Client, store: &S3Store, key: &str, file: &Path) -> Result<(), S3RequestError> {
    retry(|| async {
        let local = |source| S3RequestError::File { path: file.display().to_string(), source };
        let opened = tokio::fs::File::open(file).await.map_err(local)?;
        let size = opened.metadata().await.map_err(local)?.len();
        let stream = tokio_util::io::ReaderStream::with_capacity(opened, 1 << 20).map_ok(Frame::data);
        put(client, store, key, BodyExt::boxed(StreamBody::new(stream)), size).await
    })
    .await
}

/// `PUT key` with `bytes`.
pub async fn put_bytes(client: &S3Client, store: &S3Store, key: &str, bytes: Bytes) -> Result<(), S3RequestError> {
    retry(|| async {
        let size = bytes.len() as u64;
        let body = BodyExt::boxed(Full::new(bytes.clone()).map_err(|never| match never {}));
        put(client, store, key, body, size).await
    })
    .await
}

async fn put(
    client: &S3Client,
    store: &S3Store,
    key: &str,
    body: RequestBody,
    size: u64,
) -> Result<(), S3RequestError> {
    let object = store.object_name(key);
    let request = hyper::Request::put(store.presign_put(key).as_str())
        .header(hyper::header::CONTENT_LENGTH, size)
        .body(body)
        .map_err(|e| S3RequestError::Transport { method: "PUT", object: object.clone(), message: e.to_string() })?;
    let timeout = ANSWER_TIMEOUT + Duration::from_secs(size >> 20);
    let response = send(client, request, "PUT", &object, timeout).await?;
    if response.status().is_success() {
        return Ok(());
    }
    Err(answer_error("PUT", object, response).await)
}

/// `GET key` with `headers` (Range, preconditions: a presigned URL signs only the host, so
/// these may be added), up to the answer's head, whatever its status. Retried while the store
/// fails (5xx, no answer).
pub async fn get(
    client: &S3Client,
    store: &S3Store,
    key: &str,
    headers: &[(HeaderName, HeaderValue)],
) -> Result<hyper::Response<Incoming>, S3RequestError> {
    let object = store.object_name(key);
    retry(|| async {
        let mut request = hyper::Request::get(store.presign_get(key).as_str());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request.body(empty()).map_err(|e| S3RequestError::Transport {
            method: "GET",
            object: object.clone(),
            message: e.to_string(),
        })?;
        let response = send(client, request, "GET", &object, ANSWER_TIMEOUT).await?;
        if response.status().is_server_error() {
            return Err(answer_error("GET", object.clone(), response).await);
        }
        Ok(response)
    })
    .await
}

/// An empty request body.
pub fn empty() -> RequestBody {
    BodyExt::boxed(http_body_util::Empty::new().map_err(|never| match never {}))
}

async fn send(
    client: &S3Client,
    request: hyper::Request<RequestBody>,
    method: &'static str,
    object: &str,
    timeout: Duration,
) -> Result<hyper::Response<Incoming>, S3RequestError> {
    let transport = |message: String| S3RequestError::Transport { method, object: object.to_owned(), message };
    match tokio::time::timeout(timeout, client.request(request)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => Err(transport(error_chain(&e))),
        Err(_) => Err(transport(format!("no answer within {} s", timeout.as_secs()))),
    }
}

/// The error of an answer that is not a success: its status and S3's error code and message.
pub async fn answer_error(method: &'static str, object: String, response: hyper::Response<Incoming>) -> S3RequestError {
    let status = response.status().as_u16();
    let detail =
        error_code(response).await.map_or_else(|| "no S3 error document".to_owned(), |(c, m)| format!("{c}: {m}"));
    S3RequestError::Answer { method, object, status, detail }
}

/// S3's error code and message in an answer's body (read up to 64 KiB), if it has them.
pub async fn error_code(response: hyper::Response<Incoming>) -> Option<(String, String)> {
    let body = http_body_util::Limited::new(response.into_body(), 64 * 1024).collect().await.ok()?;
    let parsed = imageless_s3::error_body::parse(&String::from_utf8_lossy(&body.to_bytes()))?;
    Some((parsed.code, parsed.message))
}

/// Runs `attempt` until it succeeds, fails for good, or [`ATTEMPTS`] tries were made.
async fn retry<T, F, Fut>(mut attempt: F) -> Result<T, S3RequestError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, S3RequestError>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Err(e) if e.retryable() && tries < ATTEMPTS => {
                tracing::warn!(target: "imageless_hub::s3", "{e}; trying again ({tries} of {ATTEMPTS})");
                tokio::time::sleep(Duration::from_millis(250 * u64::from(tries))).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_store_that_cannot_be_reached_is_tried_again_then_named() {
        // A port nothing listens on: every try is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url =
            imageless_s3::S3Url::parse(&format!("s3://bkt?endpoint=127.0.0.1:{port}&scheme=http&region=x")).unwrap();
        let creds = imageless_s3::Credentials {
            access_key_id: "GK1".into(),
            secret_access_key: "sekrit".into(),
            session_token: None,
        };
        let store = S3Store::new(url, Some(&creds)).unwrap();
        let err = put_bytes(&client().unwrap(), &store, "nar/x.nar", Bytes::from_static(b"x")).await.unwrap_err();
        assert!(err.retryable(), "{err}");
        let text = err.to_string();
        assert!(text.starts_with("PUT s3://bkt/nar/x.nar failed: "), "{text}");
        assert!(!text.contains("sekrit") && !text.contains("Signature"), "{text}");
    }
}
