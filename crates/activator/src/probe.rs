//! Reads the few facts about the environment tree that decide optional variables, and lists
//! the plugin profile.d scripts. Only cheap `stat`/`readlink` calls, except the last-resort
//! python version query.
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use imageless_core::activation::Mode;

use crate::env_vars::EnvFacts;
use crate::EnvMap;

/// profile.d scripts the flox interpreter ships itself; their effects are computed by
/// `env_vars`, so only other `*.sh` files (from installed packages) are sourced.
pub const INTERPRETER_PROFILE_SCRIPTS: &[&str] = &[
    "0100_common-paths.sh",
    "0100_common-run-mode-paths.sh",
    "0101_common-dev-mode-additional-paths.sh",
    "0500_languages.sh",
    "0500_python.sh",
    "0501_rust.sh",
    "0502_jupyter.sh",
    "0503_cmake.sh",
    "0503_java.sh",
    "0800_cuda.sh",
];

/// Gathers [`EnvFacts`] for `env_dir`; the dev-only facts are left unset in run mode.
pub fn env_facts(env_dir: &Path, mode: Mode, inherited: &EnvMap) -> EnvFacts {
    let mut facts = EnvFacts {
        has_ca_bundle: is_file(&env_dir.join("etc/ssl/certs/ca-bundle.crt")),
        has_locale_archive: is_file(&env_dir.join("lib/locale/locale-archive")),
        ..EnvFacts::default()
    };
    if mode == Mode::Dev {
        let ld_floxlib = inherited
            .get(OsStr::new("LD_FLOXLIB"))
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| env_dir.join("lib/ld-floxlib.so"));
        if ld_floxlib.exists() {
            facts.ld_floxlib = Some(ld_floxlib.to_string_lossy().into_owned());
        }
        let python3 = env_dir.join("bin/python3");
        if is_executable(&python3) {
            facts.python_version = python_version(env_dir, &python3);
        }
        facts.has_cmake = is_executable(&env_dir.join("bin/cmake"));
        facts.has_java = is_executable(&env_dir.join("bin/java"));
        facts.has_rust_src = env_dir.join("rustc-std-workspace-std").is_dir();
        facts.has_jupyter = env_dir.join("share/jupyter").is_dir();
    }
    facts
}

/// dev mode: `*.sh` in `$FLOX_ENV/etc/profile.d` that the interpreter does not ship, in
/// lexical order, as flox sources them after `[vars]`.
pub fn plugin_profile_scripts(env_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(env_dir.join("etc/profile.d")) else {
        return Vec::new();
    };
    let mut scripts: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path.file_name().and_then(OsStr::to_str).unwrap_or_default();
            name.ends_with(".sh") && !INTERPRETER_PROFILE_SCRIPTS.contains(&name) && is_file(path)
        })
        .collect();
    scripts.sort();
    scripts
}

/// `X.Y` of the environment's python3, as `setup_python` asks the interpreter. Running
/// python costs tens of milliseconds, so the store layout is read first: nixpkgs' `python3`
/// links to `python3.Y`, and an environment holds one `lib/python3.Y`.
fn python_version(env_dir: &Path, python3: &Path) -> Option<String> {
    version_from_link_chain(python3).or_else(|| single_lib_python_dir(env_dir)).or_else(|| ask_python(python3))
}

fn version_from_link_chain(start: &Path) -> Option<String> {
    let mut current = start.to_path_buf();
    for _ in 0..16 {
        let target = fs::read_link(&current).ok()?;
        current = match current.parent() {
            Some(parent) if target.is_relative() => parent.join(target),
            _ => target,
        };
        if let Some(version) = current.file_name().and_then(OsStr::to_str).and_then(|name| version_of(name, "python")) {
            return Some(version);
        }
    }
    None
}

fn single_lib_python_dir(env_dir: &Path) -> Option<String> {
    let mut versions = fs::read_dir(env_dir.join("lib"))
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str().and_then(|name| version_of(name, "python")));
    let first = versions.next()?;
    versions.next().is_none().then_some(first)
}

fn ask_python(python3: &Path) -> Option<String> {
    let output = Command::new(python3)
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let version = String::from_utf8(output.stdout).ok()?;
    version_of(&format!("python{}", version.trim()), "python")
}

/// `python3.12` → `3.12`; anything else → None.
fn version_of(name: &str, prefix: &str) -> Option<String> {
    let version = name.strip_prefix(prefix)?;
    let (major, minor) = version.split_once('.')?;
    let numeric = |part: &str| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit());
    (numeric(major) && numeric(minor)).then(|| version.to_string())
}

pub fn is_file(path: &Path) -> bool {
    fs::metadata(path).map(|meta| meta.is_file()).unwrap_or(false)
}

/// A regular file with an execute bit (following symlinks), like the shell's `-x` for the
/// users containers run as.
pub fn is_executable(path: &Path) -> bool {
    fs::metadata(path).map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names() {
        assert_eq!(version_of("python3.12", "python").as_deref(), Some("3.12"));
        assert_eq!(version_of("python3", "python"), None);
        assert_eq!(version_of("python3.12-config", "python"), None);
        assert_eq!(version_of("python3.", "python"), None);
    }
}
