//! `runc create`: the decision for this container, the environment, the spec edit.
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use imageless_core::activation::Mode;
use imageless_core::decide::{decide, Decision};
use imageless_core::env_ref::EnvRef;
use imageless_core::pod_options::OptionsError;
use imageless_core::spec_edit::{self, FloxEdit, NixView, SpecError};
use imageless_core::system::{System, SystemError};
use imageless_node::cache::{NodeCache, NodeError};
use imageless_node::config::{NodeConfig, StoreView};
use imageless_node::containers::{self, ContainerState};
use imageless_node::pull_record::PodRef;
use imageless_node::secret_volume::{SecretVolume, TokenFileError};

use crate::steps::Steps;
use crate::{real_runc, ErrorLog, PREFETCH_ARG};

/// Why a container's create was refused before the real runc ran. The text is what the pod's
/// events show (through runc's log and CRI), so each variant is worded for the pod's owner.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("flox: reading {}: {source}", path.display())]
    ReadSpec { path: PathBuf, source: io::Error },
    #[error("flox: {} is not JSON: {source}", path.display())]
    SpecNotJson { path: PathBuf, source: serde_json::Error },
    /// A bad `flox.dev/*` annotation (core's message names the annotation and what is accepted).
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// The pod's token file (worded in container paths).
    #[error(transparent)]
    Token(#[from] TokenFileError),
    #[error("flox: {0}")]
    System(#[from] SystemError),
    /// Resolving, fetching or rendering the environment, or its closure view.
    #[error(transparent)]
    Environment(#[from] NodeError),
    #[error("flox: container id {0:?} is not valid")]
    ContainerId(String),
    #[error("flox: creating {}: {source}", path.display())]
    Overlay { path: PathBuf, source: io::Error },
    #[error("flox: saving container state: {0}")]
    SaveState(#[source] io::Error),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("flox: writing {}: {source}", path.display())]
    WriteSpec { path: PathBuf, source: io::Error },
}

pub fn create(
    config: &NodeConfig,
    runc: &Path,
    args: &[String],
    bundle: &str,
    id: &str,
    log: &ErrorLog,
    mut steps: Steps,
) -> i32 {
    let config_path = Path::new(bundle).join("config.json");
    match prepare(config, &config_path, id, log, &mut steps) {
        Ok(Prepared::Flox) => {}
        Ok(Prepared::Untouched) => {
            // Nothing of ours exists for this container, so nothing to undo if runc fails:
            // become runc, as a plain container's create costs no second process.
            steps.log("create", id);
            return real_runc::exec(runc, args, log);
        }
        Err(e) => {
            cleanup(config, id);
            log.error(&e.to_string());
            return 1;
        }
    }
    let status = real_runc::spawn_wait(runc, args, log);
    steps.mark("runc_create");
    if status != 0 {
        // runc failed half-way: nothing of ours may outlive it.
        cleanup(config, id);
    }
    steps.log("create", id);
    status
}

/// The create's work done in-process by the shim proxy, before the runc shim calls the real
/// runc itself: decide, and for a flox container render the environment and edit
/// `<bundle>/config.json`. Returns whether state of ours now exists for `id` (a flox
/// container), which a failed create must `cleanup`. On error nothing of ours is left.
pub fn prepare_bundle(config: &NodeConfig, bundle: &Path, id: &str) -> Result<bool, CreateError> {
    let mut steps = Steps::start();
    // Warnings (hub unreachable, a substituter skipped) go where runc's own lines go: the runc
    // shim passes `--log <bundle>/log.json` to runc, which appends after them.
    let log_path = bundle.join("log.json");
    let log = ErrorLog::new(log_path.to_str());
    match prepare(config, &bundle.join("config.json"), id, &log, &mut steps) {
        Ok(prepared) => {
            steps.log("create (in the shim proxy)", id);
            Ok(prepared == Prepared::Flox)
        }
        Err(e) => {
            cleanup(config, id);
            Err(e)
        }
    }
}

/// What `prepare` left for the real runc's create.
#[derive(Debug, PartialEq, Eq)]
enum Prepared {
    /// A pass-through container or a pod sandbox: config.json as it was, no state of ours.
    Untouched,
    /// A flox container: edited spec, saved container state (and maybe an overlay dir) that a
    /// failed create must remove.
    Flox,
}

/// Decides and, for a flox container, edits config.json in place. Pass-through cases return
/// without touching the file, so those containers get exactly what plain runc would.
fn prepare(
    config: &NodeConfig,
    config_path: &Path,
    id: &str,
    log: &ErrorLog,
    steps: &mut Steps,
) -> Result<Prepared, CreateError> {
    let bytes =
        std::fs::read(config_path).map_err(|source| CreateError::ReadSpec { path: config_path.into(), source })?;
    let mut spec: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|source| CreateError::SpecNotJson { path: config_path.into(), source })?;
    let info = spec_edit::container_info(&spec);
    let name = info.name.clone().unwrap_or_default();
    steps.mark("read_spec");
    let opts = match decide(&info)? {
        Decision::PassThrough => return Ok(Prepared::Untouched),
        Decision::Prefetch { environment, mode } => {
            // Start pulling while images and the sandbox are being set up, unless there is
            // nothing to pull: a warm start then costs no extra process competing with
            // containerd and runc for the CPU.
            // Nor when another sandbox's prefetch of it is under way (a burst of cold pods).
            let useful = System::host()
                .map(|system| NodeCache::new(config.clone(), system))
                .map(|cache| cache.prefetch_useful(&environment, mode) && !cache.prefetch_running(&environment, mode))
                .unwrap_or(true);
            if useful {
                spawn_prefetch(&environment, mode, PodRef::from_annotations(&info.annotations));
                steps.mark("spawn_prefetch");
            } else {
                tracing::debug!(env = %environment, "no prefetch: warm, private or already under way");
                steps.mark("warm_no_prefetch");
            }
            return Ok(Prepared::Untouched);
        }
        Decision::Wrap(opts) => opts,
    };
    // The pod controls what is in that volume: read beneath it, bounded, errors in its terms.
    let token = match spec_edit::token_source(&spec) {
        Some(mount) => {
            SecretVolume { host_dir: Path::new(&mount.host_dir), container_dir: &mount.container_dir }.read_token()?
        }
        None => None,
    };
    let system = System::host()?;
    // The pod is named in the pull records the node agent turns into its events.
    let cache = NodeCache::new(config.clone(), system).with_pod(PodRef::from_annotations(&info.annotations));
    // Every container below mounts a view but the whole-store one: a cold pull builds it as
    // the closure lands.
    let cache =
        if opts.nix_mutable || config.store_view == StoreView::Closure { cache.building_views() } else { cache };
    steps.mark("token_system");
    // Held until the view is built: gc never sweeps what this container is about to mount.
    let _store = cache.store_use()?;
    let rendered = cache.ensure(&opts.environment, opts.mode, token.as_ref())?;
    steps.mark("ensure");
    if let Some(w) = &rendered.warning {
        log.warn(w);
    }
    let overlay_dir = if opts.nix_mutable {
        let dir =
            containers::overlay_dir(&config.state_root, id).ok_or_else(|| CreateError::ContainerId(id.to_string()))?;
        for sub in ["upper", "work"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|source| CreateError::Overlay { path: dir.clone(), source })?;
        }
        Some(dir)
    } else {
        None
    };
    let env_dir = rendered.env_dir.display().to_string();
    let state = ContainerState {
        id: id.to_string(),
        env_key: rendered.key.clone(),
        env_dir: env_dir.clone(),
        activator: config.activator.display().to_string(),
        description: opts.environment.full_name(),
        disable_metrics: opts.disable_metrics,
        skip_exec: opts.skip.containers_exec.contains(&name),
        overlay_dir: overlay_dir.as_ref().map(|d| d.display().to_string()),
        attach: true,
    };
    // Saved before the closure view is looked up: the state is what keeps gc from removing
    // the environment's view (and the environment) while this container uses it.
    state.save(&config.state_root).map_err(CreateError::SaveState)?;
    // Every mount source is the node's own store or a view of it, never the host's /nix.
    steps.mark("save_state");
    let nix = match (&overlay_dir, config.store_view) {
        (Some(dir), _) => NixView::Overlay {
            lower: cache.ensure_view(&rendered)?.display().to_string(),
            upper: dir.join("upper").display().to_string(),
            work: dir.join("work").display().to_string(),
        },
        (None, StoreView::Store) => NixView::WholeStore { store: config.store_dir().display().to_string() },
        (None, StoreView::Closure) => {
            let view = cache.ensure_view(&rendered)?;
            NixView::Closure { view: view.join("store").display().to_string() }
        }
    };
    steps.mark("view");
    let edit = FloxEdit {
        env_dir,
        activator: state.activator.clone(),
        nix,
        description: state.description.clone(),
        disable_metrics: state.disable_metrics,
    };
    edit.apply_to_spec(&mut spec)?;
    write_atomic(config_path, &serde_json::to_vec(&spec).expect("serializable"))
        .map_err(|source| CreateError::WriteSpec { path: config_path.into(), source })?;
    steps.mark("edit_spec");
    tracing::info!(id, env = %opts.environment, key = rendered.key, "flox container prepared");
    Ok(Prepared::Flox)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp: PathBuf = path.with_extension("json.flox-tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

/// Whether container `id` has anything of ours (per-container state, an overlay) that its
/// delete must remove. A pod sandbox or a pass-through container has neither.
pub fn has_state(config: &NodeConfig, id: &str) -> bool {
    let exists = |p: Option<PathBuf>| p.is_some_and(|p| p.symlink_metadata().is_ok());
    exists(containers::state_path(&config.state_root, id)) || exists(containers::overlay_dir(&config.state_root, id))
}

/// Drops everything the wrapper created for a container. Safe to call twice.
pub fn cleanup(config: &NodeConfig, id: &str) {
    if let Some(dir) = containers::overlay_dir(&config.state_root, id) {
        // The upper dir holds whatever the pod wrote: depth-safe, never following its links.
        if let Err(e) = imageless_node::pod_file::remove_tree(&dir) {
            tracing::warn!("removing the overlay of container {id}: {e}");
        }
    }
    ContainerState::remove(&config.state_root, id);
}

/// Starts `flox-runc --flox-prefetch ENV MODE` detached: own session, no stdio (the shim
/// waits for runc's pipes to close, so the child must not hold them).
fn spawn_prefetch(env: &EnvRef, mode: Mode, pod: Option<PodRef>) {
    let Ok(me) = std::env::current_exe() else { return };
    let mut cmd = Command::new(me);
    cmd.args([PREFETCH_ARG, &env.to_string(), mode.as_str()]);
    if let Some(pod) = pod {
        cmd.arg(pod.to_arg());
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: the closure runs between fork and exec and only calls setsid(2), which is
    // async-signal-safe and touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            let _ = rustix::process::setsid();
            Ok(())
        });
    }
    let _ = cmd.spawn();
}

/// The prefetch process: pull anonymously (the token lives in app containers' mounts, which
/// the sandbox does not have); a private environment is then fetched at container create.
pub fn prefetch_main(args: &[String]) -> i32 {
    let (Some(env), Some(mode)) = (args.first(), args.get(1)) else { return 2 };
    let Ok(env) = EnvRef::parse(env) else { return 2 };
    let mode = if mode == "dev" { Mode::Dev } else { Mode::Run };
    let Ok(config) = NodeConfig::load(None) else { return 1 };
    let Ok(system) = System::host() else { return 1 };
    let view = config.store_view == StoreView::Closure;
    let pod = args.get(2).and_then(|a| PodRef::from_arg(a));
    let cache = NodeCache::new(config, system).with_pod(pod);
    // The store's own entries of what it fetched are made after the view is published, while
    // the pod's container is created and started (see imageless_node::deferred_store).
    let cache = if view { cache.deferring_store() } else { cache };
    let _running = match cache.hold_prefetch(&env, mode) {
        Ok(Some(lock)) => Some(lock),
        Ok(None) => return 0,
        // The lock is an optimisation: without it, prefetch anyway.
        Err(_) => None,
    };
    // The closure view too, so the app container's create finds it ready.
    let result =
        cache.ensure(&env, mode, None).and_then(|r| if view { cache.ensure_view(&r).map(drop) } else { Ok(()) });
    cache.settle_deferred();
    match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::info!("prefetch of {env} did not complete: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    #[test]
    fn messages_keep_their_text_and_chain_the_cause() {
        assert_eq!(CreateError::ContainerId("a/b".into()).to_string(), "flox: container id \"a/b\" is not valid");
        let err = CreateError::SaveState(io::Error::from_raw_os_error(28));
        assert_eq!(err.to_string(), "flox: saving container state: No space left on device (os error 28)");
        assert!(err.source().is_some());
        let tmp = tempfile::tempdir().unwrap();
        let spec = tmp.path().join("config.json");
        std::fs::write(&spec, b"{not json").unwrap();
        let config = NodeConfig { state_root: tmp.path().join("state"), ..NodeConfig::default() };
        let err = prepare(&config, &spec, "c1", &ErrorLog::new(None), &mut Steps::start()).unwrap_err();
        assert!(matches!(err, CreateError::SpecNotJson { .. }), "{err:?}");
        assert!(err.to_string().starts_with(&format!("flox: {} is not JSON: key must be a string", spec.display())));
        assert!(err.source().is_some());
    }

    #[test]
    fn a_plain_container_is_left_untouched_so_create_can_become_runc() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = tmp.path().join("config.json");
        let bytes = br#"{"ociVersion":"1.0.2","process":{"args":["sh"]},"annotations":{}}"#;
        std::fs::write(&spec, bytes).unwrap();
        let config = NodeConfig { state_root: tmp.path().join("state"), ..NodeConfig::default() };
        let prepared = prepare(&config, &spec, "c1", &ErrorLog::new(None), &mut Steps::start()).unwrap();
        assert_eq!(prepared, Prepared::Untouched);
        assert_eq!(std::fs::read(&spec).unwrap(), bytes, "config.json unchanged");
        assert!(!config.state_root.exists(), "no state of ours to clean up");
        assert!(!has_state(&config, "c1"), "so its delete can become runc too");
    }

    #[test]
    fn a_delete_waits_for_runc_only_when_state_of_ours_exists() {
        let tmp = tempfile::tempdir().unwrap();
        let config = NodeConfig { state_root: tmp.path().join("state"), ..NodeConfig::default() };
        assert!(!has_state(&config, "c1"));
        assert!(!has_state(&config, "../c1"), "invalid ids have no state");
        let state = containers::state_path(&config.state_root, "c1").unwrap();
        std::fs::create_dir_all(state.parent().unwrap()).unwrap();
        std::fs::write(&state, b"{}").unwrap();
        assert!(has_state(&config, "c1"), "per-container state");
        assert!(!has_state(&config, "c2"));
        let overlay = containers::overlay_dir(&config.state_root, "c2").unwrap();
        std::fs::create_dir_all(&overlay).unwrap();
        assert!(has_state(&config, "c2"), "an overlay left without its state file");
        cleanup(&config, "c1");
        cleanup(&config, "c2");
        assert!(!has_state(&config, "c1") && !has_state(&config, "c2"));
    }
}
