//! P7 serving a binary cache: 16 concurrent clients each fetching every narinfo and NAR of
//! `flox/large`'s closure (GET, one keep-alive connection per client: `curl -K` with the
//! whole list) from the hub vs from nginx (Debian's package) serving the same cache directory
//! as static files. Rounds alternate who goes first; every client's byte count is checked.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use imageless_e2e::static_server::Nginx;

use crate::cache_files::{self, CacheFile};
use crate::context::Bench;
use crate::report::{figure, Results};
use crate::stats::{ms, summarize, Target};

const CLIENTS: usize = 16;
const ROUNDS: usize = 3;

/// `CLIENTS` curl processes at once, each GETting every file of `files` from `base` on one
/// connection; the wall time until the last finished. Fails unless each got every byte.
fn fetch_all(dir: &Path, base: &str, files: &[CacheFile]) -> anyhow::Result<Duration> {
    let list = dir.join(format!("curl-{}.cfg", base.replace([':', '/', '.'], "_")));
    let mut cfg = String::from("fail\nsilent\nshow-error\nwrite-out = \"%{size_download}\\n\"\n");
    for f in files {
        cfg.push_str(&format!("url = \"{base}/cache/{}\"\noutput = \"/dev/null\"\n", f.rel));
    }
    std::fs::write(&list, cfg)?;
    let want: u64 = files.iter().map(|f| f.size).sum();
    let t0 = Instant::now();
    let children: Vec<_> = (0..CLIENTS)
        .map(|_| Command::new("curl").arg("-K").arg(&list).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn())
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
                "a client of {base} got {got} of {want} bytes ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(took)
}

pub fn run(bench: &Bench, env: &str, closure: &[String], results: &mut Results) -> anyhow::Result<()> {
    let hub = &bench.node.hub;
    let files = cache_files::of_closure(&hub.root, closure)?;
    let total: u64 = files.iter().map(|f| f.size).sum();
    bench.say(&format!(
        "P7: {CLIENTS} clients × {} files ({:.0} MB) of {env}, hub vs nginx, {ROUNDS} rounds",
        files.len(),
        total as f64 / 1e6
    ));
    let nginx = Nginx::start(&bench.dir, &hub.root.join("cache"))?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        for hub_turn in if round % 2 == 0 { [true, false] } else { [false, true] } {
            if hub_turn {
                ours.push(ms(fetch_all(&bench.dir, &hub.url, &files)?));
            } else {
                theirs.push(ms(fetch_all(&bench.dir, &nginx.url, &files)?));
            }
        }
    }
    drop(nginx);
    results.samples("P7.hub", &ours);
    results.samples("P7.nginx", &theirs);
    let (o, t) = (summarize(&ours).expect("samples").median, summarize(&theirs).expect("samples").median);
    results.add(figure(
        "P7.cache_serving",
        &format!(
            "P7 serving {env}'s closure ({} files, {:.0} MB) to {CLIENTS} clients at once, median of {ROUNDS}",
            files.len(),
            total as f64 / 1e6
        ),
        "s",
        o / 1000.0,
        Some(t / 1000.0),
        "nginx, same files as static files",
        Target::RatioAtMost(1.5),
    ));
    Ok(())
}
