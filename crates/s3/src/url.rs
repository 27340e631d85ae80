//! The `s3://` store URL: `s3://BUCKET?region=…&endpoint=…&scheme=…&profile=…&addressing-style=…`,
//! Nix's parameters for S3 binary caches (its manual, "S3 Binary Cache Store").
use std::fmt;

/// How object URLs are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressingStyle {
    /// Path style with a custom `endpoint` (MinIO, Garage, Ceph: no per-bucket DNS), virtual
    /// hosts on AWS.
    Auto,
    /// `https://endpoint/bucket/key`.
    Path,
    /// `https://bucket.endpoint/key`.
    Virtual,
}

/// A parsed `s3://` store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    /// The URL as configured (how errors and logs name the store).
    pub original: String,
    pub bucket: String,
    pub region: String,
    /// `host[:port]` or a full `http(s)://…` URL; None = AWS (`s3.<region>.amazonaws.com`).
    pub endpoint: Option<String>,
    /// `https` (default) or `http`, for an endpoint given without a scheme.
    pub scheme: String,
    /// The profile of the credentials file to use; None = `AWS_PROFILE`, else `default`.
    pub profile: Option<String>,
    pub addressing_style: AddressingStyle,
}

/// What is wrong with an `s3://` URL: the part, its value and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url}: {part} {value:?} is not valid; accepted: {accepted}")]
pub struct S3UrlError {
    pub url: String,
    pub part: &'static str,
    pub value: String,
    pub accepted: &'static str,
}

/// The parameters this client understands (Nix's S3 store parameters for reading).
pub const PARAMETERS: &str = "region, endpoint, scheme, profile, addressing-style";

impl S3Url {
    pub fn parse(text: &str) -> Result<S3Url, S3UrlError> {
        let err = |part: &'static str, value: &str, accepted: &'static str| S3UrlError {
            url: text.to_string(),
            part,
            value: value.to_string(),
            accepted,
        };
        let rest = text.strip_prefix("s3://").ok_or_else(|| err("scheme", text, "s3://BUCKET[?PARAMS]"))?;
        let (bucket, query) = rest.split_once('?').unwrap_or((rest, ""));
        let bucket = bucket.trim_end_matches('/');
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !bucket_ok {
            return Err(err("bucket", bucket, "3–63 characters of a-z, 0-9, '-' and '.' (an S3 bucket name)"));
        }
        let mut url = S3Url {
            original: text.to_string(),
            bucket: bucket.to_string(),
            region: "us-east-1".into(),
            endpoint: None,
            scheme: "https".into(),
            profile: None,
            addressing_style: AddressingStyle::Auto,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value);
            match key {
                "region" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
                    url.region = value
                }
                "region" => return Err(err("region", &value, "an S3 region name such as us-east-1 or garage")),
                "endpoint" if !value.is_empty() && !value.contains(['@', ' ', '?', '#']) => url.endpoint = Some(value),
                "endpoint" => {
                    return Err(err("endpoint", &value, "HOST[:PORT] or http(s)://HOST[:PORT][/PATH], no credentials"))
                }
                "scheme" if value == "http" || value == "https" => url.scheme = value,
                "scheme" => return Err(err("scheme", &value, "http or https")),
                "profile" if !value.is_empty() => url.profile = Some(value),
                "profile" => return Err(err("profile", &value, "a profile name of the credentials file")),
                "addressing-style" => {
                    url.addressing_style = match value.as_str() {
                        "auto" => AddressingStyle::Auto,
                        "path" => AddressingStyle::Path,
                        "virtual" => AddressingStyle::Virtual,
                        _ => return Err(err("addressing-style", &value, "auto, path or virtual")),
                    }
                }
                other => return Err(err("parameter", other, PARAMETERS)),
            }
        }
        url.endpoint_url()?;
        Ok(url)
    }

    /// The endpoint as a base URL (`scheme://host[:port][/path]`).
    pub fn endpoint_url(&self) -> Result<url::Url, S3UrlError> {
        let text = match &self.endpoint {
            Some(e) if e.contains("://") => e.clone(),
            Some(e) => format!("{}://{e}", self.scheme),
            None => format!("https://s3.{}.amazonaws.com", self.region),
        };
        let parsed = url::Url::parse(&text).map_err(|_| S3UrlError {
            url: self.original.clone(),
            part: "endpoint",
            value: text.clone(),
            accepted: "HOST[:PORT] or http(s)://HOST[:PORT][/PATH]",
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(S3UrlError {
                url: self.original.clone(),
                part: "endpoint",
                value: text,
                accepted: "HOST[:PORT] or http(s)://HOST[:PORT][/PATH]",
            });
        }
        Ok(parsed)
    }

    /// Path style unless virtual hosts are asked for, or the store is on AWS with `auto`.
    pub fn path_style(&self) -> bool {
        match self.addressing_style {
            AddressingStyle::Path => true,
            AddressingStyle::Virtual => false,
            AddressingStyle::Auto => self.endpoint.is_some() || self.bucket.contains('.'),
        }
    }

    /// `endpoint … bucket …`, for errors.
    pub fn describe(&self) -> String {
        let endpoint = self.endpoint_url().map(|u| u.to_string()).unwrap_or_default();
        format!("endpoint {} bucket {}", endpoint.trim_end_matches('/'), self.bucket)
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix_parameters() {
        let u = S3Url::parse("s3://nix-cache?region=garage&endpoint=127.0.0.1:3900&scheme=http").unwrap();
        assert_eq!((u.bucket.as_str(), u.region.as_str()), ("nix-cache", "garage"));
        assert_eq!(u.endpoint_url().unwrap().as_str(), "http://127.0.0.1:3900/");
        assert!(u.path_style());
        assert_eq!(u.describe(), "endpoint http://127.0.0.1:3900 bucket nix-cache");
        let aws = S3Url::parse("s3://my-cache").unwrap();
        assert_eq!(aws.endpoint_url().unwrap().as_str(), "https://s3.us-east-1.amazonaws.com/");
        assert!(!aws.path_style());
        let v =
            S3Url::parse("s3://my-cache?endpoint=https%3A%2F%2Fminio.example%3A9000&addressing-style=virtual").unwrap();
        assert_eq!(v.endpoint_url().unwrap().as_str(), "https://minio.example:9000/");
        assert!(!v.path_style());
        assert_eq!(S3Url::parse("s3://b-1?profile=ci").unwrap().profile.as_deref(), Some("ci"));
    }

    #[test]
    fn bad_values_are_named() {
        let e = S3Url::parse("s3://nix-cache?secret-key=x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "s3://nix-cache?secret-key=x: parameter \"secret-key\" is not valid; accepted: region, endpoint, scheme, profile, addressing-style"
        );
        let e = S3Url::parse("s3://Bad_Bucket").unwrap_err();
        assert_eq!(e.part, "bucket");
        let e = S3Url::parse("s3://nix-cache?scheme=ftp").unwrap_err();
        assert_eq!((e.part, e.value.as_str()), ("scheme", "ftp"));
        let e = S3Url::parse("s3://nix-cache?addressing-style=dns").unwrap_err();
        assert_eq!(e.part, "addressing-style");
        let e = S3Url::parse("s3://nix-cache?endpoint=user:pw@host").unwrap_err();
        assert_eq!(e.part, "endpoint");
    }
}
