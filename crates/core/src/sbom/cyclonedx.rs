//! CycloneDX 1.6 JSON: the environment is the BOM's subject (`metadata.component`); components
//! are the locked packages and the closure's store paths; `dependencies` lead from the
//! environment to its packages, from each package to its outputs and from each store path to
//! its references.
//!
//! `bom-ref`s: `flox-environment`, `flox-package:<install id>`, and the store path itself.
//! The NAR hash is the store path's SHA-256; its NAR size and full path are properties
//! (`nix:nar-size`, `nix:store-path`).
use serde_json::{json, Map, Value};

use super::{Package, PathRecord, Sbom};
use crate::store_path::StorePath;

pub const ENVIRONMENT_REF: &str = "flox-environment";

/// The `bom-ref` of a locked package.
pub fn package_ref(p: &Package) -> String {
    format!("flox-package:{}", p.install_id)
}

fn property(name: &str, value: impl Into<String>) -> Value {
    json!({"name": name, "value": value.into()})
}

fn licenses(p: &Package) -> Option<Value> {
    let l = p.license.as_ref()?;
    Some(match (&l.spdx_id, l.refs.iter().next()) {
        (Some(id), _) => json!([{"license": {"id": id}}]),
        // One unlisted name alone: CycloneDX's own form for a named license.
        (None, Some((id, name))) if l.refs.len() == 1 && &l.expression == id => {
            json!([{"license": {"name": name}}])
        }
        _ => json!([{"expression": l.expression}]),
    })
}

fn locked_package(p: &Package) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), "library".into());
    m.insert("bom-ref".into(), package_ref(p).into());
    m.insert("name".into(), p.name.clone().into());
    if let Some(v) = &p.version {
        m.insert("version".into(), v.clone().into());
    }
    if let Some(d) = &p.description {
        m.insert("description".into(), d.clone().into());
    }
    if let Some(l) = licenses(p) {
        m.insert("licenses".into(), l);
    }
    m.insert("purl".into(), p.purl().into());
    let mut props = vec![property("flox:install-id", p.install_id.clone()), property("flox:kind", p.kind.as_str())];
    if let Some(path) = &p.pkg_path {
        props.push(property("flox:pkg-path", path.clone()));
    }
    if let Some(url) = &p.locked_url {
        props.push(property("flox:locked-url", url.clone()));
    }
    for (name, sp) in &p.outputs {
        props.push(property(&format!("flox:output:{name}"), sp.as_str()));
    }
    m.insert("properties".into(), props.into());
    Value::Object(m)
}

fn store_path(r: &PathRecord) -> Value {
    json!({
        "type": "library",
        "bom-ref": r.path.as_str(),
        "name": r.path.name(),
        "hashes": [{"alg": "SHA-256", "content": hex::encode(r.nar_hash)}],
        "properties": [
            property("nix:store-path", r.path.as_str()),
            property("nix:nar-size", r.nar_size.to_string()),
        ],
    })
}

fn dependency(from: &str, to: Vec<String>) -> Value {
    json!({"ref": from, "dependsOn": to})
}

/// The CycloneDX 1.6 BOM as a JSON value.
pub fn document(sbom: &Sbom) -> Value {
    let s = &sbom.subject;
    let mut components: Vec<Value> = sbom.packages.iter().map(locked_package).collect();
    components.extend(sbom.paths.iter().map(store_path));

    let mut dependencies = vec![dependency(ENVIRONMENT_REF, sbom.packages.iter().map(package_ref).collect())];
    for p in &sbom.packages {
        let mut outs: Vec<&StorePath> = p.outputs.iter().map(|(_, sp)| sp).collect();
        outs.sort();
        outs.dedup();
        dependencies.push(dependency(&package_ref(p), outs.into_iter().map(|sp| sp.to_string()).collect()));
    }
    for r in &sbom.paths {
        let refs = r.references.iter().filter(|q| **q != r.path).map(|q| q.to_string()).collect();
        dependencies.push(dependency(r.path.as_str(), refs));
    }

    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": format!("urn:uuid:{}", sbom.uuid()),
        "version": 1,
        "metadata": {
            "timestamp": sbom.created_rfc3339(),
            "tools": {"components": [{"type": "application", "name": super::TOOL_NAME, "version": super::TOOL_VERSION}]},
            "component": {
                "type": "application",
                "bom-ref": ENVIRONMENT_REF,
                "name": s.environment,
                "version": s.generation.to_string(),
                "description": format!("Flox environment {} generation {} for {}", s.environment, s.generation, s.system),
                "properties": [
                    property("flox:environment", s.environment.clone()),
                    property("flox:generation", s.generation.to_string()),
                    property("flox:system", s.system.as_str()),
                ],
            },
        },
        "components": components,
        "dependencies": dependencies,
    })
}
