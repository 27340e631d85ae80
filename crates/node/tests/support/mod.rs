//! A signed Nix binary cache made in the test (NARs, narinfos, compression variants,
//! tampering), served over HTTP on 127.0.0.1 by the project's hub, plus a NAR dumper to
//! compare what the node store holds with what was published.
#![allow(dead_code)]
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use imageless_core::store_path::StorePath;
use sha2::{Digest, Sha256};

pub mod bad_server;

pub const KEY_NAME: &str = "test-cache-1";

pub fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

pub fn public_key() -> String {
    format!("{KEY_NAME}:{}", base64::engine::general_purpose::STANDARD.encode(signing_key().verifying_key().as_bytes()))
}

pub fn nix32(bytes: &[u8]) -> String {
    nix_base32::to_nix_base32(bytes)
}

/// NAR serialization (Nix's archive.cc format).
#[derive(Default)]
pub struct Nar(pub Vec<u8>);

impl Nar {
    pub fn str(&mut self, s: &[u8]) {
        self.0.extend_from_slice(&(s.len() as u64).to_le_bytes());
        self.0.extend_from_slice(s);
        self.0.resize(self.0.len() + (8 - s.len() % 8) % 8, 0);
    }
    pub fn toks(&mut self, toks: &[&str]) {
        for t in toks {
            self.str(t.as_bytes());
        }
    }
}

/// A file tree to publish.
#[derive(Clone)]
pub enum Node {
    File { contents: Vec<u8>, executable: bool },
    Link(String),
    Dir(Vec<(String, Node)>),
}

fn write_node(n: &Node, out: &mut Nar) {
    out.toks(&["("]);
    match n {
        Node::File { contents, executable } => {
            out.toks(&["type", "regular"]);
            if *executable {
                out.toks(&["executable", ""]);
            }
            out.toks(&["contents"]);
            out.str(contents);
        }
        Node::Link(t) => out.toks(&["type", "symlink", "target", t]),
        Node::Dir(entries) => {
            out.toks(&["type", "directory"]);
            let mut sorted = entries.clone();
            sorted.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, child) in &sorted {
                out.toks(&["entry", "(", "name", name, "node"]);
                write_node(child, out);
                out.toks(&[")"]);
            }
        }
    }
    out.toks(&[")"]);
}

pub fn nar_of(n: &Node) -> Vec<u8> {
    let mut out = Nar::default();
    out.toks(&["nix-archive-1"]);
    write_node(n, &mut out);
    out.0
}

/// Serializes a tree on disk as a NAR (what `nix-store --dump` does), checking Nix's modes
/// and mtime 1 on the way.
pub fn dump(path: &Path) -> Vec<u8> {
    fn node(p: &Path, out: &mut Nar) {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(p).unwrap();
        assert_eq!(m.mtime(), 1, "mtime of {}", p.display());
        out.toks(&["("]);
        if m.file_type().is_symlink() {
            out.toks(&["type", "symlink", "target", std::fs::read_link(p).unwrap().to_str().unwrap()]);
        } else if m.is_dir() {
            assert_eq!(m.mode() & 0o7777, 0o555, "mode of {}", p.display());
            out.toks(&["type", "directory"]);
            let mut names: Vec<String> =
                std::fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            names.sort();
            for name in names {
                out.toks(&["entry", "(", "name", &name, "node"]);
                node(&p.join(&name), out);
                out.toks(&[")"]);
            }
        } else {
            let exec = m.mode() & 0o100 != 0;
            assert_eq!(m.mode() & 0o7777, if exec { 0o555 } else { 0o444 }, "mode of {}", p.display());
            out.toks(&["type", "regular"]);
            if exec {
                out.toks(&["executable", ""]);
            }
            out.toks(&["contents"]);
            out.str(&std::fs::read(p).unwrap());
        }
        out.toks(&[")"]);
    }
    let mut out = Nar::default();
    out.toks(&["nix-archive-1"]);
    node(path, &mut out);
    out.0
}

/// One path of the synthetic cache.
pub struct Published {
    pub path: StorePath,
    pub nar: Vec<u8>,
    pub references: Vec<StorePath>,
}

pub fn store_path(salt: &str, name: &str) -> StorePath {
    let h = Sha256::digest(format!("{salt}:{name}"));
    StorePath::parse(&format!("/nix/store/{}-{name}", nix32(&h[..20]))).unwrap()
}

/// A three-path closure: `app` → `lib` → `data`, `app` also → itself. `salt` makes every
/// test's paths and NAR files distinct.
pub fn closure(salt: &str, big_file: usize) -> Vec<Published> {
    let data = store_path(salt, "data");
    let lib = store_path(salt, "lib");
    let app = store_path(salt, "app");
    let blob: Vec<u8> = (0..big_file as u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let data_tree = Node::File { contents: format!("{salt}\n").into_bytes(), executable: false };
    let lib_tree = Node::Dir(vec![
        ("lib".into(), Node::Dir(vec![("libx.so".into(), Node::File { contents: blob, executable: false })])),
        ("share".into(), Node::Link(data.as_str().into())),
    ]);
    let app_tree = Node::Dir(vec![(
        "bin".into(),
        Node::Dir(vec![
            ("app".into(), Node::File { contents: format!("#!{lib}/lib\n").into_bytes(), executable: true }),
            ("self".into(), Node::Link(format!("{app}/bin/app"))),
        ]),
    )]);
    vec![
        Published { path: data.clone(), nar: nar_of(&data_tree), references: vec![] },
        Published { path: lib.clone(), nar: nar_of(&lib_tree), references: vec![data.clone()] },
        Published { path: app.clone(), nar: nar_of(&app_tree), references: vec![app.clone(), lib] },
    ]
}

/// How to publish one path.
#[derive(Clone, Default)]
pub struct Tamper {
    /// Sign with another key (same name): a bad signature.
    pub wrong_key: bool,
    /// Sign with a key name the node does not trust.
    pub unknown_key: bool,
    /// Flip a byte of file contents after hashing (same size): a NarHash mismatch.
    pub flip_byte: bool,
    /// Serve only this many bytes of the (compressed) file.
    pub truncate_to: Option<usize>,
    /// Leave this path out of the cache (404).
    pub absent: bool,
}

pub fn compress(compression: &str, nar: &[u8]) -> (Vec<u8>, &'static str) {
    match compression {
        "none" => (nar.to_vec(), ""),
        "xz" => {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(nar).unwrap();
            (e.finish().unwrap(), ".xz")
        }
        "zstd" => (zstd::encode_all(nar, 1).unwrap(), ".zst"),
        "bzip2" => {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(nar).unwrap();
            (e.finish().unwrap(), ".bz2")
        }
        other => panic!("{other}"),
    }
}

/// The NAR inside a cache file compressed with `compression` (as a narinfo names it).
pub fn decompress(compression: &str, file: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match compression {
        "none" => out.extend_from_slice(file),
        "xz" => {
            liblzma::read::XzDecoder::new(file).read_to_end(&mut out).unwrap();
        }
        "zstd" => out = zstd::decode_all(file).unwrap(),
        "bzip2" => {
            bzip2::read::BzDecoder::new(file).read_to_end(&mut out).unwrap();
        }
        other => panic!("{other}"),
    }
    out
}

/// Writes `paths` into `<cache>/` as `nix copy` would (narinfo + nar/), signed.
pub fn write_cache(cache: &Path, paths: &[Published], compression: &str, tamper: &dyn Fn(&StorePath) -> Tamper) {
    std::fs::create_dir_all(cache.join("nar")).unwrap();
    std::fs::write(cache.join("nix-cache-info"), "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n").unwrap();
    for p in paths {
        let t = tamper(&p.path);
        if t.absent {
            continue;
        }
        let nar_hash = format!("sha256:{}", nix32(&Sha256::digest(&p.nar)));
        let mut nar = p.nar.clone();
        if t.flip_byte {
            // The middle of the NAR is inside the big file of `lib`: contents, not structure.
            let mid = nar.len() / 2;
            nar[mid] ^= 0x55;
        }
        let (mut file, ext) = compress(compression, &nar);
        let file_hash = nix32(&Sha256::digest(&file));
        if let Some(n) = t.truncate_to {
            file.truncate(n);
        }
        let url = format!("nar/{file_hash}.nar{ext}");
        std::fs::write(cache.join(&url), &file).unwrap();
        let mut refs: Vec<&str> = p.references.iter().map(StorePath::as_str).collect();
        refs.sort();
        let fingerprint = format!("1;{};{nar_hash};{};{}", p.path, p.nar.len(), refs.join(","));
        let key = if t.wrong_key { SigningKey::from_bytes(&[43; 32]) } else { signing_key() };
        let name = if t.unknown_key { "someone-else-1" } else { KEY_NAME };
        let sig = base64::engine::general_purpose::STANDARD.encode(key.sign(fingerprint.as_bytes()).to_bytes());
        let bases: Vec<&str> = p.references.iter().map(StorePath::base_name).collect();
        let text = format!(
            "StorePath: {}\nURL: {url}\nCompression: {compression}\nFileHash: sha256:{file_hash}\nFileSize: {}\n\
             NarHash: {nar_hash}\nNarSize: {}\nReferences: {}\nSig: {name}:{sig}\n",
            p.path,
            file.len(),
            p.nar.len(),
            bases.join(" ")
        );
        std::fs::write(cache.join(format!("{}.narinfo", p.path.hash_part())), text).unwrap();
    }
}

/// Access-log lines of every hub in this test binary (the hub logs through `tracing`).
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;
impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How many times the hubs answered `GET <path> 200`.
pub fn served(path: &str) -> usize {
    let log = String::from_utf8_lossy(&LOG.lock().unwrap()).into_owned();
    log.lines().filter(|l| l.contains(&format!("GET {path} 200"))).count()
}

/// The project's hub, serving `<root>/cache` on 127.0.0.1.
pub struct Hub {
    pub root: tempfile::TempDir,
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hub {
    pub fn start() -> Hub {
        static INIT: Once = Once::new();
        INIT.call_once(|| {
            tracing_subscriber::fmt()
                .with_env_filter("imageless_hub::access=info")
                .with_ansi(false)
                .with_writer(|| LogWriter)
                .init();
        });
        let root = tempfile::tempdir().unwrap();
        let paths = imageless_hub::config::HubPaths::new(root.path());
        paths.write(&imageless_hub::config::HubConfig::new(&[7; 32])).unwrap();
        std::fs::create_dir_all(paths.cache()).unwrap();
        // The hub is async: it runs on its own runtime in its own thread until dropped.
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let options = imageless_hub::server::ServeOptions::new("127.0.0.1:0");
                let server = imageless_hub::server::HubServer::bind(paths, &options).await.unwrap();
                addr_tx.send(server.local_addr()).unwrap();
                server
                    .run(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let addr = addr_rx.recv().expect("hub bound");
        let stop = Some(stop);
        Hub { root, addr, stop, thread: Some(thread) }
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.root.path().join("cache")
    }

    pub fn url(&self) -> String {
        format!("http://{}/cache", self.addr)
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Names in the store dir (temporary ones included).
pub fn store_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().file_name().into_string().unwrap()).collect(),
        Err(_) => vec![],
    };
    v.sort();
    v
}

/// Makes a tree removable by a non-root user too.
pub fn chmod_tree_writable(p: &Path) {
    if let Ok(m) = std::fs::symlink_metadata(p) {
        if m.is_dir() {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
            for e in std::fs::read_dir(p).unwrap().flatten() {
                chmod_tree_writable(&e.path());
            }
        }
    }
}

/// Copies the binary cache at `src` (NARs in whatever compression the hub wrote them) into
/// `dst`, recompressing every NAR with `compression` and rewriting each narinfo's URL,
/// Compression, FileHash and FileSize (the signature does not cover them, so it stays valid).
/// Only the narinfos of `only` (by hash part) when given.
pub fn recompress_cache(src: &Path, dst: &Path, compression: &str, only: Option<&BTreeSet<String>>) {
    std::fs::create_dir_all(dst.join("nar")).unwrap();
    std::fs::copy(src.join("nix-cache-info"), dst.join("nix-cache-info")).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if !name.ends_with(".narinfo") || only.is_some_and(|o| !o.contains(name.trim_end_matches(".narinfo"))) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(&format!("{k}: "))).unwrap().to_string();
        let nar = decompress(&field("Compression"), &std::fs::read(src.join(field("URL"))).unwrap());
        let (file, ext) = compress(compression, &nar);
        let file_hash = nix32(&Sha256::digest(&file));
        let url = format!("nar/{file_hash}.nar{ext}");
        std::fs::write(dst.join(&url), &file).unwrap();
        let rewritten: String = text
            .lines()
            .map(|l| match l.split_once(": ").map(|(k, _)| k) {
                Some("URL") => format!("URL: {url}\n"),
                Some("Compression") => format!("Compression: {compression}\n"),
                Some("FileHash") => format!("FileHash: sha256:{file_hash}\n"),
                Some("FileSize") => format!("FileSize: {}\n", file.len()),
                _ => format!("{l}\n"),
            })
            .collect();
        std::fs::write(dst.join(&name), rewritten).unwrap();
    }
}
