//! Node install/uninstall: find the file containerd really reads, edit it, install binaries,
//! keep a record so uninstall can restore the exact bytes, restart and verify.
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::edit::{self, ConfigVersion, EditError, FloxRuntime};

pub const DEFAULT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
pub const DEFAULT_PREFIX: &str = "/usr/local";
pub const DEFAULT_STATE_DIR: &str = imageless_node::config::DEFAULT_STATE_ROOT;
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";
pub const NODE_CONFIG: &str = imageless_node::config::DEFAULT_PATH;
/// Binaries install copies from the bin dir into `<prefix>/bin`.
pub const BINARIES: [&str; 4] = ["flox-runc", "containerd-shim-flox-v2", "flox-activate", "imageless"];
/// k3s and RKE2 keep containerd's config here and regenerate it from a template on start.
const RANCHER_CONFIGS: [&str; 2] =
    ["/var/lib/rancher/rke2/agent/etc/containerd/config.toml", "/var/lib/rancher/k3s/agent/etc/containerd/config.toml"];

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("editing {path}: {source}")]
    Edit { path: PathBuf, source: EditError },
    #[error("--bin-dir {dir}: binary `{name}` is missing; build it or pass the directory that holds {}", BINARIES.join(", "))]
    MissingBinary { name: &'static str, dir: PathBuf },
    #[error("{path} has no `version` (version 1) but containerd {containerd} ignores runtimes in version-1 configs; run `containerd config migrate > new.toml`, review, replace the file and re-run")]
    V1ConfigOnContainerd2 { path: PathBuf, containerd: String },
    #[error("install record {path} is unreadable: {source}; remove it only if you restored the config by hand")]
    Record { path: PathBuf, source: serde_json::Error },
    #[error("no install record at {0}: nothing to uninstall (was `imageless install` run with the same --host-root/--state-dir?)")]
    NoRecord(PathBuf),
    #[error("verification failed: {0}")]
    Verify(String),
    #[error("--restart {mode}: {reason}")]
    Restart { mode: &'static str, reason: String },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> InstallError + 'a {
    move |source| InstallError::Io { action, path: path.to_owned(), source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RestartMode {
    /// systemd when it runs the host, else a signal to the socket's peer, else none.
    Auto,
    Systemd,
    /// SIGTERM to the process serving containerd's socket (its supervisor restarts it).
    Signal,
    None,
}

/// A path as seen on the node, mapped under `--host-root` (the DaemonSet mounts `/` at /host).
#[derive(Debug, Clone)]
pub struct HostRoot(pub PathBuf);

impl HostRoot {
    pub fn join(&self, node_path: &Path) -> PathBuf {
        self.0.join(node_path.strip_prefix("/").unwrap_or(node_path))
    }
    pub fn is_root(&self) -> bool {
        self.0 == Path::new("/")
    }
}

/// How the target file is edited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    Toml,
    /// Go text/template (k3s/RKE2): edited as text.
    Template,
}

/// The file to edit and why it was chosen.
#[derive(Debug, Clone)]
pub struct Target {
    /// Node path.
    pub path: PathBuf,
    pub kind: FileKind,
    /// Text to start from when the file does not exist yet.
    pub initial: Option<String>,
    pub notes: Vec<String>,
}

/// Finds the containerd config on the node: an explicit path, else the k3s/RKE2 one when present,
/// else /etc/containerd/config.toml.
pub fn locate_config(root: &HostRoot, explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_owned();
    }
    RANCHER_CONFIGS
        .iter()
        .map(PathBuf::from)
        .find(|p| root.join(p).exists())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTAINERD_CONFIG))
}

/// Decides which file gets the runtime: a k3s/RKE2 template, the last import that redefines the
/// CRI plugin section (containerd replaces whole plugin sections on import), or the main file.
pub fn resolve_target(root: &HostRoot, main: &Path, containerd_major: Option<u64>) -> Result<Target, InstallError> {
    let dir = main.parent().unwrap_or(Path::new("/"));
    for name in ["config-v3.toml.tmpl", "config.toml.tmpl"] {
        let tmpl = dir.join(name);
        if root.join(&tmpl).exists() {
            return Ok(Target {
                path: tmpl.clone(),
                kind: FileKind::Template,
                initial: None,
                notes: vec![format!(
                    "{} is regenerated from {} on restart: editing the template as text",
                    main.display(),
                    tmpl.display()
                )],
            });
        }
    }
    let main_text = match std::fs::read_to_string(root.join(main)) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io("reading", main)(e)),
    };
    let Some(main_text) = main_text else {
        // containerd 1.x and 2.x both read version 2; 2.x gets its native version 3.
        let version = if containerd_major.unwrap_or(1) >= 2 { 3 } else { 2 };
        return Ok(Target {
            path: main.to_owned(),
            kind: FileKind::Toml,
            initial: Some(format!("version = {version}\n")),
            notes: vec![format!("{} does not exist: creating it (version {version})", main.display())],
        });
    };
    if main_text.starts_with("# File generated by k3s") || main_text.starts_with("# File generated by rke2") {
        let facts = edit::inspect(&main_text).map_err(|source| InstallError::Edit { path: main.to_owned(), source })?;
        let name = if facts.version == ConfigVersion::V3 { "config-v3.toml.tmpl" } else { "config.toml.tmpl" };
        let tmpl = dir.join(name);
        return Ok(Target {
            path: tmpl.clone(),
            kind: FileKind::Template,
            // k3s/RKE2 expose their built-in template as "base".
            initial: Some("{{ template \"base\" . }}\n".to_owned()),
            notes: vec![format!(
                "{} is generated by k3s/RKE2: creating {} (base template + flox runtime); restart k3s/rke2 to render it",
                main.display(),
                tmpl.display()
            )],
        });
    }
    let facts = edit::inspect(&main_text).map_err(|source| InstallError::Edit { path: main.to_owned(), source })?;
    if facts.version == ConfigVersion::V1 {
        if let Some(major) = containerd_major.filter(|m| *m >= 2) {
            return Err(InstallError::V1ConfigOnContainerd2 { path: main.to_owned(), containerd: major.to_string() });
        }
    }
    let mut target = Target { path: main.to_owned(), kind: FileKind::Toml, initial: None, notes: vec![] };
    if let Some(shadowing) = shadowing_import(root, main, &facts)? {
        target.notes.push(format!(
            "{} redefines [plugins.\"{}\"], which replaces that section of {}: writing the runtime there",
            shadowing.display(),
            facts.version.cri_plugin_key(),
            main.display()
        ));
        target.path = shadowing;
    }
    Ok(target)
}

/// The last imported file (in containerd's order) that defines the CRI plugin section.
pub fn shadowing_import(
    root: &HostRoot,
    main: &Path,
    facts: &edit::ConfigFacts,
) -> Result<Option<PathBuf>, InstallError> {
    let mut found = None;
    for import in expand_imports(root, main, &facts.imports) {
        let text = std::fs::read_to_string(root.join(&import)).map_err(io("reading import", &import))?;
        let import_facts =
            edit::inspect(&text).map_err(|source| InstallError::Edit { path: import.clone(), source })?;
        if import_facts.defines_cri_plugin {
            found = Some(import);
        }
    }
    Ok(found)
}

/// Expands `imports` as containerd does: relative to the main file's directory, globs in
/// lexical order. Only `*` and `?` in the file name are supported (what drop-in dirs use).
pub fn expand_imports(root: &HostRoot, main: &Path, imports: &[String]) -> Vec<PathBuf> {
    let dir = main.parent().unwrap_or(Path::new("/"));
    let mut out = Vec::new();
    for pattern in imports {
        let path = dir.join(pattern);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.contains(['*', '?']) {
            if root.join(&path).exists() {
                out.push(path);
            }
            continue;
        }
        let parent = path.parent().unwrap_or(Path::new("/"));
        let Ok(entries) = std::fs::read_dir(root.join(parent)) else { continue };
        let mut matches: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| wildcard_match(name.as_bytes(), n.as_bytes()))
            .map(|n| parent.join(n))
            .collect();
        matches.sort();
        out.extend(matches);
    }
    out
}

fn wildcard_match(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            wildcard_match(&pattern[1..], name) || (!name.is_empty() && wildcard_match(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => wildcard_match(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => wildcard_match(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// One file install wrote, with what was there before.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRecord {
    /// Node path.
    pub path: PathBuf,
    pub kind: FileKind,
    /// Content before the first install; None when install created the file.
    pub original: Option<String>,
    /// Content install left.
    pub installed: String,
    pub backup: Option<PathBuf>,
}

/// What install did, so uninstall can undo exactly that. Stored as JSON in the state dir.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstallRecord {
    pub files: Vec<FileRecord>,
    /// Binaries install created (ones that existed before are left in place by uninstall).
    pub created_binaries: Vec<PathBuf>,
    /// The node config, when install created it, with the content it wrote.
    pub node_config: Option<FileRecord>,
}

pub fn record_path(root: &HostRoot, state_dir: &Path) -> PathBuf {
    root.join(&state_dir.join("install.json"))
}

pub fn load_record(path: &Path) -> Result<Option<InstallRecord>, InstallError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| InstallError::Record { path: path.to_owned(), source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("reading", path)(e)),
    }
}

fn save_record(path: &Path, record: &InstallRecord) -> Result<(), InstallError> {
    let json = serde_json::to_vec_pretty(record).expect("record serializes");
    write_atomic(path, &json, 0o600)
}

/// Writes through a temp file and rename so containerd never reads half a config.
pub fn write_atomic(path: &Path, bytes: &[u8], default_mode: u32) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(default_mode);
    let tmp =
        path.with_file_name(format!(".{}.imageless-tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
    std::fs::write(&tmp, bytes).map_err(io("writing", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io("setting mode of", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("renaming into", path))
}

/// Everything install is asked to do.
#[derive(Debug, Clone)]
pub struct InstallPlan {
    pub root: HostRoot,
    pub containerd_config: Option<PathBuf>,
    pub prefix: PathBuf,
    pub bin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub restart: RestartMode,
    pub dry_run: bool,
    /// containerd binary for version and `config dump` (node path); default: found on the node.
    pub containerd_bin: Option<PathBuf>,
    /// The imageless node config to create when absent (node path), normally [`NODE_CONFIG`].
    pub node_config: PathBuf,
}

/// What install reports back (printed by the CLI).
#[derive(Debug, Default)]
pub struct InstallOutcome {
    pub lines: Vec<String>,
    pub changed: bool,
}

pub fn runtime_for_prefix(prefix: &Path) -> FloxRuntime {
    FloxRuntime {
        runc_wrapper: prefix.join("bin/flox-runc"),
        shim_launcher: prefix.join("bin/containerd-shim-flox-v2"),
    }
}

/// Runs containerd (on the node: chrooted when --host-root is not /) with `args`.
pub fn containerd_command(root: &HostRoot, containerd_bin: &Path) -> Command {
    if root.is_root() {
        Command::new(containerd_bin)
    } else {
        let mut cmd = Command::new("chroot");
        cmd.arg(&root.0).arg(containerd_bin);
        cmd
    }
}

pub fn find_containerd(root: &HostRoot, explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_owned());
    }
    ["/usr/local/bin/containerd", "/usr/bin/containerd", "/var/lib/rancher/rke2/bin/containerd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| root.join(p).exists())
}

/// `containerd --version` → (full version text, major).
pub fn containerd_version(root: &HostRoot, bin: &Path) -> Option<(String, u64)> {
    let out = containerd_command(root, bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "containerd github.com/containerd/containerd 1.6.20~ds1 <rev>" or "containerd containerd.io 2.1.9 ..."
    let version = text.split_whitespace().find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    let major = version.trim_start_matches('v').split('.').next()?.parse().ok()?;
    Some((version.to_owned(), major))
}

/// The effective config as containerd sees it (`config dump` merges imports; no daemon needed).
pub fn config_dump(root: &HostRoot, bin: &Path, config: &Path) -> Result<String, String> {
    let out = containerd_command(root, bin)
        .arg("--config")
        .arg(config)
        .args(["config", "dump"])
        .output()
        .map_err(|e| format!("running {} config dump: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} --config {} config dump failed: {}",
            bin.display(),
            config.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8(out.stdout).map_err(|_| "config dump printed non-UTF-8".to_owned())
}

fn now_stamp() -> String {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::OffsetDateTime::now_utc().format(&format).expect("timestamp formats")
}

fn unified_diff(path: &Path, before: &str, after: &str) -> String {
    let name = path.display().to_string();
    similar::TextDiff::from_lines(before, after).unified_diff().header(&name, &name).to_string()
}

fn same_file_content(a: &Path, b: &Path) -> bool {
    matches!((std::fs::read(a), std::fs::read(b)), (Ok(x), Ok(y)) if x == y)
}

pub fn install(plan: &InstallPlan) -> Result<InstallOutcome, InstallError> {
    let root = &plan.root;
    let mut out = InstallOutcome::default();
    let containerd_bin = find_containerd(root, plan.containerd_bin.as_deref());
    let version = containerd_bin.as_deref().and_then(|b| containerd_version(root, b));
    match &version {
        Some((v, _)) => out.lines.push(format!("containerd {v}")),
        None => out.lines.push("containerd binary not found: cannot check its version or verify the config".into()),
    }
    let main = locate_config(root, plan.containerd_config.as_deref());
    let target = resolve_target(root, &main, version.as_ref().map(|v| v.1))?;
    out.lines.extend(target.notes.iter().cloned());

    let record_file = record_path(root, &plan.state_dir);
    let mut record = load_record(&record_file)?.unwrap_or_default();

    // 1. Binaries.
    let bin = plan.prefix.join("bin");
    for name in BINARIES {
        let source = plan.bin_dir.join(name);
        if !source.is_file() {
            return Err(InstallError::MissingBinary { name, dir: plan.bin_dir.clone() });
        }
        let dest = root.join(&bin.join(name));
        if same_file_content(&source, &dest) {
            continue;
        }
        out.changed = true;
        if plan.dry_run {
            out.lines.push(format!("would install {}", bin.join(name).display()));
            continue;
        }
        let existed = dest.exists();
        let bytes = std::fs::read(&source).map_err(io("reading", &source))?;
        write_atomic(&dest, &bytes, 0o755)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).map_err(io("chmod", &dest))?;
        if !existed && !record.created_binaries.contains(&bin.join(name)) {
            record.created_binaries.push(bin.join(name));
        }
        out.lines.push(format!("installed {}", bin.join(name).display()));
    }

    // 2. containerd config.
    let rt = runtime_for_prefix(&plan.prefix);
    let host_path = root.join(&target.path);
    let before = match std::fs::read_to_string(&host_path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io("reading", &target.path)(e)),
    };
    let start = before.clone().or_else(|| target.initial.clone()).unwrap_or_default();
    let edit_err = |source| InstallError::Edit { path: target.path.clone(), source };
    let after = match target.kind {
        FileKind::Toml => edit::add_flox_runtime(&start, &rt).map_err(edit_err)?,
        FileKind::Template => edit::add_flox_runtime_template(&start, &rt).map_err(edit_err)?,
    };
    let runc_binary = match target.kind {
        FileKind::Toml => edit::inspect(&after).ok().and_then(|f| f.runc_binary_name),
        FileKind::Template => None,
    };
    if before.as_deref() == Some(after.as_str()) {
        out.lines.push(format!("{}: runtime flox already up to date", target.path.display()));
    } else {
        out.changed = true;
        if plan.dry_run {
            out.lines.push(unified_diff(&target.path, before.as_deref().unwrap_or(""), &after));
        } else {
            let backup = match &before {
                Some(text) => {
                    let name = format!(
                        "{}.bak.{}",
                        target.path.file_name().and_then(|n| n.to_str()).unwrap_or("config.toml"),
                        now_stamp()
                    );
                    let backup = target.path.with_file_name(name);
                    write_atomic(&root.join(&backup), text.as_bytes(), 0o600)?;
                    out.lines.push(format!("backup {}", backup.display()));
                    Some(backup)
                }
                None => None,
            };
            write_atomic(&host_path, after.as_bytes(), 0o644)?;
            out.lines.push(format!("wrote runtime flox into {}", target.path.display()));
            match record.files.iter_mut().find(|f| f.path == target.path) {
                // Keep the first original and backup: uninstall goes back to before any install.
                Some(existing) => existing.installed = after.clone(),
                None => record.files.push(FileRecord {
                    path: target.path.clone(),
                    kind: target.kind,
                    original: before.clone(),
                    installed: after.clone(),
                    backup,
                }),
            }
        }
    }

    // 3. Node config, only when absent.
    let node_config = root.join(&plan.node_config);
    let shown = plan.node_config.display();
    if !node_config.exists() {
        out.changed = true;
        let text = default_node_config(&plan.prefix, runc_binary.as_deref());
        if plan.dry_run {
            out.lines.push(format!("would write {shown}:\n{text}"));
        } else {
            write_atomic(&node_config, text.as_bytes(), 0o644)?;
            record.node_config = Some(FileRecord {
                path: plan.node_config.clone(),
                kind: FileKind::Toml,
                original: None,
                installed: text,
                backup: None,
            });
            out.lines.push(format!("wrote {shown}"));
        }
    }

    if plan.dry_run {
        return Ok(out);
    }
    save_record(&record_file, &record)?;

    // 4. Restart and verify.
    if out.changed && target.kind == FileKind::Toml {
        out.lines.push(restart(root, plan.restart, &main)?);
    } else if out.changed {
        out.lines.push("restart k3s/rke2 (e.g. `systemctl restart k3s`) so it renders the template".into());
    }
    if target.kind == FileKind::Toml {
        match &containerd_bin {
            Some(bin) => {
                verify(root, bin, &main, &rt)?;
                out.lines
                    .push(format!("verified: `containerd --config {} config dump` has runtime flox", main.display()));
            }
            None => out.lines.push("not verified: no containerd binary on the node".into()),
        }
    }
    Ok(out)
}

/// Checks the effective config has runtime flox with our binaries and annotation passthrough.
pub fn verify(root: &HostRoot, bin: &Path, main: &Path, rt: &FloxRuntime) -> Result<(), InstallError> {
    let dump = config_dump(root, bin, main).map_err(InstallError::Verify)?;
    let facts = edit::inspect(&dump).map_err(|e| InstallError::Verify(format!("config dump output: {e}")))?;
    let flox = facts.flox.ok_or_else(|| {
        InstallError::Verify(
            "runtime flox is not in containerd's effective config (an import may replace the CRI section)".into(),
        )
    })?;
    let wrapper = rt.runc_wrapper.to_string_lossy();
    if flox.binary_name.as_deref() != Some(&*wrapper) {
        return Err(InstallError::Verify(format!(
            "effective options.BinaryName is {:?}, expected {wrapper:?}",
            flox.binary_name
        )));
    }
    if !flox.pod_annotations.iter().any(|a| a == edit::ANNOTATION_PATTERN)
        || !flox.container_annotations.iter().any(|a| a == edit::ANNOTATION_PATTERN)
    {
        return Err(InstallError::Verify("effective runtime flox lacks the flox.dev/* annotation passthrough".into()));
    }
    Ok(())
}

fn default_node_config(prefix: &Path, runc: Option<&str>) -> String {
    let mut text =
        String::from("# imageless node config (keys: docs/contracts.md). Written once by `imageless install`.\n");
    text.push_str(&format!("activator = {}\n", toml_string(&prefix.join("bin/flox-activate").to_string_lossy())));
    if let Some(runc) = runc {
        // The node's runc runtime used a specific binary: flox-runc must call the same one.
        text.push_str(&format!("runc = {}\n", toml_string(runc)));
    }
    text
}

fn toml_string(s: &str) -> String {
    toml_edit::Value::from(s).to_string().trim().to_owned()
}

/// The unix socket containerd serves, from the config's `[grpc] address`.
pub fn socket_address(root: &HostRoot, main: &Path) -> PathBuf {
    std::fs::read_to_string(root.join(main))
        .ok()
        .and_then(|t| t.parse::<toml_edit::DocumentMut>().ok())
        .and_then(|d| d.get("grpc")?.get("address")?.as_str().map(PathBuf::from))
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// PID of the process serving a unix socket (SO_PEERCRED of a connection to it).
pub fn socket_peer_pid(socket: &Path) -> std::io::Result<i32> {
    use std::os::fd::AsRawFd;
    let stream = std::os::unix::net::UnixStream::connect(socket)?;
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a properly sized ucred.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.pid)
}

pub fn restart(root: &HostRoot, mode: RestartMode, main: &Path) -> Result<String, InstallError> {
    let socket = root.join(&socket_address(root, main));
    let mode = match mode {
        RestartMode::Auto if root.join(Path::new("/run/systemd/system")).is_dir() => RestartMode::Systemd,
        RestartMode::Auto if socket_peer_pid(&socket).is_ok() => RestartMode::Signal,
        RestartMode::Auto => RestartMode::None,
        other => other,
    };
    match mode {
        RestartMode::Systemd => {
            let mut cmd = if root.is_root() {
                Command::new("systemctl")
            } else {
                let mut c = Command::new("chroot");
                c.arg(&root.0).arg("systemctl");
                c
            };
            let status = cmd
                .args(["restart", "containerd"])
                .status()
                .map_err(|e| InstallError::Restart { mode: "systemd", reason: format!("running systemctl: {e}") })?;
            if !status.success() {
                return Err(InstallError::Restart {
                    mode: "systemd",
                    reason: format!("systemctl restart containerd exited with {status}"),
                });
            }
            Ok("restarted containerd (systemctl restart containerd)".into())
        }
        RestartMode::Signal => {
            let pid = socket_peer_pid(&socket).map_err(|e| InstallError::Restart {
                mode: "signal",
                reason: format!("nothing answers on {}: {e}", socket.display()),
            })?;
            // SAFETY: plain kill(2) on a pid we just read from the socket's peer credentials.
            if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
                return Err(InstallError::Restart {
                    mode: "signal",
                    reason: format!("kill {pid}: {}", std::io::Error::last_os_error()),
                });
            }
            Ok(format!("sent SIGTERM to containerd (pid {pid}); its supervisor must start it again"))
        }
        RestartMode::None | RestartMode::Auto => {
            Ok("containerd not restarted: restart it so it reads the changed config".into())
        }
    }
}

/// Undoes install: files back to their original bytes when nobody changed them since, else only
/// the flox runtime is removed from them.
pub fn uninstall(root: &HostRoot, state_dir: &Path, dry_run: bool) -> Result<Vec<String>, InstallError> {
    let record_file = record_path(root, state_dir);
    let record = load_record(&record_file)?.ok_or_else(|| InstallError::NoRecord(record_file.clone()))?;
    let mut lines = Vec::new();
    for file in record.files.iter().chain(record.node_config.iter()) {
        let host_path = root.join(&file.path);
        let current = std::fs::read_to_string(&host_path).ok();
        let restored: Option<String> = match &current {
            None => {
                lines.push(format!("{} is gone; nothing to restore", file.path.display()));
                continue;
            }
            Some(c) if *c == file.installed => file.original.clone(),
            Some(_) if record.node_config.as_ref().is_some_and(|n| n.path == file.path) => {
                lines.push(format!("{} changed since install: kept", file.path.display()));
                continue;
            }
            Some(c) => {
                lines.push(format!("{} changed since install: removing only runtime flox", file.path.display()));
                Some(match file.kind {
                    FileKind::Toml => edit::remove_flox_runtime(c)
                        .map_err(|source| InstallError::Edit { path: file.path.clone(), source })?,
                    FileKind::Template => edit::remove_flox_runtime_template(c),
                })
            }
        };
        if dry_run {
            lines.push(unified_diff(&file.path, current.as_deref().unwrap_or(""), restored.as_deref().unwrap_or("")));
            continue;
        }
        match restored {
            Some(text) => {
                write_atomic(&host_path, text.as_bytes(), 0o644)?;
                lines.push(format!("restored {}", file.path.display()));
            }
            None => {
                std::fs::remove_file(&host_path).map_err(io("removing", &file.path))?;
                lines.push(format!("removed {} (install created it)", file.path.display()));
            }
        }
    }
    for bin in &record.created_binaries {
        if dry_run {
            lines.push(format!("would remove {}", bin.display()));
        } else if std::fs::remove_file(root.join(bin)).is_ok() {
            lines.push(format!("removed {}", bin.display()));
        }
    }
    if !dry_run {
        std::fs::remove_file(&record_file).map_err(io("removing", &record_file))?;
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_config_install_writes_is_accepted_by_the_node() {
        // NodeConfig denies unknown keys: a key install writes that the node does not know
        // would make every flox container fail to start.
        let text = default_node_config(Path::new("/opt/imageless"), Some("/usr/local/sbin/runc \"x\""));
        let parsed = imageless_node::config::NodeConfig::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(parsed.activator, Path::new("/opt/imageless/bin/flox-activate"));
        assert_eq!(parsed.runc.as_deref(), Some(Path::new("/usr/local/sbin/runc \"x\"")));
        let parsed =
            imageless_node::config::NodeConfig::parse(&default_node_config(Path::new("/usr/local"), None)).unwrap();
        assert_eq!(parsed.runc, None);
    }

    #[test]
    fn wildcard() {
        assert!(wildcard_match(b"*.toml", b"99-nvidia.toml"));
        assert!(!wildcard_match(b"*.toml", b"99-nvidia.toml.bak"));
        assert!(wildcard_match(b"a?c", b"abc"));
    }
}
