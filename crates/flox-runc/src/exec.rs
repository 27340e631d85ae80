//! `runc exec --process F`: containerd builds F from its stored spec, not from the config.json
//! we edited, so exec processes are wrapped again here (as attaches to the main process's
//! activation) — unless the container is listed in `flox.dev/skip-containers-exec`.
use std::path::Path;

use imageless_core::spec_edit::{FloxEdit, NixView};
use imageless_node::config::NodeConfig;
use imageless_node::containers::ContainerState;

pub fn wrap_exec_process(config: &NodeConfig, process_file: &str, id: &str) -> Result<(), String> {
    let Some(state) = ContainerState::load(&config.state_root, id) else {
        return Ok(()); // not a flox container
    };
    if state.skip_exec {
        return Ok(());
    }
    let path = Path::new(process_file);
    let bytes = std::fs::read(path).map_err(|e| format!("flox: reading exec process {process_file}: {e}"))?;
    let mut process: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("flox: exec process {process_file} is not JSON: {e}"))?;
    let edit = FloxEdit {
        env_dir: state.env_dir,
        activator: state.activator,
        nix: NixView::WholeStore, // mounts are not part of a process; unused here
        description: state.description,
        disable_metrics: state.disable_metrics,
    };
    let edited =
        if state.attach { edit.apply_to_exec_process(&mut process) } else { edit.apply_to_process(&mut process) };
    edited.map_err(|e| e.to_string())?;
    std::fs::write(path, serde_json::to_vec(&process).expect("serializable"))
        .map_err(|e| format!("flox: writing exec process {process_file}: {e}"))
}
