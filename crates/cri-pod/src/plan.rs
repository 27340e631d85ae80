//! Translating a pod manifest into the CRI requests kubelet would send: the sandbox config with
//! its runtime handler, and one container config per init and app container. Pure, except that
//! `secretKeyRef` values are read through the caller's `read_secret`.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, EnvVar, Volume};

use crate::error::PodError;
use crate::manifest::PodManifest;

/// Label on every sandbox and container this runner creates; `pod ls` lists by it.
pub const MANAGED_LABEL: &str = "imageless.dev/pod-runner";
pub const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
pub const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME_LABEL: &str = "io.kubernetes.container.name";
pub const INIT_LABEL: &str = "imageless.dev/init-container";

/// Where the node-side pieces of this pod live, and what the command line added.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub uid: String,
    /// CRI `log_directory`: containerd writes `<container>/0.log` below it.
    pub log_dir: PathBuf,
    /// Per-pod directory for emptyDir volumes.
    pub pod_dir: PathBuf,
    /// `--secret NAME=DIR`.
    pub secrets: BTreeMap<String, PathBuf>,
    /// Fallback: a secret NAME is the directory `<secrets_root>/NAME`.
    pub secrets_root: PathBuf,
    /// `--host-network`: run in the node's network namespace even if the manifest does not ask.
    pub force_host_network: bool,
    /// `--host-path-root DIR`: every hostPath volume's path is taken beneath DIR (hostPath `/`
    /// is DIR itself, `/var/lib` is DIR/var/lib), so a node-level pod such as an installer
    /// DaemonSet runs against a prepared node root instead of the machine's own.
    pub host_path_root: Option<PathBuf>,
    /// `--skip-container NAME`: containers (init or app) not to run, e.g. a DaemonSet's
    /// containers that need an API server where there is none. Each must name a container of
    /// the pod, and at least one app container must remain.
    pub skip_containers: BTreeSet<String>,
}

impl PlanOptions {
    pub fn secret_dir(&self, name: &str) -> PathBuf {
        self.secrets.get(name).cloned().unwrap_or_else(|| self.secrets_root.join(name))
    }
}

/// A container to create, with the name it has in the manifest.
#[derive(Debug, Clone)]
pub struct PlannedContainer {
    pub name: String,
    pub image: String,
    pub config: cri::ContainerConfig,
}

#[derive(Debug, Clone)]
pub struct PodPlan {
    pub runtime_handler: String,
    pub sandbox: cri::PodSandboxConfig,
    pub init_containers: Vec<PlannedContainer>,
    pub containers: Vec<PlannedContainer>,
    /// Host directories to create before the containers start (emptyDir, hostPath *OrCreate).
    pub dirs_to_create: Vec<PathBuf>,
    pub host_network: bool,
}

/// Resolved volumes: name → host path, and whether the volume is read-only by nature.
struct HostVolume {
    path: PathBuf,
    read_only: bool,
}

pub fn plan(
    pod: &PodManifest,
    opts: &PlanOptions,
    read_secret: &dyn Fn(&Path) -> Result<String, PodError>,
) -> Result<PodPlan, PodError> {
    let spec = &pod.spec;
    let host_network = opts.force_host_network || spec.host_network.unwrap_or(false);
    let mode = |on_node: bool| if on_node { cri::NamespaceMode::Node } else { cri::NamespaceMode::Pod } as i32;
    let namespaces = cri::NamespaceOption {
        network: mode(host_network),
        pid: if spec.host_pid.unwrap_or(false) {
            cri::NamespaceMode::Node as i32
        } else if spec.share_process_namespace.unwrap_or(false) {
            cri::NamespaceMode::Pod as i32
        } else {
            cri::NamespaceMode::Container as i32
        },
        ipc: mode(spec.host_ipc.unwrap_or(false)),
        ..Default::default()
    };

    check_skipped(pod, &opts.skip_containers)?;
    let runs = |c: &&Container| !opts.skip_containers.contains(&c.name);
    let all_containers: Vec<&Container> =
        spec.init_containers.iter().flatten().chain(spec.containers.iter()).filter(runs).collect();
    let any_privileged =
        all_containers.iter().any(|c| c.security_context.as_ref().and_then(|s| s.privileged).unwrap_or(false));
    let pod_sc = spec.security_context.clone().unwrap_or_default();

    let mut labels: HashMap<String, String> = pod.labels.clone().into_iter().collect();
    labels.insert(POD_NAME_LABEL.into(), pod.name.clone());
    labels.insert(POD_NAMESPACE_LABEL.into(), pod.namespace.clone());
    labels.insert(POD_UID_LABEL.into(), opts.uid.clone());
    labels.insert(MANAGED_LABEL.into(), "true".into());
    let annotations: HashMap<String, String> = pod.annotations.clone().into_iter().collect();

    let sandbox = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: pod.name.clone(),
            uid: opts.uid.clone(),
            namespace: pod.namespace.clone(),
            attempt: 0,
        }),
        // runc refuses to set a hostname without a private UTS namespace (host network).
        hostname: if host_network { String::new() } else { spec.hostname.clone().unwrap_or_else(|| pod.name.clone()) },
        log_directory: opts.log_dir.to_string_lossy().into_owned(),
        labels: labels.clone(),
        annotations: annotations.clone(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces.clone()),
                run_as_user: pod_sc.run_as_user.map(|value| cri::Int64Value { value }),
                run_as_group: pod_sc.run_as_group.map(|value| cri::Int64Value { value }),
                supplemental_groups: pod_sc.supplemental_groups.clone().unwrap_or_default(),
                privileged: any_privileged,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };

    let (volumes, dirs_to_create) = resolve_volumes(spec.volumes.as_deref().unwrap_or(&[]), opts)?;

    let ctx = ContainerContext { pod, opts, volumes: &volumes, namespaces: &namespaces, read_secret };
    let init_containers = spec
        .init_containers
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, c)| runs(c))
        .map(|(i, c)| ctx.container(c, &format!("spec.initContainers[{i}]"), true))
        .collect::<Result<_, _>>()?;
    let containers = spec
        .containers
        .iter()
        .enumerate()
        .filter(|(_, c)| runs(c))
        .map(|(i, c)| ctx.container(c, &format!("spec.containers[{i}]"), false))
        .collect::<Result<_, _>>()?;

    Ok(PodPlan {
        runtime_handler: spec.runtime_class_name.clone().unwrap_or_default(),
        sandbox,
        init_containers,
        containers,
        dirs_to_create,
        host_network,
    })
}

/// Every skipped name is a container of the pod (a typo must not run the container after all),
/// and at least one app container is left to run.
fn check_skipped(pod: &PodManifest, skip: &BTreeSet<String>) -> Result<(), PodError> {
    let spec = &pod.spec;
    let names: Vec<&str> =
        spec.init_containers.iter().flatten().chain(spec.containers.iter()).map(|c| c.name.as_str()).collect();
    if let Some(unknown) = skip.iter().find(|s| !names.contains(&s.as_str())) {
        return Err(PodError::InvalidField {
            field: "--skip-container".into(),
            value: unknown.clone(),
            accepted: format!("the name of a container of pod {} ({})", pod.name, names.join(", ")),
        });
    }
    if spec.containers.iter().all(|c| skip.contains(&c.name)) {
        return Err(PodError::InvalidField {
            field: "--skip-container".into(),
            value: skip.iter().cloned().collect::<Vec<_>>().join(","),
            accepted: "names that leave at least one app container (spec.containers) to run".into(),
        });
    }
    Ok(())
}

/// A hostPath volume's path on this machine: as written, or beneath `--host-path-root`. Beneath
/// a root the path must be absolute and free of `..`, so it cannot name anything outside it.
fn host_path(path: &str, root: Option<&Path>, field: &str) -> Result<PathBuf, PodError> {
    let Some(root) = root else { return Ok(PathBuf::from(path)) };
    let p = Path::new(path);
    if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(PodError::InvalidField {
            field: format!("{field}.hostPath.path"),
            value: path.into(),
            accepted: "an absolute path without '..' (it is taken beneath --host-path-root)".into(),
        });
    }
    let relative = p.strip_prefix("/").unwrap_or(p);
    Ok(if relative.as_os_str().is_empty() { root.to_path_buf() } else { root.join(relative) })
}

fn resolve_volumes(
    volumes: &[Volume],
    opts: &PlanOptions,
) -> Result<(BTreeMap<String, HostVolume>, Vec<PathBuf>), PodError> {
    let mut resolved = BTreeMap::new();
    let mut dirs = Vec::new();
    for (i, v) in volumes.iter().enumerate() {
        let field = format!("spec.volumes[{i}]");
        let host = if let Some(secret) = &v.secret {
            let name = secret.secret_name.clone().ok_or_else(|| PodError::InvalidField {
                field: format!("{field}.secret.secretName"),
                value: String::new(),
                accepted: "the name of a secret given with --secret NAME=DIR or present in the state root's secrets/"
                    .into(),
            })?;
            if secret.items.is_some() {
                return Err(PodError::InvalidField {
                    field: format!("{field}.secret.items"),
                    value: "set".into(),
                    accepted: "only whole-secret volumes (no items) are supported by this runner".into(),
                });
            }
            HostVolume { path: opts.secret_dir(&name), read_only: true }
        } else if v.empty_dir.is_some() {
            let path = opts.pod_dir.join("volumes").join(&v.name);
            dirs.push(path.clone());
            HostVolume { path, read_only: false }
        } else if let Some(hp) = &v.host_path {
            let path = host_path(&hp.path, opts.host_path_root.as_deref(), &field)?;
            match hp.type_.as_deref().unwrap_or("") {
                "DirectoryOrCreate" => dirs.push(path.clone()),
                "" | "Directory" | "File" | "FileOrCreate" | "Socket" | "CharDevice" | "BlockDevice" => {}
                other => {
                    return Err(PodError::InvalidField {
                        field: format!("{field}.hostPath.type"),
                        value: other.into(),
                        accepted:
                            "\"\", Directory, DirectoryOrCreate, File, FileOrCreate, Socket, CharDevice, BlockDevice"
                                .into(),
                    })
                }
            }
            HostVolume { path, read_only: false }
        } else {
            return Err(PodError::InvalidField {
                field: field.clone(),
                value: v.name.clone(),
                accepted: "volumes of type secret, emptyDir or hostPath".into(),
            });
        };
        resolved.insert(v.name.clone(), host);
    }
    Ok((resolved, dirs))
}

struct ContainerContext<'a> {
    pod: &'a PodManifest,
    opts: &'a PlanOptions,
    volumes: &'a BTreeMap<String, HostVolume>,
    namespaces: &'a cri::NamespaceOption,
    read_secret: &'a dyn Fn(&Path) -> Result<String, PodError>,
}

impl ContainerContext<'_> {
    fn container(&self, c: &Container, field: &str, init: bool) -> Result<PlannedContainer, PodError> {
        let image = c.image.clone().filter(|i| !i.is_empty()).ok_or_else(|| PodError::InvalidField {
            field: format!("{field}.image"),
            value: String::new(),
            accepted: "an image reference such as busybox:local".into(),
        })?;
        let envs = self.env(c.env.as_deref().unwrap_or(&[]), field)?;
        let env_map: HashMap<&str, &str> = envs.iter().map(|kv| (kv.key.as_str(), kv.value.as_str())).collect();
        let expand_all =
            |v: &Option<Vec<String>>| v.iter().flatten().map(|s| expand_vars(s, &env_map)).collect::<Vec<_>>();

        let mut mounts = Vec::new();
        for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
            let vol = self.volumes.get(&m.name).ok_or_else(|| PodError::InvalidField {
                field: format!("{field}.volumeMounts[{i}].name"),
                value: m.name.clone(),
                accepted: format!(
                    "the name of a volume in spec.volumes ({})",
                    self.volumes.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            })?;
            let mut host_path = vol.path.clone();
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                if Path::new(sub).is_absolute() || sub.split('/').any(|p| p == "..") {
                    return Err(PodError::InvalidField {
                        field: format!("{field}.volumeMounts[{i}].subPath"),
                        value: sub.into(),
                        accepted: "a relative path without '..'".into(),
                    });
                }
                host_path = host_path.join(sub);
            }
            mounts.push(cri::Mount {
                container_path: m.mount_path.clone(),
                host_path: host_path.to_string_lossy().into_owned(),
                readonly: vol.read_only || m.read_only.unwrap_or(false),
                ..Default::default()
            });
        }

        let sc = c.security_context.clone().unwrap_or_default();
        let pod_sc = self.pod.spec.security_context.clone().unwrap_or_default();
        let mut labels: HashMap<String, String> = self.pod.labels.clone().into_iter().collect();
        labels.insert(CONTAINER_NAME_LABEL.into(), c.name.clone());
        labels.insert(POD_NAME_LABEL.into(), self.pod.name.clone());
        labels.insert(POD_NAMESPACE_LABEL.into(), self.pod.namespace.clone());
        labels.insert(POD_UID_LABEL.into(), self.opts.uid.clone());
        labels.insert(MANAGED_LABEL.into(), "true".into());
        if init {
            labels.insert(INIT_LABEL.into(), "true".into());
        }

        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: c.name.clone(), attempt: 0 }),
            image: Some(cri::ImageSpec {
                image: image.clone(),
                user_specified_image: image.clone(),
                ..Default::default()
            }),
            command: expand_all(&c.command),
            args: expand_all(&c.args),
            working_dir: c.working_dir.clone().unwrap_or_default(),
            envs,
            mounts,
            labels,
            annotations: self.pod.annotations.clone().into_iter().collect(),
            log_path: format!("{}/0.log", c.name),
            stdin: c.stdin.unwrap_or(false),
            stdin_once: c.stdin_once.unwrap_or(false),
            tty: c.tty.unwrap_or(false),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    privileged: sc.privileged.unwrap_or(false),
                    namespace_options: Some(self.namespaces.clone()),
                    run_as_user: sc.run_as_user.or(pod_sc.run_as_user).map(|value| cri::Int64Value { value }),
                    run_as_group: sc.run_as_group.or(pod_sc.run_as_group).map(|value| cri::Int64Value { value }),
                    readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
                    supplemental_groups: pod_sc.supplemental_groups.clone().unwrap_or_default(),
                    no_new_privs: sc.allow_privilege_escalation == Some(false),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        Ok(PlannedContainer { name: c.name.clone(), image, config })
    }

    fn env(&self, vars: &[EnvVar], field: &str) -> Result<Vec<cri::KeyValue>, PodError> {
        let mut out: Vec<cri::KeyValue> = Vec::new();
        for (i, var) in vars.iter().enumerate() {
            let field = format!("{field}.env[{i}]");
            let value = match (&var.value, &var.value_from) {
                (_, Some(from)) => {
                    if let Some(f) = &from.field_ref {
                        self.field_ref(&f.field_path, &format!("{field}.valueFrom.fieldRef.fieldPath"))?
                    } else if let Some(s) = &from.secret_key_ref {
                        let path = self.opts.secret_dir(&s.name).join(&s.key);
                        match (self.read_secret)(&path) {
                            Ok(v) => v,
                            Err(_) if s.optional == Some(true) => continue,
                            Err(e) => return Err(e),
                        }
                    } else {
                        return Err(PodError::InvalidField {
                            field: format!("{field}.valueFrom"),
                            value: var.name.clone(),
                            accepted: "fieldRef or secretKeyRef".into(),
                        });
                    }
                }
                (Some(v), None) => {
                    let so_far: HashMap<&str, &str> =
                        out.iter().map(|kv| (kv.key.as_str(), kv.value.as_str())).collect();
                    expand_vars(v, &so_far)
                }
                (None, None) => String::new(),
            };
            out.retain(|kv| kv.key != var.name);
            out.push(cri::KeyValue { key: var.name.clone(), value });
        }
        Ok(out)
    }

    fn field_ref(&self, path: &str, field: &str) -> Result<String, PodError> {
        let pod = self.pod;
        let lookup = |map: &BTreeMap<String, String>, rest: &str| {
            let key = rest.strip_prefix("['").and_then(|r| r.strip_suffix("']"))?;
            Some(map.get(key).cloned().unwrap_or_default())
        };
        let value = match path {
            "metadata.name" => Some(pod.name.clone()),
            "metadata.namespace" => Some(pod.namespace.clone()),
            "metadata.uid" => Some(self.opts.uid.clone()),
            "spec.nodeName" => Some(node_name()),
            "spec.serviceAccountName" => Some(pod.spec.service_account_name.clone().unwrap_or_default()),
            p if p.starts_with("metadata.labels") => lookup(&pod.labels, &p["metadata.labels".len()..]),
            p if p.starts_with("metadata.annotations") => lookup(&pod.annotations, &p["metadata.annotations".len()..]),
            _ => None,
        };
        value.ok_or_else(|| PodError::InvalidField {
            field: field.into(),
            value: path.into(),
            accepted: "metadata.name, metadata.namespace, metadata.uid, metadata.labels['K'], metadata.annotations['K'], spec.nodeName, spec.serviceAccountName".into(),
        })
    }
}

fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Kubernetes' `$(VAR)` expansion in command, args and env values: defined variables are
/// replaced, `$$` escapes a `$`, anything else is left as written.
pub fn expand_vars(input: &str, vars: &HashMap<&str, &str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) if vars.contains_key(&inner[..end]) => {
                    out.push_str(vars[&inner[..end]]);
                    rest = &inner[end + 1..];
                }
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> PlanOptions {
        PlanOptions {
            uid: "uid-1".into(),
            log_dir: "/logs/p".into(),
            pod_dir: "/state/pods/p".into(),
            secrets: BTreeMap::from([("tok".to_string(), PathBuf::from("/given/tok"))]),
            secrets_root: "/state/secrets".into(),
            force_host_network: false,
            host_path_root: None,
            skip_containers: BTreeSet::new(),
        }
    }

    fn no_secrets(p: &Path) -> Result<String, PodError> {
        Err(PodError::Io { what: "reading secret", path: p.into(), source: std::io::ErrorKind::NotFound.into() })
    }

    const POD: &str = r#"
kind: Pod
metadata:
  name: echoip
  labels: {app: echoip}
  annotations: {flox.dev/environment: "flox/echoip", other: x}
spec:
  runtimeClassName: flox
  hostNetwork: true
  volumes:
  - {name: tok, secret: {secretName: tok}}
  - {name: other, secret: {secretName: fromroot}}
  - {name: scratch, emptyDir: {}}
  - {name: hp, hostPath: {path: /srv/x, type: DirectoryOrCreate}}
  initContainers:
  - {name: init, image: busybox:local, command: [sh, -c, "true"]}
  containers:
  - name: main
    image: flox/empty:1.0.0
    command: [echoip, "$(PORT)", "$$(PORT)", "$(NOPE)"]
    workingDir: /tmp
    env:
    - {name: PORT, value: "8080"}
    - {name: ADDR, value: ":$(PORT)"}
    - {name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: ENVNAME, valueFrom: {fieldRef: {fieldPath: "metadata.annotations['flox.dev/environment']"}}}
    securityContext: {runAsUser: 1000, readOnlyRootFilesystem: true, privileged: true}
    volumeMounts:
    - {name: tok, mountPath: /var/run/secrets/flox.dev}
    - {name: other, mountPath: /o}
    - {name: scratch, mountPath: /scratch, subPath: sub}
    - {name: hp, mountPath: /hp, readOnly: true}
"#;

    #[test]
    fn translates_the_pod_like_kubelet() {
        let pod = PodManifest::from_yaml(POD).unwrap();
        let p = plan(&pod, &opts(), &no_secrets).unwrap();
        assert_eq!(p.runtime_handler, "flox");
        assert!(p.host_network);
        assert_eq!(p.sandbox.hostname, "", "host network needs an empty hostname");
        let sc = p.sandbox.linux.as_ref().unwrap().security_context.as_ref().unwrap();
        assert_eq!(sc.namespace_options.as_ref().unwrap().network, cri::NamespaceMode::Node as i32);
        assert!(sc.privileged, "a privileged container needs a privileged sandbox");
        assert_eq!(p.sandbox.annotations["flox.dev/environment"], "flox/echoip");
        assert_eq!(p.sandbox.labels["app"], "echoip");
        assert_eq!(p.sandbox.labels[MANAGED_LABEL], "true");
        assert_eq!(p.sandbox.log_directory, "/logs/p");

        assert_eq!(p.init_containers.len(), 1);
        assert_eq!(p.init_containers[0].config.labels[INIT_LABEL], "true");
        let main = &p.containers[0].config;
        assert_eq!(main.annotations["flox.dev/environment"], "flox/echoip");
        assert_eq!(main.annotations["other"], "x");
        assert_eq!(main.command, ["echoip", "8080", "$(PORT)", "$(NOPE)"]);
        assert_eq!(main.working_dir, "/tmp");
        assert_eq!(main.log_path, "main/0.log");
        let env: Vec<_> = main.envs.iter().map(|kv| (kv.key.as_str(), kv.value.as_str())).collect();
        assert_eq!(env, [("PORT", "8080"), ("ADDR", ":8080"), ("POD", "echoip"), ("ENVNAME", "flox/echoip")]);
        let csc = main.linux.as_ref().unwrap().security_context.as_ref().unwrap();
        assert_eq!(csc.run_as_user, Some(cri::Int64Value { value: 1000 }));
        assert!(csc.readonly_rootfs && csc.privileged);
        let mounts: Vec<_> =
            main.mounts.iter().map(|m| (m.container_path.as_str(), m.host_path.as_str(), m.readonly)).collect();
        assert_eq!(
            mounts,
            [
                ("/var/run/secrets/flox.dev", "/given/tok", true),
                ("/o", "/state/secrets/fromroot", true),
                ("/scratch", "/state/pods/p/volumes/scratch/sub", false),
                ("/hp", "/srv/x", true),
            ]
        );
        assert_eq!(p.dirs_to_create, [PathBuf::from("/state/pods/p/volumes/scratch"), PathBuf::from("/srv/x")]);
    }

    #[test]
    fn pod_network_keeps_the_hostname_and_force_host_network_overrides() {
        let pod =
            PodManifest::from_yaml("kind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: i}]\n")
                .unwrap();
        let p = plan(&pod, &opts(), &no_secrets).unwrap();
        assert_eq!(p.sandbox.hostname, "p");
        assert_eq!(p.runtime_handler, "", "no runtimeClassName means the default handler");
        let forced = plan(&pod, &PlanOptions { force_host_network: true, ..opts() }, &no_secrets).unwrap();
        assert!(forced.host_network);
        assert_eq!(forced.sandbox.hostname, "");
    }

    #[test]
    fn unknown_volume_mount_names_the_field_and_the_known_volumes() {
        let pod = PodManifest::from_yaml(
            "kind: Pod\nmetadata: {name: p}\nspec:\n  volumes: [{name: a, emptyDir: {}}]\n  containers: [{name: c, image: i, volumeMounts: [{name: b, mountPath: /b}]}]\n",
        )
        .unwrap();
        let err = plan(&pod, &opts(), &no_secrets).unwrap_err().to_string();
        assert_eq!(
            err,
            "spec.containers[0].volumeMounts[0].name: \"b\" is not accepted; the name of a volume in spec.volumes (a)"
        );
    }

    #[test]
    fn unsupported_volume_type_and_missing_image_are_named() {
        let pod = PodManifest::from_yaml(
            "kind: Pod\nmetadata: {name: p}\nspec:\n  volumes: [{name: cm, configMap: {name: x}}]\n  containers: [{name: c, image: i}]\n",
        )
        .unwrap();
        let err = plan(&pod, &opts(), &no_secrets).unwrap_err().to_string();
        assert!(err.starts_with("spec.volumes[0]: \"cm\" is not accepted; volumes of type secret"), "{err}");
        let pod = PodManifest::from_yaml("kind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c}]\n").unwrap();
        let err = plan(&pod, &opts(), &no_secrets).unwrap_err().to_string();
        assert!(err.starts_with("spec.containers[0].image: \"\" is not accepted"), "{err}");
    }

    #[test]
    fn secret_key_ref_reads_the_secret_directory() {
        let pod = PodManifest::from_yaml(
            "kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: c\n    image: i\n    env: [{name: T, valueFrom: {secretKeyRef: {name: tok, key: token}}}]\n",
        )
        .unwrap();
        let read = |p: &Path| -> Result<String, PodError> {
            assert_eq!(p, Path::new("/given/tok/token"));
            Ok("s3cret".into())
        };
        let p = plan(&pod, &opts(), &read).unwrap();
        assert_eq!(p.containers[0].config.envs[0].value, "s3cret");
    }

    #[test]
    fn expansion_leaves_unknown_and_unterminated_references() {
        let vars = HashMap::from([("A", "1")]);
        assert_eq!(expand_vars("$(A)-$(B)-$$(A)-$(A", &vars), "1-$(B)-$(A)-$(A");
        assert_eq!(expand_vars("cost $5", &vars), "cost $5");
    }

    /// The installer DaemonSet's shape: hostPath `/` at /host, beneath a prepared node root.
    #[test]
    fn host_path_root_puts_every_host_path_beneath_it() {
        let pod = PodManifest::from_yaml(
            "kind: Pod\nmetadata: {name: p}\nspec:\n  volumes:\n  - {name: host, hostPath: {path: /, type: Directory}}\n  - {name: lib, hostPath: {path: /var/lib/x, type: DirectoryOrCreate}}\n  containers: [{name: c, image: i, volumeMounts: [{name: host, mountPath: /host}, {name: lib, mountPath: /lib-x}]}]\n",
        )
        .unwrap();
        let root = PlanOptions { host_path_root: Some("/tmp/node-root".into()), ..opts() };
        let p = plan(&pod, &root, &no_secrets).unwrap();
        let mounts: Vec<_> =
            p.containers[0].config.mounts.iter().map(|m| (m.container_path.as_str(), m.host_path.as_str())).collect();
        assert_eq!(mounts, [("/host", "/tmp/node-root"), ("/lib-x", "/tmp/node-root/var/lib/x")]);
        assert_eq!(p.dirs_to_create, [PathBuf::from("/tmp/node-root/var/lib/x")]);
        // Without the option the paths are the machine's own.
        let p = plan(&pod, &opts(), &no_secrets).unwrap();
        assert_eq!(p.containers[0].config.mounts[0].host_path, "/");

        for escape in ["/var/../../etc", "relative/dir"] {
            let pod = PodManifest::from_yaml(&format!(
                "kind: Pod\nmetadata: {{name: p}}\nspec:\n  volumes: [{{name: h, hostPath: {{path: \"{escape}\"}}}}]\n  containers: [{{name: c, image: i}}]\n"
            ))
            .unwrap();
            let err = plan(&pod, &root, &no_secrets).unwrap_err().to_string();
            assert_eq!(
                err,
                format!("spec.volumes[0].hostPath.path: \"{escape}\" is not accepted; an absolute path without '..' (it is taken beneath --host-path-root)")
            );
        }
    }

    #[test]
    fn skipped_containers_are_not_planned_and_must_exist() {
        let pod = PodManifest::from_yaml(
            "kind: Pod\nmetadata: {name: p}\nspec:\n  initContainers: [{name: unlabel, image: i}, {name: work, image: i, securityContext: {privileged: true}}]\n  containers: [{name: done, image: i}]\n",
        )
        .unwrap();
        let skip =
            |names: &[&str]| PlanOptions { skip_containers: names.iter().map(|n| n.to_string()).collect(), ..opts() };
        let p = plan(&pod, &skip(&["unlabel"]), &no_secrets).unwrap();
        let init: Vec<_> = p.init_containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(init, ["work"]);
        assert_eq!(p.containers[0].name, "done");

        let err = plan(&pod, &skip(&["unlabell"]), &no_secrets).unwrap_err().to_string();
        assert_eq!(
            err,
            "--skip-container: \"unlabell\" is not accepted; the name of a container of pod p (unlabel, work, done)"
        );
        let err = plan(&pod, &skip(&["done"]), &no_secrets).unwrap_err().to_string();
        assert!(err.contains("leave at least one app container"), "{err}");
    }
}
