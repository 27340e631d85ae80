//! P11 cold start against the image a user would build instead (issue 28): on an empty node,
//! the time from the pod's first CRI call to its container's first output,
//! - flox: a `flox/large` pod on the flox handler (the node realizes the closure from the hub
//!   on loopback, renders, builds the view, starts);
//! - image: the image holding exactly the same closure under /nix/store with the same command,
//!   pushed with skopeo to Debian's docker-registry on loopback and pulled by the node's own
//!   containerd through CRI PullImage (plain HTTP through hosts.toml), then a runc pod of it.
//!   Built the two ways users build them: one layer per store path (nix2container,
//!   nix-snapshotter) and one layer for the whole closure (a Dockerfile COPY), gzip (what
//!   registries serve by default; the targets) and zstd (context rows).
//!
//! Our runner pulls the image before RunPodSandbox where the kubelet pulls after it; the sum is
//! the same (the kubelet does not overlap them). Each turn starts cold: the flox side with
//! [`Bench::make_cold`], the image side with the image and its content removed
//! (`ctr images rm --sync` runs containerd's GC, which removes the unpacked snapshots too).
//!
//! Anchors next to ours: the registry pull alone (CRI PullImage: fetch + unpack), and the
//! physical limit on this machine: copying the uncompressed closure's files from page cache
//! into fresh files with `cp -a` (read + write every byte, create every file, link and
//! directory), taking turns with the cold starts (see [`crate::p11_physical_limit`]). Every
//! timed turn starts after a quiet moment and `sync` ([`settle`]).
//! The node's peak RSS is sampled in cold flox starts of their own after the timed rotation:
//! the sampler takes CPU (60–100 ms during a cold `flox/xlarge` start on 2 cores) that no
//! image turn or copy carries, so it stays out of the timed ones.
//! Bytes transferred: the registry's own count of what it served; for flox, the cache files
//! the hub's access log shows the node fetched, sized as the hub stores them.
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use imageless_e2e::flox_node::{env_pod, runc_pod};
use imageless_e2e::oci_image::{self, BuiltImage, ImageSpec, LayerCompression, Layering};
use imageless_e2e::registry::Registry;
use imageless_e2e::{PodRunner, RunOptions, FLOX_EMPTY_IMAGE};

use crate::context::{Bench, VERSION};
use crate::p11_node_rss::RssSampler;
use crate::p11_physical_limit::{PhysicalLimit, COPIES_PER_TURN};
use crate::report::{figure, Results};
use crate::stats::{ms, summarize, Target};
use crate::timing::start_timed;

/// Timed turns of each side (cold starts of 235 MB and more: seconds each), after one untimed.
/// Five: the medians of three moved by up to 250 ms between runs of the same code.
const REPS: usize = 5;

/// Cold flox starts that sample the node's RSS, after the timed rotation.
const RSS_STARTS: usize = 3;

/// One image variant and its figure's target.
pub(crate) struct Variant {
    pub layering: Layering,
    pub compression: LayerCompression,
    pub target: Target,
}

/// The images of flox/large (315 paths: one layer per path stacks).
pub(crate) const VARIANTS: [Variant; 4] = [
    Variant { layering: Layering::PerPath, compression: LayerCompression::Gzip, target: Target::RatioAtMost(0.5) },
    Variant { layering: Layering::Single, compression: LayerCompression::Gzip, target: Target::RatioAtMost(0.5) },
    Variant { layering: Layering::PerPath, compression: LayerCompression::Zstd, target: Target::None },
    Variant { layering: Layering::Single, compression: LayerCompression::Zstd, target: Target::None },
];

/// The multi-GB case (world/xlarge.nix): its environment and what its command prints.
pub(crate) const XLARGE_ENV: &str = "flox/xlarge";
pub(crate) const XLARGE_PRINTS: &str = "xlarge-app: 1000 libraries";

/// The images of flox/xlarge: 1,000+ paths are more than overlayfs stacks (500 lower layers),
/// so the per-path image is cut as nixpkgs' dockerTools cuts it (100 layers, see
/// [`Layering::Capped`]); gzip only (the targets), each image being 1.5 GB to build and push.
pub(crate) const XLARGE_VARIANTS: [Variant; 2] = [
    Variant { layering: Layering::Capped(100), compression: LayerCompression::Gzip, target: Target::RatioAtMost(0.5) },
    Variant { layering: Layering::Single, compression: LayerCompression::Gzip, target: Target::RatioAtMost(0.5) },
];

impl Variant {
    pub fn key(&self) -> String {
        format!("{}_{}", self.layering.as_str(), self.compression.as_str())
    }
}

/// The environment a P11 row is about: its name, the line its command prints.
pub struct Case<'a> {
    pub env: &'a str,
    pub command: &'a str,
    pub prints: &'a str,
    /// The images to compare against.
    pub variants: &'a [Variant],
}

/// Samples of one side: first output and (image side) the pull alone, ms; bytes transferred.
#[derive(Default)]
struct Side {
    first_output: Vec<f64>,
    pull: Vec<f64>,
    bytes: Vec<f64>,
    /// Flox side: the node's peak RSS during the start (see p11_node_rss), bytes.
    peak_rss: Vec<f64>,
    /// Flox side: the largest single process's peak RSS, bytes.
    peak_rss_one: Vec<f64>,
    /// Flox side, from the node's pull records (ms from the first CRI call): the closure
    /// planned (sandbox, prefetch started, resolve, narinfo walk), the fetch done.
    planned: Vec<f64>,
    fetched: Vec<f64>,
    /// Flox side: StartContainer returned (ms from the first CRI call).
    running: Vec<f64>,
    /// Flox side: the RSS sampler's own CPU time during the start, ms.
    sampler_cpu: Vec<f64>,
    /// Flox side: first output of the starts with the RSS sampler on (not timed against
    /// anything), ms.
    sampled_first_output: Vec<f64>,
}

pub async fn run(bench: &Bench, case: &Case<'_>, results: &mut Results) -> anyhow::Result<()> {
    let env = case.env;
    let key = env.replace('/', "_");
    let world = bench.node.hub.world()?;
    let entry = &world["environments"][env];
    let generation = &entry["generations"][entry["live_generation"].to_string()];
    let closure = oci_image::closure_of_generation(generation);
    if closure.is_empty() {
        bail!("world.json has no closure for {env}");
    }
    let registry = Registry::start()?;
    imageless_e2e::config::write_plain_http_host(&bench.registry_hosts_dir(), &registry.addr)?;

    bench.say(&format!("P11: {env} ({} paths): realizing its closure for the images", closure.len()));
    let scratch = bench.dir.join(format!("p11-{key}"));
    let store = oci_image::realize_store(
        &bench.bins.imageless(),
        &bench.node_config(&scratch.join("state"), "")?,
        &scratch,
        env,
    )?;
    // The physical limit copies the closure from this store, in turns with the cold starts.
    let mut physical = PhysicalLimit::new(&store, &closure, &scratch)?;

    let images = build_and_push(bench, &registry, &store, generation, case.command, &scratch, &key, case.variants)?;

    let runner = bench.runner().await?;
    let opts = bench.run_options();
    let mut flox = Side::default();
    let mut by_image: Vec<Side> = case.variants.iter().map(|_| Side::default()).collect();
    bench.say(&format!(
        "P11: {REPS} cold starts each: flox vs {} images, and {COPIES_PER_TURN} copies of the closure a turn, in \
         rotating order",
        case.variants.len()
    ));
    // Sides: flox, each image, the copy.
    let sides = case.variants.len() + 2;
    // One untimed turn of every side first. The first turn of anything here pays costs no
    // later turn does (the bench disk's file gets its first blocks, containerd makes its first
    // sandbox, binaries and the hub's files come into page cache), and whichever side went
    // first carried them: flox/xlarge's first timed start took 3.1–3.5 s against 2.1–2.5 s
    // for the rest, the first copies 1.34 s against 1.07–1.15 s.
    bench.say("P11: one untimed turn of each side first");
    {
        let mut discard = Side::default();
        flox_turn(bench, &runner, &opts, case, &closure, &mut discard, Rss::NotSampled).await?;
        for (image, reference) in &images {
            image_turn(bench, &registry, &runner, &opts, case, image, reference, &mut discard).await?;
        }
        physical.turn().await?;
        physical.samples.clear();
    }
    for rep in 0..REPS {
        for k in 0..sides {
            match (k + rep) % sides {
                0 => flox_turn(bench, &runner, &opts, case, &closure, &mut flox, Rss::NotSampled).await?,
                idx if idx <= case.variants.len() => {
                    let (image, reference) = &images[idx - 1];
                    image_turn(bench, &registry, &runner, &opts, case, image, reference, &mut by_image[idx - 1]).await?
                }
                _ => physical.turn().await?,
            }
        }
    }
    physical.finish();
    bench.say(&format!("P11: {RSS_STARTS} more cold flox starts with the node's RSS sampled"));
    for _ in 0..RSS_STARTS {
        flox_turn(bench, &runner, &opts, case, &closure, &mut flox, Rss::Sampled).await?;
    }
    remove_tree(&scratch);
    bench.say(&format!("P11: physical limit (copy of the closure from page cache): {:.0} ms", physical.median()));

    results.samples(&format!("P11.{key}.flox.first_output"), &flox.first_output);
    results.samples(&format!("P11.{key}.physical_limit"), &physical.samples);
    let f = summarize(&flox.first_output).expect("samples");
    let flox_mb = summarize(&flox.bytes).expect("samples").median / 1e6;
    for (v, side) in case.variants.iter().zip(&by_image) {
        let vk = v.key();
        results.samples(&format!("P11.{key}.image_{vk}.first_output"), &side.first_output);
        results.samples(&format!("P11.{key}.image_{vk}.pull"), &side.pull);
        let i = summarize(&side.first_output).expect("samples");
        let p = summarize(&side.pull).expect("samples");
        let what = format!("{} {} image", v.layering.as_str().replace('_', "-"), v.compression.as_str());
        results.add(figure(
            &format!("P11.{key}.vs_{vk}"),
            &format!(
                "P11 cold start {env} ({} paths) → first output, flox (hub on loopback) vs the {what} (registry on \
                 loopback), median of {REPS}",
                closure.len()
            ),
            "ms",
            f.median,
            Some(i.median),
            &format!("{what}: CRI pull + runc pod"),
            v.target,
        ));
        results.add(figure(
            &format!("P11.{key}.context.pull_{vk}"),
            &format!("P11 anchor: the registry pull alone (CRI PullImage of the {what}: fetch + unpack), median"),
            "ms",
            p.median,
            Some(i.median),
            "that image's whole cold start",
            Target::None,
        ));
        results.add(figure(
            &format!("P11.{key}.bytes_{vk}"),
            &format!("P11 bytes transferred for a cold start of {env}: flox (cache files fetched) vs the {what}"),
            "MB",
            flox_mb,
            Some(summarize(&side.bytes).expect("samples").median / 1e6),
            &format!("{what} (the registry's count)"),
            Target::None,
        ));
    }
    results.add(figure(
        &format!("P11.{key}.flox_pull_peak_rss"),
        &format!(
            "P11 the node's peak RSS during a cold {env} start (shim proxy + prefetch, summed, 5 ms samples), max of \
             {RSS_STARTS} starts of their own"
        ),
        "MB",
        flox.peak_rss.iter().cloned().fold(0.0, f64::max) / 1e6,
        None,
        "",
        Target::AtMost(64.0),
    ));
    results.add(figure(
        &format!("P11.{key}.context.flox_pull_peak_rss_one_process"),
        &format!(
            "P11 context: the largest single flox process's peak RSS during a cold {env} start, max of {RSS_STARTS}"
        ),
        "MB",
        flox.peak_rss_one.iter().cloned().fold(0.0, f64::max) / 1e6,
        None,
        "",
        Target::None,
    ));
    let median = |v: &[f64]| summarize(v).map_or(f64::NAN, |s| s.median);
    results.add(figure(
        &format!("P11.{key}.context.rss_sampler_cpu"),
        &format!(
            "P11 context: CPU time of the RSS sampler itself during a cold flox {env} start (only in the starts \
             that sample RSS), median of {RSS_STARTS}"
        ),
        "ms",
        median(&flox.sampler_cpu),
        None,
        "",
        Target::None,
    ));
    results.samples(&format!("P11.{key}.flox.first_output_rss_sampled"), &flox.sampled_first_output);
    results.add(figure(
        &format!("P11.{key}.context.flox_rss_sampled"),
        &format!(
            "P11 context: the cold flox {env} start → first output with the RSS sampler on (after the timed \
             rotation), median of {RSS_STARTS}"
        ),
        "ms",
        median(&flox.sampled_first_output),
        Some(f.median),
        "the timed cold starts (sampler off)",
        Target::None,
    ));
    // Where the flox cold start goes: context rows, medians of the turns.
    let (planned, fetched, running) = (median(&flox.planned), median(&flox.fetched), median(&flox.running));
    for (id, what, value) in [
        ("planned", "the closure planned (sandbox, prefetch started, resolve, narinfo walk)", planned),
        ("fetched", "fetch and unpack (the pull record's start to its end)", fetched - planned),
        (
            "after_fetch",
            "the fetch's end to StartContainer returned (render, the view finished, container create and start)",
            running - fetched,
        ),
        ("first_output", "StartContainer returned to the first output (activation, command)", f.median - running),
    ] {
        results.add(figure(
            &format!("P11.{key}.context.flox_{id}"),
            &format!("P11 context: the cold flox {env} start, {what}, median of {REPS}"),
            "ms",
            value,
            None,
            "",
            Target::None,
        ));
    }
    results.add(figure(
        &format!("P11.{key}.vs_physical_limit"),
        &format!(
            "P11 cold start {env} → first output (flox) vs the physical limit here: copying its uncompressed \
             closure ({:.0} MB) from page cache into fresh files",
            physical.bytes as f64 / 1e6
        ),
        "ms",
        f.median,
        Some(physical.median()),
        "closure copy from page cache",
        Target::RatioAtMost(2.0),
    ));
    // Leave nothing of the environment for later figures' cold starts.
    bench.make_cold(&closure)?;
    Ok(())
}

/// Builds the image of `generation`'s closure (held in `store`) in each variant and pushes it
/// to `registry` as `p11/<name>:<variant>`: (image, reference) per variant.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build_and_push(
    bench: &Bench,
    registry: &Registry,
    store: &Path,
    generation: &serde_json::Value,
    command: &str,
    scratch: &Path,
    name: &str,
    variants: &[Variant],
) -> anyhow::Result<Vec<(BuiltImage, String)>> {
    let mut images = Vec::new();
    for v in variants {
        let t = Instant::now();
        let spec = ImageSpec {
            store_dir: store.to_path_buf(),
            closure: oci_image::closure_of_generation(generation),
            env: vec![oci_image::path_of_generation(generation)],
            cmd: vec![command.to_string()],
            layering: v.layering,
            compression: v.compression,
        };
        let tag = v.key().replace('_', "-");
        let layout = scratch.join(format!("oci-{tag}"));
        let image = oci_image::build(&spec, &layout, &tag)?;
        let reference = registry.reference(&format!("p11/{}:{tag}", name.replace('_', "-")));
        oci_image::push(&image, &reference)?;
        std::fs::remove_dir_all(&layout)?;
        bench.say(&format!(
            "image {name}:{tag}: {} layers, {:.0} MB compressed of {:.0} MB tar, built and pushed in {:.1} s",
            image.layers.len(),
            image.transfer_bytes() as f64 / 1e6,
            image.tar_bytes as f64 / 1e6,
            t.elapsed().as_secs_f64()
        ));
        images.push((image, reference));
    }
    Ok(images)
}

/// Whether a cold flox start samples the node's RSS (then it is not one of the timed ones).
#[derive(Clone, Copy, PartialEq)]
enum Rss {
    Sampled,
    NotSampled,
}

/// One cold flox start: node made cold, pod started and checked, pod removed.
async fn flox_turn(
    bench: &Bench,
    runner: &PodRunner,
    opts: &RunOptions,
    case: &Case<'_>,
    closure: &[String],
    side: &mut Side,
    rss: Rss,
) -> anyhow::Result<()> {
    bench.make_cold(closure)?;
    settle().await?;
    let mark = bench.node.hub.log_mark();
    let yaml = env_pod("p11-flox", case.env, FLOX_EMPTY_IMAGE, &[case.command]);
    // Not `imageless`: the bench's hub runs that binary, and the node's pull runs in the shim.
    let sampler = (rss == Rss::Sampled).then(|| {
        RssSampler::start(vec![bench.bins.release_dir.join("containerd-shim-flox-v2"), bench.bins.flox_runc()])
    });
    let wall0_ms = imageless_node::pull_record::now_ms();
    let started = start_timed(runner, &yaml, opts, Instant::now()).await;
    let peak = sampler.map(|s| s.stop());
    let t = started?;
    let out = first_line(&t.pod).await?;
    t.pod.remove().await?;
    if out.trim() != case.prints {
        bail!("P11 flox pod printed {out:?}, expected {:?}", case.prints);
    }
    match peak {
        Some(peak) => {
            side.peak_rss.push(peak.sum as f64);
            side.peak_rss_one.push(peak.largest as f64);
            side.sampler_cpu.push(peak.sampler_cpu_ns as f64 / 1e6);
            side.sampled_first_output.push(ms(t.first_output));
        }
        None => {
            // The timeline of the timed starts (the pull records stay until the next turn).
            let (planned, fetched) = pull_times(&bench.node.state_root, case.env)?;
            side.planned.push(planned.saturating_sub(wall0_ms) as f64);
            side.fetched.push(fetched.saturating_sub(wall0_ms) as f64);
            side.running.push(ms(t.running));
            side.first_output.push(ms(t.first_output));
            side.bytes.push(hub_cache_bytes_since(bench, mark) as f64);
        }
    }
    Ok(())
}

/// The wall-clock times (ms) of the cold pull's `start` (closure planned) and `end` (fetched)
/// records, read with the node agent's own reader of the pull records (the prefetch's pull:
/// the only one on a cold node).
fn pull_times(state_root: &Path, env: &str) -> anyhow::Result<(u64, u64)> {
    use imageless_node::pull_record::{Phase, Tail};
    let records = Tail::from_start(state_root).poll();
    let time = |phase: fn(&Phase) -> bool| records.iter().find(|r| r.env == env && phase(&r.phase)).map(|r| r.time_ms);
    match (time(|p| matches!(p, Phase::Start { .. })), time(|p| matches!(p, Phase::End { .. }))) {
        (Some(planned), Some(fetched)) => Ok((planned, fetched)),
        _ => bail!("no start and end pull records of {env} under {}", state_root.display()),
    }
}

/// One cold image start: image and its content absent, pulled through CRI, pod started and
/// checked, then pod and image removed again.
#[allow(clippy::too_many_arguments)]
async fn image_turn(
    bench: &Bench,
    registry: &Registry,
    runner: &PodRunner,
    opts: &RunOptions,
    case: &Case<'_>,
    image: &BuiltImage,
    reference: &str,
    side: &mut Side,
) -> anyhow::Result<()> {
    remove_images(bench, &[(image, reference)])?;
    settle().await?;
    let client = bench.node.containerd.client().await?;
    let mark = registry.log_mark();
    let t0 = Instant::now();
    client.pull_image(reference).await.map_err(|e| anyhow::anyhow!("CRI PullImage {reference}: {e}"))?;
    let pulled = t0.elapsed();
    let yaml = runc_pod("p11-image", reference, &[case.command]);
    let t = start_timed(runner, &yaml, opts, t0).await?;
    let out = first_line(&t.pod).await?;
    t.pod.remove().await?;
    if out.trim() != case.prints {
        bail!("P11 image pod ({reference}) printed {out:?}, expected {:?}", case.prints);
    }
    side.first_output.push(ms(t.first_output));
    side.pull.push(ms(pulled));
    side.bytes.push(registry.bytes_served_since(mark) as f64);
    remove_images(bench, &[(image, reference)])
}

/// The pod's first whole line of stdout (the first bytes may come before the newline).
pub(crate) async fn first_line(pod: &imageless_e2e::RunningPod) -> anyhow::Result<String> {
    let mut out = String::new();
    for _ in 0..200 {
        out = pod.stdout(None)?;
        if out.contains('\n') {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Ok(out)
}

/// `ctr images rm --sync` of each image (containerd's GC runs before it returns: content and
/// snapshots no image references go), then checks none of their layers is left in the content
/// store: the next pull starts cold.
pub(crate) fn remove_images(bench: &Bench, images: &[(&BuiltImage, &str)]) -> anyhow::Result<()> {
    let ctr = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        Command::new(VERSION.ctr())
            .arg("-a")
            .arg(bench.node.containerd.socket())
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .context("running ctr")
    };
    for (image, reference) in images {
        // CRI keeps three names per image: the tag, `repo@<manifest digest>` and the image id
        // (the config's digest); its content goes only with the last. Absent names are fine.
        let repo = match reference.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => repo,
            _ => reference,
        };
        let by_digest = format!("{repo}@{}", image.manifest.digest);
        ctr(&["images", "rm", "--sync", reference, &by_digest, &image.config.digest])?;
    }
    let listed = ctr(&["content", "ls", "-q"])?;
    let listed = String::from_utf8_lossy(&listed.stdout);
    for (image, reference) in images {
        let left = image.layers.iter().filter(|l| listed.lines().any(|d| d.trim() == l.digest)).count();
        if left > 0 {
            bail!("{left} layers of {reference} are still in containerd's content store after its removal");
        }
    }
    Ok(())
}

/// Bytes of the hub's cache files (`GET /cache/…` answered 200) logged since `mark`, sized as
/// the hub stores them.
pub(crate) fn hub_cache_bytes_since(bench: &Bench, mark: usize) -> u64 {
    let hub = &bench.node.hub;
    let log = hub.access_log();
    let since = log.get(mark.min(log.len())..).unwrap_or("");
    since
        .lines()
        .filter_map(|l| {
            let rest = l.split("GET ").nth(1)?;
            let mut it = rest.split_whitespace();
            let path = it.next()?;
            (it.next()? == "200" && path.starts_with("/cache/")).then_some(path)
        })
        .filter_map(|p| std::fs::metadata(hub.root.join(p.trim_start_matches('/'))).ok())
        .map(|m| m.len())
        .sum()
}

/// Before a timed turn: a quiet moment, then `sync`. The quiet lets the work the previous turn
/// left behind finish (containerd's scheduled GC after an image turn's hundreds of content and
/// snapshot changes, the shims' exits), so it lands in neither side's next measurement.
pub(crate) async fn settle() -> anyhow::Result<()> {
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    sync()
}

/// Flushes the machine's dirty data (and finishes pending discards) before a timed turn.
/// Twice: the bench's disk is a file on the machine's disk (see xtask's bench_disk), and
/// flushing the bench's file system dirties that file, which the first pass may already have
/// passed; left dirty, its writeback would run during the next turn.
pub(crate) fn sync() -> anyhow::Result<()> {
    for _ in 0..2 {
        let status = Command::new("sync").status().context("running sync")?;
        if !status.success() {
            bail!("sync failed ({status})");
        }
    }
    Ok(())
}

/// Removes a tree whose directories may be read-only (store paths are).
pub(crate) fn remove_tree(dir: &Path) {
    let _ = Command::new("chmod").arg("-R").arg("u+w").arg(dir).status();
    let _ = std::fs::remove_dir_all(dir);
}
