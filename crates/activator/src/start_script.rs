//! The part of activation only bash can do: `[vars]` (values are pasted into
//! `export NAME="VALUE"` as flox's envrc does, so `$NAME`, `${NAME:-x}` and `$(cmd)` expand),
//! dev-mode plugin profile.d scripts and `hook.on-activate`. bash runs once with the computed
//! environment; the script then writes every exported variable NUL-separated to a file
//! (bash builtins only: the image may have no `env`), which the activator reads back. The
//! hook's stdout goes to stderr, as flox does, so the command's stdout starts clean.
use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use imageless_core::activation::Profile;

use crate::EnvMap;

/// Characters that make a `[vars]` value mean something else to bash than its text.
const BASH_SPECIAL: &[char] = &['$', '`', '\\', '"'];

/// Variables bash itself sets or that describe the shell rather than the environment; the
/// command keeps the values it had before bash (flox's replay ignores them too).
const SHELL_OWN: &[&str] = &["_", "SHELLOPTS", "BASHOPTS", "PWD", "OLDPWD", "SHLVL"];
const SHELL_OWN_PREFIXES: &[&str] = &["BASH_ENVTRACE_", "BASH_FUNC_"];

/// Whether bash is needed to give a `[vars]` value its flox meaning.
pub fn value_needs_bash(value: &str) -> bool {
    value.contains(BASH_SPECIAL)
}

/// A name bash can `export`.
pub fn is_shell_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_'))
        && bytes.all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
}

/// What the start script runs, in flox's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartScript {
    pub vars: Vec<(String, String)>,
    pub plugin_scripts: Vec<PathBuf>,
    /// A file holding the hook text; sourced so `return` works as in flox.
    pub hook_file: Option<PathBuf>,
    /// Where the phase markers and the exported variables are appended.
    pub output_file: PathBuf,
}

/// How far the script got; markers are printed after each phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Nothing finished: bash failed to start or `[vars]` did not evaluate.
    Started,
    Vars,
    Plugins,
    Hook,
    /// The variable dump is complete.
    Done,
}

impl Phase {
    fn from_marker(marker: &[u8]) -> Option<Phase> {
        match marker {
            b":vars" => Some(Phase::Vars),
            b":plugins" => Some(Phase::Plugins),
            b":hook" => Some(Phase::Hook),
            b":end" => Some(Phase::Done),
            _ => None,
        }
    }
}

impl StartScript {
    /// The bash program; runs as `bash --noprofile --norc -c <script>`.
    pub fn render(&self) -> String {
        let output = single_quoted(&self.output_file);
        let marker = |name: &str| format!("builtin printf '%s\\0' :{name} >> {output}\n");
        let mut script = String::new();
        if !self.vars.is_empty() {
            script.push_str("{\n");
            for (name, value) in &self.vars {
                // Pasted unescaped on purpose: this is how flox's envrc gives [vars] meaning.
                script.push_str(&format!("export {name}=\"{value}\"\n"));
            }
            script.push_str("} 1>&2\n");
        }
        script.push_str(&marker("vars"));
        for plugin in &self.plugin_scripts {
            script.push_str(&format!("builtin source {} 1>&2\n", single_quoted(plugin)));
        }
        script.push_str(&marker("plugins"));
        if let Some(hook_file) = &self.hook_file {
            script.push_str("builtin set +euo pipefail\n");
            script.push_str(&format!("builtin source {} 1>&2\n", single_quoted(hook_file)));
        }
        script.push_str(&marker("hook"));
        // The dump: a hook may have left `set -u` or changed IFS; splitting compgen's output
        // needs the default IFS, and an exported IFS is reported with its own value.
        script.push_str(concat!(
            "builtin set +euo pipefail\n",
            "__flox_activate_ifs=\"${IFS-}\"\n",
            "IFS=$' \\t\\n'\n",
            "for __flox_activate_name in $(builtin compgen -e); do\n",
            "  if [[ $__flox_activate_name == IFS ]]; then\n",
            "    builtin printf 'IFS=%s\\0' \"$__flox_activate_ifs\"\n",
            "  elif [[ -v $__flox_activate_name ]]; then\n",
            "    builtin printf '%s=%s\\0' \"$__flox_activate_name\" \"${!__flox_activate_name}\"\n",
            "  fi\n",
        ));
        script.push_str(&format!("done >> {output}\n"));
        script.push_str(&marker("end"));
        script
    }
}

/// What bash printed: the exported variables (complete only when `phase` is `Done`) and the
/// last phase it finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartOutput {
    pub exported: Vec<(OsString, OsString)>,
    pub phase: Phase,
}

pub fn parse_output(stdout: &[u8]) -> StartOutput {
    let mut output = StartOutput { exported: Vec::new(), phase: Phase::Started };
    let mut records: Vec<&[u8]> = stdout.split(|byte| *byte == 0).collect();
    records.pop(); // after the last NUL: empty, or a record cut short
    for record in records {
        if let Some(phase) = Phase::from_marker(record) {
            output.phase = output.phase.max(phase);
        } else if let Some(eq) = record.iter().position(|byte| *byte == b'=') {
            output
                .exported
                .push((OsString::from_vec(record[..eq].to_vec()), OsString::from_vec(record[eq + 1..].to_vec())));
        }
    }
    output
}

fn is_shell_own(name: &OsStr) -> bool {
    let name = name.as_bytes();
    SHELL_OWN.iter().any(|own| own.as_bytes() == name)
        || SHELL_OWN_PREFIXES.iter().any(|prefix| name.starts_with(prefix.as_bytes()))
}

/// The command's environment after the start script: what bash exported wins (so `[vars]`
/// and hook exports override the computed values, and hook `unset`s remove them), except the
/// shell's own variables. Entries bash cannot hold (names that are not identifiers) pass
/// through from `before` unchanged.
pub fn apply_exports(before: &EnvMap, exported: Vec<(OsString, OsString)>) -> EnvMap {
    let exported_names: BTreeSet<OsString> = exported.iter().map(|(name, _)| name.clone()).collect();
    let mut env: EnvMap = before
        .iter()
        .filter(|(name, _)| {
            is_shell_own(name) || !name.to_str().is_some_and(is_shell_name) || exported_names.contains(*name)
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    for (name, value) in exported {
        if !is_shell_own(&name) {
            env.insert(name, value);
        }
    }
    env
}

/// `[vars]` whose values are plain text: set directly, in order, no bash needed.
pub fn apply_literal_vars(env: &mut EnvMap, vars: &[(String, String)]) {
    for (name, value) in vars {
        env.insert(OsString::from(name), OsString::from(value));
    }
}

/// The rc file for an interactive bash: the user's `~/.bashrc` if any (containerize sources
/// it too), then `[profile]` common and bash. None when the environment has no profile for bash.
pub fn interactive_bash_rc(profile: &Profile) -> Option<String> {
    if profile.common.is_none() && profile.bash.is_none() {
        return None;
    }
    let mut rc = String::from("if [ -f \"$HOME/.bashrc\" ]; then source \"$HOME/.bashrc\"; fi\n");
    for script in [&profile.common, &profile.bash].into_iter().flatten() {
        rc.push_str(script);
        if !script.ends_with('\n') {
            rc.push('\n');
        }
    }
    Some(rc)
}

fn single_quoted(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env_map;

    #[test]
    fn interactive_rc_has_profile_common_then_bash() {
        assert_eq!(interactive_bash_rc(&Profile::default()), None);
        let zsh_only = Profile { zsh: Some("x".into()), ..Profile::default() };
        assert_eq!(interactive_bash_rc(&zsh_only), None);
        let profile =
            Profile { common: Some("echo common".into()), bash: Some("echo bash\n".into()), ..Profile::default() };
        let rc = interactive_bash_rc(&profile).unwrap();
        assert!(rc.starts_with("if [ -f \"$HOME/.bashrc\" ]"));
        assert!(rc.ends_with("echo common\necho bash\n"), "{rc}");
    }

    #[test]
    fn which_values_need_bash() {
        assert!(!value_needs_bash("plain value with spaces and 'quotes'"));
        assert!(value_needs_bash("${GREETING}!"));
        assert!(value_needs_bash("`date`"));
        assert!(value_needs_bash(r"a\tb"));
        assert!(value_needs_bash(r#"say "hi""#));
    }

    #[test]
    fn shell_names() {
        assert!(is_shell_name("GREETING"));
        assert!(is_shell_name("_x1"));
        assert!(!is_shell_name("1X"));
        assert!(!is_shell_name("A-B"));
        assert!(!is_shell_name(""));
    }

    #[test]
    fn script_exports_vars_in_order_and_sources_hook_to_stderr() {
        let script = StartScript {
            vars: vec![("A".into(), "1".into()), ("B".into(), "${A}!".into())],
            plugin_scripts: vec![PathBuf::from("/e/etc/profile.d/x's.sh")],
            hook_file: Some(PathBuf::from("/c/hook")),
            output_file: PathBuf::from("/c/out"),
        }
        .render();
        let a = script.find("export A=\"1\"").unwrap();
        let b = script.find("export B=\"${A}!\"").unwrap();
        let plugin = script.find(r"builtin source '/e/etc/profile.d/x'\''s.sh' 1>&2").unwrap();
        let hook = script.find("builtin source '/c/hook' 1>&2").unwrap();
        assert!(a < b && b < plugin && plugin < hook);
        assert!(script.contains("done >> '/c/out'\n"));
        assert!(script.ends_with("builtin printf '%s\\0' :end >> '/c/out'\n"));
    }

    #[test]
    fn output_parsing_tracks_phase_and_values() {
        let out = parse_output(b":vars\0:plugins\0A=1\0B=x=y\nz\0:hook\0:end\0");
        assert_eq!(out.phase, Phase::Done);
        assert_eq!(out.exported, vec![("A".into(), "1".into()), ("B".into(), "x=y\nz".into())]);
        let cut = parse_output(b":vars\0:plugins\0A=1\0B=tru");
        assert_eq!(cut.phase, Phase::Plugins);
        assert_eq!(cut.exported.len(), 1);
        assert_eq!(parse_output(b"").phase, Phase::Started);
    }

    #[test]
    fn exports_override_unsets_remove_and_shell_own_is_kept() {
        let before = env_map([
            ("KEEP", "1"),
            ("CHANGED", "old"),
            ("GONE", "x"),
            ("PWD", "/work"),
            ("SHLVL", "3"),
            ("weird-name", "kept"),
        ]);
        let exported = vec![
            ("KEEP".into(), "1".into()),
            ("CHANGED".into(), "new".into()),
            ("ADDED".into(), "a".into()),
            ("PWD".into(), "/elsewhere".into()),
            ("SHLVL".into(), "4".into()),
            ("_".into(), "/bin/bash".into()),
        ];
        let env = apply_exports(&before, exported);
        assert_eq!(
            env,
            env_map([
                ("KEEP", "1"),
                ("CHANGED", "new"),
                ("ADDED", "a"),
                ("PWD", "/work"),
                ("SHLVL", "3"),
                ("weird-name", "kept"),
            ])
        );
    }
}
