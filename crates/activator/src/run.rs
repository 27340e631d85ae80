//! The activation itself: read the data, compute the environment, run the start script when
//! needed, exec the command. Returns only when something failed.
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use imageless_core::activation::{ActivationData, Mode, Profile};
use imageless_core::container_paths;

use crate::attach::{self, EnvOp};
use crate::env_vars::{self, Settings};
use crate::lookup::{find_program, Lookup};
use crate::start_script::{self, Phase, StartScript};
use crate::state::{self, Found, StateDir};
use crate::{probe, EnvMap};

/// Exit status when the activator itself fails before the command runs.
pub const EXIT_ACTIVATION_FAILED: i32 = 1;
/// Shell conventions: found but cannot run / not found.
pub const EXIT_CANNOT_EXECUTE: i32 = 126;
pub const EXIT_NOT_FOUND: i32 = 127;

const ENOENT: i32 = 2;
const ENOEXEC: i32 = 8;

pub const USAGE: &str = "usage: flox-activate [--attach] [--env DIR] [--cache DIR] [--state DIR] -- COMMAND [ARGS...]";

/// How long an attaching exec waits for a main process that has not yet marked its start
/// (it does so first thing; this only covers an exec racing the container's start).
pub const MARKER_GRACE: Duration = Duration::from_secs(2);
/// How often an attaching exec looks again while the main process activates.
pub const ATTACH_POLL: Duration = Duration::from_millis(5);

/// Why the command did not start: the message for stderr and the exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub message: String,
    pub exit_code: i32,
}

impl Failure {
    fn activation(message: impl Into<String>) -> Failure {
        Failure { message: message.into(), exit_code: EXIT_ACTIVATION_FAILED }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `FLOX_ENV`; `--env` overrides the container mount (for tests).
    pub env_dir: PathBuf,
    /// `FLOX_ENV_CACHE`; `--cache` overrides the container tmpfs (for tests).
    pub cache_dir: PathBuf,
    /// The activation state directory; `--state` overrides the container tmpfs (for tests).
    pub state_dir: PathBuf,
    /// `--attach`: an exec process joining the main process's activation.
    pub attach: bool,
    /// Where CUDA detection looks for `/dev`, `/etc/ld.so.cache` and `/run/opengl-driver`;
    /// `--system-root` overrides `/` (for tests).
    pub system_root: PathBuf,
    /// The command and its arguments, verbatim; empty means an interactive shell.
    pub command: Vec<OsString>,
}

/// `[--attach] [--env DIR] [--cache DIR] [--state DIR] -- CMD ARGS...`; without `--`, arguments from the first one
/// that is not an option are the command.
pub fn parse_args(args: Vec<OsString>) -> Result<Invocation, Failure> {
    let mut invocation = Invocation {
        env_dir: PathBuf::from(container_paths::ENV_DIR),
        cache_dir: PathBuf::from(container_paths::CACHE_DIR),
        state_dir: PathBuf::from(container_paths::ACTIVATION_STATE_DIR),
        attach: false,
        system_root: PathBuf::from("/"),
        command: Vec::new(),
    };
    let usage = |message: String| Failure { message: format!("flox-activate: {message}\n{USAGE}"), exit_code: 2 };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        let mut value_of = |option: &str| -> Result<PathBuf, Failure> {
            if let Some(value) = text.strip_prefix(&format!("{option}=")) {
                return Ok(PathBuf::from(value));
            }
            args.next().map(PathBuf::from).ok_or_else(|| usage(format!("{option} needs a directory")))
        };
        match text.as_ref() {
            "--" => {
                invocation.command = args.collect();
                return Ok(invocation);
            }
            "-h" | "--help" => return Err(Failure { message: USAGE.to_string(), exit_code: 0 }),
            container_paths::ATTACH_FLAG => invocation.attach = true,
            _ if text == "--env" || text.starts_with("--env=") => invocation.env_dir = value_of("--env")?,
            _ if text == "--cache" || text.starts_with("--cache=") => invocation.cache_dir = value_of("--cache")?,
            _ if text == "--state" || text.starts_with("--state=") => invocation.state_dir = value_of("--state")?,
            _ if text == "--system-root" || text.starts_with("--system-root=") => {
                invocation.system_root = value_of("--system-root")?
            }
            _ if text.starts_with('-') => {
                return Err(usage(format!("unknown option {text:?}; put the command after `--`")))
            }
            _ => {
                invocation.command = std::iter::once(arg).chain(args).collect();
                return Ok(invocation);
            }
        }
    }
    Ok(invocation)
}

/// Activates and execs; returns only on failure.
pub fn activate(mut invocation: Invocation) -> Failure {
    // FLOX_ENV and FLOX_ENV_CACHE must stay valid after the command changes directory.
    for dir in [&mut invocation.env_dir, &mut invocation.cache_dir, &mut invocation.state_dir] {
        if let Ok(absolute) = std::path::absolute(&*dir) {
            *dir = absolute;
        }
    }
    let prepared = match prepare(&invocation) {
        Ok(prepared) => prepared,
        Err(failure) => return failure,
    };
    if invocation.command.is_empty() {
        return exec_shell(&prepared, &invocation.cache_dir);
    }
    exec_command(&invocation.command, &prepared.env, &prepared.description)
}

/// The activated environment, ready for the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The command's complete environment.
    pub env: EnvMap,
    /// `owner/name` (or the env dir) for messages.
    pub description: String,
    /// `[profile]`, only for an interactive shell.
    pub profile: Profile,
}

/// Reads the data, computes the environment and runs the start script when needed.
///
/// The main process (no `--attach`) marks its start in the state directory first thing and
/// records what the start script changed once it finished. An exec process (`--attach`)
/// computes the fixed variables from its own environment and replays that record onto them,
/// running no hook (Flox's attach, §5.9). While the main process is still activating the exec
/// waits for it, as Flox makes a second activation wait for the first; when there is nothing
/// to attach to (a container from before attach existed, a main process that died while
/// activating, an exec as another user than the one that recorded), the exec starts afresh and
/// runs the hook itself, as Flox starts a new activation when none is ready.
pub fn prepare(invocation: &Invocation) -> Result<Prepared, Failure> {
    let state = StateDir::open(&invocation.state_dir);
    if !invocation.attach {
        if let Some(state) = &state {
            // Best effort: without a marker an exec waits MARKER_GRACE, then starts afresh.
            let _ = state.mark_starting();
        }
    }
    let data = read_activation_data(&invocation.env_dir)?;
    let inherited: EnvMap = std::env::vars_os().collect();
    let description = inherited
        .get(OsStr::new("FLOX_ENV_DESCRIPTION"))
        .filter(|value| !value.is_empty())
        .map(|value| value.to_string_lossy().into_owned())
        .unwrap_or_else(|| invocation.env_dir.display().to_string());
    check_var_names(&data, &description)?;

    let settings = Settings {
        env_dir: invocation.env_dir.to_string_lossy().into_owned(),
        cache_dir: invocation.cache_dir.to_string_lossy().into_owned(),
        mode: data.mode,
        add_sbin: data.add_sbin,
    };
    let mut facts = probe::env_facts(&invocation.env_dir, data.mode, &inherited);
    // 0800_cuda.sh is one of the dev-mode interpreter scripts.
    if data.mode == Mode::Dev && data.cuda_detection {
        facts.cuda_libraries = probe::cuda_libraries(&invocation.system_root);
    }
    let mut env = env_vars::activation_env(&inherited, &settings, &facts);

    let plugin_scripts = match data.mode {
        Mode::Dev => probe::plugin_profile_scripts(&invocation.env_dir),
        Mode::Run => Vec::new(),
    };
    let var_needing_bash = data.vars.iter().find(|(_, value)| start_script::value_needs_bash(value));
    if data.hook_on_activate.is_none() && plugin_scripts.is_empty() && var_needing_bash.is_none() {
        // Nothing runs at start: an exec computes the same environment by itself, without
        // waiting for the main process.
        let before = env.clone();
        start_script::apply_literal_vars(&mut env, &data.vars);
        if !invocation.attach {
            record_activation(state.as_ref(), &before, &env, &data.vars);
        }
        return Ok(Prepared { env, description, profile: data.profile });
    }
    if invocation.attach {
        if let Some(ops) = state.as_ref().and_then(wait_for_record) {
            attach::apply(&mut env, &ops);
            return Ok(Prepared { env, description, profile: data.profile });
        }
    }

    let why_bash = if data.hook_on_activate.is_some() {
        format!("hook.on-activate of {description} needs bash")
    } else if let Some((name, _)) = var_needing_bash {
        format!("[vars] {name} of {description} needs bash to expand its value ($, `, \\ or \")")
    } else {
        format!("the profile.d script {} of {description} needs bash", plugin_scripts[0].display())
    };
    let bash = match find_program(OsStr::new("bash"), env.get(OsStr::new("PATH")).map(OsString::as_os_str)) {
        Lookup::Found(bash) => bash,
        _ => {
            return Err(Failure::activation(format!(
                "flox: {why_bash}, but there is none in {}/bin or on the image's PATH; add bash to the \
                 environment (`flox install bash`) or use an image that has it",
                invocation.env_dir.display()
            )))
        }
    };
    let started = run_start_script(&bash, &data, plugin_scripts, env.clone(), &invocation.cache_dir, &description)?;
    if !invocation.attach {
        record_activation(state.as_ref(), &env, &started, &data.vars);
    }
    Ok(Prepared { env: started, description, profile: data.profile })
}

/// The main process records what its start changed, for exec processes to attach to. A
/// failure costs only the attach (execs then run the hook themselves), so it is a warning.
fn record_activation(state: Option<&StateDir>, before: &EnvMap, after: &EnvMap, vars: &[(String, String)]) {
    let Some(state) = state else { return };
    let forced = vars.iter().map(|(name, _)| OsString::from(name)).collect();
    if let Err(err) = state.record(&attach::diff(before, after, &forced)) {
        let _ = state.clear_starting();
        eprintln!(
            "flox: cannot record the activation in {} ({err}); exec processes will run hook.on-activate again",
            state.path().display()
        );
    }
}

/// The main process's record, waiting while it activates; None when there is nothing to
/// attach to.
fn wait_for_record(state: &StateDir) -> Option<Vec<EnvOp>> {
    let began = Instant::now();
    loop {
        match state.look() {
            Found::Recorded(ops) => return Some(ops),
            Found::Starting(pid) if state::process_alive(pid) => {}
            Found::Starting(_) => return None,
            Found::Nothing if began.elapsed() < MARKER_GRACE => {}
            Found::Nothing => return None,
            Found::Unusable(why) => {
                eprintln!("flox: not attaching to the container's activation ({why}); activating anew");
                return None;
            }
        }
        std::thread::sleep(ATTACH_POLL);
    }
}

fn read_activation_data(env_dir: &Path) -> Result<ActivationData, Failure> {
    let path = env_dir.join(container_paths::ACTIVATION_DATA_REL);
    let bytes = fs::read(&path).map_err(|err| {
        Failure::activation(format!(
            "flox: cannot read the activation data {}: {err}; the flox runtime mounts the environment at {}",
            path.display(),
            env_dir.display()
        ))
    })?;
    let data: ActivationData = serde_json::from_slice(&bytes)
        .map_err(|err| Failure::activation(format!("flox: activation data {} is not valid: {err}", path.display())))?;
    if data.version != ActivationData::VERSION {
        return Err(Failure::activation(format!(
            "flox: activation data {} has version {}, this activator reads version {}; the node's \
             imageless and its flox-activate are out of step",
            path.display(),
            data.version,
            ActivationData::VERSION
        )));
    }
    Ok(data)
}

fn check_var_names(data: &ActivationData, description: &str) -> Result<(), Failure> {
    for (name, _) in &data.vars {
        if !start_script::is_shell_name(name) || name.starts_with("BASH_ENVTRACE_") {
            return Err(Failure::activation(format!(
                "flox: [vars] of {description} has the name {name:?}, which cannot be exported; names are \
                 letters, digits and _, not starting with a digit, and not BASH_ENVTRACE_*"
            )));
        }
    }
    Ok(())
}

/// Runs bash once for `[vars]`, plugin scripts and the hook; returns the environment it left.
fn run_start_script(
    bash: &Path,
    data: &ActivationData,
    plugin_scripts: Vec<PathBuf>,
    env: EnvMap,
    cache_dir: &Path,
    description: &str,
) -> Result<EnvMap, Failure> {
    // The exported variables come back through a file, not a pipe: a hook that starts a
    // background subshell would keep a pipe open and activation would wait for it.
    let dump_file = PrivateFile::create(cache_dir, "exports", b"")?;
    let hook_file = match &data.hook_on_activate {
        Some(hook) => Some(PrivateFile::create(cache_dir, "hook-on-activate", hook.as_bytes())?),
        None => None,
    };
    let script = StartScript {
        vars: data.vars.clone(),
        plugin_scripts,
        hook_file: hook_file.as_ref().map(|file| file.path.clone()),
        output_file: dump_file.path.clone(),
    }
    .render();
    // bash's own stdout is our stderr: like the hook's, nothing of it may reach the command's
    // stdout before the command runs.
    let stdout_to_stderr = io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|err| Failure::activation(format!("flox: cannot duplicate stderr: {err}")))?;

    let status = Command::new(bash)
        .arg0("bash")
        .args(["--noprofile", "--norc", "-c", &script, "flox-activate"])
        .env_clear()
        .envs(&env)
        .stdin(Stdio::inherit())
        .stdout(Stdio::from(stdout_to_stderr))
        .stderr(Stdio::inherit())
        .status()
        .map_err(|err| Failure::activation(format!("flox: cannot run {}: {err}", bash.display())))?;
    drop(hook_file);
    let dump = fs::read(&dump_file.path).map_err(|err| {
        Failure::activation(format!(
            "flox: reading the variables bash exported from {}: {err}",
            dump_file.path.display()
        ))
    })?;
    drop(dump_file);

    let output = start_script::parse_output(&dump);
    if output.phase == Phase::Done && status.success() {
        return Ok(start_script::apply_exports(&env, output.exported));
    }
    let exit = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "unknown status".to_string(),
    };
    let message = match output.phase {
        Phase::Started => format!(
            "flox: [vars] of {description} could not be evaluated by bash ({exit}); a value may have an \
             unbalanced quote"
        ),
        Phase::Vars => format!("flox: a profile.d script of {description} failed ({exit})"),
        Phase::Plugins if status.code() == Some(0) => format!(
            "flox: hook.on-activate of {description} failed ({exit}): the hook called `exit`; use `return` to \
             leave it early"
        ),
        Phase::Plugins => format!("flox: hook.on-activate of {description} failed ({exit})"),
        Phase::Hook | Phase::Done => format!(
            "flox: listing the variables exported by hook.on-activate of {description} failed ({exit}); \
             {} may lack the compgen builtin",
            bash.display()
        ),
    };
    Err(Failure::activation(message))
}

/// A file only this process uses, under `FLOX_ENV_CACHE` (the container may have no /tmp
/// and no /dev/fd); removed when dropped. Created exclusively with mode 0600, so nothing
/// else in the shared directory can swap it.
struct PrivateFile {
    path: PathBuf,
}

impl PrivateFile {
    fn create(cache_dir: &Path, what: &str, contents: &[u8]) -> Result<PrivateFile, Failure> {
        let path = cache_dir.join(format!(".flox-activate.{}.{what}", std::process::id()));
        let _ = fs::remove_file(&path); // a leftover of an earlier process with our pid
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| file.write_all(contents));
        match written {
            Ok(()) => Ok(PrivateFile { path }),
            Err(err) => {
                let _ = fs::remove_file(&path);
                Err(Failure::activation(format!(
                    "flox: cannot write {} (FLOX_ENV_CACHE must be writable): {err}",
                    path.display()
                )))
            }
        }
    }
}

impl Drop for PrivateFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// execs the command (or an interactive shell) with `env`, looking it up on the new PATH.
/// No command: a shell, as containerize starts one. bash also gets `[profile]` (common, then
/// bash) through an rc file, as flox's interactive activation does; bash reads it only when
/// interactive.
fn exec_shell(prepared: &Prepared, cache_dir: &Path) -> Failure {
    let Prepared { env, description, profile } = prepared;
    let path_var = env.get(OsStr::new("PATH")).map(OsString::as_os_str);
    if let Lookup::Found(bash) = find_program(OsStr::new("bash"), path_var) {
        let mut args = Vec::new();
        if let Some(rc) = start_script::interactive_bash_rc(profile) {
            // Left in place: the shell reads it after the exec; FLOX_ENV_CACHE is per container.
            let rc_path = cache_dir.join(format!(".flox-activate-bashrc.{}", std::process::id()));
            if let Err(err) = fs::write(&rc_path, rc) {
                return Failure::activation(format!(
                    "flox: cannot write the [profile] rc file {} (FLOX_ENV_CACHE must be writable): {err}",
                    rc_path.display()
                ));
            }
            args = vec![OsString::from("--noprofile"), OsString::from("--rcfile"), rc_path.into_os_string()];
        }
        return exec(&bash, OsStr::new("bash"), &args, env, OsStr::new("bash"), description);
    }
    if let Lookup::Found(sh) = find_program(OsStr::new("sh"), path_var) {
        return exec(&sh, OsStr::new("sh"), &[], env, OsStr::new("sh"), description);
    }
    Failure {
        message: format!(
            "flox: no command given and neither bash nor sh is in environment {description} or on the \
             image's PATH; give the container a command"
        ),
        exit_code: EXIT_NOT_FOUND,
    }
}

fn exec_command(command: &[OsString], env: &EnvMap, description: &str) -> Failure {
    let path_var = env.get(OsStr::new("PATH")).map(OsString::as_os_str);
    let Some((program, args)) = command.split_first() else {
        return Failure::activation("flox: no command to run");
    };
    let not_found = || Failure {
        message: format!("{}: command not found in environment {description}", program.to_string_lossy()),
        exit_code: EXIT_NOT_FOUND,
    };
    match find_program(program, path_var) {
        // A name with a `/` is not searched; missing is still "not found".
        Lookup::Found(path) if fs::symlink_metadata(&path).is_err() => not_found(),
        Lookup::Found(path) => exec(&path, program, args, env, program, description),
        Lookup::NotExecutable(path) => Failure {
            message: format!("{}: {} is not executable (permission denied)", program.to_string_lossy(), path.display()),
            exit_code: EXIT_CANNOT_EXECUTE,
        },
        Lookup::NotFound => not_found(),
    }
}

fn exec(path: &Path, arg0: &OsStr, args: &[OsString], env: &EnvMap, shown: &OsStr, description: &str) -> Failure {
    let err = Command::new(path).arg0(arg0).args(args).env_clear().envs(env).exec();
    let shown = shown.to_string_lossy();
    match err.raw_os_error() {
        // execvp's fallback for a script without a #! line: run it with sh.
        Some(ENOEXEC) => {
            let path_var = env.get(OsStr::new("PATH")).map(OsString::as_os_str);
            if let Lookup::Found(sh) = find_program(OsStr::new("sh"), path_var) {
                let err = Command::new(&sh).arg0("sh").arg(path).args(args).env_clear().envs(env).exec();
                return cannot_execute(&shown, &sh, &err);
            }
            cannot_execute(&shown, path, &err)
        }
        // The file is there (lookup found it), so what is missing is its #! interpreter or
        // its dynamic loader, typically a /nix/store path not mounted into the container.
        Some(ENOENT) => Failure {
            message: format!(
                "{shown}: cannot execute {}: its interpreter or dynamic loader is missing (not in environment \
                 {description} or the image)",
                path.display()
            ),
            exit_code: EXIT_CANNOT_EXECUTE,
        },
        _ => cannot_execute(&shown, path, &err),
    }
}

fn cannot_execute(shown: &str, path: &Path, err: &io::Error) -> Failure {
    Failure { message: format!("{shown}: cannot execute {}: {err}", path.display()), exit_code: EXIT_CANNOT_EXECUTE }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn arguments() {
        let parsed = parse_args(args(&["--", "echo", "--env", "x"])).unwrap();
        assert_eq!(parsed.env_dir, PathBuf::from("/run/flox/env"));
        assert_eq!(parsed.cache_dir, PathBuf::from("/run/flox/cache"));
        assert_eq!(parsed.state_dir, PathBuf::from("/run/flox/activation"));
        assert!(!parsed.attach);
        assert_eq!(parsed.command, args(&["echo", "--env", "x"]));

        let parsed = parse_args(args(&["--env", "/e", "--cache=/c", "--", "ls"])).unwrap();
        assert_eq!((parsed.env_dir, parsed.cache_dir), (PathBuf::from("/e"), PathBuf::from("/c")));
        let parsed = parse_args(args(&["--attach", "--state", "/s", "--", "ls"])).unwrap();
        assert!(parsed.attach);
        assert_eq!(parsed.state_dir, PathBuf::from("/s"));

        assert_eq!(parse_args(args(&["ls", "-l"])).unwrap().command, args(&["ls", "-l"]));
        assert!(parse_args(args(&["--"])).unwrap().command.is_empty());
        assert!(parse_args(args(&[])).unwrap().command.is_empty());
        assert_eq!(parse_args(args(&["--bogus"])).unwrap_err().exit_code, 2);
        assert_eq!(parse_args(args(&["--env"])).unwrap_err().exit_code, 2);
    }
}
