//! The SBOMs of an environment on the node: gathered from its lock and the node store's
//! verified narinfo records (NAR hash, NAR size, references: what the fetch checked), written
//! into each rendered tree (so a container reads them under `/run/flox/env`, which it already
//! mounts) and printed by `imageless sbom`.
use std::path::Path;

use imageless_core::activation::Mode;
use imageless_core::env_ref::EnvRef;
use imageless_core::lockfile::Lockfile;
use imageless_core::sbom::{PathRecord, Sbom, SbomError, SbomFormat, Subject};
use imageless_core::token::Token;

use crate::cache::{LockProblem, NodeCache, NodeError};
use crate::fetch::store::Records;
use crate::fetch::Fetcher;
use crate::render::{self, RenderError};
use crate::store_read::StoreRead;

/// The SBOM of `lock` for `subject`, over the node store's records of the closure (every path
/// of it must be valid there: call after the closure was realized).
pub fn gather(lock: &Lockfile, subject: Subject, records: &Records<'_>) -> Result<Sbom, NodeError> {
    let sbom = Sbom::gather(lock, subject, |p| {
        let info =
            records.record(p).map_err(|e| SbomError::MissingRecord { path: p.to_string(), reason: e.to_string() })?;
        Ok(PathRecord {
            path: info.store_path,
            nar_hash: info.nar_hash.0,
            nar_size: info.nar_size,
            references: info.references,
        })
    });
    sbom.map_err(|e| NodeError::Sbom(Box::new(e)))
}

/// Both documents, serialized: the slow part of writing them (15–20 ms for the 1,045 paths of
/// `flox/xlarge`), which a pull does on a thread of its own while the tree renders.
pub fn documents(sbom: &Sbom) -> Vec<(SbomFormat, Vec<u8>)> {
    SbomFormat::ALL.iter().map(|&format| (format, sbom.to_json(format))).collect()
}

/// Writes `documents` into a rendered tree (`<tree>/sbom.spdx.json`, `<tree>/sbom.cdx.json`).
pub fn write_into(tree: &Path, documents: &[(SbomFormat, Vec<u8>)], store: &StoreRead) -> Result<(), RenderError> {
    for (format, json) in documents {
        render::write_generated(tree, format.file_name(), json, store)?;
    }
    Ok(())
}

impl NodeCache {
    /// The SBOM of `env` (`owner/name[:N]`) for this cache's system: resolves the generation
    /// (reading its lock and `metadata.json`), makes sure the closure of what the lock selects
    /// is in the node store (fetched and verified as a pull does; nothing is rendered, so an
    /// environment whose tree cannot be built still has its SBOM), and describes it for
    /// exactly the environment and generation asked for.
    pub fn sbom(&self, env: &EnvRef, token: Option<&Token>) -> Result<Sbom, NodeError> {
        // "Nothing rendered": the lock and the creation time are read even when warm.
        let resolved = self.resolver().resolve(env, Mode::Run, token, &|_| false)?;
        let name = env.full_name();
        let lock_bytes = resolved.lock.as_deref().expect("resolve reads the lock when nothing is rendered");
        let lock_err = |source: LockProblem| NodeError::Lockfile {
            env: name.clone(),
            generation: resolved.generation,
            source: Box::new(source),
        };
        let lockfile = Lockfile::parse(lock_bytes).map_err(|e| lock_err(e.into()))?;
        let subject = Subject {
            environment: name.clone(),
            generation: resolved.generation,
            created: resolved.created.unwrap_or(0),
            system: self.system(),
        };
        let sbom_err = |e: SbomError| NodeError::Sbom(Box::new(e));
        Sbom::check_system(&lockfile, &subject).map_err(sbom_err)?;
        let roots = Sbom::roots(&lockfile, &subject).map_err(sbom_err)?;
        // Shared with pulls, exclusive of gc: what is fetched stays until it is read.
        let _store = self.store_use()?;
        let fetcher = Fetcher::from_config(&self.config)?;
        fetcher.realize(&roots)?;
        gather(&lockfile, subject, &Records::new(&fetcher.store))
    }
}
