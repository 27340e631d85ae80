//! `cargo xtask bench`: start-time and overhead figures of the flox runtime, each measured
//! side by side with its baseline in one run (absolute times on shared machines drift; the
//! ratios are what to compare across runs). Prints a table and writes target/bench.json.
//!
//! Everything runs on one e2e node (containerd 1.7.24, a private copy of the world hub, see
//! context.rs), in a private mount namespace whose /nix starts empty (see nixns.rs), so the
//! cold figures are really cold and no shared store path is touched. One module per figure:
//!
//! - P1 warm start (p1_warm_start.rs): flox handler + cached env vs runc handler + busybox;
//!   its breakdown (p1_breakdown.rs) and ladder (p1_ladder.rs) show where the difference goes.
//! - P2 cold realization of the largest small environment: `imageless pull` vs `nix copy`.
//! - P3 20 cold flox pods at once vs 20 runc pods at once; one realization for all of them.
//! - P4 activation: `flox-activate --env E --cache C -- true` vs `true`, without/with hook.
//! - P5 wrapper: `flox-runc state` vs `runc state`; peak RSS of flox-runc during create.
//! - P6 a large environment (`flox/large`, 300+ store paths): warm start vs `flox/hello` and
//!   vs runc + busybox, host mounts of 50 running pods, delete time.
//! - P7 serving flox/large's cache files to 16 clients at once: the hub vs nginx.
//! - P8 20 cold pulls at once through a pull-through hub vs straight from its upstream.
//! - P9 cold `imageless pull` of flox/large (and a small env) vs `nix copy` into empty stores.
//! - P10 ExecSync into a hook environment's pod vs a hook-less one (execs attach: ≤ 2 ms added).
//! - P11 cold start of flox/large on an empty node vs the image a user would build instead (its
//!   closure, per-path and single-layer layers, gzip and zstd) pulled from docker-registry on
//!   loopback through CRI; anchors: the pull alone and the physical limit (closure copy).
//! - P12 the update case: flox/large generation 2 after generation 1 (90 % of the paths shared)
//!   vs image v2 after v1 (per-path and single-layer), time to first output and bytes.
//! - P13 cold `imageless pull flox/large` from an `s3://` bucket on Garage vs `nix copy` from the
//!   same bucket through Garage's website endpoint.
//! - P14 serving flox/large's cache files to 16 clients at once from one hub replica whose cache
//!   is an S3 bucket (Garage) vs nginx from disk; three replicas vs one as context.
//! - P15 the node agent (`imageless node agent --standalone`): its RSS and CPU at idle and while
//!   20 cold flox pods start at once.
//!
//! Environment: IMAGELESS_BENCH_BIN_DIR (the measured binaries, default target/image/bin),
//! IMAGELESS_ACTIVATOR, IMAGELESS_HUB_ROOT (as for the e2e tests); IMAGELESS_BENCH_STRACE=DIR
//! adds strace.rs's profiling run; IMAGELESS_BENCH_ONLY=P1,P3 runs just those figures.
mod cache_files;
mod context;
mod cri_steps;
mod nixns;
mod p10_exec_attach;
mod p11_cold_vs_image;
mod p11_node_rss;
mod p11_physical_limit;
mod p11_pod_memory;
mod p12_update_vs_image;
mod p13_s3_pull;
mod p14_s3_serving;
mod p15_agent;
mod p1_breakdown;
mod p1_ladder;
mod p1_warm_start;
mod p2_cold_realization;
mod p3_cold_burst;
mod p4_activation;
mod p5_wrapper;
mod p6_large;
mod p7_cache_serving;
mod p8_pull_through;
mod p9_cold_pull;
mod probe;
mod report;
mod stats;
mod strace;
mod timing;

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use context::{Bench, Binaries, Progress, VERSION};
use report::Results;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some(probe::PROBE_ARG) => probe::main(&args[2..]),
        Some(probe::STEP_PROBE_ARG) => probe::step_main(&args[2..]),
        _ => {}
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether figure `id` (e.g. "P1") is to run (IMAGELESS_BENCH_ONLY; default all).
fn wanted(id: &str) -> bool {
    match std::env::var("IMAGELESS_BENCH_ONLY") {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|x| x.trim().eq_ignore_ascii_case(id)),
        _ => true,
    }
}

/// `IMAGELESS_BENCH_CASES=large,xlarge` limits P11 to those environments (default: all), for
/// iterating on one of them; a full run measures both.
fn wanted_case(case: &str) -> bool {
    match std::env::var("IMAGELESS_BENCH_CASES") {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|x| x.trim().eq_ignore_ascii_case(case)),
        _ => true,
    }
}

fn run() -> anyhow::Result<()> {
    let bins = Binaries::from_env();
    bins.check()?;
    // Before any thread exists (see nixns): the image archives, the work dir, the namespace.
    imageless_e2e::local_images()?;
    let work = tempfile::Builder::new().prefix("imageless-bench-").tempdir()?;
    let nix_dir = work.path().join("nix");
    std::fs::create_dir_all(&nix_dir)?;
    nixns::enter_private_nix(&nix_dir)?;

    let progress = Progress(Instant::now());
    progress.say(&format!("private /nix at {}; starting hub and containerd {VERSION}", nix_dir.display()));
    let bench = Bench::start(bins, work.path(), progress)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let world = bench.node.hub.world()?;
    let (small_env, small_closure) = largest_small_environment(&world)?;
    bench.say(&format!("largest small environment: {small_env} ({} store paths)", small_closure.len()));

    let mut results = Results::default();
    let outcome = run_figures(&bench, &rt, &small_env, &small_closure, &mut results);
    let elapsed = bench.progress.0.elapsed();
    bench.say("done; tearing down");
    drop(rt);
    let teardown = bench.node.containerd.remove_all_pods();
    drop(bench);
    // The figures measured so far are written even when a later one failed.
    report::write(&results, VERSION.as_str(), elapsed)?;
    outcome?;
    teardown?;
    Ok(())
}

fn run_figures(
    bench: &Bench,
    rt: &tokio::runtime::Runtime,
    small_env: &str,
    small_closure: &[String],
    results: &mut Results,
) -> anyhow::Result<()> {
    if wanted("P2") {
        p2_cold_realization::run(bench, small_env, small_closure, results)?;
    }
    if wanted("P3") {
        rt.block_on(p3_cold_burst::run(bench, small_env, small_closure, results))?;
    }
    if wanted("P1") {
        rt.block_on(p1_warm_start::run(bench, results))?;
    }
    if wanted("P4") {
        p4_activation::run(bench, results)?;
    }
    if wanted("P5") {
        rt.block_on(p5_wrapper::run(bench, results))?;
    }
    if wanted("P6") {
        rt.block_on(p6_large::run(bench, results))?;
    }
    let large = bench.node.hub.world()?["environments"][p6_large::LARGE_ENV].clone();
    let large_closure = closure_of(&large);
    if large_closure.is_empty() {
        anyhow::bail!("world.json has no {} closure: run `cargo xtask world`", p6_large::LARGE_ENV);
    }
    if wanted("P7") {
        p7_cache_serving::run(bench, p6_large::LARGE_ENV, &large_closure, results)?;
    }
    if wanted("P8") {
        p8_pull_through::run(bench, small_env, small_closure, results)?;
    }
    if wanted("P9") {
        p9_cold_pull::run(bench, (p6_large::LARGE_ENV, &large_closure), (small_env, small_closure), results)?;
    }
    if wanted("P10") {
        rt.block_on(p10_exec_attach::run(bench, results))?;
    }
    if wanted("P11") && wanted_case("large") {
        let case = large_case(&p11_cold_vs_image::VARIANTS);
        rt.block_on(p11_cold_vs_image::run(bench, &case, results))?;
        rt.block_on(p11_pod_memory::run(bench, p6_large::LARGE_ENV, results))?;
    }
    if wanted("P11") && wanted_case("xlarge") {
        let case = p11_cold_vs_image::Case {
            env: p11_cold_vs_image::XLARGE_ENV,
            command: "xlarge-app",
            prints: p11_cold_vs_image::XLARGE_PRINTS,
            variants: &p11_cold_vs_image::XLARGE_VARIANTS,
        };
        rt.block_on(p11_cold_vs_image::run(bench, &case, results))?;
    }
    if wanted("P12") {
        let case = large_case(&p12_update_vs_image::VARIANTS);
        rt.block_on(p12_update_vs_image::run(bench, &case, results))?;
    }
    if wanted("P13") {
        p13_s3_pull::run(bench, p6_large::LARGE_ENV, &large_closure, results)?;
    }
    if wanted("P14") {
        p14_s3_serving::run(bench, p6_large::LARGE_ENV, &large_closure, results)?;
    }
    if wanted("P15") {
        rt.block_on(p15_agent::run(bench, small_env, small_closure, results))?;
    }
    if let Some(dir) = std::env::var_os("IMAGELESS_BENCH_STRACE") {
        rt.block_on(strace::warm_starts(bench, Path::new(&dir)))?;
    }
    Ok(())
}

/// flox/large as P11 and P12 run it, against `variants`.
fn large_case(variants: &[p11_cold_vs_image::Variant]) -> p11_cold_vs_image::Case<'_> {
    p11_cold_vs_image::Case {
        env: p6_large::LARGE_ENV,
        command: "large-app",
        prints: "large-app: 250 libraries",
        variants,
    }
}

/// The public environment, other than flox/large, whose live generation has the largest
/// closure. flox/large has its own figures (P6); P2/P3 stay on the small environments so their
/// figures compare with earlier runs (and the bench stays within minutes).
fn largest_small_environment(world: &serde_json::Value) -> anyhow::Result<(String, Vec<String>)> {
    let mut best: Option<(String, Vec<String>)> = None;
    for (name, env) in world["environments"].as_object().context("world.json: no environments")? {
        if env["private"].as_bool() == Some(true)
            || name.contains("conflict")
            || name == p6_large::LARGE_ENV
            || name == p11_cold_vs_image::XLARGE_ENV
        {
            continue;
        }
        let closure = closure_of(env);
        if best.as_ref().is_none_or(|(_, c)| closure.len() > c.len()) {
            best = Some((name.clone(), closure));
        }
    }
    best.context("world.json: no public environment")
}

/// The closure of an environment's live generation, from its world.json entry.
pub fn closure_of(env: &serde_json::Value) -> Vec<String> {
    let live = env["live_generation"].to_string();
    env["generations"][&live]["closure"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p.as_str().map(String::from)).collect())
        .unwrap_or_default()
}
