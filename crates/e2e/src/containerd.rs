//! A private containerd daemon for tests: its own root, state, sockets and config under a temp
//! dir (or a given config), started in its own session, and everything it started (sandboxes,
//! shims, mounts) removed when it is dropped.
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use imageless_cri_pod::{CriClient, PodError, RunOptions};

use crate::{
    config, local_images, parse_doc, ContainerdOptions, ContainerdVersion, FloxBinaries, BUSYBOX_IMAGE,
    FLOX_EMPTY_IMAGE, PAUSE_IMAGE,
};

/// A private containerd: its own root, state, sockets and config under a temp dir.
pub struct Containerd {
    version: ContainerdVersion,
    dir: Option<tempfile::TempDir>,
    child: Child,
    socket: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    opts: ContainerdOptions,
}

/// Starts the daemon process: its own session (a terminal's Ctrl-C must not reach it, and the
/// PID we hold is the daemon's own, no shell in between), its log appended to `log_path`.
fn spawn_daemon(
    version: ContainerdVersion,
    config_path: &Path,
    log_path: &Path,
    base: &Path,
    opts: &ContainerdOptions,
) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path)?;
    let mut cmd = Command::new(version.containerd());
    cmd.arg("--config").arg(config_path).arg("--log-level").arg("debug");
    cmd.env("PATH", daemon_path(version, opts.flox.as_ref()));
    if opts.flox.is_some() {
        // The shim launcher's `runc` link dir defaults to `<its dir>/flox-runc.d`, which in
        // target/debug is cargo's dep-info file; give each daemon its own (callers may override).
        cmd.env("FLOX_RUNC_DIR", base.join("flox-runc.d"));
    }
    cmd.envs(&opts.env);
    cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // SAFETY: between fork and exec only setsid(2) runs: async-signal-safe, no shared memory.
    unsafe {
        cmd.pre_exec(|| rustix::process::setsid().map(drop).map_err(std::io::Error::from));
    }
    if !opts.bind_mounts.is_empty() {
        let binds = opts
            .bind_mounts
            .iter()
            .map(|(source, target)| Ok((c_path(source)?, c_path(target)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        // SAFETY: unshare(2) and mount(2) are async-signal-safe system calls; the paths are
        // CStrings built before fork and only borrowed in the child (no allocation there).
        unsafe {
            cmd.pre_exec(move || {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Nothing mounted in the new namespace may reach the machine's.
                rustix::mount::mount_change(
                    c"/",
                    rustix::mount::MountPropagationFlags::PRIVATE | rustix::mount::MountPropagationFlags::REC,
                )?;
                for (source, target) in &binds {
                    rustix::mount::mount_bind_recursive(source.as_c_str(), target.as_c_str())?;
                }
                Ok(())
            });
        }
    }
    cmd.spawn().with_context(|| format!("starting {}", version.containerd().display()))
}

fn c_path(path: &Path) -> anyhow::Result<std::ffi::CString> {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).with_context(|| format!("NUL in {}", path.display()))
}

impl Containerd {
    /// A temp dir for a daemon started with [`Containerd::start_with_config`]: its config names
    /// root, state and sockets below it, and teardown cleans up whatever is below it.
    pub fn new_dir() -> anyhow::Result<tempfile::TempDir> {
        tempfile::Builder::new().prefix("imageless-ctrd-").tempdir().context("creating temp dir")
    }

    /// Starts a daemon on a config written elsewhere (e.g. a prepared node's
    /// /etc/containerd/config.toml), used as it is: no private paths or runtime are added.
    /// Its root, state and `[grpc] address` must lie below `dir` (see [`Containerd::new_dir`]).
    pub fn start_with_config(
        version: ContainerdVersion,
        dir: tempfile::TempDir,
        config_path: &Path,
        opts: ContainerdOptions,
    ) -> anyhow::Result<Containerd> {
        version.ensure_available()?;
        let text =
            std::fs::read_to_string(config_path).with_context(|| format!("reading {}", config_path.display()))?;
        let doc = parse_doc(&text)?;
        let socket = doc
            .get("grpc")
            .and_then(|g| g.get("address"))
            .and_then(|a| a.as_str())
            .map(PathBuf::from)
            .with_context(|| format!("{} has no [grpc] address", config_path.display()))?;
        if !socket.starts_with(dir.path()) {
            bail!(
                "{}: [grpc] address {} is not below {}",
                config_path.display(),
                socket.display(),
                dir.path().display()
            );
        }
        let log_path = dir.path().join("containerd.log");
        let child = spawn_daemon(version, config_path, &log_path, dir.path(), &opts)?;
        let config_path = config_path.to_path_buf();
        let ctrd = Containerd { version, dir: Some(dir), child, socket, config_path, log_path, opts };
        ctrd.finish_start()
    }

    pub fn start(version: ContainerdVersion, opts: ContainerdOptions) -> anyhow::Result<Containerd> {
        if !version.is_available() {
            bail!(
                "containerd {version} not found in {} (run scripts/fetch-containerd.sh {version})",
                version.bin_dir().display()
            );
        }
        let dir = Self::new_dir()?;
        let base = dir.path().to_path_buf();
        let socket = base.join("containerd.sock");
        let default_config = Command::new(version.containerd())
            .args(["config", "default"])
            .output()
            .with_context(|| format!("running {} config default", version.containerd().display()))?;
        if !default_config.status.success() {
            bail!(
                "{} config default: {}",
                version.containerd().display(),
                String::from_utf8_lossy(&default_config.stderr)
            );
        }
        let text = String::from_utf8(default_config.stdout).context("containerd config default is not UTF-8")?;
        let text = config::private_config(&text, version, &base, opts.flox.as_ref())?;
        let config_path = base.join("config.toml");
        std::fs::write(&config_path, &text).with_context(|| format!("writing {}", config_path.display()))?;
        if let Some(hook) = &opts.before_start {
            (hook.0)(&config_path, &base)?;
        }

        let log_path = base.join("containerd.log");
        let child = spawn_daemon(version, &config_path, &log_path, &base, &opts)?;
        Containerd { version, dir: Some(dir), child, socket, config_path, log_path, opts }.finish_start()
    }

    /// Waits for CRI to answer, then imports the local images if asked.
    fn finish_start(mut self) -> anyhow::Result<Containerd> {
        self.wait_ready(self.opts.start_timeout)?;
        if self.opts.import_local_images {
            let images = local_images()?;
            for archive in images.all() {
                self.import_image(archive)?;
            }
            self.wait_images_visible(&[PAUSE_IMAGE, BUSYBOX_IMAGE, FLOX_EMPTY_IMAGE], Duration::from_secs(20))?;
        }
        Ok(self)
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        let rt = small_runtime()?;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("containerd {} exited during start ({status}); log:\n{}", self.version, self.log_tail(40));
            }
            if self.socket.exists() && rt.block_on(CriClient::connect(&self.endpoint())).is_ok() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!(
                    "containerd {} did not answer on {} within {timeout:?}; log:\n{}",
                    self.version,
                    self.socket.display(),
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until CRI reports every image (it learns of `ctr` imports asynchronously).
    pub fn wait_images_visible(&self, images: &[&str], timeout: Duration) -> anyhow::Result<()> {
        let endpoint = self.endpoint();
        let images: Vec<String> = images.iter().map(|s| s.to_string()).collect();
        let version = self.version;
        std::thread::spawn(move || -> anyhow::Result<()> {
            small_runtime()?.block_on(async {
                let client = CriClient::connect(&endpoint).await?;
                let start = Instant::now();
                for image in &images {
                    while !client.image_present(image).await? {
                        if start.elapsed() > timeout {
                            bail!("containerd {version}: CRI does not see imported image {image} after {timeout:?}");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                Ok(())
            })
        })
        .join()
        .map_err(|_| anyhow!("wait_images_visible thread panicked"))?
    }

    pub fn version(&self) -> ContainerdVersion {
        self.version
    }

    /// SIGKILL the daemon (as a crash or the OOM killer would) and start it again on the same
    /// root, state, sockets and config. Shims and containers survive, as on a real node.
    pub fn kill_and_restart(&mut self) -> anyhow::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let base = self.dir().to_path_buf();
        self.child = spawn_daemon(self.version, &self.config_path, &self.log_path, &base, &self.opts)?;
        self.wait_ready(self.opts.start_timeout)
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn socket(&self) -> &Path {
        &self.socket
    }
    /// `unix:///…/containerd.sock`, for `--cri` and `CriClient::connect`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir present until drop").path()
    }
    /// What containerd reconnects to for each task of namespace k8s.io after a restart: the
    /// `address` (1.6/1.7) and `bootstrap.json` (2.x) files of the task bundles.
    pub fn task_addresses(&self) -> Vec<String> {
        let tasks = self.dir().join("state/io.containerd.runtime.v2.task/k8s.io");
        let bundles = std::fs::read_dir(tasks).into_iter().flatten().flatten();
        bundles
            .flat_map(|b| ["address", "bootstrap.json"].map(|f| std::fs::read_to_string(b.path().join(f))))
            .flatten()
            .collect()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }
    pub fn config_text(&self) -> String {
        std::fs::read_to_string(&self.config_path).unwrap_or_default()
    }
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
    /// Length of the daemon's log now, to read what it logs after this mark ([`Self::log_since`]).
    pub fn log_mark(&self) -> u64 {
        std::fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0)
    }
    /// What the daemon logged since `mark`.
    pub fn log_since(&self, mark: u64) -> String {
        let log = std::fs::read(&self.log_path).unwrap_or_default();
        String::from_utf8_lossy(&log[(mark as usize).min(log.len())..]).into_owned()
    }
    /// The last `lines` lines of the daemon's log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
    /// State root for pods run by the harness (logs, emptyDirs, secrets/).
    pub fn pod_state_root(&self) -> PathBuf {
        self.dir().join("pods-state")
    }

    pub async fn client(&self) -> Result<CriClient, PodError> {
        CriClient::connect(&self.endpoint()).await
    }

    /// `ctr -n k8s.io images import` with this version's ctr.
    pub fn import_image(&self, archive: &Path) -> anyhow::Result<()> {
        imageless_cri_pod::images::import_archive(&self.version.ctr(), &self.socket, archive)
            .with_context(|| format!("containerd {}", self.version))
    }

    /// Run options with this daemon's pod state root.
    pub fn run_options(&self) -> RunOptions {
        RunOptions::new(self.pod_state_root())
    }

    /// Mount points below this daemon's temp dir (root, state, pod volumes).
    pub fn mounts_below(&self) -> Vec<PathBuf> {
        mounts_below(self.dir())
    }

    /// Stops and removes every sandbox (and so its containers) on this daemon.
    pub fn remove_all_pods(&self) -> anyhow::Result<usize> {
        let endpoint = self.endpoint();
        // Runs on its own thread: callers (and Drop) may be inside a tokio runtime.
        std::thread::spawn(move || -> anyhow::Result<usize> {
            let rt = small_runtime()?;
            rt.block_on(async {
                let client = CriClient::connect(&endpoint).await?;
                let sandboxes = client.list_pod_sandboxes(&[]).await?;
                for s in &sandboxes {
                    imageless_cri_pod::runner::remove_sandbox(&client, &s.id, None).await?;
                }
                Ok(sandboxes.len())
            })
        })
        .join()
        .map_err(|_| anyhow!("remove_all_pods thread panicked"))?
    }

    /// Everything the drop does, with errors reported instead of logged.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        let Some(dir) = self.dir.take() else { return Ok(()) };
        let mut problems = Vec::new();
        if self.child.try_wait()?.is_none() {
            if let Err(e) = self.remove_all_pods() {
                problems.push(format!("removing pods: {e:#}"));
            }
            stop_process(&mut self.child);
        }
        // Shims outlive their daemon by design; ours name our socket in their arguments.
        kill_processes_mentioning(dir.path());
        for m in mounts_below(dir.path()).into_iter().rev() {
            if let Err(e) = rustix::mount::unmount(&m, rustix::mount::UnmountFlags::DETACH) {
                problems.push(format!("unmounting {}: {e}", m.display()));
            }
        }
        let path = dir.path().to_path_buf();
        if let Err(e) = dir.close() {
            problems.push(format!("removing {}: {e}", path.display()));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("containerd {} teardown: {}", self.version, problems.join("; "))
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("warning: {e:#}");
        }
    }
}

fn small_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// The daemon's PATH: this version's runc shim first, then the real runc, then the flox
/// launcher's directory (1.6 finds a `runtime_type` shim only by name on PATH).
fn daemon_path(version: ContainerdVersion, flox: Option<&FloxBinaries>) -> String {
    let mut dirs = vec![version.bin_dir()];
    if let Some(runc) = find_on_path("runc") {
        if let Some(d) = runc.parent() {
            dirs.push(d.to_path_buf());
        }
    }
    dirs.extend(["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from));
    if let Some(d) = flox.and_then(|f| f.shim_launcher.parent()) {
        dirs.push(d.to_path_buf());
    }
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    std::env::join_paths(dirs).expect("PATH entries without ':'").to_string_lossy().into_owned()
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

fn stop_process(child: &mut Child) {
    signal(child.id(), rustix::process::Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn kill_processes_mentioning(dir: &Path) {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(procs) = std::fs::read_dir("/proc") else { return };
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            signal(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Sends `sig` to process `pid`, ignoring a process that is already gone.
pub fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Mount points at or below `dir`, in mount order (unmount in reverse).
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target_dir;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b\134c"), "/tmp/a b\\c");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn daemon_path_puts_the_versions_shim_first_and_has_runc() {
        let p = daemon_path(ContainerdVersion::V2_1, Some(&FloxBinaries::default()));
        let dirs: Vec<_> = std::env::split_paths(&p).collect();
        assert_eq!(dirs[0], ContainerdVersion::V2_1.bin_dir());
        assert!(dirs.iter().any(|d| d.join("runc").is_file()), "{p}");
        assert_eq!(dirs.last().unwrap(), &target_dir());
    }
}
