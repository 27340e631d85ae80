//! The network side of a node: the binary caches it fetches store paths from (each must serve
//! a `nix-cache-info` for /nix/store, checked with the node's own fetch code) and the keys it
//! trusts their signatures with; plus plain reachability for the hub.
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use imageless_node::config::NodeConfig;
use imageless_node::fetch::{cache_info, FetchError, Fetcher};

use super::{fail, ok, Check};

/// The node's own config checks for `substituters` and `trusted_public_keys` (what the node
/// refuses, doctor reports), then each substituter's `nix-cache-info`.
pub(super) fn substituter_checks(node: &NodeConfig, timeout: Duration) -> Vec<Check> {
    let mut checks = Vec::new();
    let keys_fix =
        "add each cache's public key (<key-name>:<base64 ed25519 key>) to `trusted_public_keys` in the node config";
    match Fetcher::from_config(node) {
        Err(FetchError::Config { field: "trusted_public_keys", value, accepted }) => checks.push(fail(
            "trusted keys",
            format!("trusted_public_keys entry {value:?} is not {accepted}"),
            keys_fix,
        )),
        Err(e) => {
            checks.push(fail(
                "substituter",
                plain(&e),
                "fix `substituters` in the node config (binary cache URLs, http:// or https://)",
            ));
            return checks;
        }
        Ok(_) if node.trusted_public_keys.is_empty() => checks.push(fail(
            "trusted keys",
            "trusted_public_keys is empty: the node refuses every store path (each must be signed by a trusted key)",
            keys_fix,
        )),
        Ok(_) => checks.push(ok(
            "trusted keys",
            node.trusted_public_keys.iter().map(|k| key_name(k)).collect::<Vec<_>>().join(", "),
        )),
    }
    if node.substituters.is_empty() {
        checks.push(fail(
            "substituter",
            "substituters is empty: the node can fetch nothing",
            "list the binary caches the environments' packages come from in `substituters`",
        ));
    }
    for (sub, result) in node.substituters.iter().zip(cache_info::check_each_blocking(node, timeout)) {
        checks.push(match result {
            Ok(info) => ok("substituter", format!("{sub}: a binary cache for /nix/store, priority {}", info.priority)),
            Err(e) => fail(
                "substituter",
                plain(&e),
                "check the node's network/proxy, or fix `substituters` in the node config",
            ),
        });
    }
    checks
}

/// The node's error text without the `flox: ` that marks errors shown to pods.
fn plain(e: &FetchError) -> String {
    let text = e.to_string();
    text.strip_prefix("flox: ").map(str::to_string).unwrap_or(text)
}

fn key_name(entry: &str) -> &str {
    entry.split_once(':').map_or(entry, |(name, _)| name)
}

/// host and port of an http(s) URL.
pub fn url_host_port(url: &str) -> Result<(String, u16), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not a URL (expected http://HOST[:PORT] or https://...)"))?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        other => return Err(format!("scheme {other:?} in {url:?}: accepted are http and https")),
    };
    let authority = rest.split('/').next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| format!("bad IPv6 host in {url:?}"))?;
        let port =
            after.strip_prefix(':').map(|p| p.parse().map_err(|_| format!("bad port in {url:?}"))).transpose()?;
        return Ok((host.to_owned(), port.unwrap_or(default_port)));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Ok((host.to_owned(), port.parse().map_err(|_| format!("bad port {port:?} in {url:?}"))?)),
        None => Ok((authority.to_owned(), default_port)),
    }
}

/// A TCP connection to the URL's host and port succeeds (TLS and HTTP are not checked).
pub fn reachable(url: &str, timeout: Duration) -> Result<(), String> {
    let (host, port) = url_host_port(url)?;
    let addrs: Vec<_> =
        (host.as_str(), port).to_socket_addrs().map_err(|e| format!("resolving {host}: {e}"))?.collect();
    let mut last = format!("{host} has no addresses");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("connecting to {addr}: {e}"),
        }
    }
    Err(last)
}
