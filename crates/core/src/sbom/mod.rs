//! Software bills of materials of an environment generation: what its lock names and what its
//! closure holds, as SPDX 2.3 JSON ([`spdx`]) and CycloneDX 1.6 JSON ([`cyclonedx`]).
//!
//! Pure: the caller hands over the parsed lock, who the environment is (name, generation, its
//! creation time, system) and a way to look up a store path's record (its NAR hash, NAR size
//! and references: the node reads its verified narinfos, the hub its cache's). [`Sbom::gather`]
//! walks the closure of the paths the lock selects for the system, so the node and the hub
//! describe the same paths. Everything is sorted and every identifier is derived from names
//! and hashes: the same lock and closure give the same bytes; only the creation time (the
//! generation's, from `metadata.json`) differs between generations.
pub mod cyclonedx;
mod license;
pub mod spdx;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

pub use license::License;

use crate::lockfile::{LockedPackage, Lockfile, SelectError};
use crate::store_path::StorePath;
use crate::system::System;

/// The producer named in every document.
pub const TOOL_NAME: &str = "imageless";
/// This crate's version, named with the tool.
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where a flox container finds its environment's SBOMs (inside the environment tree, which is
/// already bound read-only at `/run/flox/env`: no mount of its own).
pub const CONTAINER_SPDX_PATH: &str = "/run/flox/env/sbom.spdx.json";
pub const CONTAINER_CYCLONEDX_PATH: &str = "/run/flox/env/sbom.cdx.json";

/// The two formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SbomFormat {
    /// SPDX 2.3, JSON.
    Spdx,
    /// CycloneDX 1.6, JSON.
    CycloneDx,
}

/// A format name this project does not produce.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "SBOM format {value:?} is not supported; accepted: \"spdx\" (SPDX 2.3 JSON) or \"cyclonedx\" (CycloneDX 1.6 JSON)"
)]
pub struct FormatError {
    pub value: String,
}

impl SbomFormat {
    pub const ALL: [SbomFormat; 2] = [SbomFormat::Spdx, SbomFormat::CycloneDx];

    pub fn as_str(self) -> &'static str {
        match self {
            SbomFormat::Spdx => "spdx",
            SbomFormat::CycloneDx => "cyclonedx",
        }
    }

    /// The file name in a rendered environment tree (`<tree>/<file_name>`).
    pub fn file_name(self) -> &'static str {
        match self {
            SbomFormat::Spdx => "sbom.spdx.json",
            SbomFormat::CycloneDx => "sbom.cdx.json",
        }
    }

    /// The media type a server answers with.
    pub fn media_type(self) -> &'static str {
        match self {
            SbomFormat::Spdx => "application/spdx+json",
            SbomFormat::CycloneDx => "application/vnd.cyclonedx+json",
        }
    }
}

impl FromStr for SbomFormat {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "spdx" => Ok(SbomFormat::Spdx),
            "cyclonedx" => Ok(SbomFormat::CycloneDx),
            _ => Err(FormatError { value: s.to_string() }),
        }
    }
}

impl fmt::Display for SbomFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which environment generation a document describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// `owner/name`.
    pub environment: String,
    pub generation: u32,
    /// When the generation was created (Unix seconds, from `metadata.json`): the document's
    /// creation time.
    pub created: u64,
    pub system: System,
}

/// What a binary cache says about one store path (its narinfo): the NAR's SHA-256 and size,
/// and the paths it refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRecord {
    pub path: StorePath,
    pub nar_hash: [u8; 32],
    pub nar_size: u64,
    /// Sorted, without duplicates; may name the path itself.
    pub references: Vec<StorePath>,
}

impl PathRecord {
    /// Reads `StorePath`, `NarHash` (`sha256:<nix32>`), `NarSize` and `References` of a narinfo
    /// served for `expected` (no signature check: the hub reads its own signed cache).
    pub fn from_narinfo(text: &str, expected: &StorePath) -> Result<PathRecord, String> {
        let (mut path, mut hash, mut size, mut references) = (None, None, None, None);
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (key, value) = line.split_once(": ").ok_or_else(|| format!("line {line:?} is not `Key: value`"))?;
            match key {
                "StorePath" => path = Some(value),
                "NarHash" => hash = Some(value),
                "NarSize" => size = Some(value),
                "References" => references = Some(value),
                _ => {}
            }
        }
        match path {
            Some(p) if p == expected.as_str() => {}
            Some(p) => return Err(format!("StorePath is {p}, expected {expected}")),
            None => return Err("no StorePath".into()),
        }
        let hash = hash.ok_or("no NarHash")?;
        let digits = hash.strip_prefix("sha256:").ok_or_else(|| format!("NarHash {hash:?} is not sha256:<nix32>"))?;
        let bytes = (digits.len() == 52)
            .then(|| nix_base32::from_nix_base32(digits))
            .flatten()
            .ok_or_else(|| format!("NarHash {hash:?} is not sha256 in Nix base-32"))?;
        let nar_hash: [u8; 32] = bytes.try_into().map_err(|_| format!("NarHash {hash:?} is not 32 bytes"))?;
        let size = size.ok_or("no NarSize")?;
        let nar_size = size.parse().map_err(|_| format!("NarSize {size:?} is not a number"))?;
        let mut refs = BTreeSet::new();
        for base in references.unwrap_or("").split_whitespace() {
            let full = format!("{}/{base}", crate::store_path::STORE_DIR);
            refs.insert(StorePath::parse(&full).map_err(|e| format!("References: {e}"))?);
        }
        Ok(PathRecord { path: expected.clone(), nar_hash, nar_size, references: refs.into_iter().collect() })
    }
}

/// How a locked package was locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageKind {
    Catalog,
    Flake,
    StorePath,
}

impl PackageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PackageKind::Catalog => "catalog",
            PackageKind::Flake => "flake",
            PackageKind::StorePath => "store-path",
        }
    }
}

/// One locked package of the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub install_id: String,
    pub kind: PackageKind,
    /// `pname` (catalog, flake when it has one), else the entry's `name`, else the store
    /// path's name.
    pub name: String,
    pub version: Option<String>,
    /// The catalog's `attr_path` (the manifest's `pkg-path`), or a flake's attribute path.
    pub pkg_path: Option<String>,
    pub description: Option<String>,
    pub license: Option<License>,
    /// `locked_url` (catalog, flake).
    pub locked_url: Option<String>,
    /// The outputs that are in the closure, by output name.
    pub outputs: Vec<(String, StorePath)>,
}

impl Package {
    /// `pkg:nix/<name>@<version>`: the package URL scanners match on (nixpkgs' pname and
    /// version, the form Nix SBOM tools use).
    pub fn purl(&self) -> String {
        let mut purl =
            packageurl::PackageUrl::new("nix", self.name.as_str()).expect("the nix type and a name are valid");
        if let Some(v) = &self.version {
            purl.with_version(v.as_str()).expect("any version is valid");
        }
        purl.to_string()
    }
}

/// Why no SBOM can be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SbomError {
    #[error("{environment} generation {generation} is not locked for system {system}; its manifest.lock has packages for: {}", locked.join(", "))]
    SystemNotLocked { environment: String, generation: u32, system: String, locked: Vec<String> },
    #[error("{environment} generation {generation}: {source}")]
    Select {
        environment: String,
        generation: u32,
        #[source]
        source: Box<SelectError>,
    },
    #[error("store path {path} of the closure has no record: {reason}")]
    MissingRecord { path: String, reason: String },
}

/// A bill of materials: ready to be written in either format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sbom {
    pub subject: Subject,
    /// By install id.
    pub packages: Vec<Package>,
    /// The closure, by store path.
    pub paths: Vec<PathRecord>,
}

impl Sbom {
    /// Refuses a system the lock has no package for (when it has packages at all): what
    /// `--system` and the hub's `system` are checked with before anything is read. Rendering
    /// keeps [`Lockfile::select`]'s own rules, which only catalog entries constrain.
    pub fn check_system(lock: &Lockfile, subject: &Subject) -> Result<(), SbomError> {
        let system = subject.system.as_str();
        let locked: BTreeSet<&str> = lock.packages.iter().map(LockedPackage::system).collect();
        if locked.is_empty() || locked.contains(system) {
            return Ok(());
        }
        Err(SbomError::SystemNotLocked {
            environment: subject.environment.clone(),
            generation: subject.generation,
            system: system.to_string(),
            locked: locked.into_iter().map(str::to_string).collect(),
        })
    }

    /// The store paths whose closure the SBOM describes: what the lock selects for the
    /// system (the paths the node links and fetches the closure of), sorted.
    pub fn roots(lock: &Lockfile, subject: &Subject) -> Result<Vec<StorePath>, SbomError> {
        let selection = lock.select(subject.system).map_err(|source| SbomError::Select {
            environment: subject.environment.clone(),
            generation: subject.generation,
            source: Box::new(source),
        })?;
        let mut roots: Vec<StorePath> = selection.store_paths().into_iter().cloned().collect();
        roots.sort();
        Ok(roots)
    }

    /// Walks the closure of [`Sbom::roots`] through `record` (called once per path) and puts
    /// the lock's packages of the system beside it.
    pub fn gather(
        lock: &Lockfile,
        subject: Subject,
        mut record: impl FnMut(&StorePath) -> Result<PathRecord, SbomError>,
    ) -> Result<Sbom, SbomError> {
        let mut todo = Sbom::roots(lock, &subject)?;
        let mut paths: BTreeMap<StorePath, PathRecord> = BTreeMap::new();
        while let Some(p) = todo.pop() {
            if paths.contains_key(&p) {
                continue;
            }
            let r = record(&p)?;
            todo.extend(r.references.iter().filter(|q| !paths.contains_key(*q)).cloned());
            paths.insert(p, r);
        }
        let mut packages: Vec<Package> = lock
            .packages
            .iter()
            .filter(|p| p.system() == subject.system.as_str())
            .map(|p| package(p, &paths))
            .collect();
        packages.sort_by(|a, b| a.install_id.cmp(&b.install_id));
        Ok(Sbom { subject, packages, paths: paths.into_values().collect() })
    }

    /// `owner/name:N (system)`.
    pub fn title(&self) -> String {
        let s = &self.subject;
        format!("{}:{} ({})", s.environment, s.generation, s.system)
    }

    /// A name-based UUID (version 5) of everything the document says but its creation time:
    /// the same environment, generation, lock and closure always give the same one.
    pub fn uuid(&self) -> String {
        let mut h = Sha256::new();
        let mut put = |s: &str| {
            h.update(s.as_bytes());
            h.update(b"\0");
        };
        put("imageless-sbom-v1");
        put(&self.subject.environment);
        put(&self.subject.generation.to_string());
        put(self.subject.system.as_str());
        for p in &self.packages {
            put(&p.install_id);
            put(&p.name);
            put(p.version.as_deref().unwrap_or(""));
            put(p.license.as_ref().map_or("", |l| l.expression.as_str()));
            for (name, path) in &p.outputs {
                put(name);
                put(path.as_str());
            }
        }
        for r in &self.paths {
            put(r.path.as_str());
            put(&hex::encode(r.nar_hash));
        }
        let name = format!("imageless:sbom:{}", hex::encode(h.finalize()));
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, name.as_bytes()).to_string()
    }

    /// The creation time as RFC 3339 UTC, seconds precision (`2026-12-01T14:00:00Z`).
    pub fn created_rfc3339(&self) -> String {
        let t = i64::try_from(self.subject.created).unwrap_or(i64::MAX);
        let t = time::OffsetDateTime::from_unix_timestamp(t).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        t.format(&time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z"))
            .expect("a UTC date formats")
    }

    /// Every `LicenseRef-` used, with the lock's text for it.
    pub fn license_refs(&self) -> BTreeMap<String, String> {
        self.packages.iter().filter_map(|p| p.license.as_ref()).flat_map(|l| l.refs.clone()).collect()
    }

    /// The document in `format`, as bytes (pretty JSON, a final newline).
    pub fn to_json(&self, format: SbomFormat) -> Vec<u8> {
        let value = match format {
            SbomFormat::Spdx => spdx::document(self),
            SbomFormat::CycloneDx => cyclonedx::document(self),
        };
        let mut bytes = serde_json::to_vec_pretty(&value).expect("JSON values serialize");
        bytes.push(b'\n');
        bytes
    }
}

fn package(p: &LockedPackage, paths: &BTreeMap<StorePath, PathRecord>) -> Package {
    let mut outputs: Vec<(String, StorePath)> = p
        .outputs()
        .into_iter()
        .filter_map(|(name, path)| StorePath::parse(path).ok().map(|sp| (name.to_string(), sp)))
        .filter(|(_, sp)| paths.contains_key(sp))
        .collect();
    outputs.sort();
    let install_id = p.install_id().to_string();
    match p {
        LockedPackage::Catalog(c) => Package {
            install_id,
            kind: PackageKind::Catalog,
            name: c.pname.clone(),
            version: Some(c.version.clone()).filter(|v| !v.is_empty()),
            pkg_path: Some(c.attr_path.clone()),
            description: c.description.clone().filter(|d| !d.is_empty()),
            license: c.license.as_deref().and_then(License::from_catalog),
            locked_url: Some(c.locked_url.clone()),
            outputs,
        },
        LockedPackage::Flake(f) => Package {
            install_id,
            kind: PackageKind::Flake,
            name: f.pname.clone().unwrap_or_else(|| f.name.clone()),
            version: f.version.clone().filter(|v| !v.is_empty()),
            pkg_path: Some(f.locked_flake_attr_path.clone()),
            description: f.description.clone().filter(|d| !d.is_empty()),
            license: f.licenses.as_deref().and_then(License::from_list),
            locked_url: Some(f.locked_url.clone()),
            outputs,
        },
        LockedPackage::StorePath(s) => Package {
            install_id,
            kind: PackageKind::StorePath,
            name: StorePath::parse(&s.store_path).map_or_else(|_| s.install_id.clone(), |sp| sp.name().to_string()),
            version: None,
            pkg_path: None,
            description: None,
            license: None,
            locked_url: None,
            outputs,
        },
    }
}

/// An identifier made of `[A-Za-z0-9.-]` from `text`: the text itself when it already is one,
/// otherwise cleaned and suffixed with a hash of it (distinct texts stay distinct).
pub(crate) fn id_part(text: &str) -> String {
    let clean: String =
        text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' }).collect();
    if clean == text && !text.is_empty() {
        clean
    } else {
        format!("{clean}-{}", hex::encode(&Sha256::digest(text.as_bytes())[..4]))
    }
}

#[cfg(test)]
mod tests;
