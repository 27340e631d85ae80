//! A flox node for end-to-end tests: the local hub (a private copy of the package world),
//! a node config pointing at it, and a private containerd whose `flox` runtime uses the
//! real flox-runc, runc, Nix and git.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::{
    repo_root, Containerd, ContainerdOptions, ContainerdVersion, PodError, PodManifest, PodRunner, RunningPod,
};

fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| repo_root().join(default))
}

pub fn bin_dir() -> PathBuf {
    env_path("IMAGELESS_BIN_DIR", "target/debug")
}

pub fn imageless() -> PathBuf {
    bin_dir().join("imageless")
}

pub fn activator() -> PathBuf {
    env_path("IMAGELESS_ACTIVATOR", "target/x86_64-unknown-linux-gnu/release/flox-activate")
}

/// The world hub root, built (or found up to date) once per test process.
pub fn world_root() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            for (what, path) in [
                ("imageless", imageless()),
                ("static activator", activator()),
                ("flox-runc", bin_dir().join("flox-runc")),
            ] {
                assert!(
                    path.exists(),
                    "{what} not built at {}: run `cargo xtask test` (it builds everything first)",
                    path.display()
                );
            }
            let root = env_path("IMAGELESS_HUB_ROOT", ".work/hub");
            let out = Command::new("bash")
                .arg(repo_root().join("world/build.sh"))
                .arg(&root)
                .arg(imageless())
                .output()
                .expect("running world/build.sh");
            assert!(out.status.success(), "world/build.sh failed: {}", String::from_utf8_lossy(&out.stderr));
            root
        })
        .clone()
}

/// `imageless hub serve` on a free port over a private copy of the world.
pub struct Hub {
    child: Child,
    pub root: PathBuf,
    pub url: String,
    pub log: PathBuf,
}

impl Hub {
    pub fn start(dir: &Path) -> Hub {
        let root = dir.join("hub");
        let status = Command::new("cp").arg("-a").arg(world_root()).arg(&root).status().expect("cp");
        assert!(status.success());
        Self::serve(root, dir.join("hub.log"), "127.0.0.1:0")
    }

    fn serve(root: PathBuf, log: PathBuf, listen: &str) -> Hub {
        let mut child = Command::new(imageless())
            .args(["hub", "serve", "--root"])
            .arg(&root)
            .args(["--listen", listen])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("hub log"))
            .spawn()
            .expect("starting the hub");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).expect("hub stdout");
        let url = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("hub said {line:?}")).to_string();
        Hub { child, root, url, log }
    }

    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    /// Stops the hub (SIGTERM), e.g. to test a node whose hub is unreachable.
    pub fn stop(&mut self) {
        crate::signal(self.child.id(), rustix::process::Signal::TERM);
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.stop();
        let addr = self.addr();
        let fresh = Hub::serve(self.root.clone(), self.log.clone(), &addr);
        let old = std::mem::replace(self, fresh);
        std::mem::forget(old);
    }

    pub fn imageless(&self, args: &[&str]) -> String {
        let out = Command::new(imageless()).args(args).output().expect("imageless");
        assert!(out.status.success(), "imageless {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn token(&self, handle: &str, extra: &[&str]) -> String {
        let root = self.root.display().to_string();
        let mut args = vec!["hub", "token", "--root", &root, "--handle", handle];
        args.extend_from_slice(extra);
        self.imageless(&args)
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A node's `/etc/imageless/config.toml` for tests: its state root and gcroots, the hub it
/// pulls from and trusts (the hub's own cache as substituter and key), and what else a test
/// needs. One writer for every test that runs a node, with or without containerd.
#[derive(Debug, Clone)]
pub struct NodeConfigFile {
    pub state_root: PathBuf,
    pub hub_url: String,
    /// The hub's cache signing key (`cache-key.pub` of its root).
    pub trusted_key: String,
    pub gcroots: PathBuf,
    /// The static activator and the real runc, for nodes whose containerd runs pods.
    pub activator: Option<PathBuf>,
    pub runc: Option<PathBuf>,
    pub hub_timeout_secs: u32,
    /// More lines, verbatim (e.g. `store_view = "store"`).
    pub extra: String,
}

impl NodeConfigFile {
    /// A node living in `dir` (state in `dir/state`) that pulls from `hub`; no activator or runc.
    pub fn new(dir: &Path, hub: &Hub) -> NodeConfigFile {
        let key = std::fs::read_to_string(hub.root.join("cache-key.pub")).expect("hub key");
        NodeConfigFile {
            state_root: dir.join("state"),
            hub_url: hub.url.clone(),
            trusted_key: key.trim().to_string(),
            gcroots: test_gcroots(dir),
            activator: None,
            runc: None,
            hub_timeout_secs: 10,
            extra: String::new(),
        }
    }

    pub fn text(&self) -> String {
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        let mut text = format!(
            "state_root = {state}\nhub_url = {url:?}\nsubstituters = [\"{url}/cache\"]\ntrusted_public_keys = [{key:?}]\n",
            state = q(&self.state_root),
            url = self.hub_url,
            key = self.trusted_key,
        );
        if let Some(activator) = &self.activator {
            text.push_str(&format!("activator = {}\n", q(activator)));
        }
        if let Some(runc) = &self.runc {
            text.push_str(&format!("runc = {}\n", q(runc)));
        }
        text.push_str(&format!(
            "gcroots_dir = {}\nhub_timeout_secs = {}\n{}\n",
            q(&self.gcroots),
            self.hub_timeout_secs,
            self.extra
        ));
        text
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.text()).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

/// The Nix gcroots directory of a test node living in `dir` (unique per test directory; the
/// test removes it when done).
pub fn test_gcroots(dir: &Path) -> PathBuf {
    PathBuf::from("/nix/var/nix/gcroots/imageless-test").join(dir.file_name().expect("a named test dir"))
}

/// A node: hub + node config + containerd with the flox runtime.
pub struct FloxNode {
    pub containerd: Containerd,
    pub hub: Hub,
    pub dir: tempfile::TempDir,
    pub state_root: PathBuf,
    pub gcroots: PathBuf,
    pub config_path: PathBuf,
}

impl FloxNode {
    /// Panics with the reason when the node cannot be started (a missing containerd is an
    /// install bug, never a silent pass).
    pub fn start(version: ContainerdVersion) -> FloxNode {
        Self::start_with(version, "")
    }

    /// `extra_config`: more node config lines (e.g. `store_view = "store"`).
    pub fn start_with(version: ContainerdVersion, extra_config: &str) -> FloxNode {
        Self::start_with_hook(version, extra_config, None)
    }

    /// Like `start_with`, and `hook` edits the containerd config before the daemon starts.
    pub fn start_with_hook(
        version: ContainerdVersion,
        extra_config: &str,
        hook: Option<crate::ConfigHook>,
    ) -> FloxNode {
        if let Err(why) = version.ensure_available() {
            panic!("containerd {version} is needed and not available: {why:#}");
        }
        let dir = tempfile::Builder::new().prefix("flox-node-").tempdir().expect("tempdir");
        let hub = Hub::start(dir.path());
        let config = NodeConfigFile {
            activator: Some(activator()),
            runc: Some("/usr/bin/runc".into()),
            extra: extra_config.to_string(),
            ..NodeConfigFile::new(dir.path(), &hub)
        };
        let config_path = dir.path().join("node.toml");
        config.write(&config_path);
        let NodeConfigFile { state_root, gcroots, .. } = config;
        let mut env = BTreeMap::new();
        env.insert("IMAGELESS_CONFIG".to_string(), config_path.display().to_string());
        let containerd =
            Containerd::start(version, ContainerdOptions { env, before_start: hook, ..ContainerdOptions::default() })
                .unwrap_or_else(|e| panic!("{e:#}"));
        FloxNode { containerd, hub, dir, state_root, gcroots, config_path }
    }

    pub async fn runner(&self) -> PodRunner {
        PodRunner::new(self.containerd.client().await.expect("CRI client"))
    }

    /// Runs a pod manifest (host network; no CNI here).
    pub async fn run(&self, yaml: &str, secrets: &[(&str, &Path)]) -> Result<RunningPod, PodError> {
        let pod = PodManifest::from_yaml(yaml).unwrap_or_else(|e| panic!("bad test manifest: {e}\n{yaml}"));
        let mut opts = self.containerd.run_options();
        opts.force_host_network = true;
        for (name, dir) in secrets {
            opts.secrets.insert(name.to_string(), dir.to_path_buf());
        }
        self.runner().await.run(&pod, &opts).await
    }

    /// Runs a pod to completion and returns (exit code, stdout, stderr).
    pub async fn run_to_end(&self, yaml: &str, secrets: &[(&str, &Path)]) -> Result<(i32, String, String), PodError> {
        let mut pod = self.run(yaml, secrets).await?;
        let exit = pod.wait_main(Some(Duration::from_secs(60))).await?;
        let logs = pod.logs(None)?;
        let (mut out, mut err) = (String::new(), String::new());
        for l in logs {
            let s = if format!("{:?}", l.stream) == "Stdout" { &mut out } else { &mut err };
            s.push_str(&l.text);
            s.push('\n');
        }
        pod.remove().await?;
        Ok((exit.exit_code, out, err))
    }

    /// The CRI error message of a pod that must fail to start.
    pub async fn run_error(&self, yaml: &str) -> String {
        match self.run(yaml, &[]).await {
            Ok(pod) => {
                let _ = pod.remove().await;
                panic!("pod started but should have failed:\n{yaml}");
            }
            Err(e) => e.cri_message().map(String::from).unwrap_or_else(|| e.to_string()),
        }
    }

    /// A directory holding a `floxhub-token` secret file.
    pub fn token_secret(&self, name: &str, token: &str) -> PathBuf {
        let dir = self.dir.path().join("secrets").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("floxhub-token"), format!("{token}\n")).unwrap();
        dir
    }

    pub fn world(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.hub.root.join("world.json")).unwrap()).unwrap()
    }
}

impl Drop for FloxNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.gcroots);
    }
}

/// A one-container pod on the flox runtime.
pub fn flox_pod(name: &str, annotations: &[(&str, &str)], image: &str, command: &[&str]) -> String {
    let ann: String = annotations.iter().map(|(k, v)| format!("    {k}: {v:?}\n")).collect();
    let cmd = serde_json::to_string(command).unwrap();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  annotations:\n{ann}spec:\n  runtimeClassName: flox\n  containers:\n  - name: main\n    image: {image}\n    command: {cmd}\n"
    )
}

/// One HTTP GET over loopback, returning the body.
pub fn http_get(addr: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET / HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    Ok(resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// Polls `addr` until a GET returns a non-empty body (a server that is still starting), for
/// at most `timeout`; returns the trimmed body, or "" when it never answered. Blocking: the
/// server runs in another process, so nothing async needs to make progress meanwhile.
pub fn wait_for_answer(addr: &str, timeout: Duration) -> String {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if let Ok(body) = http_get(addr) {
            if !body.trim().is_empty() {
                return body.trim().to_string();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    String::new()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}
