//! A substituter's `nix-cache-info`: the file that says a URL is a Nix binary cache, for which
//! store directory, and with which `Priority` (lower is preferred, as in Nix). A fetch asks
//! every substituter for it before using it (a cache built for another StoreDir holds paths
//! that break under /nix/store); `imageless doctor` reports it with the same code, so what
//! doctor accepts the node accepts.
use std::time::Duration;

use imageless_core::store_path::STORE_DIR;
use tokio::task::JoinSet;

use super::error::{FetchError, SourceError};
use super::http::{Deadlines, Http};

/// Nix's priority of a binary cache whose `nix-cache-info` has no `Priority:` line.
pub const DEFAULT_PRIORITY: u32 = 50;

/// What a substituter says of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheInfo {
    pub priority: u32,
}

/// Parses the text of a `nix-cache-info` (a file without StoreDir means /nix/store, one
/// without Priority means [`DEFAULT_PRIORITY`], as for Nix; a Priority that is not a number
/// is ignored, as Nix ignores it).
pub fn parse(text: &str) -> Result<CacheInfo, SourceError> {
    let field =
        |name: &str| text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':'))).map(str::trim);
    let dir = field("StoreDir").unwrap_or(STORE_DIR);
    if dir != STORE_DIR {
        return Err(SourceError::WrongStoreDir { found: dir.to_string() });
    }
    let priority = field("Priority").and_then(|p| p.parse().ok()).unwrap_or(DEFAULT_PRIORITY);
    Ok(CacheInfo { priority })
}

/// Asks `substituter` for its `nix-cache-info`.
pub async fn check(http: &Http, substituter: &str) -> Result<CacheInfo, SourceError> {
    let text = http
        .get_text(substituter, "nix-cache-info")
        .await?
        .ok_or_else(|| SourceError::NotFound { url: http.url(substituter, "nix-cache-info") })?;
    parse(&text)
}

/// Each substituter's result in configured order, each bounded by `timeout`, from synchronous
/// code (doctor) on a runtime of its own.
pub fn check_each_blocking(
    config: &crate::config::NodeConfig,
    timeout: Duration,
) -> Vec<Result<CacheInfo, FetchError>> {
    let substituters = &config.substituters;
    let failed = |sub: &String, detail: String| FetchError::Substituter {
        substituter: sub.clone(),
        source: SourceError::Network { url: format!("{}/nix-cache-info", sub.trim_end_matches('/')), detail },
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return substituters.iter().map(|s| Err(failed(s, format!("starting a runtime: {e}")))).collect(),
    };
    let deadlines = Deadlines { connect: timeout, stall: timeout };
    let http = match Http::new(deadlines) {
        Ok(http) => http,
        Err(e) => return substituters.iter().map(|s| Err(failed(s, e.to_string()))).collect(),
    };
    match super::s3_stores(config) {
        Ok(stores) => stores.into_iter().for_each(|(name, store)| http.add_s3(&name, store)),
        Err(e) => return substituters.iter().map(|s| Err(failed(s, e.to_string()))).collect(),
    }
    runtime.block_on(async {
        let mut set = JoinSet::new();
        for (i, sub) in substituters.iter().cloned().enumerate() {
            let http = http.clone();
            set.spawn(async move {
                let result = match tokio::time::timeout(timeout, check(&http, &sub)).await {
                    Ok(result) => result,
                    Err(_) => {
                        Err(SourceError::Stalled { url: http.url(&sub, "nix-cache-info"), secs: timeout.as_secs_f64() })
                    }
                };
                (i, result.map_err(|source| FetchError::Substituter { substituter: sub, source }))
            });
        }
        let mut results: Vec<Option<Result<CacheInfo, FetchError>>> = substituters.iter().map(|_| None).collect();
        while let Some(joined) = set.join_next().await {
            let (i, result) = joined.expect("nix-cache-info task panicked");
            results[i] = Some(result);
        }
        results.into_iter().map(|r| r.expect("every check joined")).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_and_store_dir() {
        assert_eq!(parse("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n").unwrap().priority, 40);
        assert_eq!(parse("StoreDir: /nix/store\n").unwrap().priority, DEFAULT_PRIORITY);
        assert_eq!(parse("").unwrap().priority, DEFAULT_PRIORITY);
        assert_eq!(parse("Priority: high\n").unwrap().priority, DEFAULT_PRIORITY);
        assert_eq!(parse("Priority:10").unwrap().priority, 10);
        let e = parse("StoreDir: /gnu/store\n").unwrap_err();
        assert_eq!(e.to_string(), "nix-cache-info says StoreDir /gnu/store, expected /nix/store");
    }
}
