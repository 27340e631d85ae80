//! Which replica fills a missing file: with several hub replicas on one S3 cache, each narinfo
//! and NAR has one owner among them (rendezvous hashing of the file's path over the replicas'
//! URLs), and a replica that misses a file it does not own asks the owner to fill it
//! (`HEAD /cache/<file>` with [`FILL_HERE`]) instead of asking the upstreams itself. The owner's
//! in-process single flight then makes every concurrent miss of that file, on any replica, one
//! upstream fetch. That is the fill lock: no lock object in the bucket (S3-compatible stores
//! differ in conditional writes), no coordination beyond the peer list.
//!
//! Peers: `fill_peers` in hub.json or `serve --fill-peers` (comma-separated): `http(s)://HOST:PORT`
//! URLs, or `dns:NAME:PORT` (a headless Service: every address NAME resolves to, as
//! `http://ADDR:PORT`, looked up again every [`DNS_REFRESH`]). `serve --fill-self URL` names this
//! replica among them. A replica whose owner cannot be reached fills the file itself: uploads
//! are idempotent (the same key gets the same bytes), so at worst the upstream serves it twice.
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::error::HubServerError;

/// The request header that makes a replica fill a file itself (never forward it again).
pub const FILL_HERE: &str = "x-imageless-fill-here";
/// How often `dns:` peers are resolved again.
pub const DNS_REFRESH: Duration = Duration::from_secs(10);

/// One entry of the peer list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PeerSpec {
    Url(String),
    Dns { name: String, port: u16 },
}

/// The replicas that share the cache, and this one's URL among them.
#[derive(Debug)]
pub struct FillPeers {
    specs: Vec<PeerSpec>,
    this: String,
    resolved: Mutex<(Vec<String>, Option<Instant>)>,
}

impl FillPeers {
    /// None when there are no peers (a single replica fills everything itself).
    pub fn new(peers: &[String], this: Option<&str>) -> Result<Option<FillPeers>, HubServerError> {
        if peers.is_empty() {
            return Ok(None);
        }
        let specs = peers.iter().map(|p| parse_peer(p)).collect::<Result<Vec<_>, _>>()?;
        let this = this.ok_or(HubServerError::InvalidInput {
            what: "fill peers",
            value: peers.join(","),
            accepted: "--fill-self URL with them: this replica's URL as the other replicas reach it",
        })?;
        let this = crate::upstream_http::parse_url(this, "fill self URL", "http(s)://HOST:PORT, no path or query")?;
        let dns = specs.iter().any(|s| matches!(s, PeerSpec::Dns { .. }));
        let urls: Vec<String> = specs
            .iter()
            .filter_map(|s| match s {
                PeerSpec::Url(u) => Some(u.clone()),
                PeerSpec::Dns { .. } => None,
            })
            .collect();
        if !dns && !urls.contains(&this) {
            return Err(HubServerError::InvalidInput {
                what: "fill self URL",
                value: this,
                accepted: "one of the fill peers' URLs",
            });
        }
        Ok(Some(FillPeers { specs, this, resolved: Mutex::new((urls, None)) }))
    }

    /// This replica's URL.
    pub fn this(&self) -> &str {
        &self.this
    }

    /// The owner of `rel`: this replica's URL when it is this one.
    pub async fn owner(&self, rel: &str) -> String {
        let peers = self.peers().await;
        owner_of(&peers, &self.this, rel)
    }

    /// The peers' URLs now (`dns:` entries resolved, at most every [`DNS_REFRESH`]).
    async fn peers(&self) -> Vec<String> {
        let due = {
            let r = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
            let has_dns = self.specs.iter().any(|s| matches!(s, PeerSpec::Dns { .. }));
            has_dns && r.1.is_none_or(|at| at.elapsed() >= DNS_REFRESH)
        };
        if due {
            let mut urls = Vec::new();
            for spec in &self.specs {
                match spec {
                    PeerSpec::Url(u) => urls.push(u.clone()),
                    PeerSpec::Dns { name, port } => match tokio::net::lookup_host((name.as_str(), *port)).await {
                        Ok(addrs) => urls.extend(addrs.map(|a| format!("http://{a}"))),
                        Err(e) => tracing::warn!(target: "imageless_hub::pull", "fill peers {name}: {e}"),
                    },
                }
            }
            urls.sort();
            urls.dedup();
            *self.resolved.lock().unwrap_or_else(|e| e.into_inner()) = (urls, Some(Instant::now()));
        }
        self.resolved.lock().unwrap_or_else(|e| e.into_inner()).0.clone()
    }
}

/// Rendezvous hashing: the peer with the highest SHA-256 of `peer \n rel` owns `rel`. This
/// replica is always a candidate (so a peer list that lost it still names an owner).
pub fn owner_of(peers: &[String], this: &str, rel: &str) -> String {
    let score = |peer: &str| -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(peer.as_bytes());
        h.update(b"\n");
        h.update(rel.as_bytes());
        h.finalize().into()
    };
    peers.iter().map(String::as_str).chain(std::iter::once(this)).max_by_key(|p| score(p)).unwrap_or(this).to_owned()
}

fn parse_peer(value: &str) -> Result<PeerSpec, HubServerError> {
    const ACCEPTED: &str = "http(s)://HOST:PORT or dns:NAME:PORT (every address of NAME)";
    if let Some(rest) = value.strip_prefix("dns:") {
        let bad = || HubServerError::InvalidInput { what: "fill peer", value: value.to_owned(), accepted: ACCEPTED };
        let (name, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if name.is_empty() {
            return Err(bad());
        }
        return Ok(PeerSpec::Dns { name: name.to_owned(), port });
    }
    crate::upstream_http::parse_url(value, "fill peer", ACCEPTED).map(PeerSpec::Url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_replica_names_the_same_owner_and_files_spread() {
        let peers: Vec<String> = (1..=3).map(|i| format!("http://10.0.0.{i}:8080")).collect();
        let mut counts = std::collections::HashMap::new();
        for i in 0..300 {
            let rel = format!("nar/{i:052}.nar.zst");
            let owners: Vec<String> = peers.iter().map(|this| owner_of(&peers, this, &rel)).collect();
            assert!(owners.iter().all(|o| *o == owners[0]), "{rel}: {owners:?}");
            *counts.entry(owners[0].clone()).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|c| *c > 60), "{counts:?}");
    }

    #[test]
    fn peer_lists_are_checked() {
        let peers = vec!["http://10.0.0.1:8080".to_string(), "http://10.0.0.2:8080".to_string()];
        assert!(FillPeers::new(&[], None).unwrap().is_none());
        let e = FillPeers::new(&peers, None).unwrap_err().to_string();
        assert!(e.contains("--fill-self"), "{e}");
        let e = FillPeers::new(&peers, Some("http://10.0.0.9:8080")).unwrap_err().to_string();
        assert!(e.contains("one of the fill peers"), "{e}");
        assert_eq!(
            FillPeers::new(&peers, Some("http://10.0.0.2:8080/")).unwrap().unwrap().this(),
            "http://10.0.0.2:8080"
        );
        let dns = vec!["dns:hub-peers.ns.svc:8080".to_string()];
        assert!(FillPeers::new(&dns, Some("http://10.1.2.3:8080")).unwrap().is_some());
        for bad in ["dns:hub", "dns::80", "ftp://x", "dns:x:port"] {
            let e = FillPeers::new(&[bad.to_string()], Some("http://a:1")).unwrap_err().to_string();
            assert!(e.contains("fill peer") && e.contains(bad), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn dns_peers_resolve() {
        let peers = FillPeers::new(&["dns:localhost:8080".to_string()], Some("http://10.9.9.9:8080")).unwrap().unwrap();
        let resolved = peers.peers().await;
        assert!(resolved.iter().any(|p| p.starts_with("http://127.0.0.1:8080") || p.contains("[::1]")), "{resolved:?}");
    }
}
