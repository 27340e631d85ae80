//! `GET /api/v1/environments/<owner>/<name>/sbom[?generation=N][&format=spdx|cyclonedx][&system=S]`:
//! the SBOM of an environment generation, from its lock (floxmeta) and the narinfos of the
//! hub's own cache and its catalogs' caches (NarHash, NarSize, References), built by the same code as the node's
//! (`imageless_core::sbom`), so a pipeline can read what a pod will run before deploying it.
//!
//! The route (auth, visibility) is in `routes`; this module reads and builds. Answers: 200 with
//! the document; 400 for a query value it does not accept; 404 for an unknown environment or
//! generation; 422 for a lock the node could not use (unparseable, not locked for the system);
//! 500 when the cache lacks a narinfo of the closure.
use std::path::{Path, PathBuf};

use imageless_core::generations::GenerationsMetadata;
use imageless_core::lockfile::Lockfile;
use imageless_core::sbom::{PathRecord, Sbom, SbomError, SbomFormat, Subject};
use imageless_core::store_path::StorePath;
use imageless_core::system::System;

use crate::config::HubPaths;
use crate::process::{git, run, stdout_string};

/// The path's prefix; the rest is `<owner>/<name>/sbom`.
pub const PREFIX: &str = "/api/v1/environments/";

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SbomQuery {
    /// None: the live generation.
    pub generation: Option<u32>,
    pub format: SbomFormat,
    pub system: System,
}

/// Why no SBOM is answered; each carries the text the caller sees (never a token or host path).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SbomRequestError {
    #[error("query parameter {name}={value:?} is not valid; accepted: {accepted}")]
    BadQuery { name: String, value: String, accepted: &'static str },
    /// The value is not repeated: an unknown parameter may be anything (a misplaced token).
    #[error("query parameter {name:?} is not known; accepted: generation, format, system")]
    UnknownParameter { name: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Internal(String),
}

impl SbomRequestError {
    pub fn status(&self) -> u16 {
        match self {
            SbomRequestError::BadQuery { .. } | SbomRequestError::UnknownParameter { .. } => 400,
            SbomRequestError::NotFound(_) => 404,
            SbomRequestError::Unprocessable(_) => 422,
            SbomRequestError::Internal(_) => 500,
        }
    }
}

/// `<owner>/<name>/sbom` (after [`PREFIX`]) → (owner, name), validated as the node validates
/// `flox.dev/environment`; None for anything else.
pub fn parse_path(rest: &str) -> Option<(String, String)> {
    let mut parts = rest.split('/');
    let (owner, name, leaf) = (parts.next()?, parts.next()?, parts.next()?);
    if leaf != "sbom" || parts.next().is_some() {
        return None;
    }
    crate::names::validate_owner(owner).ok()?;
    crate::names::validate_env_name(name).ok()?;
    Some((owner.to_owned(), name.to_owned()))
}

/// Reads `generation`, `format` (default spdx) and `system` (default the hub's own) from a
/// query string. Unknown parameters are refused rather than ignored.
pub fn parse_query(query: &str) -> Result<SbomQuery, SbomRequestError> {
    let mut q =
        SbomQuery { generation: None, format: SbomFormat::Spdx, system: System::host().unwrap_or(System::X86_64Linux) };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = |accepted| SbomRequestError::BadQuery { name: name.to_owned(), value: value.to_owned(), accepted };
        match name {
            "generation" => {
                let n = value.parse::<u32>().ok().filter(|n| *n >= 1 && value.bytes().all(|b| b.is_ascii_digit()));
                q.generation = Some(n.ok_or_else(|| bad("a generation number N >= 1"))?);
            }
            "format" => q.format = value.parse().map_err(|_| bad("spdx or cyclonedx"))?,
            "system" => {
                q.system =
                    value.parse().map_err(|_| bad("x86_64-linux, aarch64-linux, x86_64-darwin or aarch64-darwin"))?
            }
            _ => return Err(SbomRequestError::UnknownParameter { name: name.chars().take(64).collect() }),
        }
    }
    Ok(q)
}

fn read_blob(repo: &Path, commit: &str, path: &str) -> Option<Vec<u8>> {
    run(git(repo).args(["cat-file", "blob"]).arg(format!("{commit}:{path}")), None).ok()
}

/// The SBOM of `owner/name` (generation `query.generation` or the live one) for `query.system`.
/// Blocking (git, files): run it off the async workers.
pub fn environment_sbom(
    paths: &HubPaths,
    owner: &str,
    name: &str,
    query: &SbomQuery,
) -> Result<Sbom, SbomRequestError> {
    let env = format!("{owner}/{name}");
    let repo = paths.floxmeta(owner);
    let not_found = || SbomRequestError::NotFound(format!("environment {env} not found"));
    let head = run(git(&repo).args(["for-each-ref", "--format=%(objectname)"]).arg(format!("refs/heads/{name}")), None)
        .map(stdout_string)
        .map_err(|e| SbomRequestError::Internal(format!("environment {env}: {e}")))?;
    if head.is_empty() {
        return Err(not_found());
    }
    let metadata = read_blob(&repo, &head, "metadata.json").ok_or_else(not_found)?;
    let metadata = GenerationsMetadata::parse(&metadata)
        .map_err(|e| SbomRequestError::Unprocessable(format!("environment {env}: {e}")))?;
    let generation = metadata.resolve(query.generation, &env).map_err(|e| SbomRequestError::NotFound(e.to_string()))?;
    let lock_path = format!("{generation}/env/manifest.lock");
    let lock = read_blob(&repo, &head, &lock_path).ok_or_else(|| {
        SbomRequestError::NotFound(format!("environment {env} generation {generation} has no {lock_path}"))
    })?;
    let lock = Lockfile::parse(&lock).map_err(|e| {
        SbomRequestError::Unprocessable(format!("{env} generation {generation}: manifest.lock is not valid: {e}"))
    })?;
    let subject = Subject {
        environment: env.clone(),
        generation,
        created: metadata.created_at(generation).unwrap_or(0),
        system: query.system,
    };
    let unprocessable = |e: SbomError| SbomRequestError::Unprocessable(e.to_string());
    Sbom::check_system(&lock, &subject).map_err(unprocessable)?;
    // Custom-catalog packages' paths are in their catalog's cache, not the public one.
    let mut caches = vec![paths.cache()];
    let catalogs = crate::catalog::packages::catalogs(paths).map_err(|e| SbomRequestError::Internal(e.to_string()))?;
    caches.extend(catalogs.iter().map(|c| paths.catalog_cache(c)));
    Sbom::gather(&lock, subject, |p| narinfo_record(&caches, p)).map_err(|e| match e {
        SbomError::MissingRecord { .. } => SbomRequestError::Internal(e.to_string()),
        other => unprocessable(other),
    })
}

/// A path's record from `<cache>/<hash>.narinfo` of the first of `caches` that has it.
fn narinfo_record(caches: &[PathBuf], p: &StorePath) -> Result<PathRecord, SbomError> {
    let name = format!("{}.narinfo", p.hash_part());
    let file = caches.iter().map(|c| c.join(&name)).find(|f| f.exists()).unwrap_or_else(|| caches[0].join(&name));
    let missing = |reason: String| SbomError::MissingRecord { path: p.to_string(), reason };
    let text = std::fs::read_to_string(&file).map_err(|e| {
        missing(match e.kind() {
            std::io::ErrorKind::NotFound => "the hub's cache has no narinfo for it".to_owned(),
            _ => format!("its narinfo in the hub's cache cannot be read: {e}"),
        })
    })?;
    PathRecord::from_narinfo(&text, p).map_err(|e| missing(format!("its narinfo in the hub's cache is not valid: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(parse_path("flox/large/sbom"), Some(("flox".into(), "large".into())));
        for bad in ["flox/large", "flox/large/sbom/x", "flox/../sbom", "..//sbom", "flox/large/lock", "/x/sbom"] {
            assert_eq!(parse_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn queries() {
        let q = parse_query("generation=2&format=cyclonedx&system=aarch64-linux").unwrap();
        assert_eq!((q.generation, q.format, q.system), (Some(2), SbomFormat::CycloneDx, System::Aarch64Linux));
        let q = parse_query("").unwrap();
        assert_eq!((q.generation, q.format), (None, SbomFormat::Spdx));
        let err = |q: &str| parse_query(q).unwrap_err().to_string();
        assert_eq!(
            err("generation=0"),
            "query parameter generation=\"0\" is not valid; accepted: a generation number N >= 1"
        );
        assert_eq!(
            err("generation=+1"),
            "query parameter generation=\"+1\" is not valid; accepted: a generation number N >= 1"
        );
        assert_eq!(err("format=xml"), "query parameter format=\"xml\" is not valid; accepted: spdx or cyclonedx");
        assert!(err("system=riscv64-linux").contains("accepted: x86_64-linux, aarch64-linux"));
        assert_eq!(err("token=secret"), "query parameter \"token\" is not known; accepted: generation, format, system");
        assert_eq!(parse_query("format=xml").unwrap_err().status(), 400);
    }
}
