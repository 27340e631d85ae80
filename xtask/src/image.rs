//! `cargo xtask image`: the installer as an OCI image archive (an OCI image layout in a tar), the
//! same bytes on every build of the same binaries.
//!
//! One layer holding `/opt/imageless/bin/{imageless,flox-runc,containerd-shim-flox-v2,flox-activate}`,
//! all static (they run on the host too, whatever its libc). Reproducible because nothing varies:
//! entries sorted, every mtime [`MTIME`], owner 0:0, no user or group names, gzip without a
//! timestamp or file name, no `created` in the config. The archive is what `ctr images import`,
//! `skopeo copy oci-archive:…` and `crane push` read.
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// Where the binaries live in the image (the DaemonSet runs them from here).
pub const BIN_DIR: &str = "opt/imageless/bin";
/// The binaries, in the order they appear in the layer (sorted).
pub const BINARIES: [&str; 4] = ["containerd-shim-flox-v2", "flox-activate", "flox-runc", "imageless"];
/// Every timestamp in the archive: 2000-01-01T00:00:00Z (0 confuses some tools).
pub const MTIME: u64 = 946_684_800;
pub const IMAGE_NAME: &str = "imageless-installer";

const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A blob and its descriptor fields.
struct Blob {
    digest: String,
    bytes: Vec<u8>,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Blob {
        Blob { digest: format!("sha256:{}", hex::encode(Sha256::digest(&bytes))), bytes }
    }
    fn descriptor(&self, media_type: &str) -> serde_json::Value {
        serde_json::json!({ "mediaType": media_type, "digest": self.digest, "size": self.bytes.len() })
    }
    fn path(&self) -> String {
        format!("blobs/sha256/{}", self.digest.trim_start_matches("sha256:"))
    }
}

/// A tar header with everything that could vary fixed.
fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).with_context(|| format!("tar path {path}"))?;
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_size(size);
    h.set_cksum();
    Ok(h)
}

/// The layer: directories then binaries, from `bin_dir`.
fn layer_tar(bin_dir: &Path) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut dir = String::new();
    for part in BIN_DIR.split('/') {
        dir.push_str(part);
        dir.push('/');
        tar.append(&header(&dir, tar::EntryType::Directory, 0o755, 0)?, std::io::empty())?;
    }
    for name in BINARIES {
        let source = bin_dir.join(name);
        let bytes = std::fs::read(&source).with_context(|| format!("reading {}", source.display()))?;
        let h = header(&format!("{BIN_DIR}/{name}"), tar::EntryType::Regular, 0o755, bytes.len() as u64)?;
        tar.append(&h, bytes.as_slice())?;
    }
    Ok(tar.into_inner()?)
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    // GzBuilder writes mtime 0 and no file name unless told otherwise.
    let mut gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes)?;
    Ok(gz.finish()?)
}

fn json(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("JSON serializes")
}

/// Writes the OCI archive of the binaries in `bin_dir` to `out`, tagged `tag`.
pub fn write_archive(bin_dir: &Path, tag: &str, out: &Path) -> Result<()> {
    let layer_tar = layer_tar(bin_dir)?;
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&layer_tar)));
    let layer = Blob::new(gzip(&layer_tar)?);
    let config = Blob::new(json(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": [format!("PATH=/{BIN_DIR}")],
            "Entrypoint": [format!("/{BIN_DIR}/imageless")],
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    })));
    let manifest = Blob::new(json(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config.descriptor(MEDIA_CONFIG),
        "layers": [layer.descriptor(MEDIA_LAYER)],
        "annotations": { "org.opencontainers.image.version": tag },
    })));
    let mut manifest_descriptor = manifest.descriptor(MEDIA_MANIFEST);
    manifest_descriptor["annotations"] = serde_json::json!({
        // containerd's import names the image by this; CRI resolves `imageless-installer:TAG` to it.
        "io.containerd.image.name": format!("docker.io/library/{IMAGE_NAME}:{tag}"),
        // skopeo/crane: `oci-archive:imageless-installer.tar:TAG`.
        "org.opencontainers.image.ref.name": tag,
    });
    manifest_descriptor["platform"] = serde_json::json!({ "architecture": "amd64", "os": "linux" });
    let index = json(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [manifest_descriptor],
    }));
    let layout = json(&serde_json::json!({ "imageLayoutVersion": "1.0.0" }));

    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("oci-layout".into(), layout),
        ("index.json".into(), index),
        (layer.path(), layer.bytes),
        (config.path(), config.bytes),
        (manifest.path(), manifest.bytes),
    ];
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut tar = tar::Builder::new(Vec::new());
    for dir in ["blobs/", "blobs/sha256/"] {
        tar.append(&header(dir, tar::EntryType::Directory, 0o755, 0)?, std::io::empty())?;
    }
    for (path, bytes) in &files {
        tar.append(&header(path, tar::EntryType::Regular, 0o644, bytes.len() as u64)?, bytes.as_slice())?;
    }
    let archive = tar.into_inner()?;
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = out.with_extension("tar.tmp");
    std::fs::write(&tmp, &archive).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}

/// Checks that `binary` is statically linked (`file`, `ldd`) and runs in an empty root (no libc,
/// no loader, no NSS files): `--help` must get as far as the program's own code.
pub fn check_static(binary: &Path) -> Result<()> {
    let file = std::process::Command::new("file").arg("-L").arg(binary).output().context("running file")?;
    let file = String::from_utf8_lossy(&file.stdout);
    if !file.contains("statically linked") && !file.contains("static-pie linked") {
        bail!("{} is not static: {}", binary.display(), file.trim());
    }
    let ldd = std::process::Command::new("ldd").arg(binary).output().context("running ldd")?;
    let ldd = format!("{}{}", String::from_utf8_lossy(&ldd.stdout), String::from_utf8_lossy(&ldd.stderr));
    if !ldd.contains("not a dynamic executable") && !ldd.contains("statically linked") {
        bail!("ldd {} lists libraries: {}", binary.display(), ldd.trim());
    }
    let empty = tempfile::tempdir()?;
    let name = binary.file_name().context("binary name")?;
    std::fs::copy(binary, empty.path().join(name))?;
    let out = std::process::Command::new("chroot")
        .arg(empty.path())
        .arg(Path::new("/").join(name))
        .arg("--help")
        .output()
        .context("running chroot")?;
    // 126/127: the kernel or chroot could not start it (missing loader or libraries).
    if matches!(out.status.code(), Some(126 | 127) | None) {
        bail!(
            "{} does not run in an empty root ({}): {}",
            binary.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two builds of the same binaries give the same bytes; a changed binary changes them.
    #[test]
    fn archive_is_byte_identical_across_builds() {
        let dir = tempfile::tempdir().unwrap();
        let bins = dir.path().join("bins");
        std::fs::create_dir_all(&bins).unwrap();
        for name in BINARIES {
            std::fs::write(bins.join(name), format!("binary {name}")).unwrap();
        }
        let a = dir.path().join("a/imageless-installer.tar");
        let b = dir.path().join("b/imageless-installer.tar");
        write_archive(&bins, "0.1.0", &a).unwrap();
        // Different file times and a pause: nothing of the build's moment may leak in.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        for name in BINARIES {
            let bytes = std::fs::read(bins.join(name)).unwrap();
            std::fs::write(bins.join(name), bytes).unwrap();
        }
        write_archive(&bins, "0.1.0", &b).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        std::fs::write(bins.join("flox-runc"), "changed").unwrap();
        write_archive(&bins, "0.1.0", &b).unwrap();
        assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    }

    /// The archive is a valid OCI layout: every blob's name is its digest, index.json points at
    /// the manifest, the manifest at the config and layer, and the layer holds the binaries.
    #[test]
    fn archive_is_an_oci_layout_whose_digests_check() {
        let dir = tempfile::tempdir().unwrap();
        for name in BINARIES {
            std::fs::write(dir.path().join(name), format!("binary {name}")).unwrap();
        }
        let out = dir.path().join("image.tar");
        write_archive(dir.path(), "9.9.9", &out).unwrap();
        let mut files = std::collections::BTreeMap::new();
        let mut archive = tar::Archive::new(std::fs::File::open(&out).unwrap());
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            assert_eq!(entry.header().mtime().unwrap(), MTIME);
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            files.insert(entry.path().unwrap().to_string_lossy().into_owned(), bytes);
        }
        assert_eq!(files["oci-layout"], br#"{"imageLayoutVersion":"1.0.0"}"#);
        for (path, bytes) in &files {
            if let Some(hex) = path.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
                assert_eq!(hex::encode(Sha256::digest(bytes)), hex, "{path}");
            }
        }
        let blob = |digest: &serde_json::Value| {
            files[&format!("blobs/sha256/{}", digest.as_str().unwrap().trim_start_matches("sha256:"))].clone()
        };
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(m["annotations"]["io.containerd.image.name"], "docker.io/library/imageless-installer:9.9.9");
        assert_eq!(m["annotations"]["org.opencontainers.image.ref.name"], "9.9.9");
        let manifest: serde_json::Value = serde_json::from_slice(&blob(&m["digest"])).unwrap();
        assert_eq!(manifest["layers"][0]["mediaType"], MEDIA_LAYER);
        let config: serde_json::Value = serde_json::from_slice(&blob(&manifest["config"]["digest"])).unwrap();
        let layer = blob(&manifest["layers"][0]["digest"]);
        let mut tar_bytes = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(layer.as_slice()), &mut tar_bytes).unwrap();
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar_bytes)));
        assert_eq!(config["rootfs"]["diff_ids"][0], diff_id.as_str());
        let mut names = Vec::new();
        for entry in tar::Archive::new(tar_bytes.as_slice()).entries().unwrap() {
            let entry = entry.unwrap();
            let h = entry.header();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()), (0, 0, MTIME));
            names.push(entry.path().unwrap().to_string_lossy().into_owned());
        }
        assert_eq!(
            names,
            [
                "opt/",
                "opt/imageless/",
                "opt/imageless/bin/",
                "opt/imageless/bin/containerd-shim-flox-v2",
                "opt/imageless/bin/flox-activate",
                "opt/imageless/bin/flox-runc",
                "opt/imageless/bin/imageless",
            ]
        );
    }
}
