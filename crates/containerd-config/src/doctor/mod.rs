//! `imageless doctor`: a checklist of what a node needs, each failure with its fix.
//!
//! A node needs containerd, runc and our binaries, nothing else (no Nix, no git): the checks
//! here are containerd and its `flox` runtime, the binaries, the node store ([`store`]: where
//! environments are fetched to, and whether its filesystem does what the views need), the
//! substituters and the keys the node trusts ([`network`]), the hub and the token.
mod network;
mod store;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use imageless_core::token::{Token, TokenKind, TokenParseError};
use imageless_node::config::NodeConfig;

use crate::edit;
use crate::install::{self, HostRoot};

pub use network::{reachable, url_host_port};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    pub fix: Option<String>,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tag = match self.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        write!(f, "[{tag}] {}: {}", self.name, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n       fix: {fix}")?;
        }
        Ok(())
    }
}

/// Inputs of the checks; tests build it directly instead of touching the process environment.
#[derive(Debug, Clone)]
pub struct DoctorContext {
    pub containerd_config: PathBuf,
    pub address: Option<PathBuf>,
    pub containerd_bin: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub node_config_path: PathBuf,
    /// The PATH binaries are looked up in.
    pub path_env: OsString,
    pub network_timeout: Duration,
}

fn ok(name: &'static str, detail: impl Into<String>) -> Check {
    Check { name, status: Status::Ok, detail: detail.into(), fix: None }
}
fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { name, status: Status::Fail, detail: detail.into(), fix: Some(fix.into()) }
}
fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { name, status: Status::Warn, detail: detail.into(), fix: Some(fix.into()) }
}

pub fn which(name: &str, path_env: &OsString) -> Option<PathBuf> {
    std::env::split_paths(path_env).map(|d| d.join(name)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

pub fn run(ctx: &DoctorContext) -> Vec<Check> {
    let root = HostRoot("/".into());
    let mut checks = Vec::new();
    let node = match std::fs::read_to_string(&ctx.node_config_path) {
        Ok(text) => match NodeConfig::parse(&text) {
            Ok(c) => {
                checks.push(ok("node config", ctx.node_config_path.display().to_string()));
                c
            }
            Err(e) => {
                checks.push(fail(
                    "node config",
                    format!("{} does not parse: {e}", ctx.node_config_path.display()),
                    "fix the file (its keys: docs/contracts.md, \"Node config\")",
                ));
                NodeConfig::default()
            }
        },
        Err(_) => {
            checks.push(warn(
                "node config",
                format!("{} is absent: using defaults", ctx.node_config_path.display()),
                "run `imageless install` (writes it) or create it",
            ));
            NodeConfig::default()
        }
    };

    // containerd running and its version.
    let socket = ctx.address.clone().unwrap_or_else(|| install::socket_address(&root, &ctx.containerd_config));
    let containerd_bin = install::find_containerd(&root, ctx.containerd_bin.as_deref());
    let version = containerd_bin.as_deref().and_then(|b| install::containerd_version(&root, b));
    let version_text = version.as_ref().map(|v| v.0.clone()).unwrap_or_else(|| "version unknown".into());
    checks.push(match install::socket_peer_pid(&socket) {
        Ok(pid) => ok("containerd", format!("running (pid {pid}, {version_text}) on {}", socket.display())),
        Err(e) => fail(
            "containerd",
            format!("containerd is not answering on {}: {e}", socket.display()),
            "start containerd (`systemctl start containerd`), or pass --address with its socket",
        ),
    });

    checks.extend(runtime_checks(&root, ctx, containerd_bin.as_deref(), version.as_ref()));

    // runc and the runc shim.
    let runc = node.runc.clone().or_else(|| which("runc", &ctx.path_env));
    checks.push(match runc {
        Some(p) if is_executable(&p) => ok("runc", p.display().to_string()),
        _ => fail(
            "runc",
            "runc not found (node config `runc` or PATH)",
            "install runc or set `runc = \"/path/to/runc\"` in the node config",
        ),
    });
    checks.push(match which("containerd-shim-runc-v2", &ctx.path_env) {
        Some(p) => ok("runc shim", p.display().to_string()),
        None => fail(
            "runc shim",
            "containerd-shim-runc-v2 is not on PATH",
            "install containerd's runc shim next to containerd",
        ),
    });
    checks.push(if is_executable(&node.activator) {
        ok("activator", node.activator.display().to_string())
    } else {
        fail(
            "activator",
            format!("{} is missing", node.activator.display()),
            "run `imageless install` or set `activator` in the node config",
        )
    });

    // The node store, and the binary caches it is filled from.
    checks.extend(store::checks(&node));
    checks.extend(network::substituter_checks(&node, ctx.network_timeout));

    // Hub and token.
    checks.push(match reachable(&node.hub_url, ctx.network_timeout) {
        Ok(()) => ok("hub", format!("{} reachable", node.hub_url)),
        Err(e) => fail(
            "hub",
            format!("hub {} is unreachable: {e}", node.hub_url),
            "check `hub_url` in the node config and the node's network",
        ),
    });
    if let Some(token_file) = &ctx.token_file {
        checks.push(token_check(token_file));
    }

    // Stale state.
    checks.push(mounts_check(&node.state_root));
    checks
}

fn runtime_checks(
    root: &HostRoot,
    ctx: &DoctorContext,
    containerd_bin: Option<&Path>,
    containerd: Option<&(String, u64)>,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let main_text = std::fs::read_to_string(&ctx.containerd_config).ok();
    let main_facts = main_text.as_deref().and_then(|t| edit::inspect(t).ok());
    if let (Some(facts), Some((version, major))) = (&main_facts, containerd) {
        if let Err(e) = install::check_config_version(&ctx.containerd_config, facts.version, version, *major) {
            checks.push(fail(
                "containerd config",
                e.to_string(),
                "use a version 2 config (`containerd config default` of this containerd) or upgrade containerd to 2.x",
            ));
            return checks;
        }
    }
    let (effective, source) = match containerd_bin.map(|b| install::config_dump(root, b, &ctx.containerd_config)) {
        Some(Ok(dump)) => (edit::inspect(&dump).ok(), "effective config (containerd config dump)"),
        Some(Err(e)) => {
            checks.push(fail("containerd config", e, "fix the config so containerd can load it"));
            return checks;
        }
        None => (main_facts.clone(), "config file (no containerd binary for config dump)"),
    };
    let Some(flox) = effective.and_then(|f| f.flox) else {
        let shadow = main_facts
            .as_ref()
            .filter(|f| f.flox.is_some())
            .and_then(|f| install::shadowing_import(root, &ctx.containerd_config, f).ok().flatten());
        checks.push(match shadow {
            Some(import) => fail(
                "runtime flox",
                format!(
                    "runtime flox in {} is shadowed by import {}, which redefines the CRI plugin section",
                    ctx.containerd_config.display(),
                    import.display()
                ),
                format!("re-run `imageless install` (it writes into {}) and restart containerd", import.display()),
            ),
            None => fail(
                "runtime flox",
                format!("runtime flox is not in containerd's {source}"),
                "run `imageless install` (or add it to the config) and restart containerd",
            ),
        });
        return checks;
    };
    checks.push(ok("runtime flox", format!("present in the {source}")));
    let pattern = edit::ANNOTATION_PATTERN;
    if flox.pod_annotations.iter().any(|a| a == pattern) && flox.container_annotations.iter().any(|a| a == pattern) {
        checks.push(ok("annotations", format!("pod and container annotations {pattern} pass through")));
    } else {
        checks.push(fail(
            "annotations",
            format!(
                "runtime flox does not pass {pattern} (pod_annotations {:?}, container_annotations {:?})",
                flox.pod_annotations, flox.container_annotations
            ),
            format!("set pod_annotations and container_annotations to [\"{pattern}\"] (`imageless install` does)"),
        ));
    }
    match flox.binary_name.as_deref().filter(|b| !b.is_empty()) {
        None => checks.push(fail(
            "BinaryName",
            "runtime flox has no options.BinaryName: containerd 1.6 ignores runtime_path, so pods would run without flox",
            "set options.BinaryName to the flox-runc wrapper (`imageless install` does)",
        )),
        Some(b) if !is_executable(Path::new(b)) => checks.push(fail(
            "BinaryName",
            format!("options.BinaryName {b} does not exist or is not executable"),
            "run `imageless install` to install flox-runc",
        )),
        Some(b) if !b.ends_with("flox-runc") => checks.push(warn(
            "BinaryName",
            format!("options.BinaryName is {b}, not the flox-runc wrapper"),
            "point options.BinaryName at flox-runc",
        )),
        Some(b) => checks.push(ok("BinaryName", b.to_owned())),
    }
    match flox.runtime_path.as_deref().filter(|p| !p.is_empty()) {
        Some(p) if is_executable(Path::new(p)) => checks.push(ok("shim launcher", p.to_owned())),
        Some(p) => {
            checks.push(fail("shim launcher", format!("runtime_path {p} is missing"), "run `imageless install`"))
        }
        None => checks.push(warn("shim launcher", "runtime flox has no runtime_path", "run `imageless install`")),
    }
    checks
}

fn token_check(path: &Path) -> Check {
    let raw = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return fail(
                "token",
                format!("token file {} is unreadable: {e}", path.display()),
                "pass --token-file with a readable file",
            )
        }
    };
    // The node reads the token with the same parser, so what doctor accepts the node accepts.
    let token = match Token::parse(&raw) {
        Ok(token) => token,
        Err(TokenParseError::Empty) => {
            return fail("token", format!("token file {} is empty", path.display()), "write a FloxHub token into it")
        }
        Err(e) => {
            return fail(
                "token",
                format!("token file {}: {e}", path.display()),
                "write a FloxHub access token (flox_...) or a FloxHub JWT into it",
            )
        }
    };
    let exp = match token.kind() {
        TokenKind::Jwt { exp, .. } => *exp,
        TokenKind::Opaque => {
            return warn("token", "token is not a JWT: its expiry cannot be read", "none needed if the hub accepts it")
        }
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let when = time::OffsetDateTime::from_unix_timestamp(exp)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| exp.to_string());
    if token.expired_at(u64::try_from(now).unwrap_or(0)).is_some() {
        fail(
            "token",
            format!("token expired at {when}"),
            "mint a new token (`flox auth login` / `imageless hub token`) and update the secret",
        )
    } else {
        ok("token", format!("valid until {when}"))
    }
}

fn mounts_check(state_root: &Path) -> Check {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return warn(
            "mounts",
            "cannot read /proc/self/mountinfo",
            "run doctor on the node (hostPID / host mount namespace)",
        );
    };
    let prefix = state_root.to_string_lossy().into_owned();
    let count = info.lines().filter_map(|l| l.split(' ').nth(4)).filter(|mp| mp.starts_with(&prefix)).count();
    if count == 0 {
        ok("mounts", format!("no mounts under {prefix}"))
    } else {
        warn(
            "mounts",
            format!("{count} mounts under {prefix}"),
            "if no flox container runs, they are stale: `imageless gc`",
        )
    }
}
