//! The binary cache on S3-compatible object storage (`serve --cache-store s3://BUCKET?…`, or
//! `cache_store` in hub.json): narinfos and NARs live in the bucket under the keys a Nix S3
//! binary cache uses (`<hash>.narinfo`, `nar/<file>`), so replicas of the hub share one cache
//! without a shared volume, and the bucket itself is a cache Nix can read (`s3://BUCKET?…`).
//!
//! Reads stream through the hub: a GET becomes a presigned GET of the object (the client's
//! `Range` and `If-*` headers passed along, S3's 200/206/304/412/416 and its `Content-Length`,
//! `Content-Range`, `ETag`, `Last-Modified` passed back, the body streamed as it comes). A HEAD
//! is a GET of the object's first byte (the size is the `Content-Range` total): imageless-s3
//! presigns GET and PUT only. Writes are PUTs of whole objects, which S3 makes visible all at
//! once: a reader sees the old state or the whole new object, never part of one.
//! `nix-cache-info` is always the hub's own (from its root), and is put into the bucket at start
//! when missing there.
use std::path::Path;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use imageless_s3::{Credentials, S3Store, S3Url};

use crate::error::HubServerError;
use crate::s3_client::{self, S3Client, S3RequestError};

/// Request headers passed to S3 with a read.
const PASSED_TO_S3: [header::HeaderName; 6] = [
    header::RANGE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
];
/// Answer headers passed back from S3 (the content type is the hub's own).
const PASSED_BACK: [header::HeaderName; 4] =
    [header::CONTENT_LENGTH, header::CONTENT_RANGE, header::ETAG, header::LAST_MODIFIED];

/// The cache's bucket and the client that reaches it.
pub struct S3Cache {
    store: S3Store,
    client: S3Client,
}

impl std::fmt::Debug for S3Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Cache").field("store", &self.store).finish()
    }
}

impl S3Cache {
    /// The store at `url` (Nix's `s3://` parameters) with credentials from `credentials_file`
    /// (an AWS shared-credentials file, profile: the URL's `profile`, else `default`), else the
    /// environment's AWS chain. Refused without credentials: the hub writes to its cache.
    pub fn new(url: &str, credentials_file: Option<&Path>) -> Result<S3Cache, HubServerError> {
        const ACCEPTED: &str = "s3://BUCKET?endpoint=HOST[:PORT]&region=R&scheme=http|https&profile=P&addressing-style=auto|path|virtual (Nix's S3 store URL)";
        let parsed = S3Url::parse(url).map_err(|e| HubServerError::InvalidInput {
            what: "cache store",
            value: e.to_string(),
            accepted: ACCEPTED,
        })?;
        let credentials = Credentials::resolve(credentials_file, parsed.profile.as_deref()).map_err(|e| {
            HubServerError::InvalidInput {
                what: "cache store credentials",
                value: e.to_string(),
                accepted: "an AWS shared-credentials file with the store's profile",
            }
        })?;
        if credentials.is_none() {
            return Err(HubServerError::InvalidInput {
                what: "cache store credentials",
                value: format!("none found for {url}"),
                accepted: "\"cache_store_credentials\" in hub.json or --cache-store-credentials (an AWS shared-credentials file), or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
            });
        }
        let store = S3Store::new(parsed, credentials.as_ref()).map_err(|e| HubServerError::InvalidInput {
            what: "cache store",
            value: e.to_string(),
            accepted: ACCEPTED,
        })?;
        Ok(S3Cache { store, client: s3_client::client()? })
    }

    /// The store URL as configured (never holds credentials).
    pub fn url(&self) -> &str {
        &self.store.url.original
    }

    /// `s3://bucket/key`, for messages.
    pub fn object_name(&self, key: &str) -> String {
        self.store.object_name(key)
    }

    /// Checks the bucket answers with these credentials, and puts `nix-cache-info` there when
    /// it has none (so the bucket is a Nix binary cache by itself).
    pub async fn check(&self, nix_cache_info: &str) -> Result<(), HubServerError> {
        let failed = |e: S3RequestError| HubServerError::InvalidInput {
            what: "cache store",
            value: format!("{}: {e}", self.url()),
            accepted: "a bucket these credentials may read and write",
        };
        if !self.exists("nix-cache-info").await.map_err(failed)? {
            s3_client::put_bytes(&self.client, &self.store, "nix-cache-info", Bytes::from(nix_cache_info.to_owned()))
                .await
                .map_err(failed)?;
            tracing::info!(target: "imageless_hub::s3", "put nix-cache-info into {}", self.url());
        }
        Ok(())
    }

    /// A whole object (200), for the disk tier; an error for anything else.
    pub async fn get_whole(&self, key: &str) -> Result<hyper::Response<hyper::body::Incoming>, S3RequestError> {
        let response = s3_client::get(&self.client, &self.store, key, &[]).await?;
        if response.status() != StatusCode::OK {
            return Err(s3_client::answer_error("GET", self.object_name(key), response).await);
        }
        Ok(response)
    }

    /// Whether `key` is in the bucket.
    pub async fn exists(&self, key: &str) -> Result<bool, S3RequestError> {
        let range = [(header::RANGE, HeaderValue::from_static("bytes=0-0"))];
        let response = s3_client::get(&self.client, &self.store, key, &range).await?;
        match response.status() {
            // 416: an empty object has no byte 0.
            StatusCode::OK | StatusCode::PARTIAL_CONTENT | StatusCode::RANGE_NOT_SATISFIABLE => Ok(true),
            StatusCode::NOT_FOUND => self.missing_or_error(key, response).await.map(|()| false),
            _ => Err(s3_client::answer_error("GET", self.object_name(key), response).await),
        }
    }

    /// Puts the file at `path` as `key`.
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<(), S3RequestError> {
        s3_client::put_file(&self.client, &self.store, key, path).await
    }

    /// The answer to a GET or HEAD of `key` (None: no such object), streamed from the bucket.
    pub async fn serve(
        &self,
        method: &Method,
        headers: &HeaderMap,
        key: &str,
        content_type: &'static str,
    ) -> Result<Option<Response>, S3RequestError> {
        let mut passed: Vec<_> =
            PASSED_TO_S3.iter().filter_map(|name| headers.get(name).map(|v| (name.clone(), v.clone()))).collect();
        // A HEAD without a range asks for the first byte only; the size is the range's total.
        let probe = *method == Method::HEAD && !headers.contains_key(header::RANGE);
        if probe {
            passed.push((header::RANGE, HeaderValue::from_static("bytes=0-0")));
        }
        let answer = s3_client::get(&self.client, &self.store, key, &passed).await?;
        let status = answer.status();
        if status == StatusCode::NOT_FOUND {
            return self.missing_or_error(key, answer).await.map(|()| None);
        }
        let served = matches!(
            status,
            StatusCode::OK
                | StatusCode::PARTIAL_CONTENT
                | StatusCode::NOT_MODIFIED
                | StatusCode::PRECONDITION_FAILED
                | StatusCode::RANGE_NOT_SATISFIABLE
        );
        if !served {
            return Err(s3_client::answer_error("GET", self.object_name(key), answer).await);
        }
        let mut response = Response::new(Body::empty());
        *response.status_mut() = status;
        let out = response.headers_mut();
        for name in PASSED_BACK {
            if let Some(v) = answer.headers().get(&name) {
                out.insert(name, v.clone());
            }
        }
        out.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if probe {
            let total = match status {
                StatusCode::PARTIAL_CONTENT => range_total(answer.headers().get(header::CONTENT_RANGE)),
                StatusCode::RANGE_NOT_SATISFIABLE => Some(0),
                _ => None,
            };
            if let Some(total) = total {
                *response.status_mut() = StatusCode::OK;
                let out = response.headers_mut();
                out.remove(header::CONTENT_RANGE);
                out.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
            }
            return Ok(Some(response));
        }
        if *method == Method::GET {
            *response.body_mut() = Body::new(answer.into_body());
        }
        Ok(Some(response))
    }

    /// Ok for a missing object (NoSuchKey); an error naming the code for anything else that
    /// answers 404 (the bucket is gone).
    async fn missing_or_error(
        &self,
        key: &str,
        response: hyper::Response<hyper::body::Incoming>,
    ) -> Result<(), S3RequestError> {
        match s3_client::error_code(response).await {
            Some((code, message)) if !imageless_s3::error_body::is_missing_object(&code) => {
                Err(S3RequestError::Answer {
                    method: "GET",
                    object: self.object_name(key),
                    status: 404,
                    detail: format!("{code}: {message}"),
                })
            }
            _ => Ok(()),
        }
    }
}

/// The total of `Content-Range: bytes 0-0/TOTAL`.
fn range_total(value: Option<&HeaderValue>) -> Option<u64> {
    value?.to_str().ok()?.rsplit_once('/')?.1.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_of_content_ranges() {
        assert_eq!(range_total(Some(&HeaderValue::from_static("bytes 0-0/1234"))), Some(1234));
        assert_eq!(range_total(Some(&HeaderValue::from_static("bytes */0"))), Some(0));
        assert_eq!(range_total(Some(&HeaderValue::from_static("bytes 0-0/*"))), None);
        assert_eq!(range_total(None), None);
    }

    #[test]
    fn a_store_without_credentials_or_with_a_bad_url_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        std::fs::write(&creds, "[default]\naws_access_key_id = GK1\naws_secret_access_key = sekrit\n").unwrap();
        let e = S3Cache::new("s3://cache?endpoint=127.0.0.1:9&scheme=ftp", Some(&creds)).unwrap_err().to_string();
        assert!(e.starts_with("cache store ") && e.contains("scheme") && e.contains("accepted"), "{e}");
        let e = S3Cache::new("s3://cache?profile=ci&endpoint=127.0.0.1:9&scheme=http", Some(&creds))
            .unwrap_err()
            .to_string();
        assert!(e.contains("profile [ci]") && !e.contains("sekrit"), "{e}");
        let ok = S3Cache::new("s3://cache?endpoint=127.0.0.1:9&scheme=http&region=garage", Some(&creds)).unwrap();
        assert_eq!(ok.object_name("nar/a.nar"), "s3://cache/nar/a.nar");
        assert!(!format!("{ok:?}").contains("sekrit"));
    }
}
