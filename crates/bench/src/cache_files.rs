//! The binary-cache files of a closure in a hub root: each store path's `<hash>.narinfo` and
//! the NAR file its `URL:` names, with their sizes; and bytes served per the access log.
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A file of the cache: its path relative to `<root>/cache` and its size.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheFile {
    pub rel: String,
    pub size: u64,
}

/// The `URL:` field of a narinfo text.
fn nar_url(narinfo: &str) -> Option<&str> {
    narinfo.lines().find_map(|l| l.strip_prefix("URL:")).map(str::trim)
}

/// Narinfos then NARs of `closure` (store paths) in `<hub_root>/cache`.
pub fn of_closure(hub_root: &Path, closure: &[String]) -> anyhow::Result<Vec<CacheFile>> {
    let cache = hub_root.join("cache");
    let (mut narinfos, mut nars) = (Vec::new(), Vec::new());
    for path in closure {
        let base = path.rsplit('/').next().unwrap_or(path);
        let hash = base.get(..32).with_context(|| format!("{path} is not a store path"))?;
        let rel = format!("{hash}.narinfo");
        let text = std::fs::read_to_string(cache.join(&rel)).with_context(|| format!("reading cache/{rel}"))?;
        let Some(url) = nar_url(&text) else { bail!("cache/{rel} has no URL") };
        let size = |rel: &str| std::fs::metadata(cache.join(rel)).map(|m| m.len());
        narinfos.push(CacheFile { size: text.len() as u64, rel });
        nars.push(CacheFile { size: size(url).with_context(|| format!("cache/{url}"))?, rel: url.to_string() });
    }
    narinfos.extend(nars);
    Ok(narinfos)
}

/// (files, bytes) that a hub access log text says it served with 200 from its cache, sizes
/// taken from `files` (relative paths; files not listed count as 0 bytes).
pub fn served(log: &str, files: &[CacheFile]) -> (usize, u64) {
    let sizes: HashMap<&str, u64> = files.iter().map(|f| (f.rel.as_str(), f.size)).collect();
    let mut n = 0;
    let mut bytes = 0;
    for line in log.lines() {
        let Some(rest) = line.split("GET /cache/").nth(1) else { continue };
        let mut words = rest.split_whitespace();
        let (Some(rel), Some("200")) = (words.next(), words.next()) else { continue };
        n += 1;
        bytes += sizes.get(rel).copied().unwrap_or(0);
    }
    (n, bytes)
}

/// `clients` curl processes at once, client i GETting every file of `files` from
/// `bases[i % len]` on one connection; the wall time until the last finished. Fails unless each
/// got every byte.
pub fn fetch_with_clients(
    dir: &Path,
    clients: usize,
    bases: &[String],
    files: &[CacheFile],
) -> anyhow::Result<Duration> {
    let mut lists = Vec::new();
    for (i, base) in bases.iter().enumerate() {
        let list = dir.join(format!("curl-{i}-{}.cfg", base.replace([':', '/', '.'], "_")));
        let mut cfg = String::from("fail\nsilent\nshow-error\nwrite-out = \"%{size_download}\\n\"\n");
        for f in files {
            cfg.push_str(&format!("url = \"{base}/cache/{}\"\noutput = \"/dev/null\"\n", f.rel));
        }
        std::fs::write(&list, cfg)?;
        lists.push(list);
    }
    let want: u64 = files.iter().map(|f| f.size).sum();
    let t0 = Instant::now();
    let children: Vec<_> = (0..clients)
        .map(|i| {
            Command::new("curl")
                .arg("-K")
                .arg(&lists[i % lists.len()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()
        .context("running curl")?;
    let mut outputs = Vec::new();
    for c in children {
        outputs.push(c.wait_with_output()?);
    }
    let took = t0.elapsed();
    for out in outputs {
        let got: u64 = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse::<u64>().ok()).sum();
        if !out.status.success() || got != want {
            bail!(
                "a client got {got} of {want} bytes ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narinfo_url_and_served_bytes() {
        assert_eq!(
            nar_url("StorePath: /nix/store/x\nURL: nar/abc.nar.zst\nCompression: zstd\n"),
            Some("nar/abc.nar.zst")
        );
        let files = vec![
            CacheFile { rel: "aaa.narinfo".into(), size: 10 },
            CacheFile { rel: "nar/abc.nar.zst".into(), size: 1000 },
        ];
        let log = "2026 INFO imageless_hub::access: GET /cache/aaa.narinfo 200 - 1ms\n\
                   2026 INFO imageless_hub::access: GET /cache/nar/abc.nar.zst 200 - 3ms\n\
                   2026 INFO imageless_hub::access: GET /cache/bbb.narinfo 404 - 0ms\n\
                   2026 INFO imageless_hub::access: HEAD /cache/aaa.narinfo 200 - 0ms\n";
        assert_eq!(served(log, &files), (2, 1010));
    }
}
