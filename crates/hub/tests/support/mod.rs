//! Shared by the serving and pull-through tests: a hub root holding the world's binary cache, a
//! running `imageless-hub serve` child, and a small keep-alive HTTP/1.1 client with a read
//! timeout (a response that never comes fails the test instead of hanging it).
#![allow(dead_code)]
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_imageless-hub");

/// The world hub root built by `cargo xtask world` (IMAGELESS_HUB_ROOT); fails with the reason
/// when it is missing, never skips.
pub fn world_root() -> PathBuf {
    let root = std::env::var_os("IMAGELESS_HUB_ROOT").map(PathBuf::from).expect(
        "IMAGELESS_HUB_ROOT is not set: these tests serve the world's binary cache; run `cargo xtask world` and \
         set IMAGELESS_HUB_ROOT to its hub root (.work/hub)",
    );
    assert!(
        root.join("cache/nix-cache-info").is_file(),
        "{}: no binary cache (run `cargo xtask world`)",
        root.display()
    );
    root
}

/// The world's public key (`imageless-hub-1:...`), which signed every narinfo of its cache.
pub fn world_key() -> String {
    std::fs::read_to_string(world_root().join("cache-key.pub")).unwrap().trim().to_owned()
}

/// The closure of a world environment's live generation.
pub fn world_closure(env: &str) -> Vec<String> {
    let world: serde_json::Value =
        serde_json::from_slice(&std::fs::read(world_root().join("world.json")).unwrap()).unwrap();
    let e = &world["environments"][env];
    let live = e["live_generation"].to_string();
    e["generations"][&live]["closure"]
        .as_array()
        .unwrap_or_else(|| panic!("world.json has no closure for {env}"))
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect()
}

/// Copies the world's cache into `cache` (made by `init`), but the files of paths only
/// flox/xlarge has: 0.8 GB these tests do not need (the e2e suite and the bench use it). A copy,
/// never links: tests cut and rewrite their copy's files in place.
fn copy_world_cache(cache: &Path) {
    let root = world_root();
    let world: serde_json::Value = serde_json::from_slice(&std::fs::read(root.join("world.json")).unwrap()).unwrap();
    let hash_parts = |env: &serde_json::Value| -> std::collections::BTreeSet<String> {
        let gens = env["generations"].as_object().into_iter().flatten();
        gens.flat_map(|(_, g)| g["closure"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| Some(p.as_str()?.trim_start_matches("/nix/store/").split('-').next()?.to_owned()))
            .collect()
    };
    let envs = world["environments"].as_object().unwrap();
    let mut skip = envs.get("flox/xlarge").map(hash_parts).unwrap_or_default();
    for (name, env) in envs {
        if name != "flox/xlarge" {
            skip.retain(|h| !hash_parts(env).contains(h));
        }
    }
    let (from, mut sources, mut nars) = (root.join("cache"), Vec::new(), Vec::new());
    for entry in std::fs::read_dir(&from).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        match name.strip_suffix(".narinfo") {
            Some(h) if skip.contains(h) => continue,
            _ if name == "nar" => continue,
            _ => sources.push(from.join(&name)),
        }
    }
    let skipped_nars: std::collections::BTreeSet<String> = skip
        .iter()
        .filter_map(|h| std::fs::read_to_string(from.join(format!("{h}.narinfo"))).ok())
        .filter_map(|t| t.lines().find_map(|l| l.strip_prefix("URL: nar/").map(str::to_owned)))
        .collect();
    for entry in std::fs::read_dir(from.join("nar")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !skipped_nars.contains(&name) {
            nars.push(from.join("nar").join(name));
        }
    }
    std::fs::create_dir_all(cache.join("nar")).unwrap();
    for (files, dest) in [(sources, cache.to_path_buf()), (nars, cache.join("nar"))] {
        for chunk in files.chunks(500) {
            let status = Command::new("cp").arg("-a").args(chunk).arg(&dest).status().unwrap();
            assert!(status.success(), "copying the world's cache into {}", dest.display());
        }
    }
}

/// A fresh hub root (`init`); with `world_cache`, the world's cache files copied into it.
pub struct Root {
    pub dir: tempfile::TempDir,
}

impl Root {
    pub fn new(world_cache: bool) -> Root {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(BIN).args(["init", "--root"]).arg(dir.path()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        if world_cache {
            copy_world_cache(&dir.path().join("cache"));
        }
        Root { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }
    /// Every narinfo and NAR of the cache, as paths relative to `cache/`.
    pub fn cache_files(&self) -> Vec<String> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(self.cache()).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".narinfo") {
                files.push(name);
            }
        }
        for entry in std::fs::read_dir(self.cache().join("nar")).unwrap() {
            files.push(format!("nar/{}", entry.unwrap().file_name().into_string().unwrap()));
        }
        files.sort();
        files
    }
}

/// A running `imageless-hub serve`; SIGTERM on drop.
pub struct Server {
    child: Option<Child>,
    /// `127.0.0.1:PORT`
    pub hostport: String,
    stderr_file: PathBuf,
    _stderr_dir: tempfile::TempDir,
}

impl Server {
    pub fn start(root: &Path, extra: &[&str]) -> Server {
        let stderr_dir = tempfile::tempdir().unwrap();
        let stderr_file = stderr_dir.path().join("stderr");
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--root"])
            .arg(root)
            .args(extra)
            .env("IMAGELESS_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_file).unwrap())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        let hostport = first
            .trim()
            .strip_prefix("listening on ")
            .and_then(|url| url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")))
            .unwrap_or_else(|| panic!("first line {first:?}; log: {}", std::fs::read_to_string(&stderr_file).unwrap()))
            .to_owned();
        Server { child: Some(child), hostport, stderr_file, _stderr_dir: stderr_dir }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.hostport)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_file).unwrap()
    }

    /// SIGTERM; asserts a clean exit 0 and returns the log.
    pub fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        sigterm(child.id());
        let status = child.wait().unwrap();
        assert!(status.success(), "hub exited with {status}");
        self.log()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            sigterm(child.id());
            let _ = child.wait();
        }
    }
}

/// SIGTERM to a child we started (it may have exited already).
fn sigterm(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

/// One response: status, headers (lowercased names), body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 connection kept alive across requests; every read times out after `timeout`.
pub struct Conn {
    reader: BufReader<TcpStream>,
    hostport: String,
}

impl Conn {
    pub fn open(hostport: &str, timeout: Duration) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(hostport)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Conn { reader: BufReader::new(stream), hostport: hostport.to_owned() })
    }

    /// Sends one request and reads its whole response (no body for HEAD, 204 or 304, as HTTP says).
    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Answer> {
        self.request_with_body(method, path, headers, None)
    }

    /// [`Conn::request`] with a request body (sent with its Content-Length).
    pub fn request_with_body(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> std::io::Result<Answer> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.hostport);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(body) = body {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        self.reader.get_mut().write_all(&bytes)?;
        let mut status_line = String::new();
        if self.reader.read_line(&mut status_line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed before a response"));
        }
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let mut answer = Answer { status, headers, body: Vec::new() };
        if method != "HEAD" && status != 204 && status != 304 {
            let len: usize = answer
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("no content-length in {:?}", answer.headers)))?;
            answer.body = vec![0; len];
            self.reader.read_exact(&mut answer.body)?;
        }
        Ok(answer)
    }
}

/// An empty directory to use as a Nix store (`--store DIR`), made writable again on drop
/// (Nix makes store paths read-only).
pub struct Store(pub tempfile::TempDir);

impl Store {
    pub fn new() -> Store {
        Store(tempfile::tempdir().unwrap())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = Command::new("chmod").arg("-R").arg("u+w").arg(self.0.path()).status();
    }
}

/// `nix copy --from SUBSTITUTER --to STORE PATHS` trusting `key`, with no narinfo caching, killed
/// after `deadline`. Ok(elapsed) or Err(what went wrong: stderr, or a stall).
pub fn nix_copy(
    substituter: &str,
    store: &Path,
    paths: &[String],
    key: &str,
    deadline: Duration,
) -> Result<Duration, String> {
    let cache_home = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let mut child = Command::new("nix")
        .args(["--extra-experimental-features", "nix-command", "copy", "--from", substituter, "--to"])
        .arg(store)
        .args(paths)
        .args(["--option", "trusted-public-keys", key])
        .args(["--option", "narinfo-cache-positive-ttl", "0"])
        .args(["--option", "narinfo-cache-negative-ttl", "0"])
        .env("XDG_CACHE_HOME", cache_home.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let err = reader.join().unwrap();
            return if status.success() {
                Ok(started.elapsed())
            } else {
                Err(format!("nix copy failed ({status}): {err}"))
            };
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("nix copy stalled: no result after {deadline:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
