//! Running a planned pod over CRI the way kubelet does: sandbox, images, init containers to
//! completion, then the app containers; waiting, exec, logs and removal.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;

use crate::client::CriClient;
use crate::error::{KubeEvent, PodError};
use crate::logs::{LogFollower, LogLine, Stream};
use crate::manifest::PodManifest;
use crate::plan::{self, PlanOptions, PlannedContainer, CONTAINER_NAME_LABEL, INIT_LABEL, MANAGED_LABEL};

/// Label holding the node-side directory of a pod (logs, emptyDirs), so `pod rm` of a pod
/// started by another process can delete it.
pub const POD_DIR_LABEL: &str = "imageless.dev/pod-dir";
const POLL: Duration = Duration::from_millis(100);
const IMAGE_VISIBLE_POLLS: usize = 20;
/// Grace period for stopping containers on removal (kubelet uses the pod's, default 30 s;
/// this runner is for tests and demos, where waiting long helps nobody).
const STOP_GRACE_SECS: i64 = 2;

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Pods get `<state_root>/pods/<ns>_<name>_<uid>/`; secrets default to `<state_root>/secrets/NAME`.
    pub state_root: PathBuf,
    pub secrets: BTreeMap<String, PathBuf>,
    pub force_host_network: bool,
    /// Pod UID; generated when `None`. Knowing it up front lets a caller clean up a pod whose
    /// start was interrupted (`remove_by_uid`).
    pub uid: Option<String>,
    /// Print each container's log lines with a `[name]` prefix while waiting.
    pub stream_logs: bool,
    /// Limit for each init container to finish.
    pub init_timeout: Option<Duration>,
    /// hostPath volumes beneath this directory (see [`PlanOptions::host_path_root`]).
    pub host_path_root: Option<PathBuf>,
    /// Containers not to run (see [`PlanOptions::skip_containers`]).
    pub skip_containers: BTreeSet<String>,
}

impl RunOptions {
    pub fn new(state_root: impl Into<PathBuf>) -> Self {
        RunOptions {
            state_root: state_root.into(),
            secrets: BTreeMap::new(),
            force_host_network: false,
            uid: None,
            stream_logs: false,
            init_timeout: None,
            host_path_root: None,
            skip_containers: BTreeSet::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StartedContainer {
    pub name: String,
    pub id: String,
    pub init: bool,
    pub log_path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerExit {
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
}

pub struct PodRunner {
    client: CriClient,
}

/// A pod whose sandbox exists on the runtime.
pub struct RunningPod {
    client: CriClient,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub sandbox_id: String,
    pub pod_dir: Option<PathBuf>,
    pub containers: Vec<StartedContainer>,
    followers: Vec<(String, LogFollower)>,
    stream_logs: bool,
}

/// A fresh pod UID (UUID-shaped, from the clock and the process id).
pub fn new_uid() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let n = nanos ^ ((std::process::id() as u128) << 64);
    let h = format!("{:032x}", n);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn read_secret(path: &Path) -> Result<String, PodError> {
    std::fs::read_to_string(path).map_err(|source| PodError::Io {
        what: "reading secret key",
        path: path.into(),
        source,
    })
}

impl PodRunner {
    pub fn new(client: CriClient) -> Self {
        PodRunner { client }
    }

    /// Creates the sandbox and runs the pod's containers. On failure, whatever was created is
    /// removed again and the error (with the CRI message verbatim) is returned.
    pub async fn run(&self, pod: &PodManifest, opts: &RunOptions) -> Result<RunningPod, PodError> {
        let uid = opts.uid.clone().unwrap_or_else(new_uid);
        let pod_dir = opts.state_root.join("pods").join(format!("{}_{}_{}", pod.namespace, pod.name, uid));
        let plan_opts = PlanOptions {
            uid: uid.clone(),
            log_dir: pod_dir.join("logs"),
            pod_dir: pod_dir.clone(),
            secrets: opts.secrets.clone(),
            secrets_root: opts.state_root.join("secrets"),
            force_host_network: opts.force_host_network,
            host_path_root: opts.host_path_root.clone(),
            skip_containers: opts.skip_containers.clone(),
        };
        let mut plan = plan::plan(pod, &plan_opts, &read_secret)?;
        plan.sandbox.labels.insert(POD_DIR_LABEL.into(), pod_dir.to_string_lossy().into_owned());

        if !plan.host_network {
            if let Some((reason, message)) = self.client.network_not_ready().await? {
                return Err(PodError::NetworkNotReady { reason, message });
            }
        }
        for image in plan.init_containers.iter().chain(&plan.containers).map(|c| c.image.clone()) {
            self.ensure_image(&image).await?;
        }
        for dir in plan.dirs_to_create.iter().chain([&plan_opts.log_dir]) {
            std::fs::create_dir_all(dir).map_err(|source| PodError::Io {
                what: "creating",
                path: dir.clone(),
                source,
            })?;
        }

        tracing::debug!(pod = %pod.name, handler = %plan.runtime_handler, "RunPodSandbox");
        let sandbox_id = match self.client.run_pod_sandbox(plan.sandbox.clone(), &plan.runtime_handler).await {
            Ok(id) => id,
            Err(e) => {
                // containerd may keep a NotReady sandbox after a failed start (e.g. network
                // setup); kubelet would retry, this runner gives up, so remove it.
                if let Err(cleanup) = remove_by_uid(&self.client, &uid).await {
                    tracing::warn!("cleaning up after a failed sandbox start: {cleanup}");
                }
                let _ = std::fs::remove_dir_all(&pod_dir);
                return Err(e);
            }
        };
        let mut running = RunningPod {
            client: self.client.clone(),
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            uid,
            sandbox_id,
            pod_dir: Some(pod_dir),
            containers: Vec::new(),
            followers: Vec::new(),
            stream_logs: opts.stream_logs,
        };
        match running.start_all(&plan.sandbox, &plan.init_containers, &plan.containers, opts.init_timeout).await {
            Ok(()) => Ok(running),
            Err(e) => {
                if let Err(cleanup) = running.remove_ref().await {
                    tracing::warn!("cleaning up after a failed start: {cleanup}");
                }
                Err(e)
            }
        }
    }

    async fn ensure_image(&self, image: &str) -> Result<(), PodError> {
        // containerd's CRI learns about images imported with `ctr` from events, asynchronously
        // (seen on 2.1): an archive imported a moment ago may not be visible yet.
        for _ in 0..IMAGE_VISIBLE_POLLS {
            if self.client.image_present(image).await? {
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
        match self.client.pull_image(image).await {
            Ok(_) => Ok(()),
            Err(PodError::Cri { message, .. }) => Err(PodError::ImageMissing { image: image.into(), message }),
            Err(e) => Err(e),
        }
    }
}

impl RunningPod {
    /// Finds a pod this runner started, by namespace and name.
    pub async fn find(client: &CriClient, namespace: &str, name: &str) -> Result<RunningPod, PodError> {
        let sandboxes = client
            .list_pod_sandboxes(&[
                (MANAGED_LABEL, "true"),
                (plan::POD_NAME_LABEL, name),
                (plan::POD_NAMESPACE_LABEL, namespace),
            ])
            .await?;
        let sandbox = sandboxes
            .into_iter()
            .max_by_key(|s| s.created_at)
            .ok_or_else(|| PodError::PodNotFound { namespace: namespace.into(), name: name.into() })?;
        Self::from_sandbox(client, sandbox).await
    }

    /// Every pod this runner started on the runtime.
    pub async fn list(client: &CriClient) -> Result<Vec<cri::PodSandbox>, PodError> {
        let mut items = client.list_pod_sandboxes(&[(MANAGED_LABEL, "true")]).await?;
        items.sort_by_key(|s| s.created_at);
        Ok(items)
    }

    async fn from_sandbox(client: &CriClient, sandbox: cri::PodSandbox) -> Result<RunningPod, PodError> {
        let mut containers = Vec::new();
        let mut listed = client.list_containers(&sandbox.id).await?;
        listed.sort_by_key(|c| c.created_at);
        for c in listed {
            let status = client.container_status(&c.id).await?;
            containers.push(StartedContainer {
                name: c.metadata.map(|m| m.name).unwrap_or_default(),
                init: c.labels.get(INIT_LABEL).is_some_and(|v| v == "true"),
                id: c.id,
                log_path: PathBuf::from(status.log_path),
            });
        }
        let meta = sandbox.metadata.unwrap_or_default();
        Ok(RunningPod {
            client: client.clone(),
            name: meta.name,
            namespace: meta.namespace,
            uid: meta.uid,
            pod_dir: sandbox.labels.get(POD_DIR_LABEL).map(PathBuf::from),
            sandbox_id: sandbox.id,
            followers: Vec::new(),
            containers,
            stream_logs: false,
        })
    }

    async fn start_all(
        &mut self,
        sandbox: &cri::PodSandboxConfig,
        init: &[PlannedContainer],
        app: &[PlannedContainer],
        init_timeout: Option<Duration>,
    ) -> Result<(), PodError> {
        for c in init {
            self.create_and_start(sandbox, c, true).await?;
            let exit = self.wait_exit(&c.name, init_timeout).await?;
            if exit.exit_code != 0 {
                return Err(PodError::InitContainerFailed {
                    container: c.name.clone(),
                    exit_code: exit.exit_code,
                    reason: exit.reason,
                    message: exit.message,
                });
            }
        }
        for c in app {
            self.create_and_start(sandbox, c, false).await?;
        }
        Ok(())
    }

    async fn create_and_start(
        &mut self,
        sandbox: &cri::PodSandboxConfig,
        c: &PlannedContainer,
        init: bool,
    ) -> Result<(), PodError> {
        let id = self.client.create_container(&self.sandbox_id, c.config.clone(), sandbox).await?;
        let log_path = Path::new(&sandbox.log_directory).join(&c.config.log_path);
        self.containers.push(StartedContainer {
            name: c.name.clone(),
            id: id.clone(),
            init,
            log_path: log_path.clone(),
        });
        self.followers.push((c.name.clone(), LogFollower::new(log_path)));
        self.client.start_container(&id).await?;
        if self.stream_logs {
            eprintln!("{}", KubeEvent::normal("Started", format!("Started container {}", c.name)));
        }
        Ok(())
    }

    pub fn container(&self, name: Option<&str>) -> Result<&StartedContainer, PodError> {
        let found = match name {
            Some(n) => self.containers.iter().rev().find(|c| c.name == n),
            None => self.containers.iter().find(|c| !c.init),
        };
        found.ok_or_else(|| PodError::ContainerNotFound {
            pod: format!("{}/{}", self.namespace, self.name),
            container: name.unwrap_or("<main>").into(),
            known: self.containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", "),
        })
    }

    fn print_new_logs(&mut self) {
        if !self.stream_logs {
            return;
        }
        for (name, follower) in &mut self.followers {
            match follower.poll() {
                Ok(lines) => {
                    for line in lines {
                        match line.stream {
                            Stream::Stdout => println!("[{name}] {}", line.text),
                            Stream::Stderr => eprintln!("[{name}] {}", line.text),
                        }
                    }
                }
                Err(e) => tracing::warn!("reading {}: {e}", follower.path().display()),
            }
        }
    }

    /// Waits for a container to exit (streaming logs if asked).
    pub async fn wait_exit(&mut self, container: &str, timeout: Option<Duration>) -> Result<ContainerExit, PodError> {
        let id = self.container(Some(container))?.id.clone();
        let start = Instant::now();
        loop {
            self.print_new_logs();
            let status = self.client.container_status(&id).await?;
            if status.state == cri::ContainerState::ContainerExited as i32 {
                // The runtime may still be copying the last output into the log file.
                for _ in 0..3 {
                    tokio::time::sleep(POLL).await;
                    self.print_new_logs();
                }
                return Ok(ContainerExit {
                    exit_code: status.exit_code,
                    reason: status.reason,
                    message: status.message,
                });
            }
            if let Some(limit) = timeout.filter(|l| start.elapsed() >= *l) {
                return Err(PodError::Timeout { what: format!("container {container} to exit"), after: limit });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for the main (first app) container to exit.
    pub async fn wait_main(&mut self, timeout: Option<Duration>) -> Result<ContainerExit, PodError> {
        let main = self.container(None)?.name.clone();
        self.wait_exit(&main, timeout).await
    }

    /// CRI ExecSync in a container (default: the main one).
    pub async fn exec_sync(
        &self,
        container: Option<&str>,
        cmd: Vec<String>,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, PodError> {
        let id = &self.container(container)?.id;
        let r = self.client.exec_sync(id, cmd, timeout.map(|t| t.as_secs().max(1) as i64).unwrap_or(0)).await?;
        Ok(ExecOutput { stdout: r.stdout, stderr: r.stderr, exit_code: r.exit_code })
    }

    /// `kubectl exec`-style: CRI `Exec` with its streams (see [`crate::stream_exec`]).
    pub async fn exec_streaming<R, O, E>(
        &self,
        container: Option<&str>,
        streams: &crate::stream_exec::ExecStreams,
        stdin: Option<R>,
        stdout: &mut O,
        stderr: &mut E,
    ) -> Result<crate::stream_exec::ExecExit, PodError>
    where
        R: tokio::io::AsyncRead + Unpin,
        O: tokio::io::AsyncWrite + Unpin,
        E: tokio::io::AsyncWrite + Unpin,
    {
        let id = &self.container(container)?.id;
        crate::stream_exec::exec_streaming(&self.client, id, streams, stdin, stdout, stderr).await
    }

    /// All log lines a container wrote so far.
    pub fn logs(&self, container: Option<&str>) -> Result<Vec<LogLine>, PodError> {
        let c = self.container(container)?;
        match std::fs::read(&c.log_path) {
            Ok(bytes) => Ok(crate::logs::parse_all(&bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(PodError::Io { what: "reading log", path: c.log_path.clone(), source }),
        }
    }

    /// Stdout lines of a container joined with newlines (handy in tests).
    pub fn stdout(&self, container: Option<&str>) -> Result<String, PodError> {
        Ok(self.logs(container)?.into_iter().filter(|l| l.stream == Stream::Stdout).map(|l| l.text + "\n").collect())
    }

    pub async fn status(&self, container: Option<&str>) -> Result<cri::ContainerStatus, PodError> {
        self.client.container_status(&self.container(container)?.id).await
    }

    /// Stops and removes the sandbox and its containers, then the pod's node directory.
    pub async fn remove(self) -> Result<(), PodError> {
        self.remove_ref().await
    }

    async fn remove_ref(&self) -> Result<(), PodError> {
        for c in self.containers.iter().filter(|c| !c.init) {
            if let Err(e) = self.client.stop_container(&c.id, STOP_GRACE_SECS).await {
                tracing::debug!("stopping {}: {e}", c.name);
            }
        }
        remove_sandbox(&self.client, &self.sandbox_id, self.pod_dir.as_deref()).await
    }
}

/// Stops and removes one sandbox, then deletes `pod_dir` if given.
pub async fn remove_sandbox(client: &CriClient, sandbox_id: &str, pod_dir: Option<&Path>) -> Result<(), PodError> {
    // containerd 1.6 cannot stop a sandbox whose network setup failed ("failed to destroy
    // network ... cni plugin not initialized") but can remove it; so try removal regardless
    // and report the stop error only if removal fails too.
    let stopped = client.stop_pod_sandbox(sandbox_id).await;
    if let Err(remove_err) = client.remove_pod_sandbox(sandbox_id).await {
        return Err(stopped.err().unwrap_or(remove_err));
    }
    if let Some(dir) = pod_dir {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(PodError::Io { what: "removing", path: dir.into(), source }),
        }
    }
    Ok(())
}

/// Removes every sandbox of pod `uid` (e.g. after an interrupted start) and its node directory.
pub async fn remove_by_uid(client: &CriClient, uid: &str) -> Result<usize, PodError> {
    let sandboxes = client.list_pod_sandboxes(&[(MANAGED_LABEL, "true"), (plan::POD_UID_LABEL, uid)]).await?;
    let n = sandboxes.len();
    for s in sandboxes {
        let pod = RunningPod::from_sandbox(client, s).await?;
        pod.remove().await?;
    }
    Ok(n)
}

/// Container name → its label, for listings.
pub fn container_name(c: &cri::Container) -> &str {
    c.labels.get(CONTAINER_NAME_LABEL).map(String::as_str).unwrap_or("")
}
