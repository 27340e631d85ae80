//! An `s3://` store the node can read from (and the harness and hub write to): presigned
//! requests for its objects, names for errors that show the bucket and key, never a signature.
use std::time::Duration;

use rusty_s3::{Bucket, S3Action, UrlStyle};

use crate::credentials::Credentials;
use crate::url::{S3Url, S3UrlError};

/// How long a presigned request stays valid: it is sent at once; S3 checks the expiry when a
/// request starts, so a long download is not cut.
const PRESIGN_FOR: Duration = Duration::from_secs(300);

#[derive(Clone)]
pub struct S3Store {
    pub url: S3Url,
    bucket: Bucket,
    credentials: Option<rusty_s3::Credentials>,
    /// The access key id only (for messages).
    key_id: Option<String>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store").field("url", &self.url.original).field("key_id", &self.key_id).finish()
    }
}

impl S3Store {
    /// `credentials` None: anonymous requests (a public bucket).
    pub fn new(url: S3Url, credentials: Option<&Credentials>) -> Result<S3Store, S3UrlError> {
        let endpoint = url.endpoint_url()?;
        let style = if url.path_style() { UrlStyle::Path } else { UrlStyle::VirtualHost };
        let bucket =
            Bucket::new(endpoint.clone(), style, url.bucket.clone(), url.region.clone()).map_err(|e| S3UrlError {
                url: url.original.clone(),
                part: "endpoint",
                value: format!("{endpoint} ({e})"),
                accepted: "an http(s) endpoint with a host name for addressing-style=virtual",
            })?;
        let credentials = credentials.map(|c| match &c.session_token {
            Some(t) => rusty_s3::Credentials::new_with_token(&c.access_key_id, &c.secret_access_key, t),
            None => rusty_s3::Credentials::new(&c.access_key_id, &c.secret_access_key),
        });
        Ok(S3Store { key_id: credentials.as_ref().map(|c| c.key().to_string()), url, bucket, credentials })
    }

    /// A presigned GET of `key`.
    pub fn presign_get(&self, key: &str) -> url::Url {
        self.bucket.get_object(self.credentials.as_ref(), key).sign(PRESIGN_FOR)
    }

    /// A presigned PUT of `key`.
    pub fn presign_put(&self, key: &str) -> url::Url {
        self.bucket.put_object(self.credentials.as_ref(), key).sign(PRESIGN_FOR)
    }

    /// `s3://bucket/key`: how messages name an object (a presigned URL carries a signature).
    pub fn object_name(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.url.bucket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presigned_urls_follow_the_addressing_style() {
        let creds =
            Credentials { access_key_id: "GK1".into(), secret_access_key: "sekrit".into(), session_token: None };
        let path = S3Store::new(
            S3Url::parse("s3://nix-cache?endpoint=127.0.0.1:3900&scheme=http&region=garage").unwrap(),
            Some(&creds),
        )
        .unwrap();
        let u = path.presign_get("nix-cache-info");
        assert!(u.as_str().starts_with("http://127.0.0.1:3900/nix-cache/nix-cache-info?"), "{u}");
        assert!(u.query().unwrap().contains("X-Amz-Signature="), "{u}");
        assert!(!u.as_str().contains("sekrit"));
        let aws = S3Store::new(S3Url::parse("s3://my-cache?region=eu-west-1").unwrap(), None).unwrap();
        let u = aws.presign_get("x.narinfo");
        assert!(u.as_str().starts_with("https://my-cache.s3.eu-west-1.amazonaws.com/x.narinfo"), "{u}");
        assert_eq!(path.object_name("nar/a.nar.xz"), "s3://nix-cache/nar/a.nar.xz");
        assert!(!format!("{path:?}").contains("sekrit"));
    }
}
