//! SPDX 2.3 JSON: a document describing the environment, which contains its locked packages,
//! which contain their output store paths; each store path depends on its references.
//!
//! Identifiers: `SPDXRef-Environment`, `SPDXRef-Package-<install id>`,
//! `SPDXRef-StorePath-<hash>-<name>`. The NAR hash is the store path's SHA-256 checksum, its
//! NAR size is in the package's comment (SPDX 2.3 has no size field), the full store path is
//! its `packageFileName`.
use serde_json::{json, Map, Value};

use super::{id_part, Package, PackageKind, PathRecord, Sbom};

/// `SPDXRef-` id of a locked package.
pub fn package_id(p: &Package) -> String {
    format!("SPDXRef-Package-{}", id_part(&p.install_id))
}

/// `SPDXRef-` id of a store path (its hash part keeps it unique).
pub fn path_id(path: &crate::store_path::StorePath) -> String {
    format!("SPDXRef-StorePath-{}-{}", path.hash_part(), id_part(path.name()))
}

pub const ENVIRONMENT_ID: &str = "SPDXRef-Environment";

fn relationship(from: &str, kind: &str, to: &str) -> Value {
    json!({"spdxElementId": from, "relationshipType": kind, "relatedSpdxElement": to})
}

fn locked_package(p: &Package) -> Value {
    let mut m = Map::new();
    m.insert("SPDXID".into(), package_id(p).into());
    m.insert("name".into(), p.name.clone().into());
    if let Some(v) = &p.version {
        m.insert("versionInfo".into(), v.clone().into());
    }
    m.insert("downloadLocation".into(), "NOASSERTION".into());
    m.insert("filesAnalyzed".into(), false.into());
    let source = match (p.kind, &p.pkg_path, &p.locked_url) {
        (PackageKind::Catalog, Some(path), Some(url)) => Some(format!("Flox catalog package {path} from {url}")),
        (PackageKind::Flake, Some(attr), Some(url)) => Some(format!("flake output {attr} of {url}")),
        _ => None,
    };
    if let Some(s) = source {
        m.insert("sourceInfo".into(), s.into());
    }
    m.insert("licenseConcluded".into(), "NOASSERTION".into());
    let declared = p.license.as_ref().map_or_else(|| "NOASSERTION".to_string(), |l| l.expression.clone());
    m.insert("licenseDeclared".into(), declared.into());
    m.insert("copyrightText".into(), "NOASSERTION".into());
    if let Some(d) = &p.description {
        m.insert("description".into(), d.clone().into());
    }
    let mut comment = format!("Flox install id {} ({} entry)", p.install_id, p.kind.as_str());
    if let Some(path) = &p.pkg_path {
        comment.push_str(&format!("; pkg-path {path}"));
    }
    if !p.outputs.is_empty() {
        let outs: Vec<String> = p.outputs.iter().map(|(n, sp)| format!("{n}={sp}")).collect();
        comment.push_str(&format!("; outputs {}", outs.join(" ")));
    }
    m.insert("comment".into(), comment.into());
    let mut refs = vec![json!({
        "referenceCategory": "PACKAGE-MANAGER",
        "referenceType": "purl",
        "referenceLocator": p.purl(),
    })];
    if let Some(path) = &p.pkg_path {
        refs.push(json!({
            "referenceCategory": "OTHER",
            "referenceType": "flox-pkg-path",
            "referenceLocator": path,
        }));
    }
    m.insert("externalRefs".into(), refs.into());
    Value::Object(m)
}

fn store_path(r: &PathRecord) -> Value {
    json!({
        "SPDXID": path_id(&r.path),
        "name": r.path.name(),
        "packageFileName": r.path.as_str(),
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "checksums": [{"algorithm": "SHA256", "checksumValue": hex::encode(r.nar_hash)}],
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "comment": format!("Nix store path {}; NAR size {} bytes; the checksum is the NAR's SHA-256 (narinfo NarHash)", r.path, r.nar_size),
    })
}

/// The SPDX 2.3 document as a JSON value.
pub fn document(sbom: &Sbom) -> Value {
    let s = &sbom.subject;
    let mut packages = vec![json!({
        "SPDXID": ENVIRONMENT_ID,
        "name": s.environment,
        "versionInfo": s.generation.to_string(),
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "comment": format!("Flox environment {} generation {} for {}", s.environment, s.generation, s.system),
    })];
    packages.extend(sbom.packages.iter().map(locked_package));
    packages.extend(sbom.paths.iter().map(store_path));

    let mut relationships = vec![relationship("SPDXRef-DOCUMENT", "DESCRIBES", ENVIRONMENT_ID)];
    for p in &sbom.packages {
        relationships.push(relationship(ENVIRONMENT_ID, "CONTAINS", &package_id(p)));
    }
    for p in &sbom.packages {
        let from = package_id(p);
        let mut outs: Vec<&crate::store_path::StorePath> = p.outputs.iter().map(|(_, sp)| sp).collect();
        outs.sort();
        outs.dedup();
        for sp in outs {
            relationships.push(relationship(&from, "CONTAINS", &path_id(sp)));
        }
    }
    for r in &sbom.paths {
        let from = path_id(&r.path);
        for reference in r.references.iter().filter(|q| **q != r.path) {
            relationships.push(relationship(&from, "DEPENDS_ON", &path_id(reference)));
        }
    }

    let mut doc = Map::new();
    doc.insert("spdxVersion".into(), "SPDX-2.3".into());
    doc.insert("dataLicense".into(), "CC0-1.0".into());
    doc.insert("SPDXID".into(), "SPDXRef-DOCUMENT".into());
    doc.insert("name".into(), sbom.title().into());
    doc.insert("documentNamespace".into(), format!("urn:uuid:{}", sbom.uuid()).into());
    doc.insert(
        "creationInfo".into(),
        json!({
            "created": sbom.created_rfc3339(),
            "creators": [format!("Tool: {}-{}", super::TOOL_NAME, super::TOOL_VERSION)],
            "comment": "Creation time: when the environment generation was created (metadata.json)",
        }),
    );
    let refs = sbom.license_refs();
    if !refs.is_empty() {
        let infos: Vec<Value> = refs
            .iter()
            .map(|(id, text)| {
                json!({
                    "licenseId": id,
                    "name": text,
                    "extractedText": format!("The environment's manifest.lock names this license as {text:?}; it has no SPDX license list identifier."),
                })
            })
            .collect();
        doc.insert("hasExtractedLicensingInfos".into(), infos.into());
    }
    doc.insert("packages".into(), packages.into());
    doc.insert("relationships".into(), relationships.into());
    Value::Object(doc)
}
