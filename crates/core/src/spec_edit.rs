//! Editing an OCI runtime spec (config.json) or exec process for a flox container.
//!
//! The spec is edited as `serde_json::Value`, not through typed structs, so that every field
//! containerd wrote — including ones newer than our types — survives byte-for-byte apart from
//! what we change. An edit is a value ([`FloxEdit`]) that is applied without any I/O.
use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::container_paths;
use crate::store_path::STORE_DIR;

pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerKind {
    /// The pod sandbox (pause) container: never modified.
    Sandbox,
    /// An app or init container of a pod.
    Container,
    /// Not created through CRI (e.g. `ctr run --runtime ...`): no pod annotations to act on.
    Unknown,
}

/// What the wrapper reads from a spec to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub kind: ContainerKind,
    pub name: Option<String>,
    pub sandbox_id: Option<String>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("flox: config.json is not an OCI runtime spec: {0}")]
    NotASpec(&'static str),
}

pub fn container_info(spec: &Value) -> ContainerInfo {
    let annotations: BTreeMap<String, String> = spec
        .get("annotations")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect())
        .unwrap_or_default();
    let kind = match annotations.get(CONTAINER_TYPE).map(String::as_str) {
        Some("sandbox") => ContainerKind::Sandbox,
        Some("container") => ContainerKind::Container,
        _ => ContainerKind::Unknown,
    };
    ContainerInfo {
        kind,
        name: annotations.get(CONTAINER_NAME).cloned(),
        sandbox_id: annotations.get(SANDBOX_ID).cloned(),
        annotations,
    }
}

/// The container's token volume: the host directory the runtime reads `floxhub-token` from
/// and the container path it is mounted at (what errors may name). The token itself never
/// enters the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenMount {
    pub host_dir: String,
    pub container_dir: String,
}

/// Finds the token volume. Only a bind mount with an absolute source counts (a tmpfs or other
/// filesystem there holds nothing yet, and its `source` is no host path); when several mounts
/// share the destination the last one wins, as it does inside the container.
pub fn token_source(spec: &Value) -> Option<TokenMount> {
    let wanted = [container_paths::TOKEN_MOUNT, "/run/secrets/flox.dev"];
    spec.get("mounts")?.as_array()?.iter().rev().find_map(|m| {
        let dest = m.get("destination")?.as_str()?.trim_end_matches('/');
        if !wanted.contains(&dest) {
            return None;
        }
        let is_bind = m.get("type").and_then(Value::as_str) == Some("bind")
            || m.get("options")
                .and_then(Value::as_array)
                .is_some_and(|o| o.iter().any(|v| matches!(v.as_str(), Some("bind" | "rbind"))));
        let source = m.get("source")?.as_str()?;
        (is_bind && source.starts_with('/'))
            .then(|| TokenMount { host_dir: source.to_string(), container_dir: dest.to_string() })
    })
}

/// How /nix appears in the container. Every source is the node's own (its store directory
/// or a view built from it): the host's /nix, if it has one, is never mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NixView {
    /// Only the environment's closure: the node's prepared view of it (a directory holding
    /// exactly the closure's store paths) bound read-only at /nix/store. One mount whatever
    /// the closure's size.
    Closure { view: String },
    /// The whole node store (`store` on the host), read-only at /nix/store.
    WholeStore { store: String },
    /// `flox.dev/nix-mutable`: an overlay at /nix over `lower` (a directory laid out as /nix:
    /// the closure in `store/`, its Nix registration in `var/nix/db`); writes land in `upper`
    /// only.
    Overlay { lower: String, upper: String, work: String },
}

/// The edit that turns a plain container into a flox one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FloxEdit {
    /// Host path of the rendered environment tree for the pod's mode.
    pub env_dir: String,
    /// Host path of the static activator binary.
    pub activator: String,
    pub nix: NixView,
    /// `owner/name`, exported as FLOX_ENV_DESCRIPTION and used in the activator's messages.
    pub description: String,
    pub disable_metrics: bool,
}

/// Who the container's main process runs as (`process.user`), which owns the activation
/// state tmpfs so the activator can write it without any privilege.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessOwner {
    pub uid: u64,
    pub gid: u64,
}

impl ProcessOwner {
    /// `process.user.uid`/`gid`; absent means root, as in runc.
    pub fn of(process: &Value) -> ProcessOwner {
        let id = |key: &str| process.get("user").and_then(|user| user.get(key)).and_then(Value::as_u64).unwrap_or(0);
        ProcessOwner { uid: id("uid"), gid: id("gid") }
    }
}

/// Size cap of the activation state tmpfs: the recorded environment cannot be larger than
/// what execve accepts (a few MiB at most), and a cap keeps a runaway writer from using memory.
pub const ACTIVATION_STATE_SIZE: &str = "size=4096k";

fn bind(source: &str, destination: &str) -> Value {
    json!({
        "destination": destination,
        "type": "bind",
        "source": source,
        "options": ["rbind", "ro", "nosuid", "nodev"],
    })
}

impl FloxEdit {
    /// The mounts a flox container gets, in the order runc must make them.
    pub fn mounts(&self, owner: ProcessOwner) -> Vec<Value> {
        let mut mounts = Vec::new();
        if !matches!(self.nix, NixView::Overlay { .. }) {
            // An empty /nix of our own, made read-only after all mounts (linux.readonlyPaths),
            // so nothing can be written anywhere under /nix — not even into the image's rootfs.
            mounts.push(json!({
                "destination": "/nix",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=755", "size=1024k"],
            }));
        }
        match &self.nix {
            NixView::Closure { view } => mounts.push(bind(view, STORE_DIR)),
            NixView::WholeStore { store } => mounts.push(bind(store, STORE_DIR)),
            NixView::Overlay { lower, upper, work } => mounts.push(json!({
                "destination": "/nix",
                "type": "overlay",
                "source": "overlay",
                "options": [
                    format!("lowerdir={lower}"),
                    format!("upperdir={upper}"),
                    format!("workdir={work}"),
                ],
            })),
        }
        mounts.push(bind(&self.env_dir, container_paths::ENV_DIR));
        mounts.push(json!({
            "destination": container_paths::ACTIVATOR,
            "type": "bind",
            "source": self.activator,
            // exec is needed: this is the container's entrypoint.
            "options": ["bind", "ro", "nosuid", "nodev"],
        }));
        mounts.push(json!({
            "destination": container_paths::CACHE_DIR,
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777", "size=65536k"],
        }));
        // A fresh one per container: a restarted container activates (and runs its hook) anew.
        mounts.push(json!({
            "destination": container_paths::ACTIVATION_STATE_DIR,
            "type": "tmpfs",
            "source": "tmpfs",
            "options": [
                "nosuid",
                "nodev",
                "noexec",
                "mode=700",
                format!("uid={}", owner.uid),
                format!("gid={}", owner.gid),
                ACTIVATION_STATE_SIZE,
            ],
        }));
        mounts
    }

    /// Edits a full config.json.
    pub fn apply_to_spec(&self, spec: &mut Value) -> Result<(), SpecError> {
        let owner = ProcessOwner::of(spec.get("process").unwrap_or(&Value::Null));
        let obj = spec.as_object_mut().ok_or(SpecError::NotASpec("not a JSON object"))?;
        let mounts = obj.entry("mounts").or_insert_with(|| Value::Array(Vec::new()));
        let mounts = mounts.as_array_mut().ok_or(SpecError::NotASpec("mounts is not an array"))?;
        mounts.extend(self.mounts(owner));
        if !matches!(self.nix, NixView::Overlay { .. }) {
            let linux = obj.entry("linux").or_insert_with(|| json!({}));
            let linux = linux.as_object_mut().ok_or(SpecError::NotASpec("linux is not an object"))?;
            let ro = linux.entry("readonlyPaths").or_insert_with(|| json!([]));
            let ro = ro.as_array_mut().ok_or(SpecError::NotASpec("linux.readonlyPaths is not an array"))?;
            if !ro.iter().any(|p| p == "/nix") {
                ro.push(json!("/nix"));
            }
        }
        let obj = spec.as_object_mut().ok_or(SpecError::NotASpec("not a JSON object"))?;
        let process = obj.get_mut("process").ok_or(SpecError::NotASpec("no process"))?;
        self.apply_to_process(process)
    }

    /// Edits the container's main process (config.json's `process`): it starts the activation.
    pub fn apply_to_process(&self, process: &mut Value) -> Result<(), SpecError> {
        self.edit_process(process, &[])
    }

    /// Edits an exec process (the file given to `runc exec --process`): it attaches to the
    /// main process's activation (no second `hook.on-activate` run), as a later
    /// `flox activate` in the same container does.
    pub fn apply_to_exec_process(&self, process: &mut Value) -> Result<(), SpecError> {
        self.edit_process(process, &[container_paths::ATTACH_FLAG])
    }

    fn edit_process(&self, process: &mut Value, activator_options: &[&str]) -> Result<(), SpecError> {
        let process = process.as_object_mut().ok_or(SpecError::NotASpec("process is not an object"))?;
        wrap_args(process, activator_options)?;
        let env = process.entry("env").or_insert_with(|| Value::Array(Vec::new()));
        let env = env.as_array_mut().ok_or(SpecError::NotASpec("process.env is not an array"))?;
        set_env(env, "FLOX_ENV_DESCRIPTION", &self.description);
        if self.disable_metrics {
            set_env(env, "FLOX_DISABLE_METRICS", "1");
        }
        Ok(())
    }
}

fn wrap_args(process: &mut Map<String, Value>, activator_options: &[&str]) -> Result<(), SpecError> {
    let args = process.entry("args").or_insert_with(|| Value::Array(Vec::new()));
    let args = args.as_array_mut().ok_or(SpecError::NotASpec("process.args is not an array"))?;
    // Idempotent: a process that is already wrapped (a retried create) is not wrapped twice.
    if args.first().and_then(Value::as_str) == Some(container_paths::ACTIVATOR) {
        return Ok(());
    }
    let mut wrapped = vec![json!(container_paths::ACTIVATOR)];
    wrapped.extend(activator_options.iter().map(|option| json!(option)));
    wrapped.push(json!("--"));
    wrapped.append(args);
    *args = wrapped;
    Ok(())
}

fn set_env(env: &mut Vec<Value>, name: &str, value: &str) {
    let prefix = format!("{name}=");
    env.retain(|e| !e.as_str().is_some_and(|s| s.starts_with(&prefix)));
    env.push(Value::String(format!("{name}={value}")));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Value {
        json!({
            "ociVersion": "1.1.0",
            "process": {"args": ["echoip"], "env": ["PATH=/usr/bin", "FLOX_ENV_DESCRIPTION=x"], "cwd": "/"},
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/var/run/secrets/flox.dev", "type": "bind", "source": "/var/lib/kubelet/pods/u/volumes/secret", "options": ["rbind", "ro"]}
            ],
            "annotations": {
                "io.kubernetes.cri.container-type": "container",
                "io.kubernetes.cri.container-name": "empty",
                "flox.dev/environment": "flox/echoip"
            },
            "linux": {"namespaces": [{"type": "pid"}], "someFutureField": {"keep": true}}
        })
    }

    #[test]
    fn info_and_token_source() {
        let s = spec();
        let info = container_info(&s);
        assert_eq!(info.kind, ContainerKind::Container);
        assert_eq!(info.name.as_deref(), Some("empty"));
        assert_eq!(info.annotations["flox.dev/environment"], "flox/echoip");
        let mount = token_source(&s).unwrap();
        assert_eq!(mount.host_dir, "/var/lib/kubelet/pods/u/volumes/secret");
        assert_eq!(mount.container_dir, "/var/run/secrets/flox.dev");
    }

    #[test]
    fn token_source_takes_the_last_bind_mount_with_an_absolute_source() {
        let mount = |dest: &str, ty: &str, source: &str, opts: Value| json!({"destination": dest, "type": ty, "source": source, "options": opts});
        let with = |mounts: Vec<Value>| json!({"mounts": mounts});
        let s = with(vec![
            mount("/var/run/secrets/flox.dev", "bind", "/first", json!(["rbind", "ro"])),
            mount("/var/run/secrets/flox.dev/", "bind", "/second", json!(["rbind"])),
        ]);
        assert_eq!(token_source(&s).unwrap().host_dir, "/second");
        // containerd 1.x writes type "bind"; some runtimes give only the option.
        let s = with(vec![mount("/run/secrets/flox.dev", "none", "/x", json!(["rbind"]))]);
        assert_eq!(token_source(&s).unwrap().container_dir, "/run/secrets/flox.dev");
        // A tmpfs's "source" is a name, not a host path: never read relative to the cwd.
        let s = with(vec![mount("/var/run/secrets/flox.dev", "tmpfs", "tmpfs", json!(["nosuid"]))]);
        assert_eq!(token_source(&s), None);
        let s = with(vec![mount("/var/run/secrets/flox.dev", "bind", "relative/dir", json!(["rbind"]))]);
        assert_eq!(token_source(&s), None);
        assert_eq!(token_source(&with(vec![mount("/var/run/secrets", "bind", "/s", json!([]))])), None);
    }

    #[test]
    fn edit_keeps_fields_wraps_args_and_is_idempotent_on_args() {
        let mut s = spec();
        let edit = FloxEdit {
            env_dir: "/var/lib/imageless/envs/k/env".into(),
            activator: "/usr/local/bin/flox-activate".into(),
            nix: NixView::WholeStore { store: "/var/lib/imageless/store".into() },
            description: "flox/echoip".into(),
            disable_metrics: true,
        };
        edit.apply_to_spec(&mut s).unwrap();
        assert_eq!(s["process"]["args"], json!(["/run/flox/activate", "--", "echoip"]));
        assert_eq!(
            s["process"]["env"],
            json!(["PATH=/usr/bin", "FLOX_ENV_DESCRIPTION=flox/echoip", "FLOX_DISABLE_METRICS=1"])
        );
        assert_eq!(s["linux"]["someFutureField"], json!({"keep": true}));
        assert_eq!(s["mounts"].as_array().unwrap().len(), 2 + 6);
        assert_eq!(s["linux"]["readonlyPaths"], json!(["/nix"]));
        let mut p = s["process"].clone();
        edit.apply_to_process(&mut p).unwrap();
        assert_eq!(p["process"], Value::Null);
        assert_eq!(p["args"], json!(["/run/flox/activate", "--", "echoip"]));
    }

    #[test]
    fn exec_process_attaches_and_state_tmpfs_belongs_to_the_user() {
        let edit = FloxEdit {
            env_dir: "/e".into(),
            activator: "/a".into(),
            nix: NixView::WholeStore { store: "/var/lib/imageless/store".into() },
            description: "flox/hooks".into(),
            disable_metrics: false,
        };
        let mut process = json!({"args": ["sh", "-c", "true"], "env": []});
        edit.apply_to_exec_process(&mut process).unwrap();
        assert_eq!(process["args"], json!(["/run/flox/activate", "--attach", "--", "sh", "-c", "true"]));
        edit.apply_to_exec_process(&mut process).unwrap();
        assert_eq!(process["args"][1], "--attach", "wrapped once");

        let mut s = spec();
        s["process"]["user"] = json!({"uid": 1000, "gid": 2000});
        edit.apply_to_spec(&mut s).unwrap();
        let state = s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/run/flox/activation")
            .expect("activation state mount");
        assert_eq!(state["type"], "tmpfs");
        let options: Vec<&str> = state["options"].as_array().unwrap().iter().map(|o| o.as_str().unwrap()).collect();
        for wanted in ["mode=700", "uid=1000", "gid=2000", "noexec"] {
            assert!(options.contains(&wanted), "{wanted} in {options:?}");
        }
        assert_eq!(ProcessOwner::of(&json!({})), ProcessOwner { uid: 0, gid: 0 });
    }
}
