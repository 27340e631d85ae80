//! Shared by the activator's integration tests: a temporary environment tree with its
//! activation data, cache and state directories, and the built `flox-activate` run against it.
#![allow(dead_code)] // each test file uses a different part
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use imageless_core::activation::{ActivationData, Mode, Profile};

pub const ACTIVATOR: &str = env!("CARGO_BIN_EXE_flox-activate");
pub const BASH_STATIC: &str = "/bin/bash-static";
pub const DESCRIPTION: &str = "owner/name";

pub struct TestEnv {
    _root: tempfile::TempDir,
    pub env_dir: PathBuf,
    pub cache_dir: PathBuf,
    /// A directory standing in for the image's own PATH entries.
    pub image_bin: PathBuf,
    /// Stands in for the container's activation state tmpfs.
    pub state_dir: PathBuf,
    /// Scratch space of the test (hook counters and the like).
    pub scratch: PathBuf,
}

impl TestEnv {
    pub fn new(mode: Mode, vars: &[(&str, &str)], hook: Option<&str>) -> TestEnv {
        let root = tempfile::tempdir().unwrap();
        let env_dir = root.path().join("env");
        let cache_dir = root.path().join("cache");
        let image_bin = root.path().join("image-bin");
        let state_dir = root.path().join("state");
        let scratch = root.path().join("scratch");
        for dir in [
            env_dir.join("activate.d"),
            env_dir.join("bin"),
            cache_dir.clone(),
            image_bin.clone(),
            state_dir.clone(),
            scratch.clone(),
        ] {
            fs::create_dir_all(dir).unwrap();
        }
        let data = ActivationData {
            version: ActivationData::VERSION,
            mode,
            vars: vars.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect(),
            hook_on_activate: hook.map(str::to_string),
            profile: Profile::default(),
            cuda_detection: true,
            add_sbin: false,
        };
        fs::write(env_dir.join("activate.d/imageless.json"), serde_json::to_vec(&data).unwrap()).unwrap();
        TestEnv { _root: root, env_dir, cache_dir, image_bin, state_dir, scratch }
    }

    /// Rewrites the activation data (options the constructor leaves at their defaults).
    pub fn edit_data(self, edit: impl FnOnce(&mut ActivationData)) -> TestEnv {
        let path = self.env_dir.join("activate.d/imageless.json");
        let mut data: ActivationData = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        edit(&mut data);
        fs::write(&path, serde_json::to_vec(&data).unwrap()).unwrap();
        self
    }

    pub fn with_bash(self) -> TestEnv {
        symlink(BASH_STATIC, self.env_dir.join("bin/bash")).unwrap();
        self
    }

    pub fn env_str(&self) -> String {
        self.env_dir.to_str().unwrap().to_string()
    }

    /// The activator with a clean environment: `PATH` is the image bin dir then /usr/bin
    /// (coreutils' `env` prints the command's environment).
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_with(&[], args)
    }

    /// An exec process: `--attach`, as the runtime wraps `runc exec` processes.
    pub fn attach_command(&self, args: &[&str]) -> Command {
        self.command_with(&["--attach"], args)
    }

    pub fn command_with(&self, options: &[&str], args: &[&str]) -> Command {
        let mut command = Command::new(ACTIVATOR);
        command
            .args(options)
            .arg("--state")
            .arg(&self.state_dir)
            .arg("--env")
            .arg(&self.env_dir)
            .arg("--cache")
            .arg(&self.cache_dir)
            .arg("--")
            .args(args)
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", self.image_bin.display()))
            .env("HOME", "/root")
            .env("FLOX_ENV_DESCRIPTION", DESCRIPTION)
            .stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs `env -0` and returns the environment the command saw.
    pub fn command_env(&self, command: &mut Command) -> BTreeMap<String, String> {
        let output = command.output().unwrap();
        assert!(output.status.success(), "activator failed: {}", String::from_utf8_lossy(&output.stderr));
        parse_env0(&output.stdout)
    }
}

pub fn parse_env0(bytes: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .split('\0')
        .filter(|record| !record.is_empty())
        .map(|record| {
            let (name, value) = record.split_once('=').unwrap();
            (name.to_string(), value.to_string())
        })
        .collect()
}

pub fn write_executable(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
