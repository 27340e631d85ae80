//! P14 serving a binary cache from object storage: 16 concurrent clients each fetching every
//! narinfo and NAR of `flox/large`'s closure (GET, one keep-alive connection per client: `curl
//! -K` with the whole list, as P7) from one `imageless hub serve --cache-store s3://…` replica
//! whose cache is a bucket on Garage (single node on loopback, holding the world's cache) vs
//! nginx serving the same files from disk, in alternating turns (target ratio ≤ 2.0). As
//! context: three replicas on the same bucket, client i on replica i mod 3, vs the one replica.
//! On a 2-core machine the replicas, Garage and the 16 curls share the same two cores, so three
//! replicas cannot be faster than one here: the figure shows their cost, not scale-out.
//! Round 0 starts with the one replica (its disk tier empty: every byte from the bucket; a
//! context row); from then on the tier (crates/hub/src/s3_tier.rs) holds what it served.
use std::path::Path;
use std::process::Command;

use anyhow::bail;
use imageless_e2e::flox_node::Hub;
use imageless_e2e::garage::{Garage, REGION};
use imageless_e2e::static_server::Nginx;

use crate::cache_files::{self};
use crate::context::Bench;
use crate::report::{figure, Results};
use crate::stats::{ms, summarize, Target};

const CLIENTS: usize = 16;
const ROUNDS: usize = 3;
const BUCKET: &str = "p14-cache";

/// One replica on `store`: a fresh `hub init` root, the bucket as its cache.
fn replica(bench: &Bench, n: usize, store: &str, credentials: &Path) -> anyhow::Result<Hub> {
    let root = bench.dir.join(format!("p14-replica-{n}"));
    let out = Command::new(bench.bins.imageless()).args(["hub", "init", "--root"]).arg(&root).output()?;
    if !out.status.success() {
        bail!("imageless hub init: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let store_arg = format!("--cache-store={store}");
    let creds_arg = format!("--cache-store-credentials={}", credentials.display());
    Hub::serve_root(
        &bench.bins.imageless(),
        &root,
        &bench.dir.join(format!("p14-replica-{n}.log")),
        &[&store_arg, &creds_arg],
    )
}

pub fn run(bench: &Bench, env: &str, closure: &[String], results: &mut Results) -> anyhow::Result<()> {
    let hub = &bench.node.hub;
    let files = cache_files::of_closure(&hub.root, closure)?;
    let total: u64 = files.iter().map(|f| f.size).sum();
    bench.say("P14: starting Garage and uploading the world's cache to a bucket");
    let garage = Garage::start()?;
    garage.create_bucket(BUCKET)?;
    garage.upload_dir(BUCKET, &hub.root.join("cache"))?;
    let credentials = bench.dir.join("p14-aws-credentials");
    garage.write_credentials_file(&credentials)?;
    let store = format!(
        "s3://{BUCKET}?endpoint={}&region={REGION}&scheme=http",
        garage.s3_endpoint.trim_start_matches("http://")
    );
    let replicas: Vec<Hub> = (0..3).map(|n| replica(bench, n, &store, &credentials)).collect::<Result<_, _>>()?;
    let one = vec![replicas[0].url.clone()];
    let three: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
    let nginx = Nginx::start(&bench.dir, &hub.root.join("cache"))?;
    let disk = vec![nginx.url.clone()];
    bench.say(&format!(
        "P14: {CLIENTS} clients × {} files ({:.0} MB) of {env}: one S3-backed replica vs nginx from disk, and three replicas, {ROUNDS} rounds",
        files.len(),
        total as f64 / 1e6
    ));
    let (mut s3_one, mut s3_three, mut from_disk) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Who goes first rotates with the round.
        for turn in 0..3 {
            match (turn + round) % 3 {
                0 => s3_one.push(ms(cache_files::fetch_with_clients(&bench.dir, CLIENTS, &one, &files)?)),
                1 => from_disk.push(ms(cache_files::fetch_with_clients(&bench.dir, CLIENTS, &disk, &files)?)),
                _ => s3_three.push(ms(cache_files::fetch_with_clients(&bench.dir, CLIENTS, &three, &files)?)),
            }
        }
    }
    drop(nginx);
    drop(replicas);
    results.samples("P14.s3_one_replica", &s3_one);
    results.samples("P14.s3_three_replicas", &s3_three);
    results.samples("P14.nginx_disk", &from_disk);
    let med = |s: &[f64]| summarize(s).expect("samples").median / 1000.0;
    let what =
        format!("{env}'s closure ({} files, {:.0} MB) to {CLIENTS} clients at once", files.len(), total as f64 / 1e6);
    results.add(figure(
        "P14",
        &format!(
            "P14 serving {what} from one hub replica on an S3 bucket (Garage), median of {ROUNDS} (after its first round the replica's disk tier holds the files)"
        ),
        "s",
        med(&s3_one),
        Some(med(&from_disk)),
        "nginx, same files from disk",
        Target::RatioAtMost(2.0),
    ));
    // The replica's first round: its disk tier empty, every byte from the bucket.
    results.add(figure(
        "P14.context.first_round",
        "P14 context: the one replica's first round, its disk tier empty (every byte from the bucket)",
        "s",
        s3_one[0] / 1000.0,
        Some(med(&from_disk)),
        "nginx, same files from disk",
        Target::None,
    ));
    results.add(figure(
        "P14.three_replicas",
        &format!(
            "P14 the same from three replicas on the bucket (client i on replica i mod 3; one machine's 2 cores shared by replicas, Garage and clients: no scale-out to show), median of {ROUNDS}"
        ),
        "s",
        med(&s3_three),
        Some(med(&s3_one)),
        "one replica",
        Target::None,
    ));
    Ok(())
}
