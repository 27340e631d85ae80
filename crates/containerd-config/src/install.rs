//! Node install/uninstall: find the file containerd really reads, edit it, install binaries,
//! keep a record so uninstall can restore the exact bytes, restart and verify.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::containerd::*;
use crate::edit::{self, ConfigVersion, EditError, FloxRuntime};
use crate::journal::Journal;
pub use crate::journal::{write_atomic, FileMode};
pub use crate::target::*;

pub const DEFAULT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
pub const DEFAULT_PREFIX: &str = "/usr/local";
pub const DEFAULT_STATE_DIR: &str = imageless_node::config::DEFAULT_STATE_ROOT;
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";
pub const NODE_CONFIG: &str = imageless_node::config::DEFAULT_PATH;
/// Binaries install copies from the bin dir into `<prefix>/bin`.
pub const BINARIES: [&str; 4] = ["flox-runc", "containerd-shim-flox-v2", "flox-activate", "imageless"];
/// The directory `containerd-shim-flox-v2` makes next to itself on first use, holding a `runc`
/// link to `flox-runc` (crates/shim-launcher); uninstall removes it with the launcher.
pub const LAUNCHER_RUNC_DIR: &str = "flox-runc-path";

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
    #[error("verification failed: {0}; nothing was changed")]
    Verify(String),
    #[error("{path} is a version 3 config, which needs containerd 2.0 or newer, but this node's containerd is {containerd}, which reads config versions 1 and 2 only; write the config as version 2 (containerd 2.x reads that too) or upgrade containerd")]
    ConfigNeedsNewerContainerd { path: PathBuf, containerd: String },
    #[error("--{flag} {arg}: a relative path is read from the current directory ({resolved}), which is not under --host-root {host_root}; pass the node path (absolute)", arg = arg.display(), resolved = resolved.display(), host_root = host_root.display())]
    RelativeOutsideHostRoot { flag: &'static str, arg: PathBuf, resolved: PathBuf, host_root: PathBuf },
    #[error("{error}; undoing it failed too: {problems}")]
    RollbackIncomplete { error: Box<InstallError>, problems: String },
    #[error("--restart {mode}: {reason}")]
    Restart { mode: &'static str, reason: String },
}

pub(crate) fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> InstallError + 'a {
    move |source| InstallError::Io { action, path: path.to_owned(), source }
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
    /// The node path of a host path beneath this root (the inverse of [`HostRoot::join`]).
    pub fn node_path(&self, host_path: &Path) -> PathBuf {
        Path::new("/").join(host_path.strip_prefix(&self.0).unwrap_or(host_path))
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
    /// Directories install created (node paths, parents first), e.g. /etc/imageless and the
    /// state dir: uninstall removes them when empty. (Absent in records of older installs.)
    #[serde(default)]
    pub created_dirs: Vec<PathBuf>,
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

/// What install found on the node before changing anything.
struct Survey {
    containerd_bin: Option<PathBuf>,
    /// `containerd --version`: (version text, major).
    containerd: Option<(String, u64)>,
    /// The config containerd reads (node path).
    main: PathBuf,
    /// The file that gets the runtime.
    target: Target,
    record_file: PathBuf,
    record: InstallRecord,
}

/// Installs (or updates) binaries, runtime `flox` and the node config, verifies the effective
/// config, records what changed, then restarts containerd. Any failure before the restart puts
/// every file back as it was (see [`Journal`]).
pub fn install(plan: &InstallPlan) -> Result<InstallOutcome, InstallError> {
    let mut out = InstallOutcome::default();
    let mut survey = survey(plan, &mut out)?;
    check_binaries(plan)?;
    let mut journal = Journal::default();
    match apply(plan, &mut survey, &mut journal, &mut out) {
        Ok(()) => {}
        Err(error) => return Err(undo(journal, error)),
    }
    if plan.dry_run {
        return Ok(out);
    }
    let target = &survey.target;
    if out.changed && target.kind == FileKind::Toml {
        match restart(&plan.root, plan.restart, &survey.main) {
            Ok(line) => out.lines.push(line),
            Err(error) => return Err(undo(journal, error)),
        }
    } else if out.changed {
        out.lines.push("restart k3s/rke2 (e.g. `systemctl restart k3s`) so it renders the template".into());
    }
    Ok(out)
}

/// Rolls back and says so in the error.
fn undo(journal: Journal, error: InstallError) -> InstallError {
    let problems = journal.rollback();
    if problems.is_empty() {
        error
    } else {
        InstallError::RollbackIncomplete { error: Box::new(error), problems: problems.join("; ") }
    }
}

/// The changes, in order; stops at the first failure (the caller rolls back).
fn apply(
    plan: &InstallPlan,
    survey: &mut Survey,
    journal: &mut Journal,
    out: &mut InstallOutcome,
) -> Result<(), InstallError> {
    install_binaries(plan, &mut survey.record, journal, out)?;
    let runc_binary = edit_containerd_config(plan, survey, journal, out)?;
    write_node_config(plan, runc_binary.as_deref(), &mut survey.record, journal, out)?;
    if plan.dry_run {
        return Ok(());
    }
    verify_installed(plan, survey, out)?;
    // The record's own directory is created by the write below: count it in first.
    for dir in journal.created_dirs().into_iter().chain(crate::journal::missing_parents(&survey.record_file)) {
        let node_dir = plan.root.node_path(&dir);
        if !survey.record.created_dirs.contains(&node_dir) {
            survey.record.created_dirs.push(node_dir);
        }
    }
    let json = serde_json::to_vec_pretty(&survey.record).expect("record serializes");
    journal.write(&survey.record_file, &json, FileMode::KeepOr(0o600))
}

/// Step 0: containerd's version, the config it reads and the file to edit, the old record.
/// Refuses a config this containerd cannot read before anything changes.
fn survey(plan: &InstallPlan, out: &mut InstallOutcome) -> Result<Survey, InstallError> {
    let root = &plan.root;
    let containerd_bin = find_containerd(root, plan.containerd_bin.as_deref());
    let containerd = containerd_bin.as_deref().and_then(|b| containerd_version(root, b));
    match &containerd {
        Some((v, _)) => out.lines.push(format!("containerd {v}")),
        None => out.lines.push("containerd binary not found: cannot check its version or verify the config".into()),
    }
    let main = locate_config(root, plan.containerd_config.as_deref());
    let target = resolve_target(root, &main, containerd.as_ref().map(|v| v.1))?;
    out.lines.extend(target.notes.iter().cloned());
    if let (Some((version, major)), FileKind::Toml) = (&containerd, target.kind) {
        if let Some(text) = read_optional(root, &target.path)? {
            let facts =
                edit::inspect(&text).map_err(|source| InstallError::Edit { path: target.path.clone(), source })?;
            check_config_version(&target.path, facts.version, version, *major)?;
        }
    }
    let record_file = record_path(root, &plan.state_dir);
    let record = load_record(&record_file)?.unwrap_or_default();
    Ok(Survey { containerd_bin, containerd, main, target, record_file, record })
}

/// A version-3 config on containerd 1.x (which reads versions 1 and 2 only): one message naming
/// both versions, instead of a runtime that silently is not there.
pub fn check_config_version(
    path: &Path,
    config: ConfigVersion,
    containerd: &str,
    major: u64,
) -> Result<(), InstallError> {
    if config == ConfigVersion::V3 && major < 2 {
        return Err(InstallError::ConfigNeedsNewerContainerd {
            path: path.to_owned(),
            containerd: containerd.to_owned(),
        });
    }
    Ok(())
}

fn read_optional(root: &HostRoot, node_path: &Path) -> Result<Option<String>, InstallError> {
    match std::fs::read_to_string(root.join(node_path)) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("reading", node_path)(e)),
    }
}

/// All four binaries must be there before anything is copied.
fn check_binaries(plan: &InstallPlan) -> Result<(), InstallError> {
    match BINARIES.into_iter().find(|name| !plan.bin_dir.join(name).is_file()) {
        Some(name) => Err(InstallError::MissingBinary { name, dir: plan.bin_dir.clone() }),
        None => Ok(()),
    }
}

/// Step 1: copies each binary whose bytes differ into `<prefix>/bin`, atomically (a running
/// `flox-runc` or shim keeps its old inode).
fn install_binaries(
    plan: &InstallPlan,
    record: &mut InstallRecord,
    journal: &mut Journal,
    out: &mut InstallOutcome,
) -> Result<(), InstallError> {
    let bin = plan.prefix.join("bin");
    for name in BINARIES {
        let source = plan.bin_dir.join(name);
        let node_path = bin.join(name);
        let dest = plan.root.join(&node_path);
        if same_file_content(&source, &dest) {
            continue;
        }
        out.changed = true;
        if plan.dry_run {
            out.lines.push(format!("would install {}", node_path.display()));
            continue;
        }
        let existed = dest.exists();
        let bytes = std::fs::read(&source).map_err(io("reading", &source))?;
        journal.write(&dest, &bytes, FileMode::Exactly(0o755))?;
        if !existed && !record.created_binaries.contains(&node_path) {
            record.created_binaries.push(node_path.clone());
        }
        out.lines.push(format!("installed {}", node_path.display()));
    }
    Ok(())
}

/// Step 2: adds runtime `flox` to the target file (backed up first). Returns the `BinaryName`
/// of the node's runc runtime, which the node config must keep calling.
fn edit_containerd_config(
    plan: &InstallPlan,
    survey: &mut Survey,
    journal: &mut Journal,
    out: &mut InstallOutcome,
) -> Result<Option<String>, InstallError> {
    let root = &plan.root;
    let target = &survey.target;
    let rt = runtime_for_prefix(&plan.prefix);
    let before = read_optional(root, &target.path)?;
    let start = before.clone().or_else(|| target.initial.clone()).unwrap_or_default();
    let edit_err = |source| InstallError::Edit { path: target.path.clone(), source };
    let after = match target.kind {
        FileKind::Toml => edit::add_flox_runtime(&start, &rt).map_err(edit_err)?,
        FileKind::Template => {
            let defaults = template_defaults(root, &survey.main, &target.path)?;
            edit::add_flox_runtime_template(&start, &rt, &defaults).map_err(edit_err)?
        }
    };
    let runc_binary = match target.kind {
        FileKind::Toml => edit::inspect(&after).ok().and_then(|f| f.runc_binary_name),
        FileKind::Template => None,
    };
    if before.as_deref() == Some(after.as_str()) {
        out.lines.push(format!("{}: runtime flox already up to date", target.path.display()));
        return Ok(runc_binary);
    }
    out.changed = true;
    if plan.dry_run {
        out.lines.push(unified_diff(&target.path, before.as_deref().unwrap_or(""), &after));
        return Ok(runc_binary);
    }
    let backup = match &before {
        Some(text) => {
            let name = format!(
                "{}.bak.{}",
                target.path.file_name().and_then(|n| n.to_str()).unwrap_or("config.toml"),
                now_stamp()
            );
            let backup = target.path.with_file_name(name);
            journal.write(&root.join(&backup), text.as_bytes(), FileMode::KeepOr(0o600))?;
            out.lines.push(format!("backup {}", backup.display()));
            Some(backup)
        }
        None => None,
    };
    journal.write(&root.join(&target.path), after.as_bytes(), FileMode::KeepOr(0o644))?;
    out.lines.push(format!("wrote runtime flox into {}", target.path.display()));
    match survey.record.files.iter_mut().find(|f| f.path == target.path) {
        // Keep the first original and backup: uninstall goes back to before any install.
        Some(existing) => existing.installed = after,
        None => survey.record.files.push(FileRecord {
            path: target.path.clone(),
            kind: target.kind,
            original: before,
            installed: after,
            backup,
        }),
    }
    Ok(runc_binary)
}

/// What a k3s/RKE2 template leaves to Go code, read from the config it rendered last: the
/// version (`config-v3.toml.tmpl` is always version 3) and runc's `SystemdCgroup`.
fn template_defaults(root: &HostRoot, main: &Path, template: &Path) -> Result<edit::TemplateDefaults, InstallError> {
    let rendered = read_optional(root, main)?.and_then(|t| edit::inspect(&t).ok());
    let version = if template.file_name().is_some_and(|n| n == "config-v3.toml.tmpl") {
        ConfigVersion::V3
    } else {
        rendered.as_ref().map(|f| f.version).unwrap_or(ConfigVersion::V2)
    };
    Ok(edit::TemplateDefaults { version, systemd_cgroup: rendered.and_then(|f| f.runc_systemd_cgroup) })
}

/// Step 3: the node config, only when absent (an upgrade keeps the node's).
fn write_node_config(
    plan: &InstallPlan,
    runc_binary: Option<&str>,
    record: &mut InstallRecord,
    journal: &mut Journal,
    out: &mut InstallOutcome,
) -> Result<(), InstallError> {
    let node_config = plan.root.join(&plan.node_config);
    let shown = plan.node_config.display();
    if node_config.exists() {
        return Ok(());
    }
    out.changed = true;
    let text = default_node_config(&plan.prefix, runc_binary);
    if plan.dry_run {
        out.lines.push(format!("would write {shown}:\n{text}"));
        return Ok(());
    }
    journal.write(&node_config, text.as_bytes(), FileMode::KeepOr(0o644))?;
    record.node_config = Some(FileRecord {
        path: plan.node_config.clone(),
        kind: FileKind::Toml,
        original: None,
        installed: text,
        backup: None,
    });
    out.lines.push(format!("wrote {shown}"));
    Ok(())
}

/// Step 4: `containerd config dump` (reads files, no daemon) must show runtime flox before
/// containerd is restarted onto the new config.
fn verify_installed(plan: &InstallPlan, survey: &Survey, out: &mut InstallOutcome) -> Result<(), InstallError> {
    if survey.target.kind != FileKind::Toml {
        return Ok(());
    }
    let Some(bin) = &survey.containerd_bin else {
        out.lines.push("not verified: no containerd binary on the node".into());
        return Ok(());
    };
    verify(&plan.root, bin, &survey.main, &runtime_for_prefix(&plan.prefix)).map_err(|e| {
        match (&e, &survey.containerd) {
            (InstallError::Verify(detail), Some((version, _))) => {
                InstallError::Verify(format!("{detail} (containerd {version}, config {})", survey.main.display()))
            }
            _ => e,
        }
    })?;
    out.lines.push(format!("verified: `containerd --config {} config dump` has runtime flox", survey.main.display()));
    Ok(())
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
                write_atomic(&host_path, text.as_bytes(), FileMode::KeepOr(0o644))?;
                lines.push(format!("restored {}", file.path.display()));
                // The backup install made holds the bytes just restored: it goes too, so nothing
                // install added is left. (Kept when the file had changed since: it may be needed.)
                if file.original.as_deref() == Some(text.as_str()) {
                    if let Some(backup) = &file.backup {
                        if std::fs::remove_file(root.join(backup)).is_ok() {
                            lines.push(format!("removed {}", backup.display()));
                        }
                    }
                }
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
        if bin.file_name().is_some_and(|n| n == "containerd-shim-flox-v2") {
            if let Some(dir) = bin.parent().map(|d| d.join(LAUNCHER_RUNC_DIR)) {
                remove_launcher_dir(root, &dir, dry_run, &mut lines);
            }
        }
    }
    if dry_run {
        lines.extend(record.created_dirs.iter().rev().map(|d| format!("would remove {} if empty", d.display())));
        return Ok(lines);
    }
    std::fs::remove_file(&record_file).map_err(io("removing", &record_file))?;
    for dir in record.created_dirs.iter().rev() {
        match std::fs::remove_dir(root.join(dir)) {
            Ok(()) => lines.push(format!("removed {}", dir.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                lines.push(format!("kept {}: not empty", dir.display()))
            }
            Err(e) => return Err(io("removing", dir)(e)),
        }
    }
    Ok(lines)
}

/// The launcher's `runc` link directory: its link (only a symlink, never a file someone put
/// there) and the directory when that leaves it empty.
fn remove_launcher_dir(root: &HostRoot, dir: &Path, dry_run: bool, lines: &mut Vec<String>) {
    let host_dir = root.join(dir);
    let link = host_dir.join("runc");
    if !std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
        return;
    }
    if dry_run {
        lines.push(format!("would remove {}", dir.display()));
        return;
    }
    if std::fs::remove_file(&link).is_ok() && std::fs::remove_dir(&host_dir).is_ok() {
        lines.push(format!("removed {}", dir.display()));
    }
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
}
