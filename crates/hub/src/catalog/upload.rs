//! Uploading a staged binary cache to an `s3://` store with presigned PUTs (imageless-s3's
//! SigV4 signing, the hub's hyper client: [`crate::s3_client`]), in an order that never lets a reader see a narinfo
//! whose NAR is not there yet: `nix-cache-info` first, then every NAR, then the narinfos.
//!
//! Credentials: hub.json's `catalog_store_credentials` (an AWS shared-credentials file) with the
//! URL's `profile` (else `default`); without it, the environment's AWS chain. Errors name the
//! object (`s3://bucket/key`) and S3's error code, never a presigned URL or a key.
use std::path::{Path, PathBuf};

use imageless_s3::{Credentials, S3Store, S3Url};

use crate::error::HubServerError;

/// One object to put: its key in the bucket and the staged file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub key: String,
    pub file: PathBuf,
}

/// The uploads of a staged binary cache directory, in order: `nix-cache-info`, `nar/*`, then
/// `*.ls` listings and `*.narinfo` files (each group sorted). Other files (Nix's empty `log/`
/// and `realisations/`) are not uploaded.
pub fn plan(staging: &Path) -> Result<Vec<Upload>, HubServerError> {
    let names = |dir: &Path| -> Result<Vec<String>, HubServerError> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map_err(HubServerError::io(dir))?
            .filter_map(|e| {
                let e = e.ok()?;
                e.file_type().ok()?.is_file().then(|| e.file_name().into_string().ok()).flatten()
            })
            .collect();
        names.sort();
        Ok(names)
    };
    let top = names(staging)?;
    let mut out = Vec::new();
    if top.iter().any(|n| n == "nix-cache-info") {
        out.push(Upload { key: "nix-cache-info".into(), file: staging.join("nix-cache-info") });
    }
    let nar_dir = staging.join("nar");
    if nar_dir.is_dir() {
        out.extend(names(&nar_dir)?.into_iter().map(|n| Upload { key: format!("nar/{n}"), file: nar_dir.join(n) }));
    }
    for suffix in [".ls", ".narinfo"] {
        out.extend(
            top.iter().filter(|n| n.ends_with(suffix)).map(|n| Upload { key: n.clone(), file: staging.join(n) }),
        );
    }
    Ok(out)
}

/// Puts every upload of `plan` into `store_url`, one after the other, in order.
pub fn upload(
    catalog: &str,
    store_url: &str,
    credentials_file: Option<&Path>,
    plan: &[Upload],
) -> Result<(), HubServerError> {
    let fail = |message: String| HubServerError::Catalog { catalog: catalog.to_owned(), message };
    upload_to(store_url, credentials_file, plan, "catalog_store_credentials", &fail)
}

/// The files of `cache` (a binary-cache directory) that are not in `before`, in upload order.
pub fn plan_new(cache: &Path, before: &std::collections::BTreeSet<String>) -> Result<Vec<Upload>, HubServerError> {
    Ok(plan(cache)?.into_iter().filter(|u| !before.contains(&u.key)).collect())
}

/// Every file key of `cache` now (`nar/…`, `*.narinfo`, …).
pub fn keys(cache: &Path) -> Result<std::collections::BTreeSet<String>, HubServerError> {
    Ok(plan(cache)?.into_iter().map(|u| u.key).collect())
}

/// Uploads `plan` to `store_url` in its order (narinfos last, so a reader never sees a narinfo
/// whose NAR is not there yet); `credentials_key` names the hub.json key in the error when
/// there are no credentials.
pub fn upload_to(
    store_url: &str,
    credentials_file: Option<&Path>,
    plan: &[Upload],
    credentials_key: &str,
    fail: &dyn Fn(String) -> HubServerError,
) -> Result<(), HubServerError> {
    let url = S3Url::parse(store_url).map_err(|e| fail(e.to_string()))?;
    let credentials =
        Credentials::resolve(credentials_file, url.profile.as_deref()).map_err(|e| fail(e.to_string()))?;
    if credentials.is_none() {
        return Err(fail(format!(
            "no credentials to upload to {store_url}: set \"{credentials_key}\" in hub.json (an AWS shared-credentials file) or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        )));
    }
    let store = S3Store::new(url, credentials.as_ref()).map_err(|e| fail(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(HubServerError::io("<tokio runtime>"))?;
    runtime.block_on(async {
        let client = crate::s3_client::client()?;
        for u in plan {
            crate::s3_client::put_file(&client, &store, &u.key, &u.file).await.map_err(|e| fail(e.to_string()))?;
            tracing::debug!(object = %store.object_name(&u.key), "uploaded");
        }
        tracing::info!(objects = plan.len(), store = %store.url.original, "uploaded");
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narinfos_come_after_every_nar() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("nar")).unwrap();
        std::fs::create_dir_all(d.join("log")).unwrap();
        for f in ["nix-cache-info", "bbb.narinfo", "aaa.narinfo", "nar/zz.nar.zst", "nar/aa.nar.zst", "aaa.ls"] {
            std::fs::write(d.join(f), f).unwrap();
        }
        let keys: Vec<String> = plan(d).unwrap().into_iter().map(|u| u.key).collect();
        assert_eq!(
            keys,
            ["nix-cache-info", "nar/aa.nar.zst", "nar/zz.nar.zst", "aaa.ls", "aaa.narinfo", "bbb.narinfo"]
        );
        assert_eq!(plan(d).unwrap()[1].file, d.join("nar/aa.nar.zst"));
    }

    #[test]
    fn an_upload_without_credentials_is_refused_before_any_request() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        std::fs::write(&creds, "[other]\naws_access_key_id = A\naws_secret_access_key = S\n").unwrap();
        let err = upload("acme", "s3://bucket?endpoint=127.0.0.1:9&scheme=http&region=x", Some(&creds), &[])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("catalog acme: ") && err.contains("[default]"), "{err}");
        assert!(!err.contains("= S"), "{err}");
    }
}
