//! The image a user would build instead of a Flox environment: exactly the environment's closure
//! under /nix/store plus its command, as an OCI image layout directory, built the two ways real
//! users build them: one layer per store path (nix2container, nix-snapshotter) or one layer for
//! the whole closure (a Dockerfile `COPY`); layers gzip- (what registries serve by default) or
//! zstd-compressed. Deterministic: the same closure gives the same digests, so a second
//! generation's per-path image shares the unchanged paths' layers with the first, as in a real
//! registry. Pushed with Debian's `skopeo`.
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde_json::json;
use sha2::{Digest, Sha256};

/// How the closure is cut into layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layering {
    /// One layer per store path, in store-path order.
    PerPath,
    /// The whole closure in one layer.
    Single,
    /// At most this many layers: a layer each for the largest paths, the rest together in the
    /// last. A closure of more paths than overlayfs stacks (500 lower layers) cannot be one
    /// layer per path; nixpkgs' dockerTools (`maxLayers`, 100 by default) and nix2container cut
    /// it this way, choosing the paths by popularity where we choose by size (the builder has
    /// no reference graph; a cold pull depends on the layers' count and sizes only).
    Capped(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    Gzip,
    Zstd,
}

impl LayerCompression {
    fn media_type(self) -> &'static str {
        match self {
            Self::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Self::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        }
    }
}

impl Layering {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PerPath => "per_path",
            Self::Single => "single_layer",
            Self::Capped(_) => "capped",
        }
    }
}

/// What goes into the image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The directory holding the closure's paths by their base names (a node store).
    pub store_dir: PathBuf,
    /// The closure: `/nix/store/<hash>-<name>` paths.
    pub closure: Vec<String>,
    /// The image config's `Env` (e.g. `PATH=` the environment's bin directories).
    pub env: Vec<String>,
    /// The image config's `Cmd`.
    pub cmd: Vec<String>,
    pub layering: Layering,
    pub compression: LayerCompression,
}

/// A content-addressed blob of the layout.
#[derive(Debug, Clone)]
pub struct Blob {
    /// `sha256:<hex>`
    pub digest: String,
    pub size: u64,
}

/// An OCI image layout directory with one tagged image.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub layout: PathBuf,
    pub tag: String,
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<Blob>,
    /// Uncompressed tar bytes of all layers.
    pub tar_bytes: u64,
}

impl BuiltImage {
    /// Bytes a pull onto an empty node transfers: manifest, config and every layer.
    pub fn transfer_bytes(&self) -> u64 {
        self.manifest.size + self.config.size + self.layers.iter().map(|l| l.size).sum::<u64>()
    }

    /// Bytes a pull transfers when the node already holds `previous`' layers.
    pub fn transfer_bytes_after(&self, previous: &BuiltImage) -> u64 {
        let had: std::collections::HashSet<&str> = previous.layers.iter().map(|l| l.digest.as_str()).collect();
        self.manifest.size
            + self.config.size
            + self.layers.iter().filter(|l| !had.contains(l.digest.as_str())).map(|l| l.size).sum::<u64>()
    }
}

/// A writer that hashes and counts what passes through.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing { inner, hasher: Sha256::new(), count: 0 }
    }
    fn finish(self) -> (W, String, u64) {
        (self.inner, format!("sha256:{}", hex_of(&self.hasher.finalize())), self.count)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The compressor in a layer's writer chain.
enum Compressor<W: Write> {
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Compressor<W> {
    fn new(kind: LayerCompression, inner: W) -> anyhow::Result<Self> {
        Ok(match kind {
            // Level 6, as docker, containerd and skopeo compress by default.
            LayerCompression::Gzip => Self::Gzip(flate2::write::GzEncoder::new(inner, flate2::Compression::default())),
            // Level 3, zstd's (and containerd's) default.
            LayerCompression::Zstd => Self::Zstd(zstd::stream::write::Encoder::new(inner, 3)?),
        })
    }
    fn finish(self) -> std::io::Result<W> {
        match self {
            Self::Gzip(e) => e.finish(),
            Self::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Gzip(e) => e.write(buf),
            Self::Zstd(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Gzip(e) => e.flush(),
            Self::Zstd(e) => e.flush(),
        }
    }
}

/// Nix's timestamp for every store file: layers depend on content only.
const MTIME: u64 = 1;

/// A directory entry of the tar (parents of the store paths and directories inside them).
fn append_dir<W: Write>(tar: &mut tar::Builder<W>, name: &str, mode: u32) -> anyhow::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(mode);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(0);
    tar.append_data(&mut h, name, std::io::empty())?;
    Ok(())
}

/// Appends `src` (a file, directory or symlink) as `name`, directories recursively in name order.
fn append_tree<W: Write>(tar: &mut tar::Builder<W>, src: &Path, name: &str) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(src).with_context(|| format!("reading {}", src.display()))?;
    let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
    let mut h = tar::Header::new_gnu();
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    let ft = meta.file_type();
    if ft.is_symlink() {
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        let target = std::fs::read_link(src)?;
        tar.append_link(&mut h, name, &target)?;
    } else if ft.is_dir() {
        append_dir(tar, &format!("{name}/"), mode)?;
        let mut entries: Vec<_> =
            std::fs::read_dir(src)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
        entries.sort();
        for e in entries {
            let child = e.to_str().with_context(|| format!("non-UTF-8 name in {}", src.display()))?;
            append_tree(tar, &src.join(child), &format!("{name}/{child}"))?;
        }
    } else if ft.is_file() {
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_size(meta.len());
        let f = File::open(src).with_context(|| format!("opening {}", src.display()))?;
        tar.append_data(&mut h, name, std::io::BufReader::with_capacity(256 * 1024, f))?;
    } else {
        bail!("{}: neither file, directory nor symlink", src.display());
    }
    Ok(())
}

/// [`Layering::Capped`]: the `max - 1` largest paths a group each (largest first), the rest one
/// group in store-path order.
fn capped_groups<'a>(store_dir: &Path, closure: Vec<&'a str>, max: usize) -> anyhow::Result<Vec<Vec<&'a str>>> {
    if max < 2 || closure.len() <= max {
        return Ok(closure.into_iter().map(|p| vec![p]).collect());
    }
    let mut sized = closure
        .iter()
        .map(|p| Ok((tree_bytes(&store_dir.join(p.trim_start_matches("/nix/store/")))?, *p)))
        .collect::<anyhow::Result<Vec<(u64, &str)>>>()?;
    // Largest first; ties by name, so the same closure always gives the same layers.
    sized.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let own: std::collections::HashSet<&str> = sized.iter().take(max - 1).map(|(_, p)| *p).collect();
    let mut groups: Vec<Vec<&str>> = sized.iter().take(max - 1).map(|(_, p)| vec![*p]).collect();
    groups.push(closure.into_iter().filter(|p| !own.contains(p)).collect());
    Ok(groups)
}

/// Bytes of the regular files below `path` (not following symlinks).
pub fn tree_bytes(path: &Path) -> anyhow::Result<u64> {
    let meta = std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.is_dir() {
        let mut sum = 0;
        for e in std::fs::read_dir(path)? {
            sum += tree_bytes(&e?.path())?;
        }
        Ok(sum)
    } else if meta.is_file() {
        Ok(meta.len())
    } else {
        Ok(0)
    }
}

/// Writes one layer holding `paths` into the layout's blobs: (layer blob, diff id, tar bytes).
fn write_layer(
    spec: &ImageSpec,
    paths: &[&str],
    blobs: &Path,
    scratch_name: &str,
) -> anyhow::Result<(Blob, String, u64)> {
    let tmp = blobs.join(format!(".{scratch_name}.tmp"));
    let file = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
    let compressed = Hashing::new(file);
    let compressor = Compressor::new(spec.compression, compressed)?;
    let mut tar = tar::Builder::new(Hashing::new(compressor));
    tar.follow_symlinks(false);
    append_dir(&mut tar, "nix/", 0o755)?;
    append_dir(&mut tar, "nix/store/", 0o755)?;
    for p in paths {
        let base = p.strip_prefix("/nix/store/").with_context(|| format!("{p} is not a /nix/store path"))?;
        append_tree(&mut tar, &spec.store_dir.join(base), &format!("nix/store/{base}"))?;
    }
    let (compressor, diff_id, tar_bytes) = tar.into_inner()?.finish();
    let (file, digest, size) = compressor.finish()?.finish();
    // No fsync: the layout is read back at once (by skopeo) and is scratch.
    file.into_inner().map_err(|e| e.into_error())?;
    std::fs::rename(&tmp, blobs.join(digest.trim_start_matches("sha256:")))?;
    Ok((Blob { digest, size }, diff_id, tar_bytes))
}

/// Writes a JSON document as a blob.
fn write_json_blob(blobs: &Path, doc: &serde_json::Value) -> anyhow::Result<Blob> {
    let bytes = serde_json::to_vec(doc)?;
    let digest = format!("sha256:{}", hex_of(&Sha256::digest(&bytes)));
    std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), &bytes)?;
    Ok(Blob { digest, size: bytes.len() as u64 })
}

/// Builds the image into a new OCI layout directory `out`, tagged `tag`.
pub fn build(spec: &ImageSpec, out: &Path, tag: &str) -> anyhow::Result<BuiltImage> {
    let blobs = out.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let mut closure: Vec<&str> = spec.closure.iter().map(String::as_str).collect();
    closure.sort_unstable();
    closure.dedup();
    let groups: Vec<Vec<&str>> = match spec.layering {
        Layering::PerPath => closure.iter().map(|p| vec![*p]).collect(),
        Layering::Single => vec![closure],
        Layering::Capped(max) => capped_groups(&spec.store_dir, closure, max)?,
    };
    let (mut layers, mut diff_ids, mut tar_bytes) = (Vec::new(), Vec::new(), 0);
    for (i, group) in groups.iter().enumerate() {
        let (blob, diff_id, n) = write_layer(spec, group, &blobs, &format!("layer-{i}"))?;
        layers.push(blob);
        diff_ids.push(diff_id);
        tar_bytes += n;
    }
    let config = write_json_blob(
        &blobs,
        &json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Env": spec.env, "Cmd": spec.cmd, "WorkingDir": "/" },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        }),
    )?;
    let layer_media = spec.compression.media_type();
    let manifest = write_json_blob(
        &blobs,
        &json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config.digest,
                "size": config.size,
            },
            "layers": layers.iter().map(|l| json!({
                "mediaType": layer_media, "digest": l.digest, "size": l.size,
            })).collect::<Vec<_>>(),
        }),
    )?;
    std::fs::write(out.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest.digest,
            "size": manifest.size,
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    });
    std::fs::write(out.join("index.json"), serde_json::to_vec(&index)?)?;
    Ok(BuiltImage { layout: out.to_path_buf(), tag: tag.to_string(), manifest, config, layers, tar_bytes })
}

/// Pushes the image to a plain-HTTP registry as `dest` (`ADDR/name:tag`) with Debian's skopeo,
/// blobs as they are (no recompression), so the registry serves exactly these digests.
pub fn push(image: &BuiltImage, dest: &str) -> anyhow::Result<()> {
    let src = format!("oci:{}:{}", image.layout.display(), image.tag);
    let out = Command::new("skopeo")
        // No signature policy applies to a loopback test registry; Debian's skopeo may come
        // without /etc/containers/policy.json.
        .args(["--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false", "--preserve-digests"])
        .arg(&src)
        .arg(format!("docker://{dest}"))
        .output()
        .context("running skopeo (Debian package skopeo; scripts/setup-machine.sh installs it)")?;
    if !out.status.success() {
        bail!(
            "skopeo copy {src} docker://{dest} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Realizes `env`'s closure into a fresh node store below `scratch` with `imageless pull`
/// (node config `config_text` plus this store): the store an image is built from.
pub fn realize_store(imageless: &Path, config_text: &str, scratch: &Path, env: &str) -> anyhow::Result<PathBuf> {
    let store = scratch.join("store");
    std::fs::create_dir_all(&store)?;
    let config = scratch.join("node.toml");
    // First, before any table the node config may have.
    std::fs::write(&config, format!("store_dir = {:?}\n{config_text}", store.display().to_string()))?;
    let out = Command::new(imageless)
        .args(["pull", env, "--config"])
        .arg(&config)
        .output()
        .with_context(|| format!("running {}", imageless.display()))?;
    if !out.status.success() {
        bail!("imageless pull {env}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(store)
}

/// The image's `PATH=`: the bin directories of a world.json generation's packages (what the
/// environment puts on PATH), then the usual system directories.
pub fn path_of_generation(generation: &serde_json::Value) -> String {
    let mut dirs: Vec<String> = generation["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["store_paths"].as_object().into_iter().flatten())
        .filter_map(|(_, v)| v.as_str().map(|s| format!("{s}/bin")))
        .collect();
    dirs.extend(["/usr/local/bin", "/usr/bin", "/bin"].map(String::from));
    format!("PATH={}", dirs.join(":"))
}

/// The closure of a world.json generation.
pub fn closure_of_generation(generation: &serde_json::Value) -> Vec<String> {
    generation["closure"].as_array().into_iter().flatten().filter_map(|p| p.as_str().map(String::from)).collect()
}
