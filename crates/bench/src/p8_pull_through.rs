//! P8 a pull-through hub: 20 node stores pulling one cold closure at once through a fresh
//! `imageless hub serve --upstream <the world hub>` vs the same 20 straight from the world
//! hub: wall time, and the bytes the world hub (the upstream) served, from its access log.
//! The pulls are the node's own binary-cache client (`imageless_node::fetch`), each into its
//! own empty store, as 20 nodes would.
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use imageless_core::store_path::StorePath;
use imageless_e2e::flox_node::Hub;
use imageless_node::config::NodeConfig;
use imageless_node::fetch::Fetcher;

use crate::cache_files::{self, CacheFile};
use crate::context::Bench;
use crate::report::{figure, Results};
use crate::stats::{ms, summarize, Target};

const NODES: usize = 20;
const ROUNDS: usize = 2;

/// What one side of a round measured.
struct Side {
    wall: Duration,
    upstream_bytes: u64,
}

/// `NODES` fetches of `closure` at once from `substituter`, each into a fresh store under `dir`.
fn pull_all(bench: &Bench, dir: &Path, substituter: &str, closure: &[String]) -> anyhow::Result<Duration> {
    let wanted: Vec<StorePath> = closure
        .iter()
        .map(|p| StorePath::parse(p).map_err(|e| anyhow::anyhow!("{p}: {e}")))
        .collect::<Result<_, _>>()?;
    let mut fetchers = Vec::new();
    for i in 0..NODES {
        let state = dir.join(format!("node-{i}"));
        let text = bench.node_config(&state, &format!("store_dir = {:?}", state.join("store")))?;
        let mut config = NodeConfig::parse(&text).map_err(|e| anyhow::anyhow!("node config: {e}"))?;
        config.substituters = vec![substituter.to_string()];
        fetchers.push(Fetcher::from_config(&config).map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    let t0 = Instant::now();
    let outcomes: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = fetchers.iter().map(|f| s.spawn(|| f.realize(&wanted))).collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let took = t0.elapsed();
    for (i, o) in outcomes.into_iter().enumerate() {
        let report = o.map_err(|_| anyhow::anyhow!("pull {i} panicked"))?.with_context(|| format!("pull {i}"))?;
        if report.closure.len() != closure.len() || report.downloaded() != closure.len() {
            bail!("pull {i}: {} of {} paths, {} downloaded", report.closure.len(), closure.len(), report.downloaded());
        }
    }
    let _ = Command::new("rm").arg("-rf").arg(dir).status();
    Ok(took)
}

/// Bytes of `files` the upstream hub logged as served since `mark`.
fn upstream_bytes(bench: &Bench, mark: usize, files: &[CacheFile]) -> u64 {
    let log = std::fs::read(&bench.node.hub.log).unwrap_or_default();
    cache_files::served(&String::from_utf8_lossy(&log[mark.min(log.len())..]), files).1
}

fn through_front(bench: &Bench, round: usize, closure: &[String], files: &[CacheFile]) -> anyhow::Result<Side> {
    let root = bench.dir.join(format!("p8-front-{round}"));
    let out = Command::new(bench.bins.imageless()).args(["hub", "init", "--root"]).arg(&root).output()?;
    if !out.status.success() {
        bail!("imageless hub init: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let upstream = format!("{}/cache", bench.node.hub.url);
    let front = Hub::serve_root(
        &bench.bins.imageless(),
        &root,
        &bench.dir.join(format!("p8-front-{round}.log")),
        &["--upstream", &upstream],
    )?;
    let mark = bench.node.hub.log_mark();
    let wall = pull_all(bench, &bench.dir.join("p8-nodes"), &format!("{}/cache", front.url), closure)?;
    drop(front);
    let _ = std::fs::remove_dir_all(&root);
    Ok(Side { wall, upstream_bytes: upstream_bytes(bench, mark, files) })
}

fn straight(bench: &Bench, closure: &[String], files: &[CacheFile]) -> anyhow::Result<Side> {
    let mark = bench.node.hub.log_mark();
    let wall = pull_all(bench, &bench.dir.join("p8-nodes"), &format!("{}/cache", bench.node.hub.url), closure)?;
    Ok(Side { wall, upstream_bytes: upstream_bytes(bench, mark, files) })
}

pub fn run(bench: &Bench, env: &str, closure: &[String], results: &mut Results) -> anyhow::Result<()> {
    let files = cache_files::of_closure(&bench.node.hub.root, closure)?;
    let once: u64 = files.iter().map(|f| f.size).sum();
    bench.say(&format!(
        "P8: {NODES} cold pulls of {env} at once, through a pull-through hub vs straight, {ROUNDS} rounds"
    ));
    let (mut front, mut direct) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        for front_turn in if round % 2 == 0 { [true, false] } else { [false, true] } {
            if front_turn {
                front.push(through_front(bench, round, closure, &files)?);
            } else {
                direct.push(straight(bench, closure, &files)?);
            }
        }
    }
    let walls = |v: &[Side]| v.iter().map(|s| ms(s.wall)).collect::<Vec<_>>();
    let bytes = |v: &[Side]| v.iter().map(|s| s.upstream_bytes as f64).collect::<Vec<_>>();
    results.samples("P8.through_front_wall", &walls(&front));
    results.samples("P8.straight_wall", &walls(&direct));
    results.samples("P8.through_front_upstream_bytes", &bytes(&front));
    results.samples("P8.straight_upstream_bytes", &bytes(&direct));
    let med = |v: Vec<f64>| summarize(&v).expect("samples").median;
    results.add(figure(
        "P8.pull_through.wall",
        &format!("P8 {NODES} cold pulls of {env} at once through a pull-through hub, median of {ROUNDS}"),
        "s",
        med(walls(&front)) / 1000.0,
        Some(med(walls(&direct)) / 1000.0),
        &format!("{NODES} pulls straight from the upstream"),
        Target::None,
    ));
    results.add(figure(
        "P8.pull_through.upstream_mb",
        &format!(
            "P8 bytes the upstream served for them (its access log; the closure's files: {:.2} MB)",
            once as f64 / 1e6
        ),
        "MB",
        med(bytes(&front)) / 1e6,
        Some(med(bytes(&direct)) / 1e6),
        &format!("{NODES} pulls straight from the upstream"),
        Target::AtMost(once as f64 / 1e6 * 1.0001),
    ));
    Ok(())
}
