//! Pod annotations (`flox.dev/*`) parsed into one typed, validated value.
//!
//! Every bad value becomes one [`OptionsError`] naming the annotation, the value and what is
//! accepted; the runc wrapper writes it to runc's log so it reaches `kubectl describe`.
use std::collections::{BTreeMap, BTreeSet};

use crate::activation::Mode;
use crate::env_ref::{EnvRef, EnvRefError};

pub const ENVIRONMENT: &str = "flox.dev/environment";
pub const ACTIVATE_MODE: &str = "flox.dev/activate-mode";
pub const NIX_MUTABLE: &str = "flox.dev/nix-mutable";
pub const DISABLE_METRICS: &str = "flox.dev/disable-metrics";
pub const SKIP_CONTAINERS: &str = "flox.dev/skip-containers";
pub const SKIP_CONTAINERS_EXEC: &str = "flox.dev/skip-containers-exec";
const KNOWN: [&str; 6] =
    [ENVIRONMENT, ACTIVATE_MODE, NIX_MUTABLE, DISABLE_METRICS, SKIP_CONTAINERS, SKIP_CONTAINERS_EXEC];

/// The options of one pod, as the runtime uses them for a container that is not skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodOptions {
    pub environment: EnvRef,
    pub mode: Mode,
    pub nix_mutable: bool,
    pub disable_metrics: bool,
    pub skip: SkipLists,
}

/// `flox.dev/skip-containers` and `flox.dev/skip-containers-exec`. Parsed on their own and
/// never fail, so a skipped container is left alone even when other annotations are wrong.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkipLists {
    pub containers: BTreeSet<String>,
    pub containers_exec: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    #[error("flox: annotation {ENVIRONMENT} is missing; a pod with runtimeClassName flox needs {ENVIRONMENT}: owner/name[:generation] (or list this container in {SKIP_CONTAINERS}). If the pod has it, containerd is not passing flox.dev/* annotations to the runtime: run `imageless doctor`")]
    MissingEnvironment,
    #[error("flox: annotation {ENVIRONMENT}: {value:?} is not valid: {source}")]
    Environment { value: String, source: EnvRefError },
    #[error("flox: annotation {annotation}: {value:?} is not valid; accepted values: {accepted}")]
    BadValue { annotation: &'static str, value: String, accepted: &'static str },
    #[error("flox: annotation {annotation:?} is not known; known flox.dev annotations: {known}")]
    Unknown { annotation: String, known: String },
}

impl SkipLists {
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> SkipLists {
        SkipLists {
            containers: comma_list(annotations.get(SKIP_CONTAINERS)),
            containers_exec: comma_list(annotations.get(SKIP_CONTAINERS_EXEC)),
        }
    }
}

fn comma_list(value: Option<&String>) -> BTreeSet<String> {
    value.map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()).unwrap_or_default()
}

impl PodOptions {
    /// Parses the `flox.dev/*` annotations of a container that the runtime must wrap.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Result<PodOptions, OptionsError> {
        // A misspelt annotation (activate_mode, nix-mutable-) would otherwise be silently ignored.
        if let Some(unknown) = annotations.keys().find(|k| k.starts_with("flox.dev/") && !KNOWN.contains(&k.as_str())) {
            return Err(OptionsError::Unknown { annotation: unknown.clone(), known: KNOWN.join(", ") });
        }
        let value = annotations.get(ENVIRONMENT).ok_or(OptionsError::MissingEnvironment)?;
        let environment =
            EnvRef::parse(value).map_err(|source| OptionsError::Environment { value: value.clone(), source })?;
        let mode = match annotations.get(ACTIVATE_MODE).map(String::as_str) {
            None | Some("run") => Mode::Run,
            Some("dev") => Mode::Dev,
            Some(other) => {
                return Err(OptionsError::BadValue {
                    annotation: ACTIVATE_MODE,
                    value: other.to_string(),
                    accepted: "\"run\" (default) or \"dev\"",
                })
            }
        };
        Ok(PodOptions {
            environment,
            mode,
            nix_mutable: boolean(annotations, NIX_MUTABLE)?,
            disable_metrics: boolean(annotations, DISABLE_METRICS)?,
            skip: SkipLists::from_annotations(annotations),
        })
    }
}

fn boolean(annotations: &BTreeMap<String, String>, annotation: &'static str) -> Result<bool, OptionsError> {
    match annotations.get(annotation).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(OptionsError::BadValue {
            annotation,
            value: other.to_string(),
            accepted: "\"true\" or \"false\" (default \"false\")",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_and_all_options() {
        let o = PodOptions::from_annotations(&ann(&[(ENVIRONMENT, "flox/echoip")])).unwrap();
        assert_eq!(o.mode, Mode::Run);
        assert!(!o.nix_mutable && !o.disable_metrics);
        let o = PodOptions::from_annotations(&ann(&[
            (ENVIRONMENT, "flox/quotes-app:2"),
            (ACTIVATE_MODE, "dev"),
            (NIX_MUTABLE, "true"),
            (DISABLE_METRICS, "true"),
            (SKIP_CONTAINERS, " vault-agent, ,vault-agent-init ,"),
            (SKIP_CONTAINERS_EXEC, "app"),
            ("vault.hashicorp.com/role", "x"),
        ]))
        .unwrap();
        assert_eq!(o.environment.generation, Some(2));
        assert_eq!(o.mode, Mode::Dev);
        assert!(o.nix_mutable && o.disable_metrics);
        assert_eq!(o.skip.containers.iter().collect::<Vec<_>>(), ["vault-agent", "vault-agent-init"]);
        assert!(o.skip.containers_exec.contains("app"));
    }

    #[test]
    fn bad_values_name_annotation_value_and_accepted() {
        let e = PodOptions::from_annotations(&ann(&[(ENVIRONMENT, "a/b"), (ACTIVATE_MODE, "prod")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "flox: annotation flox.dev/activate-mode: \"prod\" is not valid; accepted values: \"run\" (default) or \"dev\""
        );
        let e = PodOptions::from_annotations(&ann(&[(ENVIRONMENT, "a/b"), (NIX_MUTABLE, "yes")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "flox: annotation flox.dev/nix-mutable: \"yes\" is not valid; accepted values: \"true\" or \"false\" (default \"false\")"
        );
        let e = PodOptions::from_annotations(&ann(&[(ENVIRONMENT, "Flox/echo ip")])).unwrap_err();
        assert!(e.to_string().starts_with(
            "flox: annotation flox.dev/environment: \"Flox/echo ip\" is not valid: the environment name \"echo ip\" contains a space; expected owner/name"
        ), "{e}");
        let e = PodOptions::from_annotations(&ann(&[])).unwrap_err();
        assert_eq!(e, OptionsError::MissingEnvironment);
        let e =
            PodOptions::from_annotations(&ann(&[(ENVIRONMENT, "a/b"), ("flox.dev/activate_mode", "dev")])).unwrap_err();
        assert!(e.to_string().starts_with("flox: annotation \"flox.dev/activate_mode\" is not known"), "{e}");
    }
}
