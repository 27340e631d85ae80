//! The node config, /etc/imageless/config.toml (path overridable with `IMAGELESS_CONFIG`).
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/imageless/config.toml";
pub const PATH_ENV: &str = "IMAGELESS_CONFIG";
pub const DEFAULT_HUB_URL: &str = "https://hub.flox.dev";
/// The default `state_root` (node cache, per-container state).
pub const DEFAULT_STATE_ROOT: &str = "/var/lib/imageless";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreView {
    /// Only the environment's closure is visible under /nix/store in the container.
    #[default]
    Closure,
    /// The whole node store (`store_dir`), read-only.
    Store,
}

/// Every key is optional; see the README's "Node config" section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub state_root: PathBuf,
    /// The node's own store (`<hash>-<name>` entries as in /nix/store); default `<state_root>/store`.
    pub store_dir: Option<PathBuf>,
    pub hub_url: String,
    pub git_url: Option<String>,
    pub substituters: Vec<String>,
    pub trusted_public_keys: Vec<String>,
    pub runc: Option<PathBuf>,
    pub activator: PathBuf,
    pub store_view: StoreView,
    /// No longer used: the node keeps its own store and gc (no Nix GC roots). Accepted so
    /// configs written for earlier versions still load.
    pub gcroots_dir: PathBuf,
    /// No longer used: the node runs no Nix. Accepted so earlier configs still load.
    pub nix_bin_dir: Option<PathBuf>,
    /// Seconds a hub request may take before the hub counts as unreachable.
    pub hub_timeout_secs: u64,
    /// Seconds a hub answer (the branch head, the token accepted) is reused without asking
    /// again; lets a container create reuse its sandbox prefetch's check. 0 = always ask.
    pub hub_answer_ttl_secs: u64,
    /// Whether the shim launcher (containerd 1.7, 2.x) puts its proxy in front of the runc
    /// shim, which does the flox work in-process and lets the shim call the real runc. Off:
    /// the `flox-runc` wrapper runs in front of every runc call, as on containerd 1.6.
    pub shim_proxy: bool,
    /// Milliseconds a substituter may take to accept a connection.
    pub substituter_connect_timeout_ms: u64,
    /// Milliseconds a substituter may stay silent: before an answer's first byte, and between
    /// two reads of its body. Past it the request counts as stalled and the substituter as down.
    pub substituter_stall_timeout_ms: u64,
    /// Seconds a substituter found down (refused, stalled, 5xx) is skipped by this process.
    pub substituter_retry_after_secs: u64,
    /// Disk-pressure gc (the node agent, see [`crate::pressure`]): when the filesystem holding
    /// the node store is at least this full (percent), environments no container uses are
    /// removed, least recently used first. As the kubelet's `imageGCHighThresholdPercent`.
    pub gc_high_threshold_percent: u8,
    /// ... until it is at most this full (percent). As the kubelet's `imageGCLowThresholdPercent`.
    pub gc_low_threshold_percent: u8,
    /// Optional cap on the node store's bytes (the NAR sizes of its paths): above it the same
    /// gc runs, down to `low/high` of it.
    pub gc_store_budget_bytes: Option<u64>,
    /// Environments (`owner/name[:N]`) the node agent pulls on start and keeps warm (never
    /// removed by disk-pressure gc); the agent also reads a ConfigMap (deploy/README.md).
    pub prepull: Vec<String>,
    /// An AWS shared-credentials file for the `s3://` substituters (the node's, never a pod's);
    /// unset: the AWS environment variables, then `~/.aws/credentials`.
    pub s3_credentials_file: Option<PathBuf>,
    /// The catalog service asked where private catalog packages live; unset: FloxHub's API for
    /// FloxHub, else `hub_url`.
    pub catalog_url: Option<String>,
    /// Hosts (`host` or `host:port`) whose stores, when a catalog answers them, are read with
    /// the pod's FloxHub token as basic auth. The catalog's own host and Flox's publisher hosts
    /// are always on it; no other host ever gets the token.
    pub catalog_token_hosts: Vec<String>,
    /// Whether the public keys a catalog returns with a store are trusted for its paths (off:
    /// only `trusted_public_keys`, as the Flox CLI).
    pub catalog_trust_returned_keys: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            state_root: PathBuf::from(DEFAULT_STATE_ROOT),
            store_dir: None,
            hub_url: DEFAULT_HUB_URL.to_string(),
            git_url: None,
            substituters: vec!["https://cache.flox.dev".into(), "https://cache.nixos.org".into()],
            trusted_public_keys: vec![
                "flox-cache-public-1:7F4OyH7ZCnFhcze3fJdfyXYLQw/aV7GEed86nQ7IsOs=".into(),
                "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=".into(),
            ],
            runc: None,
            activator: PathBuf::from("/usr/local/bin/flox-activate"),
            store_view: StoreView::Closure,
            gcroots_dir: PathBuf::from("/nix/var/nix/gcroots/imageless"),
            nix_bin_dir: None,
            hub_timeout_secs: 20,
            hub_answer_ttl_secs: 10,
            shim_proxy: true,
            substituter_connect_timeout_ms: 5_000,
            substituter_stall_timeout_ms: 10_000,
            substituter_retry_after_secs: 60,
            gc_high_threshold_percent: 85,
            gc_low_threshold_percent: 80,
            gc_store_budget_bytes: None,
            prepull: Vec::new(),
            s3_credentials_file: None,
            catalog_url: None,
            catalog_token_hosts: Vec::new(),
            catalog_trust_returned_keys: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("flox: node config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("flox: node config {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
}

/// Where the node config is: `explicit`, else `$IMAGELESS_CONFIG`, else [`DEFAULT_PATH`];
/// the flag says whether the file was named (and so must exist).
pub fn locate(explicit: Option<&Path>) -> (PathBuf, bool) {
    let from_env = std::env::var_os(PATH_ENV).map(PathBuf::from);
    match explicit.map(Path::to_path_buf).or(from_env) {
        Some(p) => (p, true),
        None => (PathBuf::from(DEFAULT_PATH), false),
    }
}

impl NodeConfig {
    /// Loads from `explicit`, else `$IMAGELESS_CONFIG`, else the default path; a missing
    /// default file means all defaults, a missing explicit one is an error.
    pub fn load(explicit: Option<&Path>) -> Result<NodeConfig, ConfigError> {
        let (path, must_exist) = locate(explicit);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text).map_err(|message| ConfigError::Parse { path, message }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => Ok(NodeConfig::default()),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    pub fn parse(text: &str) -> Result<NodeConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().replace('\n', " "))
    }

    /// The node store directory: `store_dir`, else `<state_root>/store`.
    pub fn store_dir(&self) -> PathBuf {
        self.store_dir.clone().unwrap_or_else(|| self.state_root.join("store"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = NodeConfig::parse("").unwrap();
        assert_eq!(c.hub_url, DEFAULT_HUB_URL);
        assert_eq!(c.store_view, StoreView::Closure);
        let c = NodeConfig::parse("hub_url = \"http://127.0.0.1:1\"\nstore_view = \"store\"\n").unwrap();
        assert_eq!(c.store_view, StoreView::Store);
        let e = NodeConfig::parse("hub_ur = \"x\"").unwrap_err();
        assert!(e.contains("unknown field `hub_ur`"), "{e}");
        let e = NodeConfig::parse("store_view = \"all\"").unwrap_err();
        assert!(e.contains("closure") && e.contains("store"), "{e}");
        assert!(c.shim_proxy, "the proxy is on by default");
        assert!(!NodeConfig::parse("shim_proxy = false").unwrap().shim_proxy);
        let e = NodeConfig::parse("shim_proxy = \"no\"").unwrap_err();
        assert!(e.contains("shim_proxy") && e.contains("expected a boolean") && e.contains("\"no\""), "{e}");
    }
}
