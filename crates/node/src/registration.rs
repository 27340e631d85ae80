//! The Nix registration of an environment's closure, for `flox.dev/nix-mutable` containers.
//!
//! A Nix inside a container trusts only what its database (`/nix/var/nix/db/db.sqlite`)
//! lists as valid; files in /nix/store alone are garbage to it. The node has no Nix, so it
//! writes that database itself from the verified narinfos of the closure (path, NarHash,
//! NarSize, References, Deriver, signatures), as `nix-store --load-db` would from a
//! registration, plus `schema` (the schema version Nix checks before opening it). The tables
//! are Nix's own (`src/libstore/schema.sql`, schema version 10, unchanged since Nix 2.0), so
//! any Nix from 2.0 on opens it, adds its own paths and can collect them again.
//!
//! Chosen over shipping only a `--load-db` text file: a Nix in the container then works with
//! no step of the user's (`nix-store -q --references`, `nix-env -i`, `nix profile install`
//! see the environment's paths as valid and substitute only what is missing). The text form
//! is written too (`/nix/var/nix/registration`), the format of nixpkgs' `closureInfo`.
//!
//! The database lives in the environment's closure view (`views/<key>/var/nix/db`), the lower
//! layer of the per-container overlay at /nix: a container's writes copy it up into its own
//! upper directory; the view itself is never written.
use std::path::Path;

use crate::fetch::narinfo::NarInfo;

/// Nix's `nixSchemaVersion`.
pub const SCHEMA_VERSION: &str = "10";

/// Nix's `schema.sql` (the tables a valid-path registration needs).
const SCHEMA: &str = "
create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer,
    sigs             text,
    ca               text
);
create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);
create index if not exists IndexReferrer on Refs(referrer);
create index if not exists IndexReference on Refs(reference);
create trigger if not exists DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;
create table if not exists DerivationOutputs (
    drv  integer not null,
    id   text not null,
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);
create index if not exists IndexDerivationOutputs on DerivationOutputs(path);
";

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("flox: writing the Nix registration {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("flox: writing the Nix database {path}: {source}")]
    Db { path: String, source: rusqlite::Error },
    #[error("flox: Nix registration: {path} references {reference}, which is not in the closure")]
    Dangling { path: String, reference: String },
}

/// `sha256:<base16>`, the form Nix keeps in `ValidPaths.hash` and in registrations.
fn hash_base16(info: &NarInfo) -> String {
    format!("sha256:{}", hex::encode(info.nar_hash.0))
}

/// The `nix-store --load-db` text of `infos` (each path, its hash, size, deriver, refs).
pub fn registration_text(infos: &[NarInfo]) -> String {
    let mut s = String::new();
    for info in infos {
        s.push_str(&format!("{}\n{}\n{}\n", info.store_path, hash_base16(info), info.nar_size));
        let deriver = info.deriver.as_deref().map(|d| format!("{}/{d}", imageless_core::store_path::STORE_DIR));
        s.push_str(&format!("{}\n{}\n", deriver.unwrap_or_default(), info.references.len()));
        for r in &info.references {
            s.push_str(&format!("{r}\n"));
        }
    }
    s
}

/// Writes `<nix_dir>/var/nix/db/{db.sqlite,schema}` and `<nix_dir>/var/nix/registration`
/// for `infos`, a closure (every reference among them).
pub fn write(nix_dir: &Path, infos: &[NarInfo], registered_at: i64) -> Result<(), RegistrationError> {
    let db_dir = nix_dir.join("var/nix/db");
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| RegistrationError::Io { path, source }
    };
    std::fs::create_dir_all(&db_dir).map_err(io(&db_dir))?;
    let db_path = db_dir.join("db.sqlite");
    let db_err = |source| RegistrationError::Db { path: db_path.display().to_string(), source };
    let mut db = rusqlite::Connection::open(&db_path).map_err(db_err)?;
    // A new file in a view's temp dir that is renamed into place once complete (and rebuilt
    // if the node dies first): no rollback journal and no fsync, which on a journaled file
    // system cost a commit each, for every statement of the schema (tens of ms per cold start).
    db.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;").map_err(db_err)?;
    let tx = db.transaction().map_err(db_err)?;
    tx.execute_batch(SCHEMA).map_err(db_err)?;
    {
        let mut insert = tx
            .prepare(
                "insert into ValidPaths (path, hash, registrationTime, deriver, narSize, sigs) values (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(db_err)?;
        let mut ids = std::collections::HashMap::new();
        for info in infos {
            use base64::Engine;
            let sigs: Vec<String> = info
                .sigs
                .iter()
                .map(|(name, sig)| format!("{name}:{}", base64::engine::general_purpose::STANDARD.encode(sig)))
                .collect();
            let deriver = info.deriver.as_deref().map(|d| format!("{}/{d}", imageless_core::store_path::STORE_DIR));
            let id = insert
                .insert(rusqlite::params![
                    info.store_path.as_str(),
                    hash_base16(info),
                    registered_at,
                    deriver,
                    info.nar_size as i64,
                    (!sigs.is_empty()).then(|| sigs.join(" ")),
                ])
                .map_err(db_err)?;
            ids.insert(info.store_path.as_str().to_string(), id);
        }
        let mut refs = tx.prepare("insert into Refs (referrer, reference) values (?1, ?2)").map_err(db_err)?;
        for info in infos {
            let referrer = ids[info.store_path.as_str()];
            for r in &info.references {
                let reference = *ids.get(r.as_str()).ok_or_else(|| RegistrationError::Dangling {
                    path: info.store_path.to_string(),
                    reference: r.to_string(),
                })?;
                refs.execute([referrer, reference]).map_err(db_err)?;
            }
        }
    }
    tx.commit().map_err(db_err)?;
    drop(db);
    let schema = db_dir.join("schema");
    std::fs::write(&schema, SCHEMA_VERSION).map_err(io(&schema))?;
    let text = nix_dir.join("var/nix/registration");
    std::fs::write(&text, registration_text(infos)).map_err(io(&text))?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fetch::narinfo::NarHash;
    use imageless_core::store_path::StorePath;

    pub(crate) fn info(name: &str, refs: &[&str]) -> NarInfo {
        NarInfo {
            store_path: StorePath::parse(&format!("/nix/store/{name}")).unwrap(),
            url: format!("nar/{name}.nar"),
            compression: "none".into(),
            nar_hash: NarHash([7; 32]),
            nar_size: 120,
            references: refs.iter().map(|r| StorePath::parse(&format!("/nix/store/{r}")).unwrap()).collect(),
            deriver: Some(format!("{}.drv", &name[..34])),
            sigs: vec![("k-1".into(), vec![1, 2, 3])],
        }
    }

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a-1.0";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b-1.0";

    #[test]
    fn database_lists_every_path_with_its_references() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), &[info(A, &[A, B]), info(B, &[])], 1_700_000_000).unwrap();
        let db = rusqlite::Connection::open(t.path().join("var/nix/db/db.sqlite")).unwrap();
        let (hash, size, deriver, sigs): (String, i64, String, String) = db
            .query_row(
                "select hash, narSize, deriver, sigs from ValidPaths where path = ?1",
                [format!("/nix/store/{A}")],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(hash, format!("sha256:{}", "07".repeat(32)));
        assert_eq!(size, 120);
        assert_eq!(deriver, "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a.drv");
        assert_eq!(sigs, "k-1:AQID");
        let refs: Vec<String> = db
            .prepare("select r.path from Refs join ValidPaths p on p.id = referrer join ValidPaths r on r.id = reference where p.path = ?1 order by r.path")
            .unwrap()
            .query_map([format!("/nix/store/{A}")], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(refs, vec![format!("/nix/store/{A}"), format!("/nix/store/{B}")]);
        assert_eq!(std::fs::read_to_string(t.path().join("var/nix/db/schema")).unwrap(), "10");
        let text = std::fs::read_to_string(t.path().join("var/nix/registration")).unwrap();
        assert!(
            text.starts_with(&format!(
                "/nix/store/{A}\nsha256:{}\n120\n/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a.drv\n2\n",
                "07".repeat(32)
            )),
            "{text}"
        );
    }

    #[test]
    fn a_reference_outside_the_closure_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let e = write(t.path(), &[info(A, &[B])], 0).unwrap_err().to_string();
        assert!(e.contains(A) && e.contains(B) && e.contains("not in the closure"), "{e}");
    }
}
