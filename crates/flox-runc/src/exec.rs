//! `runc exec --process F`: containerd builds F from its stored spec, not from the config.json
//! we edited, so exec processes are wrapped again here (as attaches to the main process's
//! activation) — unless the container is listed in `flox.dev/skip-containers-exec`.
//!
//! F is written by the runc shim, but its contents come from the exec request (a pod's user
//! chooses args and env), so it is read like any pod-influenced file: no symlink followed,
//! a regular file only, bounded; errors never name the host path.
use std::path::Path;

use imageless_core::spec_edit::{FloxEdit, NixView, SpecError};
use imageless_node::config::NodeConfig;
use imageless_node::containers::ContainerState;
use imageless_node::pod_file::{NoFollowFile, PodFileError};

/// Far above what CRI lets through (its messages are capped at 16 MiB as a whole).
const PROCESS_FILE_LIMIT: u64 = 16 * 1024 * 1024;

/// Why an exec was refused. Never names the host path of the process file (the pod chose its
/// contents; the path is the shim's), nor any of its bytes.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("flox: the exec process file {0}")]
    ProcessFile(#[source] PodFileError),
    #[error("flox: the exec process is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error(transparent)]
    Edit(#[from] SpecError),
    #[error("flox: writing the exec process file: {0}")]
    Write(#[source] PodFileError),
}

pub fn wrap_exec_process(config: &NodeConfig, process_file: &str, id: &str) -> Result<(), ExecError> {
    let Some(wrap) = ExecWrap::for_container(config, id) else {
        return Ok(());
    };
    let file = NoFollowFile::open(Path::new(process_file)).map_err(ExecError::ProcessFile)?;
    let bytes = file.read(PROCESS_FILE_LIMIT).map_err(ExecError::ProcessFile)?;
    file.replace(&wrap.apply(&bytes)?).map_err(ExecError::Write)
}

/// How exec processes of one flox container are wrapped. Also used in-process by the shim
/// proxy, which sees the process in the exec request instead of in a file.
pub struct ExecWrap {
    edit: FloxEdit,
    attach: bool,
}

impl ExecWrap {
    /// None when container `id`'s execs are not wrapped: not a flox container, or listed in
    /// `flox.dev/skip-containers-exec`.
    pub fn for_container(config: &NodeConfig, id: &str) -> Option<ExecWrap> {
        let state = ContainerState::load(&config.state_root, id).filter(|s| !s.skip_exec)?;
        let edit = FloxEdit {
            env_dir: state.env_dir,
            activator: state.activator,
            nix: NixView::WholeStore { store: String::new() }, // mounts are not part of a process; unused here
            description: state.description,
            disable_metrics: state.disable_metrics,
        };
        Some(ExecWrap { edit, attach: state.attach })
    }

    /// Wraps the OCI process `bytes` (JSON, chosen by the pod's user).
    pub fn apply(&self, bytes: &[u8]) -> Result<Vec<u8>, ExecError> {
        let mut process: serde_json::Value = serde_json::from_slice(bytes).map_err(ExecError::NotJson)?;
        let edited = if self.attach {
            self.edit.apply_to_exec_process(&mut process)
        } else {
            self.edit.apply_to_process(&mut process)
        };
        edited?;
        Ok(serde_json::to_vec(&process).expect("serializable"))
    }
}
