//! Reads the few facts about the environment tree that decide optional variables, and lists
//! the plugin profile.d scripts. Only cheap `stat`/`readlink` calls, except the last-resort
//! python version query and CUDA detection (which reads ld.so.cache only when a GPU device
//! is present).
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use imageless_core::activation::Mode;

use crate::env_vars::EnvFacts;
use crate::{ld_cache, EnvMap};

/// ld.so.cache files are tens of KiB; anything near this is not one.
const MAX_LD_CACHE_BYTES: u64 = 64 << 20;

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

/// Flox's CUDA detection (the interpreter's 0800_cuda.sh), with `root` standing for `/`
/// (tests use a fake one): when `root/dev` holds an `nvidia*` or `dxg` entry (any case), the
/// paths of the `lib(cuda|nvidia|dxcore)*.so*` libraries listed in `root/etc/ld.so.cache`, in
/// cache order, else the regular files under `root/run/opengl-driver` whose path matches that
/// pattern (NixOS hosts). Empty when there is no device or no library.
pub fn cuda_libraries(root: &Path) -> Vec<String> {
    if !has_gpu_device(&root.join("dev")) {
        return Vec::new();
    }
    let from_cache: Vec<String> = read_ld_cache(&root.join("etc/ld.so.cache"))
        .unwrap_or_default()
        .into_iter()
        .filter(|entry| cuda_library_at(&entry.name))
        .map(|entry| String::from_utf8_lossy(&entry.path).into_owned())
        .collect();
    if !from_cache.is_empty() {
        return from_cache;
    }
    let mut found = Vec::new();
    walk_regular_files(&root.join("run/opengl-driver"), &mut found, 0);
    found
        .into_iter()
        .filter(|path| {
            let bytes = path.as_os_str().as_bytes();
            (0..bytes.len()).any(|start| cuda_library_at(&bytes[start..]))
        })
        .map(|path| path.to_string_lossy().into_owned())
        .collect()
}

fn has_gpu_device(dev: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dev) else { return false };
    entries.filter_map(Result::ok).any(|entry| {
        let name = entry.file_name().to_string_lossy().to_ascii_lowercase();
        name.starts_with("nvidia") || name == "dxg"
    })
}

/// `lib(cuda|nvidia|dxcore).*\.so.*` matching at the start of `text`.
pub fn cuda_library_at(text: &[u8]) -> bool {
    let Some(rest) = text.strip_prefix(b"lib") else { return false };
    let Some(rest) = [&b"cuda"[..], b"nvidia", b"dxcore"].iter().find_map(|family| rest.strip_prefix(*family)) else {
        return false;
    };
    rest.windows(3).any(|window| window == b".so")
}

/// The cache's entries; None when it is missing, not a regular file, too large or not a cache.
fn read_ld_cache(path: &Path) -> Option<Vec<ld_cache::CacheEntry>> {
    // Non-blocking: a FIFO in the image's place must not hang the activation.
    let file = fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() > MAX_LD_CACHE_BYTES {
        return None;
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_LD_CACHE_BYTES).read_to_end(&mut bytes).ok()?;
    ld_cache::parse(&bytes)
}

/// Regular files below `dir`, like `find DIR -type f` (symbolic links are not followed, not
/// even `dir` itself), in name order per directory.
fn walk_regular_files(dir: &Path, found: &mut Vec<PathBuf>, depth: usize) {
    let is_real_dir = fs::symlink_metadata(dir).map(|meta| meta.is_dir()).unwrap_or(false);
    if depth > 32 || !is_real_dir {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let Ok(file_type) = entry.file_type() else { continue };
        if file_type.is_file() {
            found.push(entry.path());
        } else if file_type.is_dir() {
            walk_regular_files(&entry.path(), found, depth + 1);
        }
    }
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
    fn cuda_library_pattern() {
        for yes in ["libcuda.so", "libcuda.so.1", "libnvidia-ml.so.1", "libdxcore.so", "libcudart.so.12"] {
            assert!(cuda_library_at(yes.as_bytes()), "{yes}");
        }
        for no in ["libc.so.6", "libnv.so", "cuda.so", "libcuda.a", "liblibcuda", "libCUDA.so"] {
            assert!(!cuda_library_at(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn version_names() {
        assert_eq!(version_of("python3.12", "python").as_deref(), Some("3.12"));
        assert_eq!(version_of("python3", "python"), None);
        assert_eq!(version_of("python3.12-config", "python"), None);
        assert_eq!(version_of("python3.", "python"), None);
    }
}
