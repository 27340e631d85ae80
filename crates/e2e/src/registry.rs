//! A real container registry on loopback: Debian's `docker-registry` (the CNCF distribution
//! registry, 2.8) with its own config, a temp storage directory and a free port, stopped when
//! dropped. It is the baseline an image-based pod pulls from (plain HTTP, as containerd is told
//! through a `hosts.toml`, see [`crate::config::plain_http_registry_hosts`]).
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Where Debian's package puts the registry binary.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A running registry; its storage lives in its own temp dir, gone on drop.
pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`, what image references start with.
    pub addr: String,
    pub log: PathBuf,
}

impl Registry {
    /// Starts `docker-registry serve` on a free loopback port and waits until `/v2/` answers.
    pub fn start() -> anyhow::Result<Registry> {
        if !Path::new(REGISTRY_BIN).is_file() {
            bail!("{REGISTRY_BIN} is missing: run scripts/setup-machine.sh (Debian package docker-registry)");
        }
        let dir = tempfile::Builder::new().prefix("imageless-registry-").tempdir()?;
        // The port is found by binding and letting go: another process may take it in between,
        // so a registry that exits at once is retried on a new port.
        let mut last_error = None;
        for _ in 0..3 {
            let port = crate::flox_node::free_port();
            match Self::start_on(&dir, port) {
                Ok((child, log)) => return Ok(Registry { child, dir, addr: format!("127.0.0.1:{port}"), log }),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("tried at least once"))
    }

    fn start_on(dir: &tempfile::TempDir, port: u16) -> anyhow::Result<(Child, PathBuf)> {
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let config = dir.path().join("config.yml");
        // `delete: enabled` lets a benchmark drop an image between turns; the in-memory
        // blob descriptor cache is the package default.
        let text = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        std::fs::write(&config, text)?;
        let log = dir.path().join(format!("registry-{port}.log"));
        let mut child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::options().append(true).open(&log)?)
            .spawn()
            .with_context(|| format!("starting {REGISTRY_BIN}"))?;
        let addr = format!("127.0.0.1:{port}");
        let t0 = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "docker-registry exited at start ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default().lines().last().unwrap_or("")
                );
            }
            if v2_answers(&addr) {
                return Ok((child, log));
            }
            if t0.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                bail!("docker-registry did not answer on {addr} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The registry's storage directory (blobs and repositories).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// `ADDR/name:tag`, the reference containerd pulls.
    pub fn reference(&self, name_tag: &str) -> String {
        format!("{}/{name_tag}", self.addr)
    }

    /// Length of the log now: [`Registry::bytes_served_since`] counts after this mark.
    pub fn log_mark(&self) -> usize {
        std::fs::metadata(&self.log).map(|m| m.len() as usize).unwrap_or(0)
    }

    /// Response body bytes of the GETs logged since `mark` (the registry's own count,
    /// `http.response.written`): what a pull transferred.
    pub fn bytes_served_since(&self, mark: usize) -> u64 {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes[mark.min(bytes.len())..]).into_owned();
        text.lines()
            .filter(|l| l.contains("response completed") && l.contains("http.request.method=GET"))
            .filter_map(|l| {
                let rest = l.split("http.response.written=").nth(1)?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
            .sum()
    }
}

/// Whether `GET /v2/` answers 200 (the registry's API version check).
fn v2_answers(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 16];
    matches!(s.read(&mut head), Ok(n) if n >= 12 && head[..n].starts_with(b"HTTP/1.") && &head[9..12] == b"200")
}

impl Drop for Registry {
    fn drop(&mut self) {
        crate::signal(self.child.id(), rustix::process::Signal::TERM);
        let _ = self.child.wait();
    }
}
