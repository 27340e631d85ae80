//! Per-container state: what the runc wrapper did at create, so exec can wrap the same way
//! and delete can undo it. One JSON file per container id under `<state_root>/containers/`.
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    /// Rendered environment key (keeps it from `imageless gc`).
    pub env_key: String,
    /// The edit applied at create, re-applied to exec processes.
    pub env_dir: String,
    pub activator: String,
    pub description: String,
    pub disable_metrics: bool,
    /// In `flox.dev/skip-containers-exec`: exec processes run outside the environment.
    pub skip_exec: bool,
    /// nix-mutable overlay directory to remove after delete.
    pub overlay_dir: Option<String>,
    /// Created with the activation state tmpfs: exec processes attach (`--attach`) to the main
    /// process's activation. False (absent) for containers created before attach existed:
    /// their activator is bind-mounted from then and may not know the flag.
    #[serde(default)]
    pub attach: bool,
}

pub fn containers_dir(state_root: &Path) -> PathBuf {
    state_root.join("containers")
}

/// Container ids are chosen by containerd (hex) but arrive via argv: refuse path tricks.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !id.starts_with('.')
}

pub fn state_path(state_root: &Path, id: &str) -> Option<PathBuf> {
    valid_id(id).then(|| containers_dir(state_root).join(format!("{id}.json")))
}

pub fn overlay_dir(state_root: &Path, id: &str) -> Option<PathBuf> {
    valid_id(id).then(|| state_root.join("overlays").join(id))
}

impl ContainerState {
    pub fn save(&self, state_root: &Path) -> std::io::Result<()> {
        let path = state_path(state_root, &self.id).ok_or_else(|| std::io::Error::other("invalid container id"))?;
        std::fs::create_dir_all(path.parent().expect("has parent"))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(self).expect("serializable"))?;
        std::fs::rename(tmp, path)
    }

    pub fn load(state_root: &Path, id: &str) -> Option<ContainerState> {
        let bytes = std::fs::read(state_path(state_root, id)?).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn remove(state_root: &Path, id: &str) {
        if let Some(p) = state_path(state_root, id) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Environment keys used by containers that exist (created and not yet deleted).
pub fn keys_in_use(state_root: &Path) -> HashSet<String> {
    let mut keys = HashSet::new();
    if let Ok(entries) = std::fs::read_dir(containers_dir(state_root)) {
        for e in entries.flatten() {
            if let Some(s) =
                std::fs::read(e.path()).ok().and_then(|b| serde_json::from_slice::<ContainerState>(&b).ok())
            {
                keys.insert(s.env_key);
            }
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_of_a_container_from_before_attach_does_not_attach() {
        let old = r#"{"id":"c1","env_key":"k","env_dir":"/e","activator":"/a","description":"o/n",
                      "disable_metrics":false,"skip_exec":false,"overlay_dir":null}"#;
        let state: ContainerState = serde_json::from_str(old).unwrap();
        assert!(!state.attach);
        let dir = tempfile::tempdir().unwrap();
        ContainerState { attach: true, ..state }.save(dir.path()).unwrap();
        assert!(ContainerState::load(dir.path(), "c1").unwrap().attach);
    }
}
