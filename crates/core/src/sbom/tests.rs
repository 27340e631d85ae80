//! SBOMs of hand-made locks and closures: content, identifiers, determinism, errors.
use serde_json::{json, Value};

use super::*;

const HELLO: &str = "/nix/store/11111111111111111111111111111111-hello-2.12";
const HELLO_MAN: &str = "/nix/store/22222222222222222222222222222222-hello-2.12-man";
const BUSYBOX: &str = "/nix/store/33333333333333333333333333333333-busybox-static";
const TOOL: &str = "/nix/store/44444444444444444444444444444444-my_tool";

fn lock(packages: Value) -> Lockfile {
    let doc = json!({
        "lockfile-version": 1,
        "manifest": {"schema-version": "1.10.0", "install": {"hello": {"pkg-path": "hello"}}, "options": {}},
        "packages": packages,
    });
    Lockfile::parse(doc.to_string().as_bytes()).unwrap()
}

fn hello(system: &str, license: Value) -> Value {
    json!({
        "attr_path": "hello", "derivation": "/nix/store/00000000000000000000000000000000-hello.drv",
        "install_id": "hello", "locked_url": "https://github.com/flox/nixpkgs?rev=abc",
        "name": "hello-2.12", "pname": "hello", "rev": "abc", "rev_count": 1,
        "rev_date": "2025-01-01T00:00:00Z", "scrape_date": "2025-01-01T00:00:00Z",
        "version": "2.12", "outputs": {"out": HELLO, "man": HELLO_MAN}, "outputs_to_install": ["out"],
        "system": system, "group": "toplevel", "priority": 5,
        "description": "Program that produces a familiar, friendly greeting", "license": license,
    })
}

fn store_path_entry() -> Value {
    json!({"install_id": "my_tool", "store_path": TOOL, "system": "x86_64-linux", "priority": 5})
}

fn subject() -> Subject {
    Subject { environment: "flox/hello".into(), generation: 2, created: 1_764_597_600, system: System::X86_64Linux }
}

fn sp(s: &str) -> StorePath {
    StorePath::parse(s).unwrap()
}

fn record(p: &StorePath) -> Result<PathRecord, SbomError> {
    let (refs, byte): (Vec<&str>, u8) = match p.as_str() {
        HELLO => (vec![HELLO, BUSYBOX], 1),
        HELLO_MAN => (vec![], 2),
        BUSYBOX => (vec![], 3),
        TOOL => (vec![BUSYBOX], 4),
        other => return Err(SbomError::MissingRecord { path: other.into(), reason: "not in the test store".into() }),
    };
    Ok(PathRecord {
        path: p.clone(),
        nar_hash: [byte; 32],
        nar_size: 1000 + u64::from(byte),
        references: refs.into_iter().map(sp).collect(),
    })
}

fn gather(lock: &Lockfile) -> Sbom {
    Sbom::gather(lock, subject(), record).unwrap()
}

fn spdx_of(s: &Sbom) -> Value {
    serde_json::from_slice(&s.to_json(SbomFormat::Spdx)).unwrap()
}

fn cdx_of(s: &Sbom) -> Value {
    serde_json::from_slice(&s.to_json(SbomFormat::CycloneDx)).unwrap()
}

#[test]
fn closure_is_what_the_lock_selects_and_its_references() {
    let s = gather(&lock(json!([hello("x86_64-linux", json!("GPL-3.0-or-later")), store_path_entry()])));
    let paths: Vec<&str> = s.paths.iter().map(|r| r.path.as_str()).collect();
    // hello's man output is not installed: not in the closure, not an output of the package.
    assert_eq!(paths, [HELLO, BUSYBOX, TOOL]);
    assert_eq!(s.packages.len(), 2);
    let hello = &s.packages[0];
    assert_eq!(
        (hello.install_id.as_str(), hello.name.as_str(), hello.version.as_deref()),
        ("hello", "hello", Some("2.12"))
    );
    assert_eq!(hello.pkg_path.as_deref(), Some("hello"));
    assert_eq!(hello.outputs, vec![("out".to_string(), sp(HELLO))]);
    assert_eq!(hello.purl(), "pkg:nix/hello@2.12");
    assert_eq!(s.packages[1].name, "my_tool");
    assert_eq!(s.packages[1].kind, PackageKind::StorePath);
}

#[test]
fn spdx_document_content() {
    let s = gather(&lock(json!([hello("x86_64-linux", json!("GPL-3.0-or-later")), store_path_entry()])));
    let d = spdx_of(&s);
    assert_eq!(d["spdxVersion"], "SPDX-2.3");
    assert_eq!(d["name"], "flox/hello:2 (x86_64-linux)");
    assert_eq!(d["creationInfo"]["created"], "2025-12-01T14:00:00Z");
    assert!(d["documentNamespace"].as_str().unwrap().starts_with("urn:uuid:"));
    let pkgs = d["packages"].as_array().unwrap();
    assert_eq!(pkgs.len(), 1 + 2 + 3);
    let hello = pkgs.iter().find(|p| p["SPDXID"] == "SPDXRef-Package-hello").unwrap();
    assert_eq!(hello["licenseDeclared"], "GPL-3.0-or-later");
    assert_eq!(hello["versionInfo"], "2.12");
    assert_eq!(hello["description"], "Program that produces a familiar, friendly greeting");
    assert_eq!(hello["externalRefs"][0]["referenceLocator"], "pkg:nix/hello@2.12");
    assert_eq!(hello["externalRefs"][1]["referenceLocator"], "hello");
    // Install ids with characters SPDX ids do not allow get a hash suffix.
    assert!(pkgs.iter().any(|p| p["SPDXID"].as_str().unwrap().starts_with("SPDXRef-Package-my-tool-")));
    let path = pkgs.iter().find(|p| p["packageFileName"] == HELLO).unwrap();
    assert_eq!(path["SPDXID"], "SPDXRef-StorePath-11111111111111111111111111111111-hello-2.12");
    assert_eq!(path["checksums"][0]["checksumValue"], "01".repeat(32));
    assert!(path["comment"].as_str().unwrap().contains("NAR size 1001 bytes"));
    let rels: Vec<(String, String, String)> = d["relationships"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let f = |k: &str| r[k].as_str().unwrap().to_string();
            (f("spdxElementId"), f("relationshipType"), f("relatedSpdxElement"))
        })
        .collect();
    let has = |a: &str, k: &str, b: &str| rels.contains(&(a.to_string(), k.to_string(), b.to_string()));
    assert!(has("SPDXRef-DOCUMENT", "DESCRIBES", "SPDXRef-Environment"));
    assert!(has("SPDXRef-Environment", "CONTAINS", "SPDXRef-Package-hello"));
    let hello_path = "SPDXRef-StorePath-11111111111111111111111111111111-hello-2.12";
    let busybox_path = "SPDXRef-StorePath-33333333333333333333333333333333-busybox-static";
    assert!(has("SPDXRef-Package-hello", "CONTAINS", hello_path));
    assert!(has(hello_path, "DEPENDS_ON", busybox_path));
    assert!(!has(hello_path, "DEPENDS_ON", hello_path), "no self-reference");
}

#[test]
fn cyclonedx_document_content() {
    let s = gather(&lock(json!([hello("x86_64-linux", json!("GPL-3.0-or-later"))])));
    let d = cdx_of(&s);
    assert_eq!(d["specVersion"], "1.6");
    assert_eq!(d["serialNumber"], spdx_of(&s)["documentNamespace"]);
    assert_eq!(d["metadata"]["timestamp"], "2025-12-01T14:00:00Z");
    assert_eq!(d["metadata"]["component"]["name"], "flox/hello");
    let comps = d["components"].as_array().unwrap();
    assert_eq!(comps[0]["bom-ref"], "flox-package:hello");
    assert_eq!(comps[0]["licenses"], json!([{"license": {"id": "GPL-3.0-or-later"}}]));
    assert_eq!(comps[0]["purl"], "pkg:nix/hello@2.12");
    assert_eq!(comps[1]["bom-ref"], HELLO);
    assert_eq!(comps[1]["hashes"][0], json!({"alg": "SHA-256", "content": "01".repeat(32)}));
    let deps = d["dependencies"].as_array().unwrap();
    assert_eq!(deps[0], json!({"ref": "flox-environment", "dependsOn": ["flox-package:hello"]}));
    assert_eq!(deps[1], json!({"ref": "flox-package:hello", "dependsOn": [HELLO]}));
    assert!(deps.contains(&json!({"ref": HELLO, "dependsOn": [BUSYBOX]})));
    assert!(deps.contains(&json!({"ref": BUSYBOX, "dependsOn": []})));
}

#[test]
fn licenses_unlisted_and_compound() {
    let s = gather(&lock(json!([hello("x86_64-linux", json!("Unfree"))])));
    let d = spdx_of(&s);
    let pkg =
        d["packages"].as_array().unwrap().iter().find(|p| p["SPDXID"] == "SPDXRef-Package-hello").unwrap().clone();
    assert_eq!(pkg["licenseDeclared"], "LicenseRef-Unfree");
    assert_eq!(d["hasExtractedLicensingInfos"][0]["licenseId"], "LicenseRef-Unfree");
    assert_eq!(d["hasExtractedLicensingInfos"][0]["name"], "Unfree");
    assert_eq!(cdx_of(&s)["components"][0]["licenses"], json!([{"license": {"name": "Unfree"}}]));

    let s = gather(&lock(json!([hello("x86_64-linux", json!("[ MIT, NCSA ]"))])));
    assert_eq!(cdx_of(&s)["components"][0]["licenses"], json!([{"expression": "MIT AND NCSA"}]));
    assert!(spdx_of(&s).get("hasExtractedLicensingInfos").is_none());

    // No license (or one of another type, read leniently): NOASSERTION, no CycloneDX licenses.
    for none in [Value::Null, json!(["MIT"])] {
        let s = gather(&lock(json!([hello("x86_64-linux", none)])));
        let d = spdx_of(&s);
        assert_eq!(d["packages"][1]["licenseDeclared"], "NOASSERTION");
        assert!(cdx_of(&s)["components"][0].get("licenses").is_none());
    }
}

#[test]
fn same_lock_same_bytes_but_the_creation_time() {
    let l = lock(json!([hello("x86_64-linux", json!("MIT")), store_path_entry()]));
    for format in SbomFormat::ALL {
        let a = gather(&l).to_json(format);
        assert_eq!(a, gather(&l).to_json(format));
        let later = Sbom::gather(&l, Subject { created: 1_764_600_000, ..subject() }, record).unwrap().to_json(format);
        let strip = |b: &[u8]| {
            String::from_utf8(b.to_vec())
                .unwrap()
                .replace("2025-12-01T14:00:00Z", "T")
                .replace("2025-12-01T14:40:00Z", "T")
        };
        assert_ne!(a, later);
        assert_eq!(strip(&a), strip(&later));
    }
    // The record lookup's order does not matter: the walk is sorted.
    let mut calls = Vec::new();
    Sbom::gather(&l, subject(), |p| {
        calls.push(p.to_string());
        record(p)
    })
    .unwrap();
    let mut sorted = calls.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(calls.len(), sorted.len(), "each path is looked up once");
}

#[test]
fn a_system_the_lock_lacks_is_one_error() {
    let l = lock(json!([hello("x86_64-linux", json!("MIT"))]));
    let other = Subject { system: System::Aarch64Linux, ..subject() };
    assert_eq!(
        Sbom::check_system(&l, &other).unwrap_err().to_string(),
        "flox/hello generation 2 is not locked for system aarch64-linux; its manifest.lock has packages for: x86_64-linux"
    );
    assert!(Sbom::check_system(&l, &subject()).is_ok());
    assert!(Sbom::check_system(&lock(json!([])), &other).is_ok(), "an empty lock is empty on every system");
    // gather alone applies select's rules (catalog entries lock the systems).
    let err = Sbom::gather(&l, other, record).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("flox/hello generation 2: This environment is not locked for your system (aarch64-linux)"),
        "{err}"
    );
}

#[test]
fn a_missing_record_is_an_error() {
    let l = lock(json!([hello("x86_64-linux", json!("MIT"))]));
    let err = Sbom::gather(&l, subject(), |p| {
        if p.as_str() == BUSYBOX {
            Err(SbomError::MissingRecord { path: p.to_string(), reason: "gone".into() })
        } else {
            record(p)
        }
    })
    .unwrap_err();
    assert_eq!(err.to_string(), format!("store path {BUSYBOX} of the closure has no record: gone"));
}

#[test]
fn an_empty_environment_has_only_its_root() {
    let s = gather(&lock(json!([])));
    assert!(s.packages.is_empty() && s.paths.is_empty());
    assert_eq!(spdx_of(&s)["packages"].as_array().unwrap().len(), 1);
    assert_eq!(cdx_of(&s)["components"], json!([]));
}

#[test]
fn narinfo_records() {
    let p = sp(HELLO);
    let text = format!(
        "StorePath: {HELLO}\nURL: nar/x.nar.zst\nCompression: zstd\nNarHash: sha256:{}\nNarSize: 4242\nReferences: 11111111111111111111111111111111-hello-2.12 33333333333333333333333333333333-busybox-static\nSig: k:AAAA\n",
        nix_base32::to_nix_base32(&[7u8; 32])
    );
    let r = PathRecord::from_narinfo(&text, &p).unwrap();
    assert_eq!((r.nar_hash, r.nar_size), ([7u8; 32], 4242));
    assert_eq!(r.references, vec![sp(HELLO), sp(BUSYBOX)]);
    assert!(PathRecord::from_narinfo(&text, &sp(BUSYBOX)).unwrap_err().contains("expected"));
    assert!(PathRecord::from_narinfo(&text.replace("NarSize: 4242", "NarSize: x"), &p)
        .unwrap_err()
        .contains("NarSize"));
    assert!(PathRecord::from_narinfo(&text.replace("sha256:", "md5:"), &p).unwrap_err().contains("NarHash"));
}

#[test]
fn formats_parse_with_one_error() {
    assert_eq!("spdx".parse::<SbomFormat>().unwrap(), SbomFormat::Spdx);
    assert_eq!("cyclonedx".parse::<SbomFormat>().unwrap(), SbomFormat::CycloneDx);
    assert_eq!(
        "xml".parse::<SbomFormat>().unwrap_err().to_string(),
        "SBOM format \"xml\" is not supported; accepted: \"spdx\" (SPDX 2.3 JSON) or \"cyclonedx\" (CycloneDX 1.6 JSON)"
    );
}

/// Writes the documents of a rich example to $IMAGELESS_SBOM_SAMPLES (for trying validators by hand).
#[test]
fn write_samples_when_asked() {
    let Some(dir) = std::env::var_os("IMAGELESS_SBOM_SAMPLES") else { return };
    let s = gather(&lock(json!([
        hello("x86_64-linux", json!("[ NCSA, [ Apache-2.0 LLVM-exception ], Unfree ]")),
        store_path_entry()
    ])));
    for f in SbomFormat::ALL {
        std::fs::write(std::path::Path::new(&dir).join(f.file_name()), s.to_json(f)).unwrap();
    }
}
