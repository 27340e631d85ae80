//! The variables `flox activate -- CMD` gives a command before `[vars]` and the hook run:
//! the fixed ones flox-activations sets itself and the effects of the interpreter's own
//! `etc/profile.d` scripts for the mode (../reference/flox-runtime-semantics.md §5.8).
//! Pure: the environment tree is described by [`EnvFacts`], gathered by `probe`.
use std::ffi::{OsStr, OsString};

use imageless_core::activation::Mode;

use crate::EnvMap;

/// PATH when the image sets none: the usual Linux default, so image tools stay reachable
/// after the environment's.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What containerize sets for the prompt; only interactive rc files read these.
pub const PROMPT_ENVIRONMENTS: &str = "floxenv";
pub const PROMPT_COLOR_1: &str = "99";
pub const PROMPT_COLOR_2: &str = "141";

/// The tunable flox sets with `LD_AUDIT` so programs using static TLS (jemalloc, ...) still
/// start under the audit library.
pub const GLIBC_TUNABLES_WITH_LD_AUDIT: &str = "glibc.rtld.optional_static_tls=25000";

/// Variables flox-activations removes: no project in a container, and `FLOX_SHELL` only
/// steers the CLI's choice of interactive shell.
const REMOVED: &[&str] = &["FLOX_ENV_PROJECT", "FLOX_SHELL"];

/// Facts about the environment tree that decide optional variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvFacts {
    /// `etc/ssl/certs/ca-bundle.crt` exists (nixpkgs cacert installed).
    pub has_ca_bundle: bool,
    /// `lib/locale/locale-archive` exists (glibc locales installed).
    pub has_locale_archive: bool,
    /// dev: an existing ld-floxlib.so (`$LD_FLOXLIB` or `lib/ld-floxlib.so`) for `LD_AUDIT`.
    pub ld_floxlib: Option<String>,
    /// dev: `X.Y` of an executable `bin/python3`.
    pub python_version: Option<String>,
    /// dev: `bin/cmake` is executable.
    pub has_cmake: bool,
    /// dev: `bin/java` is executable.
    pub has_java: bool,
    /// dev: `rustc-std-workspace-std` is a directory (rust source installed).
    pub has_rust_src: bool,
    /// dev: `share/jupyter` is a directory.
    pub has_jupyter: bool,
    /// dev, `options.cuda-detection` on and a GPU device present: the driver libraries the
    /// container can see (0800_cuda.sh), for `LD_FLOXLIB_FILES_PATH`.
    pub cuda_libraries: Vec<String>,
}

/// Where the environment is and how it is activated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `FLOX_ENV`: the mount point of the rendered tree, as flox uses the out-link path.
    pub env_dir: String,
    /// `FLOX_ENV_CACHE`: writable per-container directory.
    pub cache_dir: String,
    pub mode: Mode,
    /// `options.activate.add-sbin`: put `$FLOX_ENV/sbin` on PATH too.
    pub add_sbin: bool,
}

/// The command's environment before `[vars]` and the hook: `inherited` with the Flox
/// variables set and the variables flox removes removed.
pub fn activation_env(inherited: &EnvMap, settings: &Settings, facts: &EnvFacts) -> EnvMap {
    let mut env = inherited.clone();
    let flox_env = settings.env_dir.as_str();
    for name in REMOVED {
        env.remove(OsStr::new(name));
    }

    // Fixed variables (flox-activations).
    set(&mut env, "FLOX_ENV", flox_env);
    set(&mut env, "FLOX_ENV_CACHE", &settings.cache_dir);
    let env_dirs = with_env_dir(flox_env, &split_dir_list(&get(inherited, "FLOX_ENV_DIRS")));
    let inherited_sbin_dirs = split_dir_list(&get(inherited, "_FLOX_ENV_DIRS_ADD_SBIN"));
    let sbin_dirs = if settings.add_sbin { with_env_dir(flox_env, &inherited_sbin_dirs) } else { inherited_sbin_dirs };
    set(&mut env, "FLOX_ENV_DIRS", &env_dirs.join(":"));
    set(
        &mut env,
        "_FLOX_ENV_DIRS_ADD_SBIN",
        &if sbin_dirs.is_empty() { "empty".to_string() } else { sbin_dirs.join(":") },
    );
    let old_path = lookup_str(inherited, "PATH").unwrap_or_else(|| DEFAULT_PATH.to_string());
    set(&mut env, "PATH", &fix_path(&env_dirs, &sbin_dirs, &old_path));
    set(&mut env, "MANPATH", &fix_manpath(&env_dirs, &get(inherited, "MANPATH")));
    set(&mut env, "FLOX_ACTIVATE_START_SERVICES", "false");
    if lookup_str(inherited, "_FLOX_ACTIVE_ENVIRONMENTS").is_none() {
        set(&mut env, "_FLOX_ACTIVE_ENVIRONMENTS", "[]");
    }
    set(&mut env, "FLOX_PROMPT_ENVIRONMENTS", PROMPT_ENVIRONMENTS);
    set_if_unset(&mut env, "FLOX_PROMPT_COLOR_1", PROMPT_COLOR_1);
    set_if_unset(&mut env, "FLOX_PROMPT_COLOR_2", PROMPT_COLOR_2);
    // SSL_CERT_FILE keeps an existing value; NIX_SSL_CERT_FILE follows the effective one.
    let ssl_cert_file = non_empty(inherited, "SSL_CERT_FILE")
        .or_else(|| facts.has_ca_bundle.then(|| format!("{flox_env}/etc/ssl/certs/ca-bundle.crt")));
    if let Some(ssl_cert_file) = ssl_cert_file {
        set(&mut env, "SSL_CERT_FILE", &ssl_cert_file);
        set(&mut env, "NIX_SSL_CERT_FILE", &ssl_cert_file);
    }
    if facts.has_locale_archive {
        set(&mut env, "LOCALE_ARCHIVE", &format!("{flox_env}/lib/locale/locale-archive"));
    }

    // 0100_common-run-mode-paths.sh (both modes).
    let infopath = match get(inherited, "INFOPATH").as_str() {
        "" => format!("{flox_env}/share/info:"),
        old if old.ends_with(':') => format!("{flox_env}/share/info:{old}"),
        old => format!("{flox_env}/share/info:{old}:"),
    };
    set(&mut env, "INFOPATH", &infopath);
    set(&mut env, "XDG_DATA_DIRS", &prepend(&format!("{flox_env}/share"), &get(inherited, "XDG_DATA_DIRS")));

    if settings.mode == Mode::Dev {
        dev_mode_vars(&mut env, inherited, flox_env, &env_dirs, facts);
    }
    env
}

/// 0101_common-dev-mode-additional-paths.sh, the language scripts, `setup_python` and
/// `setup_cmake`.
fn dev_mode_vars(env: &mut EnvMap, inherited: &EnvMap, flox_env: &str, env_dirs: &[String], facts: &EnvFacts) {
    let old = |name: &str| get(inherited, name);
    set(env, "CPATH", &prepend(&format!("{flox_env}/include"), &old("CPATH")));
    set(env, "LIBRARY_PATH", &prepend(&format!("{flox_env}/lib"), &old("LIBRARY_PATH")));
    let pkg_config = prepend(&format!("{flox_env}/share/pkgconfig"), &old("PKG_CONFIG_PATH"));
    set(env, "PKG_CONFIG_PATH", &format!("{flox_env}/lib/pkgconfig:{pkg_config}"));
    set(env, "ACLOCAL_PATH", &prepend(&format!("{flox_env}/share/aclocal"), &old("ACLOCAL_PATH")));
    if let Some(ld_floxlib) = &facts.ld_floxlib {
        if old("FLOX_NOSET_LD_AUDIT").is_empty() {
            set(env, "LD_AUDIT", ld_floxlib);
            set(env, "GLIBC_TUNABLES", GLIBC_TUNABLES_WITH_LD_AUDIT);
        }
    }
    if facts.has_rust_src {
        set(env, "RUST_SRC_PATH", flox_env);
    }
    if facts.has_jupyter {
        set(env, "JUPYTER_PATH", &prepend(&format!("{flox_env}/share/jupyter"), &old("JUPYTER_PATH")));
    }
    if facts.has_java {
        set(env, "JAVA_HOME", flox_env);
    }
    if !facts.cuda_libraries.is_empty() {
        let libraries = facts.cuda_libraries.join(":");
        let value = match old("LD_FLOXLIB_FILES_PATH").as_str() {
            "" => libraries,
            old => format!("{old}:{libraries}"),
        };
        set(env, "LD_FLOXLIB_FILES_PATH", &value);
    }
    if let Some(version) = &facts.python_version {
        let suffix = format!("lib/python{version}/site-packages");
        let dirs = prepend_dirs(env_dirs, &[&suffix], &split_dir_list(&old("PYTHONPATH")));
        set(env, "PYTHONPATH", &dirs.join(":"));
    }
    if facts.has_cmake {
        let dirs = prepend_dirs(env_dirs, &[], &split_dir_list(&old("CMAKE_PREFIX_PATH")));
        set(env, "CMAKE_PREFIX_PATH", &dirs.join(":"));
    }
}

/// flox's colon lists: unset, empty and the sentinel `empty` mean no entries; otherwise
/// every entry counts, including empty ones (`::` in MANPATH is meaningful).
pub fn split_dir_list(list: &str) -> Vec<String> {
    if list.is_empty() || list == "empty" {
        return Vec::new();
    }
    list.split(':').map(str::to_string).collect()
}

/// `dirs` with `flox_env` in front unless it is already listed.
fn with_env_dir(flox_env: &str, dirs: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(dirs.len() + 1);
    if !dirs.iter().any(|dir| dir == flox_env) {
        out.push(flox_env.to_string());
    }
    out.extend(dirs.iter().cloned());
    out
}

/// `<dir>/<suffix>` for each env dir (newest first, suffixes in order; the dir itself when no
/// suffixes), then the existing entries; every entry appears once, except empty entries,
/// which are kept where they are.
pub fn prepend_dirs(env_dirs: &[String], suffixes: &[&str], existing: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let push_unique = |entry: String, out: &mut Vec<String>| {
        if !out.contains(&entry) {
            out.push(entry);
        }
    };
    for dir in env_dirs {
        if suffixes.is_empty() {
            push_unique(dir.clone(), &mut out);
        }
        for suffix in suffixes {
            push_unique(format!("{dir}/{suffix}"), &mut out);
        }
    }
    for entry in existing {
        if entry.is_empty() {
            out.push(String::new());
        } else {
            push_unique(entry.clone(), &mut out);
        }
    }
    out
}

/// PATH: each env dir's `bin` (and `sbin` for dirs activated with add-sbin) first, then the
/// old PATH without those entries.
pub fn fix_path(env_dirs: &[String], sbin_dirs: &[String], old_path: &str) -> String {
    let existing = split_dir_list(old_path);
    let mut out: Vec<String> = Vec::new();
    for dir in env_dirs {
        let with_sbin = sbin_dirs.contains(dir);
        for suffix in ["bin", "sbin"] {
            if suffix == "sbin" && !with_sbin {
                continue;
            }
            let entry = format!("{dir}/{suffix}");
            if !out.contains(&entry) {
                out.push(entry);
            }
        }
    }
    for entry in existing {
        if entry.is_empty() || !out.contains(&entry) {
            out.push(entry);
        }
    }
    out.join(":")
}

/// MANPATH: each env dir's `share/man` first, then the old entries; a trailing `:` keeps
/// man's default search path unless the old value already placed it (leading, trailing or
/// double colon).
pub fn fix_manpath(env_dirs: &[String], old_manpath: &str) -> String {
    let places_default = old_manpath.starts_with(':') || old_manpath.ends_with(':') || old_manpath.contains("::");
    let dirs = prepend_dirs(env_dirs, &["share/man"], &split_dir_list(old_manpath));
    let mut joined = dirs.join(":");
    if !places_default {
        joined.push(':');
    }
    joined
}

/// `new${old:+:$old}`.
fn prepend(new: &str, old: &str) -> String {
    if old.is_empty() {
        new.to_string()
    } else {
        format!("{new}:{old}")
    }
}

fn set(env: &mut EnvMap, name: &str, value: &str) {
    env.insert(OsString::from(name), OsString::from(value));
}

fn set_if_unset(env: &mut EnvMap, name: &str, value: &str) {
    env.entry(OsString::from(name)).or_insert_with(|| OsString::from(value));
}

/// A variable's value; non-UTF-8 bytes are replaced, which only matters for the few
/// variables the activator rewrites.
fn lookup_str(env: &EnvMap, name: &str) -> Option<String> {
    env.get(OsStr::new(name)).map(|value| value.to_string_lossy().into_owned())
}

/// A variable's value, empty when unset (shell `${NAME:-}`).
fn get(env: &EnvMap, name: &str) -> String {
    lookup_str(env, name).unwrap_or_default()
}

fn non_empty(env: &EnvMap, name: &str) -> Option<String> {
    lookup_str(env, name).filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env_map;

    fn settings(mode: Mode) -> Settings {
        Settings { env_dir: "/run/flox/env".into(), cache_dir: "/run/flox/cache".into(), mode, add_sbin: false }
    }

    fn value<'a>(env: &'a EnvMap, name: &str) -> Option<&'a str> {
        env.get(OsStr::new(name)).map(|value| value.to_str().unwrap())
    }

    #[test]
    fn run_mode_sets_fixed_and_run_variables_only() {
        let inherited = env_map([
            ("PATH", "/usr/bin:/bin"),
            ("HOME", "/root"),
            ("FLOX_ENV_PROJECT", "/somewhere"),
            ("FLOX_SHELL", "zsh"),
        ]);
        let env = activation_env(&inherited, &settings(Mode::Run), &EnvFacts::default());
        assert_eq!(value(&env, "FLOX_ENV"), Some("/run/flox/env"));
        assert_eq!(value(&env, "FLOX_ENV_CACHE"), Some("/run/flox/cache"));
        assert_eq!(value(&env, "FLOX_ENV_DIRS"), Some("/run/flox/env"));
        assert_eq!(value(&env, "_FLOX_ENV_DIRS_ADD_SBIN"), Some("empty"));
        assert_eq!(value(&env, "PATH"), Some("/run/flox/env/bin:/usr/bin:/bin"));
        assert_eq!(value(&env, "MANPATH"), Some("/run/flox/env/share/man:"));
        assert_eq!(value(&env, "INFOPATH"), Some("/run/flox/env/share/info:"));
        assert_eq!(value(&env, "XDG_DATA_DIRS"), Some("/run/flox/env/share"));
        assert_eq!(value(&env, "_FLOX_ACTIVE_ENVIRONMENTS"), Some("[]"));
        assert_eq!(value(&env, "FLOX_PROMPT_ENVIRONMENTS"), Some("floxenv"));
        assert_eq!(value(&env, "FLOX_PROMPT_COLOR_1"), Some("99"));
        assert_eq!(value(&env, "FLOX_PROMPT_COLOR_2"), Some("141"));
        assert_eq!(value(&env, "FLOX_ACTIVATE_START_SERVICES"), Some("false"));
        assert_eq!(value(&env, "HOME"), Some("/root"));
        assert_eq!(value(&env, "FLOX_ENV_PROJECT"), None);
        assert_eq!(value(&env, "FLOX_SHELL"), None);
        for dev_only in ["CPATH", "LIBRARY_PATH", "PKG_CONFIG_PATH", "ACLOCAL_PATH", "SSL_CERT_FILE"] {
            assert_eq!(value(&env, dev_only), None, "{dev_only}");
        }
    }

    #[test]
    fn dev_mode_adds_development_paths() {
        let inherited = env_map([("PATH", "/bin"), ("CPATH", "/usr/include"), ("PKG_CONFIG_PATH", "/p")]);
        let env = activation_env(&inherited, &settings(Mode::Dev), &EnvFacts::default());
        assert_eq!(value(&env, "CPATH"), Some("/run/flox/env/include:/usr/include"));
        assert_eq!(value(&env, "LIBRARY_PATH"), Some("/run/flox/env/lib"));
        assert_eq!(
            value(&env, "PKG_CONFIG_PATH"),
            Some("/run/flox/env/lib/pkgconfig:/run/flox/env/share/pkgconfig:/p")
        );
        assert_eq!(value(&env, "ACLOCAL_PATH"), Some("/run/flox/env/share/aclocal"));
        for absent in ["PYTHONPATH", "CMAKE_PREFIX_PATH", "JAVA_HOME", "RUST_SRC_PATH", "JUPYTER_PATH", "LD_AUDIT"] {
            assert_eq!(value(&env, absent), None, "{absent}");
        }
    }

    #[test]
    fn dev_mode_language_variables_follow_the_tree() {
        let facts = EnvFacts {
            python_version: Some("3.12".into()),
            has_cmake: true,
            has_java: true,
            has_rust_src: true,
            has_jupyter: true,
            ld_floxlib: Some("/run/flox/env/lib/ld-floxlib.so".into()),
            ..EnvFacts::default()
        };
        let inherited = env_map([("PYTHONPATH", "/a:/run/flox/env/lib/python3.12/site-packages")]);
        let env = activation_env(&inherited, &settings(Mode::Dev), &facts);
        assert_eq!(value(&env, "PYTHONPATH"), Some("/run/flox/env/lib/python3.12/site-packages:/a"));
        assert_eq!(value(&env, "CMAKE_PREFIX_PATH"), Some("/run/flox/env"));
        assert_eq!(value(&env, "JAVA_HOME"), Some("/run/flox/env"));
        assert_eq!(value(&env, "RUST_SRC_PATH"), Some("/run/flox/env"));
        assert_eq!(value(&env, "JUPYTER_PATH"), Some("/run/flox/env/share/jupyter"));
        assert_eq!(value(&env, "LD_AUDIT"), Some("/run/flox/env/lib/ld-floxlib.so"));
        assert_eq!(value(&env, "GLIBC_TUNABLES"), Some(GLIBC_TUNABLES_WITH_LD_AUDIT));
        // The same facts change nothing in run mode.
        let run = activation_env(&inherited, &settings(Mode::Run), &facts);
        assert_eq!(value(&run, "PYTHONPATH"), Some("/a:/run/flox/env/lib/python3.12/site-packages"));
        assert_eq!(value(&run, "JAVA_HOME"), None);
    }

    #[test]
    fn ld_audit_is_skipped_when_asked() {
        let facts = EnvFacts { ld_floxlib: Some("/x/ld-floxlib.so".into()), ..EnvFacts::default() };
        let env = activation_env(&env_map([("FLOX_NOSET_LD_AUDIT", "1")]), &settings(Mode::Dev), &facts);
        assert_eq!(value(&env, "LD_AUDIT"), None);
        assert_eq!(value(&env, "GLIBC_TUNABLES"), None);
    }

    #[test]
    fn path_defaults_when_the_image_sets_none() {
        let env = activation_env(&EnvMap::new(), &settings(Mode::Run), &EnvFacts::default());
        assert_eq!(value(&env, "PATH").unwrap(), format!("/run/flox/env/bin:{DEFAULT_PATH}"));
    }

    #[test]
    fn image_path_is_kept_after_the_environment_and_deduplicated() {
        let inherited = env_map([("PATH", "/usr/bin:/run/flox/env/bin:/bin:/usr/bin")]);
        let env = activation_env(&inherited, &settings(Mode::Run), &EnvFacts::default());
        assert_eq!(value(&env, "PATH"), Some("/run/flox/env/bin:/usr/bin:/bin"));
    }

    #[test]
    fn add_sbin_puts_sbin_after_bin() {
        let mut settings = settings(Mode::Run);
        settings.add_sbin = true;
        let env = activation_env(&env_map([("PATH", "/bin")]), &settings, &EnvFacts::default());
        assert_eq!(value(&env, "PATH"), Some("/run/flox/env/bin:/run/flox/env/sbin:/bin"));
        assert_eq!(value(&env, "_FLOX_ENV_DIRS_ADD_SBIN"), Some("/run/flox/env"));
    }

    #[test]
    fn nested_environment_dirs_stay_behind_the_new_one() {
        let inherited = env_map([
            ("FLOX_ENV_DIRS", "/outer"),
            ("_FLOX_ENV_DIRS_ADD_SBIN", "/outer"),
            ("PATH", "/outer/bin:/outer/sbin:/bin"),
            ("MANPATH", "/outer/share/man:"),
        ]);
        let env = activation_env(&inherited, &settings(Mode::Run), &EnvFacts::default());
        assert_eq!(value(&env, "FLOX_ENV_DIRS"), Some("/run/flox/env:/outer"));
        assert_eq!(value(&env, "_FLOX_ENV_DIRS_ADD_SBIN"), Some("/outer"));
        assert_eq!(value(&env, "PATH"), Some("/run/flox/env/bin:/outer/bin:/outer/sbin:/bin"));
        assert_eq!(value(&env, "MANPATH"), Some("/run/flox/env/share/man:/outer/share/man:"));
    }

    #[test]
    fn cuda_libraries_are_appended_in_dev_mode_only() {
        let facts = EnvFacts {
            cuda_libraries: vec!["/usr/lib/libcuda.so.1".into(), "/usr/lib/libnvidia-ml.so.1".into()],
            ..EnvFacts::default()
        };
        let env = activation_env(&EnvMap::new(), &settings(Mode::Dev), &facts);
        assert_eq!(value(&env, "LD_FLOXLIB_FILES_PATH"), Some("/usr/lib/libcuda.so.1:/usr/lib/libnvidia-ml.so.1"));
        let inherited = env_map([("LD_FLOXLIB_FILES_PATH", "/a.so")]);
        let env = activation_env(&inherited, &settings(Mode::Dev), &facts);
        assert_eq!(
            value(&env, "LD_FLOXLIB_FILES_PATH"),
            Some("/a.so:/usr/lib/libcuda.so.1:/usr/lib/libnvidia-ml.so.1")
        );
        let env = activation_env(&EnvMap::new(), &settings(Mode::Run), &facts);
        assert_eq!(value(&env, "LD_FLOXLIB_FILES_PATH"), None);
        let env = activation_env(&EnvMap::new(), &settings(Mode::Dev), &EnvFacts::default());
        assert_eq!(value(&env, "LD_FLOXLIB_FILES_PATH"), None);
    }

    #[test]
    fn env_dirs_are_not_duplicated() {
        let inherited = env_map([("FLOX_ENV_DIRS", "/a:/run/flox/env")]);
        let env = activation_env(&inherited, &settings(Mode::Run), &EnvFacts::default());
        assert_eq!(value(&env, "FLOX_ENV_DIRS"), Some("/a:/run/flox/env"));
    }

    #[test]
    fn manpath_colons_follow_flox() {
        let dirs = vec!["/e".to_string()];
        assert_eq!(fix_manpath(&dirs, ""), "/e/share/man:");
        assert_eq!(fix_manpath(&dirs, "empty"), "/e/share/man:");
        assert_eq!(fix_manpath(&dirs, "/m"), "/e/share/man:/m:");
        assert_eq!(fix_manpath(&dirs, "/m:"), "/e/share/man:/m:");
        assert_eq!(fix_manpath(&dirs, ":/m"), "/e/share/man::/m");
        assert_eq!(fix_manpath(&dirs, "/m::/n"), "/e/share/man:/m::/n");
    }

    #[test]
    fn infopath_keeps_one_trailing_colon() {
        let run = |old: Option<&str>| {
            let inherited = old.map(|old| env_map([("INFOPATH", old)])).unwrap_or_default();
            let env = activation_env(&inherited, &settings(Mode::Run), &EnvFacts::default());
            value(&env, "INFOPATH").unwrap().to_string()
        };
        assert_eq!(run(None), "/run/flox/env/share/info:");
        assert_eq!(run(Some("/i")), "/run/flox/env/share/info:/i:");
        assert_eq!(run(Some("/i:")), "/run/flox/env/share/info:/i:");
    }

    #[test]
    fn xdg_data_dirs_prepends() {
        let env =
            activation_env(&env_map([("XDG_DATA_DIRS", "/usr/share")]), &settings(Mode::Run), &EnvFacts::default());
        assert_eq!(value(&env, "XDG_DATA_DIRS"), Some("/run/flox/env/share:/usr/share"));
    }

    #[test]
    fn ssl_cert_file_keeps_an_existing_value_and_nix_follows_it() {
        let facts = EnvFacts { has_ca_bundle: true, ..EnvFacts::default() };
        let env = activation_env(&EnvMap::new(), &settings(Mode::Run), &facts);
        let bundle = "/run/flox/env/etc/ssl/certs/ca-bundle.crt";
        assert_eq!(value(&env, "SSL_CERT_FILE"), Some(bundle));
        assert_eq!(value(&env, "NIX_SSL_CERT_FILE"), Some(bundle));

        let inherited = env_map([("SSL_CERT_FILE", "/etc/ca.pem"), ("NIX_SSL_CERT_FILE", "/other")]);
        let env = activation_env(&inherited, &settings(Mode::Run), &facts);
        assert_eq!(value(&env, "SSL_CERT_FILE"), Some("/etc/ca.pem"));
        assert_eq!(value(&env, "NIX_SSL_CERT_FILE"), Some("/etc/ca.pem"));

        // Without a bundle and without a value nothing is invented.
        let env = activation_env(&EnvMap::new(), &settings(Mode::Run), &EnvFacts::default());
        assert_eq!(value(&env, "SSL_CERT_FILE"), None);
    }

    #[test]
    fn existing_prompt_colors_and_active_environments_are_kept() {
        let inherited = env_map([("FLOX_PROMPT_COLOR_1", "1"), ("_FLOX_ACTIVE_ENVIRONMENTS", "[{}]")]);
        let env = activation_env(&inherited, &settings(Mode::Run), &EnvFacts::default());
        assert_eq!(value(&env, "FLOX_PROMPT_COLOR_1"), Some("1"));
        assert_eq!(value(&env, "_FLOX_ACTIVE_ENVIRONMENTS"), Some("[{}]"));
    }

    #[test]
    fn prepend_dirs_matches_flox_ordering() {
        let dirs: Vec<String> = vec!["/e1".into(), "/e2".into()];
        let existing: Vec<String> = vec!["/p".into(), "".into(), "/e1/s".into(), "/p".into()];
        assert_eq!(prepend_dirs(&dirs, &["s"], &existing), vec!["/e1/s", "/e2/s", "/p", ""]);
        assert_eq!(prepend_dirs(&dirs, &[], &[]), vec!["/e1", "/e2"]);
    }
}
