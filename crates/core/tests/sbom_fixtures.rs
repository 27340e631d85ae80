//! The SBOMs of every real fixture lockfile (../shared/fixtures; catalog, flake and store-path
//! entries, multi-system locks, licenses such as `[ NCSA, [ Apache-2.0 LLVM-exception ] ]`,
//! `Unfree`, `Vim`) for every system each is locked for, over a stand-in closure (each selected
//! path alone, its NAR hash the SHA-256 of its name), validated by the reference validators
//! (scripts/validate-sbom.py: spdx-tools, cyclonedx-python-lib; installed by
//! scripts/setup-machine.sh). The world's real closures are validated in crates/hub/tests/sbom.rs.
use std::path::PathBuf;
use std::process::Command;

use imageless_core::lockfile::Lockfile;
use imageless_core::sbom::{PathRecord, Sbom, SbomFormat, Subject};
use imageless_core::system::System;
use sha2::{Digest, Sha256};

fn fixtures() -> PathBuf {
    std::env::var_os("IMAGELESS_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures")))
}

#[test]
fn every_fixture_lock_gives_valid_sboms() {
    let dir = tempfile::tempdir().unwrap();
    let mut files: [Vec<PathBuf>; 2] = [Vec::new(), Vec::new()];
    let mut with_license = 0;
    let mut entries: Vec<_> = std::fs::read_dir(fixtures().join("flox-lockfiles")).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(bytes) = std::fs::read(entry.path().join("manifest.lock")) else { continue };
        let Ok(lock) = Lockfile::parse(&bytes) else { continue }; // refusals: tests/fixtures.rs
        for system in System::ALL {
            let subject =
                Subject { environment: format!("fixtures/{name}"), generation: 1, created: 1_700_000_000, system };
            if Sbom::check_system(&lock, &subject).is_err() || lock.select(system).is_err() {
                continue;
            }
            let sbom = Sbom::gather(&lock, subject, |p| {
                Ok(PathRecord {
                    path: p.clone(),
                    nar_hash: Sha256::digest(p.as_str().as_bytes()).into(),
                    nar_size: 1,
                    references: vec![],
                })
            })
            .unwrap_or_else(|e| panic!("{name} {system}: {e}"));
            with_license += sbom.packages.iter().filter(|p| p.license.is_some()).count();
            for (i, format) in SbomFormat::ALL.into_iter().enumerate() {
                let file = dir.path().join(format!("{name}-{system}.{}", format.file_name()));
                std::fs::write(&file, sbom.to_json(format)).unwrap();
                files[i].push(file);
            }
        }
    }
    assert!(files[0].len() >= 30 && with_license >= 50, "{} documents, {with_license} licenses", files[0].len());
    let validator = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/validate-sbom.py"));
    for (i, format) in ["spdx", "cyclonedx"].into_iter().enumerate() {
        let out = Command::new("python3").arg(&validator).arg(format).args(&files[i]).output().unwrap();
        assert!(
            out.status.success(),
            "{format} validator refused:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
