//! Pre-pulled environments: the node config's `prepull` list and the ConfigMap
//! `imageless-prepull` (namespace `imageless-system`, key `environments`), one environment a line:
//!
//! ```text
//! flox/hello
//! acme/api:4  secret=acme-floxhub-token   # private: token in that Secret (key floxhub-token)
//! ```
//!
//! The agent pulls each on start and every `--prepull-interval` (a live generation moves on;
//! a removed one comes back), keeps them out of disk-pressure gc, and shows their state: the
//! metric `imageless_prepull_ready{environment}` and the node annotation
//! [`STATUS_ANNOTATION`] (JSON: environment → `ready` with its generation, or the error).
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use imageless_core::activation::Mode;
use imageless_core::env_ref::EnvRef;
use imageless_core::system::System;
use imageless_core::token::Token;
use imageless_node::cache::NodeCache;
use imageless_node::config::StoreView;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use kube::api::{Api, Patch, PatchParams};

use super::{AgentOptions, Shared};

/// ConfigMap and Secrets live in the agent's namespace.
pub const CONFIGMAP: &str = "imageless-prepull";
pub const CONFIGMAP_KEY: &str = "environments";
/// The key of a token Secret (as Flox's `floxhub-token` secret).
pub const SECRET_KEY: &str = "floxhub-token";
pub const STATUS_ANNOTATION: &str = "flox.dev/prepull";

/// One line of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub env: EnvRef,
    /// The Secret holding a token for a private environment.
    pub secret: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("pre-pull list line {line}: {reason}")]
pub struct ListError {
    pub line: usize,
    pub reason: String,
}

/// Parses the list (comments with `#`, blank lines ignored); the first bad line is an error
/// naming it.
pub fn parse_list(text: &str) -> Result<Vec<Wanted>, ListError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let err = |reason: String| ListError { line: i + 1, reason };
        let mut words = line.split_whitespace();
        let env = words.next().unwrap_or_default();
        let env = EnvRef::parse(env).map_err(|e| err(format!("{env:?} is not valid: {e}")))?;
        let mut secret = None;
        for w in words {
            match w.strip_prefix("secret=") {
                Some(name) if valid_secret_name(name) => secret = Some(name.to_string()),
                _ => return Err(err(format!("{w:?} is not valid; accepted after the environment: secret=NAME"))),
            }
        }
        out.push(Wanted { env, secret });
    }
    Ok(out)
}

/// A DNS-1123 subdomain, as Secret names are.
fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The node config's list and the ConfigMap's, without repeats (the ConfigMap's secret wins).
pub fn merge(config: Vec<Wanted>, configmap: Vec<Wanted>) -> Vec<Wanted> {
    let mut out: Vec<Wanted> = Vec::new();
    for w in config.into_iter().chain(configmap) {
        match out.iter_mut().find(|o| o.env == w.env) {
            Some(o) => o.secret = w.secret.or(o.secret.take()),
            None => out.push(w),
        }
    }
    out
}

/// The state of one pre-pulled environment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum Status {
    Ready { ready: bool, generation: u32 },
    Failed { ready: bool, error: String },
}

/// The node annotation's value.
pub fn status_annotation(status: &BTreeMap<String, Status>) -> String {
    serde_json::to_string(status).unwrap_or_default()
}

/// The ConfigMap's list; no ConfigMap is an empty list.
pub async fn configmap_list(client: &kube::Client, namespace: &str) -> Result<Vec<Wanted>, PrepullError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cm = api.get_opt(CONFIGMAP).await.map_err(|e| PrepullError::Kube {
        what: format!("reading ConfigMap {namespace}/{CONFIGMAP}"),
        source: Box::new(e),
    })?;
    let text = cm.and_then(|cm| cm.data).and_then(|mut d| d.remove(CONFIGMAP_KEY)).unwrap_or_default();
    parse_list(&text).map_err(|e| PrepullError::List { namespace: namespace.to_string(), source: e })
}

#[derive(Debug, thiserror::Error)]
pub enum PrepullError {
    #[error("{what}: {source}")]
    Kube { what: String, source: Box<kube::Error> },
    #[error("ConfigMap {namespace}/{CONFIGMAP}, key {CONFIGMAP_KEY}: {source}")]
    List { namespace: String, source: ListError },
    #[error("Secret {namespace}/{name} has no key {SECRET_KEY} holding a FloxHub token")]
    NoToken { namespace: String, name: String },
    #[error("Secret {namespace}/{name}, key {SECRET_KEY}: {reason}")]
    BadToken { namespace: String, name: String, reason: String },
}

/// The token in Secret `name` (errors name the Secret, never its content).
async fn secret_token(client: &kube::Client, namespace: &str, name: &str) -> Result<Token, PrepullError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = api
        .get(name)
        .await
        .map_err(|e| PrepullError::Kube { what: format!("reading Secret {namespace}/{name}"), source: Box::new(e) })?;
    let no_token = || PrepullError::NoToken { namespace: namespace.to_string(), name: name.to_string() };
    let bytes = secret.data.and_then(|mut d| d.remove(SECRET_KEY)).ok_or_else(no_token)?;
    let text = String::from_utf8(bytes.0).map_err(|_| no_token())?;
    Token::parse(text.trim()).map_err(|e| PrepullError::BadToken {
        namespace: namespace.to_string(),
        name: name.to_string(),
        reason: e.to_string(),
    })
}

/// Pulls every wanted environment (run mode, with its closure view), one after the other, and
/// publishes the outcome: pinned keys, the metric, the node annotation.
pub async fn pull_all(shared: &Arc<Shared>, client: Option<&kube::Client>, options: &AgentOptions, wanted: &[Wanted]) {
    let mut statuses = BTreeMap::new();
    let mut pinned = HashSet::new();
    for w in wanted {
        let name = w.env.to_string();
        let token = match (&w.secret, client) {
            (Some(secret), Some(c)) => match secret_token(c, &options.namespace, secret).await {
                Ok(t) => Some(t),
                Err(e) => {
                    fail(shared, &mut statuses, &name, e.to_string());
                    continue;
                }
            },
            _ => None,
        };
        let pulled = pull_in_child(options, &w.env, token.as_ref()).await;
        match pulled {
            Ok(r) => {
                tracing::info!(env = name, generation = r.generation, key = r.key, "pre-pulled");
                pinned.insert(r.key);
                shared.metrics.set_prepull(&name, true);
                statuses.insert(name, Status::Ready { ready: true, generation: r.generation });
            }
            Err(e) => {
                // Keep what an earlier round pinned for it: a hub outage must not unpin it.
                if let Some(Status::Ready { .. }) =
                    shared.prepull_status.lock().unwrap_or_else(|e| e.into_inner()).get(&name)
                {
                    pinned.extend(shared.pinned.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned());
                }
                fail(shared, &mut statuses, &name, e);
            }
        }
    }
    *shared.pinned.lock().unwrap_or_else(|e| e.into_inner()) = pinned;
    *shared.prepull_status.lock().unwrap_or_else(|e| e.into_inner()) = statuses.clone();
    if let (Some(c), false) = (client, options.node.is_empty()) {
        let patch =
            serde_json::json!({ "metadata": { "annotations": { STATUS_ANNOTATION: status_annotation(&statuses) } } });
        let nodes: Api<Node> = Api::all(c.clone());
        if let Err(e) = nodes.patch(&options.node, &PatchParams::default(), &Patch::Merge(&patch)).await {
            tracing::warn!("annotating node {} with the pre-pull status: {e}", options.node);
            shared.metrics.error("prepull");
        }
    }
}

/// What the child reports on stdout.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct PulledOne {
    pub key: String,
    pub generation: u32,
}

/// Runs `imageless node pull-one` (this binary) for `env`: the fetch's memory and threads live
/// and die with the child, so the agent itself stays small. The token goes through stdin.
async fn pull_in_child(options: &AgentOptions, env: &EnvRef, token: Option<&Token>) -> Result<PulledOne, String> {
    use tokio::io::AsyncWriteExt;
    let me = std::env::current_exe().map_err(|e| format!("finding the agent's binary: {e}"))?;
    let mut cmd = tokio::process::Command::new(me);
    cmd.args(["node", "pull-one", &env.to_string()]);
    if let Some(config) = &options.config {
        cmd.arg("--config").arg(config);
    }
    if token.is_some() {
        cmd.arg("--token-stdin");
    }
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("starting the pre-pull: {e}"))?;
    if let (Some(mut stdin), Some(t)) = (child.stdin.take(), token) {
        let _ = stdin.write_all(t.expose().as_bytes()).await;
    }
    let out = child.wait_with_output().await.map_err(|e| format!("waiting for the pre-pull: {e}"))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("the pre-pull failed");
        return Err(last.trim().trim_start_matches("error: ").to_string());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("the pre-pull's answer: {e}"))
}

/// `imageless node pull-one ENV`: the pull itself, in the child (run mode, with the closure view).
pub fn pull_one(config: Option<&std::path::Path>, env: &str, token_stdin: bool) -> Result<PulledOne, String> {
    let env = EnvRef::parse(env).map_err(|e| format!("{env:?}: {e}"))?;
    let token = match token_stdin {
        true => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::Read::take(std::io::stdin(), 16 * 1024), &mut text)
                .map_err(|e| format!("reading the token: {e}"))?;
            Some(Token::parse(text.trim()).map_err(|e| e.to_string())?)
        }
        false => None,
    };
    let config = imageless_node::config::NodeConfig::load(config).map_err(|e| e.to_string())?;
    let system = System::host().map_err(|e| format!("flox: {e}"))?;
    let view = config.store_view == StoreView::Closure;
    let cache = NodeCache::new(config, system);
    let cache = if view { cache.building_views() } else { cache };
    let rendered = cache.ensure(&env, Mode::Run, token.as_ref()).map_err(|e| e.to_string())?;
    if view {
        cache.ensure_view(&rendered).map_err(|e| e.to_string())?;
    }
    Ok(PulledOne { key: rendered.key, generation: rendered.generation })
}

fn fail(shared: &Shared, statuses: &mut BTreeMap<String, Status>, env: &str, error: String) {
    tracing::warn!(env, "pre-pull failed: {error}");
    shared.metrics.set_prepull(env, false);
    shared.metrics.error("prepull");
    statuses.insert(env.to_string(), Status::Failed { ready: false, error });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_with_secrets_and_comments_and_name_the_bad_line() {
        let list = parse_list("# warm these\nflox/hello\n\nacme/api:4  secret=acme-token  # private\n").unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].env.generation, Some(4));
        assert_eq!(list[1].secret.as_deref(), Some("acme-token"));
        let e = parse_list("flox/hello\nnot an env\n").unwrap_err();
        assert_eq!(e.line, 2);
        let e = parse_list("flox/hello token=abc").unwrap_err();
        assert!(e.reason.contains("secret=NAME"), "{e}");
        assert!(parse_list("flox/hello secret=../x").is_err());
    }

    #[test]
    fn merged_without_repeats() {
        let a = parse_list("flox/hello\nflox/echoip").unwrap();
        let b = parse_list("flox/echoip secret=s\nflox/large").unwrap();
        let m = merge(a, b);
        let names: Vec<String> = m.iter().map(|w| w.env.to_string()).collect();
        assert_eq!(names, ["flox/hello", "flox/echoip", "flox/large"]);
        assert_eq!(m[1].secret.as_deref(), Some("s"));
    }

    #[test]
    fn the_status_annotation_is_json() {
        let s: BTreeMap<String, Status> = [
            ("flox/hello".to_string(), Status::Ready { ready: true, generation: 2 }),
            ("acme/api".to_string(), Status::Failed { ready: false, error: "flox: hub down".into() }),
        ]
        .into();
        assert_eq!(
            status_annotation(&s),
            r#"{"acme/api":{"ready":false,"error":"flox: hub down"},"flox/hello":{"ready":true,"generation":2}}"#
        );
    }
}
