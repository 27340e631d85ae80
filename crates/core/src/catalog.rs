//! The catalog service's store-location API, as Flox's catalog defines it (openapi
//! `StoreInfoRequest` / `StoreInfoResponse` / `StoreInfo`): `POST /api/v1/catalog/store` with the
//! output paths of custom-catalog packages, answered per path with the stores that hold it.
//! Shared by the node (the client) and the hub (which answers it for packages published to it).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The endpoint, below the catalog's base URL.
pub const STORE_INFO_PATH: &str = "/api/v1/catalog/store";

/// Most paths one request may carry.
pub const MAX_OUTPATHS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreInfoRequest {
    pub outpaths: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreInfoResponse {
    /// Output path → where it can be downloaded (empty: nowhere this caller may read).
    pub items: BTreeMap<String, Vec<StoreInfo>>,
}

/// One store holding a path.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StoreInfo {
    /// A binary cache URL: `https://…` or `s3://bucket?…`.
    #[serde(default)]
    pub url: Option<String>,
    /// Credentials for that store only (publisher stores): `{"aws-s3": {"envs": {"AWS_ACCESS_KEY_ID": …}}}`.
    #[serde(default)]
    pub auth: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub catalog: Option<String>,
    #[serde(default)]
    pub package: Option<String>,
    /// Keys the catalog says the store signs with (not trusted by the node unless its operator
    /// opts in).
    #[serde(default)]
    pub public_keys: Option<Vec<String>>,
}

impl std::fmt::Debug for StoreInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `auth` holds secrets: only whether it is there.
        f.debug_struct("StoreInfo")
            .field("url", &self.url)
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .field("catalog", &self.catalog)
            .field("package", &self.package)
            .field("public_keys", &self.public_keys)
            .finish()
    }
}

/// AWS credentials a publisher store's `auth` carries.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsEnvs {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for AwsEnvs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsEnvs").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

impl StoreInfo {
    /// The `aws-s3` credentials of `auth`, if it has them; Err names what is missing (never a
    /// value).
    pub fn aws_envs(&self) -> Result<Option<AwsEnvs>, String> {
        let Some(auth) = &self.auth else { return Ok(None) };
        let envs = auth
            .get("aws-s3")
            .and_then(|a| a.get("envs"))
            .and_then(|e| e.as_object())
            .ok_or("auth has no aws-s3.envs object (only aws-s3 auth is supported)")?;
        let get = |k: &str| envs.get(k).and_then(|v| v.as_str()).map(str::to_string);
        match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => Ok(Some(AwsEnvs {
                access_key_id: id,
                secret_access_key: secret,
                session_token: get("AWS_SESSION_TOKEN"),
            })),
            _ => Err("auth.aws-s3.envs lacks AWS_ACCESS_KEY_ID or AWS_SECRET_ACCESS_KEY".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flox_shapes_round_trip_and_secrets_stay_out_of_debug() {
        let text = r#"{"items":{"/nix/store/aaaa-x":[{"url":"s3://b?endpoint=e","auth":{"aws-s3":{"envs":{"AWS_ACCESS_KEY_ID":"AKI","AWS_SECRET_ACCESS_KEY":"sekrit"}}},"catalog":"acme","package":"x","public_keys":["acme-1:k"]}],"/nix/store/bbbb-y":[]}}"#;
        let r: StoreInfoResponse = serde_json::from_str(text).unwrap();
        let info = &r.items["/nix/store/aaaa-x"][0];
        let envs = info.aws_envs().unwrap().unwrap();
        assert_eq!((envs.access_key_id.as_str(), envs.secret_access_key.as_str()), ("AKI", "sekrit"));
        assert!(!format!("{info:?}").contains("sekrit"));
        assert!(r.items["/nix/store/bbbb-y"].is_empty());
        let bad = StoreInfo { auth: serde_json::from_str(r#"{"gcs":{}}"#).ok(), ..StoreInfo::default() };
        assert!(bad.aws_envs().unwrap_err().contains("aws-s3"));
    }
}
