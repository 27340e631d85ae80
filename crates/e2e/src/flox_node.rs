//! A flox node for end-to-end tests: the local hub (a private copy of the package world),
//! a node config pointing at it, and a private containerd whose `flox` runtime uses the
//! real flox-runc and runc; the node fetches into its own store (no Nix on the node).
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::{
    repo_root, Containerd, ContainerdOptions, ContainerdVersion, FloxBinaries, PodError, PodManifest, PodRunner,
    RunningPod,
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
    /// The `imageless` binary serving it (the tests' debug build, or the bench's release one).
    program: PathBuf,
    pub root: PathBuf,
    pub url: String,
    pub log: PathBuf,
}

/// `program` run as the hub: it stands for the outside world, so on a node without git
/// (`without-nix --hide-git`) it still serves and publishes git with the git kept for fixtures.
fn hub_command(program: &Path) -> anyhow::Result<Command> {
    let mut cmd = Command::new(program);
    if let Some(fixture) = std::env::var_os(crate::without_nix::FIXTURE_PATH_ENV) {
        let mut dirs = vec![PathBuf::from(fixture)];
        dirs.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
        cmd.env("PATH", std::env::join_paths(dirs).context("PATH entries without ':'")?);
    }
    Ok(cmd)
}

/// A private copy of the hub root `world` at `root`: everything copied but the NAR files,
/// which are hard links. The world's cache is 1 GB (flox/xlarge alone 0.8 GB) and every test
/// node starts its own hub; NAR files are content-addressed and the hub only ever adds or
/// renames them, while tests do rewrite other files of their copy in place (nix-cache-info,
/// hub.json). Falls back to copying where links cannot be made (another filesystem).
pub fn copy_hub_root(world: &Path, root: &Path) -> anyhow::Result<()> {
    let cp = |args: &[&str], from: &Path, to: &Path| -> anyhow::Result<bool> {
        // Quiet: the hard-link attempt fails file by file when `root` is on another file
        // system (the bench's disk), and the copy below follows.
        let stderr = if args.contains(&"-al") { Stdio::null() } else { Stdio::inherit() };
        Ok(Command::new("cp").args(args).arg(from).arg(to).stderr(stderr).status().context("running cp")?.success())
    };
    std::fs::create_dir_all(root.join("cache")).with_context(|| format!("creating {}", root.display()))?;
    for (from, to) in [(world.to_path_buf(), root.to_path_buf()), (world.join("cache"), root.join("cache"))] {
        for entry in std::fs::read_dir(&from).with_context(|| format!("reading {}", from.display()))? {
            let entry = entry?;
            let name = entry.file_name();
            if (from == world && name == "cache") || (from != world && name == "nar") {
                continue;
            }
            if !cp(&["-a"], &entry.path(), &to.join(&name))? {
                bail!("copying {} to {} failed", entry.path().display(), to.display());
            }
        }
    }
    let (nar, dest) = (world.join("cache/nar"), root.join("cache/nar"));
    if nar.is_dir() && !cp(&["-al"], &nar, &dest)? {
        let _ = std::fs::remove_dir_all(&dest);
        if !cp(&["-a"], &nar, &dest)? {
            bail!("copying {} to {} failed", nar.display(), dest.display());
        }
    }
    Ok(())
}

impl Hub {
    /// The tests' hub: the debug `imageless` over a copy of the (built) world; panics on failure.
    pub fn start(dir: &Path) -> Hub {
        Self::start_from(&world_root(), &imageless(), dir).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// A hub served by `program` over a private copy (`<dir>/hub`) of the hub root `world`.
    pub fn start_from(world: &Path, program: &Path, dir: &Path) -> anyhow::Result<Hub> {
        let root = dir.join("hub");
        copy_hub_root(world, &root)?;
        Self::serve(program, root, dir.join("hub.log"), "127.0.0.1:0", &[])
    }

    /// `program hub serve` on a free port over `root` as it is (e.g. an empty root made by
    /// `hub init`), with more serve arguments (e.g. `--upstream URL`); its log in `log`.
    pub fn serve_root(program: &Path, root: &Path, log: &Path, extra: &[&str]) -> anyhow::Result<Hub> {
        Self::serve(program, root.to_path_buf(), log.to_path_buf(), "127.0.0.1:0", extra)
    }

    fn serve(program: &Path, root: PathBuf, log: PathBuf, listen: &str, extra: &[&str]) -> anyhow::Result<Hub> {
        let mut child = hub_command(program)?
            .args(["hub", "serve", "--root"])
            .arg(&root)
            .args(["--listen", listen])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?)
            .spawn()
            .with_context(|| format!("starting the hub ({})", program.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).context("reading the hub's stdout")?;
        let Some(url) = line.trim().strip_prefix("listening on ").map(String::from) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the hub said {line:?}; log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        };
        Ok(Hub { child, program: program.to_path_buf(), root, url, log })
    }

    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    /// The serving process's id (e.g. to read its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the hub (SIGTERM), e.g. to test a node whose hub is unreachable.
    pub fn stop(&mut self) {
        crate::signal(self.child.id(), rustix::process::Signal::TERM);
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.stop();
        let addr = self.addr();
        let fresh = Hub::serve(&self.program, self.root.clone(), self.log.clone(), &addr, &[])
            .unwrap_or_else(|e| panic!("{e:#}"));
        let old = std::mem::replace(self, fresh);
        std::mem::forget(old);
    }

    pub fn imageless(&self, args: &[&str]) -> String {
        let out = hub_command(&self.program).expect("hub command").args(args).output().expect("imageless");
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

    /// Length of the access log now, to count requests made after this mark.
    pub fn log_mark(&self) -> usize {
        std::fs::read(&self.log).map(|b| b.len()).unwrap_or(0)
    }

    /// (narinfo GETs, NAR GETs) of the binary cache logged since `mark`.
    pub fn cache_gets_since(&self, mark: usize) -> (usize, usize) {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes[mark.min(bytes.len())..]).into_owned();
        let narinfo = text.lines().filter(|l| l.contains("GET /cache/") && l.contains(".narinfo ")).count();
        let nar = text.lines().filter(|l| l.contains("GET /cache/nar/")).count();
        (narinfo, nar)
    }

    /// The cache's signing key as nodes trust it (`name:base64`).
    pub fn public_key(&self) -> anyhow::Result<String> {
        let path = self.root.join("cache-key.pub");
        Ok(std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?.trim().to_string())
    }

    /// The hub's world.json (environments, generations, closures).
    pub fn world(&self) -> anyhow::Result<serde_json::Value> {
        let path = self.root.join("world.json");
        serde_json::from_slice(&std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?)
            .with_context(|| format!("parsing {}", path.display()))
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a node is made of: the binaries, the world it serves and extra config.
pub struct NodeSetup {
    /// The `imageless` that serves the hub.
    pub imageless: PathBuf,
    /// The static activator the node config names.
    pub activator: PathBuf,
    /// The hub root to copy (world/build.sh's output).
    pub world: PathBuf,
    /// What the `flox` runtime handler runs.
    pub flox: FloxBinaries,
    /// More node config lines (e.g. `store_view = "store"`).
    pub extra_config: String,
    /// Edits the containerd config before the daemon starts.
    pub hook: Option<crate::ConfigHook>,
}

impl NodeSetup {
    /// The tests' parts: debug binaries (IMAGELESS_BIN_DIR) and the world, built if needed.
    pub fn for_tests() -> NodeSetup {
        NodeSetup {
            imageless: imageless(),
            activator: activator(),
            world: world_root(),
            flox: crate::FloxBinaries::default(),
            extra_config: String::new(),
            hook: None,
        }
    }
}

/// A node's `/etc/imageless/config.toml` for tests: its state root (its store is the default
/// `<state_root>/store`), the hub it
/// pulls from and trusts (the hub's own cache as substituter and key), and what else a test
/// needs. One writer for every test that runs a node, with or without containerd.
#[derive(Debug, Clone)]
pub struct NodeConfigFile {
    pub state_root: PathBuf,
    pub hub_url: String,
    /// The one substituter (the hub's own binary cache, `<hub>/cache`).
    pub cache_url: String,
    /// The hub's cache signing key (`cache-key.pub` of its root).
    pub trusted_key: String,
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
            cache_url: format!("{}/cache", hub.url),
            trusted_key: key.trim().to_string(),
            activator: None,
            runc: None,
            hub_timeout_secs: 10,
            extra: String::new(),
        }
    }

    pub fn text(&self) -> String {
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        let mut text = format!(
            "state_root = {state}\nhub_url = {url:?}\nsubstituters = [{cache:?}]\ntrusted_public_keys = [{key:?}]\n",
            state = q(&self.state_root),
            url = self.hub_url,
            cache = self.cache_url,
            key = self.trusted_key,
        );
        if let Some(activator) = &self.activator {
            text.push_str(&format!("activator = {}\n", q(activator)));
        }
        if let Some(runc) = &self.runc {
            text.push_str(&format!("runc = {}\n", q(runc)));
        }
        text.push_str(&format!("hub_timeout_secs = {}\n{}\n", self.hub_timeout_secs, self.extra));
        text
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.text()).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

/// Node config text of a node whose containerd runs pods: state in `state_root`, pulling
/// from `hub`, with `activator`, the real runc and `extra` lines.
pub fn node_config(hub: &Hub, activator: &Path, state_root: &Path, extra: &str) -> anyhow::Result<String> {
    Ok(NodeConfigFile {
        state_root: state_root.to_path_buf(),
        hub_url: hub.url.clone(),
        cache_url: format!("{}/cache", hub.url),
        trusted_key: hub.public_key()?,
        activator: Some(activator.to_path_buf()),
        runc: Some("/usr/bin/runc".into()),
        hub_timeout_secs: 10,
        extra: extra.to_string(),
    }
    .text())
}

/// A node: hub + node config + containerd with the flox runtime.
pub struct FloxNode {
    pub containerd: Containerd,
    pub hub: Hub,
    pub dir: tempfile::TempDir,
    pub state_root: PathBuf,
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
        let setup = NodeSetup { extra_config: extra_config.to_string(), hook, ..NodeSetup::for_tests() };
        Self::start_setup(version, setup).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// A node from explicit parts (the benchmark's release binaries, its own GC roots).
    pub fn start_setup(version: ContainerdVersion, setup: NodeSetup) -> anyhow::Result<FloxNode> {
        version.ensure_available()?;
        let dir = tempfile::Builder::new().prefix("flox-node-").tempdir().context("creating the node's temp dir")?;
        let hub = Hub::start_from(&setup.world, &setup.imageless, dir.path())?;
        let state_root = dir.path().join("state");
        let config_path = dir.path().join("node.toml");
        let config = node_config(&hub, &setup.activator, &state_root, &setup.extra_config)?;
        std::fs::write(&config_path, config).with_context(|| format!("writing {}", config_path.display()))?;
        let mut env = BTreeMap::new();
        env.insert("IMAGELESS_CONFIG".to_string(), config_path.display().to_string());
        let opts = ContainerdOptions { env, flox: Some(setup.flox), before_start: setup.hook, ..Default::default() };
        let containerd = Containerd::start(version, opts)?;
        Ok(FloxNode { containerd, hub, dir, state_root, config_path })
    }

    /// The node's own store (the config's default, `<state_root>/store`).
    /// The node store, once no pull is still making entries in it: a cold pod's prefetch
    /// makes the store's own entries of what it fetched after the pod started (see
    /// imageless_node::deferred_store), holding the store lock shared until it is done.
    pub fn store_dir(&self) -> PathBuf {
        // The lock gc takes (imageless_node::gc::StoreLock), taken and let go.
        if let Ok(lock) = std::fs::File::open(self.state_root.join("store.lock")) {
            let _ = rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive);
        }
        self.state_root.join("store")
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

/// The annotation naming a pod's environment.
pub const ENV_ANNOTATION: &str = "flox.dev/environment";

/// A one-container pod manifest: `runtime` None = the default runc handler.
pub fn pod_yaml(
    name: &str,
    runtime: Option<&str>,
    annotations: &[(&str, &str)],
    image: &str,
    command: &[&str],
) -> String {
    let ann: String = annotations.iter().map(|(k, v)| format!("    {k}: {v:?}\n")).collect();
    let ann = if ann.is_empty() { ann } else { format!("  annotations:\n{ann}") };
    let rc = runtime.map(|r| format!("  runtimeClassName: {r}\n")).unwrap_or_default();
    let cmd = serde_json::to_string(command).expect("strings");
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n{ann}spec:\n{rc}  containers:\n  - name: main\n    image: {image}\n    command: {cmd}\n"
    )
}

/// A one-container pod on the flox runtime.
pub fn flox_pod(name: &str, annotations: &[(&str, &str)], image: &str, command: &[&str]) -> String {
    pod_yaml(name, Some("flox"), annotations, image, command)
}

/// A one-container pod of environment `env` (the annotation) on the flox runtime.
pub fn env_pod(name: &str, env: &str, image: &str, command: &[&str]) -> String {
    flox_pod(name, &[(ENV_ANNOTATION, env)], image, command)
}

/// A one-container flox pod of `env` on flox/empty running `command`, with the FloxHub token
/// secret `floxhub-token` mounted at /var/run/secrets/flox.dev as Flox's docs write it (when
/// `with_secret`; pass the secret's directory to [`FloxNode::run`] under that name).
pub fn token_pod(name: &str, env: &str, command: &str, with_secret: bool) -> String {
    let (volumes, mounts) = if with_secret {
        (
            "  volumes:\n  - name: secret-volume\n    secret:\n      secretName: floxhub-token\n",
            "    volumeMounts:\n    - name: secret-volume\n      mountPath: \"/var/run/secrets/flox.dev\"\n      readOnly: true\n",
        )
    } else {
        ("", "")
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  annotations:\n    flox.dev/environment: \"{env}\"\nspec:\n  runtimeClassName: flox\n{volumes}  containers:\n  - name: empty\n    image: flox/empty:1.0.0\n    command: [\"{command}\"]\n{mounts}"
    )
}

/// A one-container pod on the default runc handler.
pub fn runc_pod(name: &str, image: &str, command: &[&str]) -> String {
    pod_yaml(name, None, &[], image, command)
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
