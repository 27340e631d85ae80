//! A substituter's `nix-cache-info`: the file that says a URL is a Nix binary cache, and for
//! which store directory. A fetch checks it before downloading anything (a cache built for
//! another StoreDir holds paths that break under /nix/store); `imageless doctor` reports it
//! with the same code, so what doctor accepts the node accepts.
use std::time::Duration;

use imageless_core::store_path::STORE_DIR;
use tokio::task::JoinSet;

use super::error::FetchError;
use super::http::Http;

/// Ok when `substituter` serves a `nix-cache-info` whose StoreDir is /nix/store (a file
/// without the line means /nix/store, as for Nix).
pub async fn check(http: &Http, substituter: &str) -> Result<(), FetchError> {
    let text = http.get_text(substituter, "nix-cache-info").await?.ok_or_else(|| FetchError::Http {
        substituter: substituter.to_string(),
        url: format!("{}/nix-cache-info", substituter.trim_end_matches('/')),
        status: 404,
    })?;
    let dir = text.lines().find_map(|l| l.strip_prefix("StoreDir: ")).unwrap_or(STORE_DIR).trim();
    if dir != STORE_DIR {
        return Err(FetchError::WrongStoreDir { substituter: substituter.to_string(), found: dir.to_string() });
    }
    Ok(())
}

/// Every substituter checked at once; the first failure (any order) is the error.
pub async fn check_all(http: &Http, substituters: &[String]) -> Result<(), FetchError> {
    let mut set = JoinSet::new();
    for sub in substituters {
        let (http, sub) = (http.clone(), sub.clone());
        set.spawn(async move { check(&http, &sub).await });
    }
    while let Some(r) = set.join_next().await {
        r.expect("nix-cache-info task panicked")?;
    }
    Ok(())
}

/// Each substituter's result in configured order, each bounded by `timeout`, from synchronous
/// code (doctor) on a runtime of its own.
pub fn check_each_blocking(substituters: &[String], timeout: Duration) -> Vec<Result<(), FetchError>> {
    let failed =
        |sub: &String, detail: String| FetchError::Network { substituter: sub.clone(), url: "-".into(), detail };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return substituters.iter().map(|s| Err(failed(s, format!("starting a runtime: {e}")))).collect(),
    };
    let http = match Http::new() {
        Ok(http) => http,
        Err(e) => return substituters.iter().map(|s| Err(failed(s, e.to_string()))).collect(),
    };
    runtime.block_on(async {
        let mut set = JoinSet::new();
        for (i, sub) in substituters.iter().cloned().enumerate() {
            let http = http.clone();
            set.spawn(async move {
                let result = match tokio::time::timeout(timeout, check(&http, &sub)).await {
                    Ok(result) => result,
                    Err(_) => Err(FetchError::Network {
                        url: format!("{}/nix-cache-info", sub.trim_end_matches('/')),
                        substituter: sub,
                        detail: format!("no answer within {:.1} s", timeout.as_secs_f32()),
                    }),
                };
                (i, result)
            });
        }
        let mut results: Vec<Option<Result<(), FetchError>>> = substituters.iter().map(|_| None).collect();
        while let Some(joined) = set.join_next().await {
            let (i, result) = joined.expect("nix-cache-info task panicked");
            results[i] = Some(result);
        }
        results.into_iter().map(|r| r.expect("every check joined")).collect()
    })
}
