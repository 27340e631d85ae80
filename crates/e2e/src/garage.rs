//! Garage (the S3-compatible distributed object store, built from crates.io by
//! scripts/setup-machine.sh, linked at .work/tools/bin) as a single-node cluster on loopback: its S3 API,
//! its website endpoint (plain HTTP reads of a bucket, which Debian's Nix 2.8, built without
//! S3 support, can use as a binary cache), one key with read and write on the buckets the test
//! makes. Stopped, and its data removed, on drop.
//!
//! [`Garage::start_cluster`]: N nodes on loopback (each its own config, ports and data, one
//! zone each), connected, with `replication_factor` N; the S3 API, website and key are node 0's
//! ([`Garage::s3_endpoint`]), and [`Garage::kill_node`] ends another node with SIGKILL.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use imageless_s3::{Credentials, S3Store, S3Url};

/// The region Garage is configured with (its S3 API checks it in signatures).
pub const REGION: &str = "garage";

pub struct Garage {
    child: Child,
    dir: tempfile::TempDir,
    config: PathBuf,
    /// Nodes 1… of a cluster (node 0 is `child`), with their S3 endpoints.
    others: Vec<(Option<Child>, String)>,
    /// `http://127.0.0.1:PORT` of the S3 API.
    pub s3_endpoint: String,
    /// Port of the website endpoint (a bucket is served for `Host: <bucket alias>`).
    pub web_port: u16,
    pub credentials: Credentials,
}

/// The garage binary: GARAGE_BIN, else .work/tools/bin/garage.
pub fn garage_bin() -> PathBuf {
    std::env::var_os("GARAGE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join(".work/tools/bin/garage"))
}

impl Garage {
    pub fn start() -> anyhow::Result<Garage> {
        Garage::start_cluster(1)
    }

    /// `nodes` Garage nodes on loopback with `replication_factor = nodes` (one zone each).
    pub fn start_cluster(nodes: usize) -> anyhow::Result<Garage> {
        let bin = garage_bin();
        if !bin.is_file() {
            bail!("garage is not built at {}: run scripts/setup-machine.sh", bin.display());
        }
        let nodes = nodes.max(1);
        let dir = tempfile::Builder::new().prefix("garage-").tempdir()?;
        let secret: String = (0..32).map(|i| format!("{:02x}", (i * 37 + std::process::id() as usize) % 256)).collect();
        let mut started = Vec::new();
        for n in 0..nodes {
            let node_dir = if n == 0 { dir.path().to_path_buf() } else { dir.path().join(format!("node{n}")) };
            std::fs::create_dir_all(&node_dir)?;
            started.push(start_node(&bin, &node_dir, &secret, nodes)?);
        }
        let credentials = Credentials {
            access_key_id: "GK0123456789abcdef01234567".into(),
            secret_access_key: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
            session_token: None,
        };
        let mut rest = started.split_off(1).into_iter();
        let first = started.pop().expect("node 0");
        let others: Vec<(Option<Child>, String, PathBuf, u16)> =
            rest.by_ref().map(|n| (Some(n.child), format!("http://127.0.0.1:{}", n.s3), n.config, n.rpc)).collect();
        let other_configs: Vec<(PathBuf, u16)> = others.iter().map(|o| (o.2.clone(), o.3)).collect();
        let s3 = first.s3;
        let mut garage = Garage {
            child: first.child,
            dir,
            config: first.config,
            others: others.into_iter().map(|(c, e, _, _)| (c, e)).collect(),
            s3_endpoint: format!("http://127.0.0.1:{s3}"),
            web_port: first.web,
            credentials,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        // Node ids, once each daemon answers.
        let mut ids = vec![garage.wait_for_id(&garage.config.clone(), deadline)?];
        for (config, rpc) in &other_configs {
            let id = garage.wait_for_id(config, deadline)?;
            garage.cli(&["node", "connect", &format!("{id}@127.0.0.1:{rpc}")])?;
            ids.push(id);
        }
        for (n, id) in ids.iter().enumerate() {
            garage.cli(&["layout", "assign", "-z", &format!("dc{}", n + 1), "-c", "1G", id])?;
        }
        garage.cli(&["layout", "apply", "--version", "1"])?;
        let key = &garage.credentials;
        let (id, secret) = (key.access_key_id.clone(), key.secret_access_key.clone());
        garage.cli(&["key", "import", "--yes", "-n", "imageless-e2e", &id, &secret])?;
        // The S3 API answers once the layout is live.
        while std::net::TcpStream::connect(("127.0.0.1", s3)).is_err() {
            if Instant::now() > deadline {
                bail!("garage's S3 API did not listen within 30 s: {}", garage.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(garage)
    }

    /// The node id (`garage node id -q`, without the address) of the node configured by
    /// `config`, once its daemon answers RPC. `node id` alone reads the key from the metadata
    /// directory and succeeds before the daemon listens (a `layout assign` right after it was
    /// refused once); `status` goes through the daemon.
    fn wait_for_id(&mut self, config: &Path, deadline: Instant) -> anyhow::Result<String> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("garage exited ({status}): {}", self.log());
            }
            let run = |args: &[&str]| Command::new(garage_bin()).arg("-c").arg(config).args(args).output();
            let out = run(&["node", "id", "-q"])?;
            if out.status.success() && run(&["status"])?.status.success() {
                let text = String::from_utf8_lossy(&out.stdout);
                return Ok(text.trim().split('@').next().unwrap_or_default().to_string());
            }
            if Instant::now() > deadline {
                bail!("garage ({}) did not answer within 30 s: {}", config.display(), self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The S3 endpoints of every node (`http://127.0.0.1:PORT`), node 0 first.
    pub fn s3_endpoints(&self) -> Vec<String> {
        std::iter::once(self.s3_endpoint.clone()).chain(self.others.iter().map(|(_, e)| e.clone())).collect()
    }

    /// Kills node `n` (1…: node 0 holds the S3 endpoint the tests use) with SIGKILL.
    pub fn kill_node(&mut self, n: usize) -> anyhow::Result<()> {
        let Some((child, _)) = n.checked_sub(1).and_then(|i| self.others.get_mut(i)) else {
            bail!("garage node {n}: only nodes 1..{} can be killed", self.others.len() + 1);
        };
        if let Some(mut c) = child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Runs `garage -c CONFIG ARGS…`; its stdout.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(garage_bin()).arg("-c").arg(&self.config).args(args).output()?;
        if !out.status.success() {
            bail!("garage {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default()
    }

    /// A bucket the test key may read and write.
    pub fn create_bucket(&self, name: &str) -> anyhow::Result<()> {
        self.cli(&["bucket", "create", name])?;
        self.cli(&["bucket", "allow", "--read", "--write", "--owner", name, "--key", "imageless-e2e"])?;
        Ok(())
    }

    /// Serves `bucket` on the website endpoint for `Host: localhost` (so a plain HTTP client can
    /// read it as `http://localhost:<web_port>/`).
    pub fn serve_website_as_localhost(&self, bucket: &str) -> anyhow::Result<String> {
        self.cli(&["bucket", "website", "--allow", bucket])?;
        self.cli(&["bucket", "alias", bucket, "localhost"])?;
        Ok(format!("http://localhost:{}", self.web_port))
    }

    /// The node's substituter URL for `bucket`, as Nix writes it.
    pub fn substituter(&self, bucket: &str) -> String {
        format!(
            "s3://{bucket}?region={REGION}&endpoint={}&addressing-style=path",
            self.s3_endpoint.trim_start_matches("http://")
        ) + "&scheme=http"
    }

    /// Writes the test key as an AWS shared-credentials file (`[default]` profile) at `path`,
    /// as an operator gives it to a node (`s3_credentials_file`) or a hub.
    pub fn write_credentials_file(&self, path: &Path) -> anyhow::Result<()> {
        let k = &self.credentials;
        std::fs::write(
            path,
            format!(
                "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
                k.access_key_id, k.secret_access_key
            ),
        )?;
        Ok(())
    }

    /// A store of `bucket` with the test key.
    pub fn store(&self, bucket: &str) -> anyhow::Result<S3Store> {
        Ok(S3Store::new(S3Url::parse(&self.substituter(bucket))?, Some(&self.credentials))?)
    }

    /// Uploads every file below `dir` to `bucket` under the same relative keys (8 at a time).
    pub fn upload_dir(&self, bucket: &str, dir: &Path) -> anyhow::Result<usize> {
        let store = self.store(bucket)?;
        let mut files = Vec::new();
        collect(dir, dir, &mut files)?;
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build()?;
        let chunks: Vec<Vec<(String, PathBuf)>> =
            files.chunks(files.len().div_ceil(8).max(1)).map(|c| c.to_vec()).collect();
        std::thread::scope(|scope| -> anyhow::Result<()> {
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|chunk| {
                    let (store, client) = (store.clone(), client.clone());
                    scope.spawn(move || -> anyhow::Result<()> {
                        for (key, path) in chunk {
                            let body = std::fs::read(&path)?;
                            // A single node answers 503 ("could not reach quorum") when its own
                            // internal calls time out on a loaded machine: that PUT again, a
                            // few times, before the setup fails.
                            let mut tries = 0;
                            loop {
                                let resp = client.put(store.presign_put(&key).as_str()).body(body.clone()).send()?;
                                if resp.status().is_success() {
                                    break;
                                }
                                tries += 1;
                                if resp.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE || tries == 5 {
                                    bail!("PUT {key}: {}: {}", resp.status(), resp.text().unwrap_or_default());
                                }
                                std::thread::sleep(Duration::from_millis(500 << tries));
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join().expect("upload thread panicked")?;
            }
            Ok(())
        })?;
        Ok(files.len())
    }
}

/// One started node: its daemon, config and ports.
struct StartedNode {
    child: Child,
    config: PathBuf,
    s3: u16,
    rpc: u16,
    web: u16,
}

fn start_node(bin: &Path, dir: &Path, secret: &str, replication: usize) -> anyhow::Result<StartedNode> {
    let port = || crate::flox_node::free_port();
    let (s3, rpc, web, admin) = (port(), port(), port(), port());
    let config = dir.join("garage.toml");
    std::fs::write(
        &config,
        format!(
            "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\n\
             replication_factor = {replication}\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_secret = \"{secret}\"\n\n[s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\
             root_domain = \".s3.garage.localhost\"\n\n[s3_web]\nbind_addr = \"127.0.0.1:{web}\"\n\
             root_domain = \".web.garage.localhost\"\nindex = \"index.html\"\n\n[admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
            d = dir.display()
        ),
    )?;
    let log = std::fs::File::create(dir.join("garage.log"))?;
    let child = Command::new(bin)
        .arg("-c")
        .arg(&config)
        .arg("server")
        .env("RUST_LOG", "garage=warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(StartedNode { child, config, s3, rpc, web })
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let path = e.path();
        if e.file_type()?.is_dir() {
            collect(root, &path, out)?;
        } else if e.file_type()?.is_file() {
            let key = path.strip_prefix(root)?.to_string_lossy().into_owned();
            out.push((key, path));
        }
    }
    Ok(())
}

impl Drop for Garage {
    fn drop(&mut self) {
        let others = self.others.iter_mut().filter_map(|(c, _)| c.as_mut());
        let mut children: Vec<&mut Child> = std::iter::once(&mut self.child).chain(others).collect();
        for c in children.iter() {
            crate::signal(c.id(), rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for c in children.iter_mut() {
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
