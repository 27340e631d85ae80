//! `cargo xtask bench`: start-time and overhead figures of the flox runtime, each measured
//! side by side with its baseline in one run (absolute times on shared machines drift; the
//! ratios are what to compare across runs). Prints a table and writes target/bench.json.
//!
//! Everything runs on a private containerd 1.7.24 with a private copy of the world hub, and
//! in a private mount namespace whose /nix starts empty (see bench/nixns.rs), so the cold
//! figures are really cold and no shared store path is touched.
//!
//! - P1 warm start: 20 pod starts, flox handler + cached env vs runc handler + busybox.
//! - P2 cold realization of the largest world environment: `imageless pull` vs `nix copy`.
//! - P3 20 pods of one cold environment at once: realizations and wall time vs one cold pod.
//! - P4 activation: `flox-activate --env E --cache C -- true` vs `true`, without/with hook.
//! - P5 wrapper: `flox-runc state` vs `runc state`; peak RSS of flox-runc during create.
//! - P6 a large environment (`flox/large`, 300+ store paths): warm start vs `flox/hello` and
//!   vs runc + busybox, host mounts of 50 running pods, delete time (bench/p6_large.rs).
//!
//! Environment: IMAGELESS_BENCH_BIN_DIR (release binaries, default target/release),
//! IMAGELESS_ACTIVATOR, IMAGELESS_HUB_ROOT (as for the e2e tests).
#[path = "../bench/nixns.rs"]
mod nixns;
#[path = "../bench/node.rs"]
mod node;
#[path = "../bench/p6_large.rs"]
mod p6_large;
#[path = "../bench/probe.rs"]
mod probe;
#[path = "../bench/stats.rs"]
mod stats;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use imageless_e2e::{repo_root, BUSYBOX_IMAGE, FLOX_EMPTY_IMAGE};
use node::{pod_yaml, start_timed, BenchNode, Binaries};
use serde_json::json;
use stats::{ms, summarize, Figure, Target};

const P1_STARTS: usize = 20;
const P2_REPS: usize = 5;
const P3_PODS: usize = 20;
const P4_RUNS: usize = 200;
const P5_RUNS: usize = 200;
/// The docs' environment (unpinned, as in the docs: each start asks the hub for the live
/// generation) and its `hello`.
const WARM_ENV: &str = "flox/echoip";
const WARM_ENV_PINNED: &str = "flox/echoip:2";
const HOOK_ENV: &str = "flox/hooks";
const HELLO_TEXT: &str = "Hello, world! (hello 2.12)";

fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| repo_root().join(default))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(probe::PROBE_ARG) {
        probe::main(&args[2..]);
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Progress(Instant);

impl Progress {
    fn say(&self, what: &str) {
        eprintln!("bench [{:6.1}s] {what}", self.0.elapsed().as_secs_f64());
    }
}

/// The figures plus raw samples, for the JSON.
#[derive(Default)]
struct Results {
    figures: Vec<Figure>,
    samples: serde_json::Map<String, serde_json::Value>,
}

impl Results {
    fn add(&mut self, f: Figure) {
        self.figures.push(f);
    }
    fn samples(&mut self, key: &str, v: &[f64]) {
        self.samples.insert(key.into(), json!(v.iter().map(|x| (x * 1000.0).round() / 1000.0).collect::<Vec<_>>()));
    }
}

fn figure(
    id: &str,
    name: &str,
    unit: &'static str,
    ours: f64,
    baseline: Option<f64>,
    baseline_name: &str,
    target: Target,
) -> Figure {
    Figure { id: id.into(), name: name.into(), unit, ours, baseline, baseline_name: baseline_name.into(), target }
}

fn run() -> anyhow::Result<()> {
    let bins = Binaries {
        release_dir: env_path("IMAGELESS_BENCH_BIN_DIR", "target/release"),
        activator: env_path("IMAGELESS_ACTIVATOR", "target/x86_64-unknown-linux-gnu/release/flox-activate"),
        world_root: env_path("IMAGELESS_HUB_ROOT", ".work/hub"),
    };
    bins.check()?;
    // Before any thread exists (see nixns): the image archives, the work dir, the namespace.
    imageless_e2e::local_images()?;
    let work = tempfile::Builder::new().prefix("imageless-bench-").tempdir()?;
    let nix_dir = work.path().join("nix");
    std::fs::create_dir_all(&nix_dir)?;
    nixns::enter_private_nix(&nix_dir)?;

    let progress = Progress(Instant::now());
    progress.say(&format!("private /nix at {}; starting hub and containerd {}", nix_dir.display(), node::VERSION));
    let node = BenchNode::start(&bins, work.path())?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let world = node.hub.world()?;
    let (big_env, big_closure) = largest_environment(&world)?;
    progress.say(&format!("largest environment: {big_env} ({} store paths)", big_closure.len()));

    let mut results = Results::default();
    p2_cold_realization(&progress, &node, &bins, &big_env, &big_closure, &mut results)?;
    rt.block_on(p3_concurrency(&progress, &node, &big_env, &big_closure, &mut results))?;
    rt.block_on(p1_warm_start(&progress, &node, &mut results))?;
    p4_activation(&progress, &node, &bins, &mut results)?;
    rt.block_on(p5_wrapper(&progress, &node, &bins, &mut results))?;
    rt.block_on(p6_large::p6_large(&progress, &node, &mut results))?;
    if let Some(dir) = std::env::var_os("IMAGELESS_BENCH_STRACE") {
        rt.block_on(strace_warm_starts(&progress, &node, &bins, Path::new(&dir)))?;
    }
    let elapsed = progress.0.elapsed();
    progress.say("done; tearing down");
    drop(rt);
    let teardown = node.containerd.remove_all_pods();
    drop(node);
    teardown?;

    let machine = machine();
    let date = command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
    let table = stats::table(&results.figures);
    println!(
        "\nimageless benchmarks, {date}, {}, containerd {}, {:.0} s\n",
        machine["summary"].as_str().unwrap_or(""),
        node::VERSION,
        elapsed.as_secs_f64()
    );
    print!("{table}");
    let doc = json!({
        "date": date,
        "machine": machine,
        "containerd": node::VERSION.as_str(),
        "runc": command_line("/usr/bin/runc", &["--version"]),
        "nix": command_line("nix-store", &["--version"]),
        "duration_s": (elapsed.as_secs_f64() * 10.0).round() / 10.0,
        "figures": results.figures.iter().map(Figure::to_json).collect::<Vec<_>>(),
        "samples_ms": results.samples,
        "table_markdown": table,
    });
    let out = repo_root().join("target/bench.json");
    std::fs::write(&out, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    println!("\nwrote {}", out.display());
    Ok(())
}

/// The public environment whose live generation has the largest closure.
fn largest_environment(world: &serde_json::Value) -> anyhow::Result<(String, Vec<String>)> {
    let mut best: Option<(String, Vec<String>)> = None;
    for (name, env) in world["environments"].as_object().context("world.json: no environments")? {
        // flox/large has its own figures (P6); P2/P3 stay on the small environments so their
        // figures compare with earlier runs (and the bench stays within minutes).
        if env["private"].as_bool() == Some(true) || name.contains("conflict") || name == p6_large::LARGE_ENV {
            continue;
        }
        let live = env["live_generation"].to_string();
        let closure: Vec<String> = env["generations"][&live]["closure"]
            .as_array()
            .map(|a| a.iter().filter_map(|p| p.as_str().map(String::from)).collect())
            .unwrap_or_default();
        if best.as_ref().is_none_or(|(_, c)| closure.len() > c.len()) {
            best = Some((name.clone(), closure));
        }
    }
    best.context("world.json: no public environment")
}

/// A run longer than this is a stall, not a measurement (see `timed_with_deadline`).
const STALL: Duration = Duration::from_secs(10);

/// Runs `cmd` to completion; its wall time and trimmed stdout.
fn timed(cmd: &mut Command) -> anyhow::Result<(Duration, String)> {
    match timed_with_deadline(cmd, Duration::from_secs(600))? {
        Some(r) => Ok(r),
        None => bail!("{:?} did not finish within 600 s", cmd.get_program()),
    }
}

/// Like `timed`, but kills the command after `deadline` and returns None (a stall). The local
/// hub sometimes leaves one of several concurrent HEAD requests unanswered until the client
/// gives up (Nix waits `stalled-download-timeout`, 300 s): such a run measures the stall, not
/// the copy, so callers retry it and report how often it happened.
fn timed_with_deadline(cmd: &mut Command, deadline: Duration) -> anyhow::Result<Option<(Duration, String)>> {
    let out_file = tempfile::tempfile()?;
    let err_file = tempfile::tempfile()?;
    cmd.stdin(Stdio::null()).stdout(out_file.try_clone()?).stderr(err_file.try_clone()?);
    let t0 = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("running {:?}", cmd.get_program()))?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if t0.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    let took = t0.elapsed();
    let read = |mut f: std::fs::File| -> String {
        use std::io::{Read, Seek};
        let mut s = String::new();
        let _ = f.rewind().and_then(|_| f.read_to_string(&mut s));
        s.trim().to_string()
    };
    if !status.success() {
        bail!("{:?} {:?} failed ({status}): {}", cmd.get_program(), cmd.get_args().collect::<Vec<_>>(), read(err_file));
    }
    Ok(Some((took, read(out_file))))
}

fn p2_cold_realization(
    progress: &Progress,
    node: &BenchNode,
    bins: &Binaries,
    env: &str,
    closure: &[String],
    results: &mut Results,
) -> anyhow::Result<()> {
    progress.say(&format!("P2: cold realization of {env}, {P2_REPS} times each: imageless pull vs nix copy"));
    let gcroots = PathBuf::from("/nix/var/nix/gcroots/imageless-bench-p2");
    let key = node.hub.public_key()?;
    let cache_url = format!("{}/cache", node.hub.url);
    // The three ways to fill the store, measured in turns.
    #[derive(Clone, Copy, PartialEq)]
    enum Side {
        /// `imageless pull`: NodeCache::ensure (hub git, realization, closure, render).
        Ours,
        /// The realization step alone, with the command line crates/node/src/realize.rs uses.
        Realise,
        /// The baseline.
        NixCopy,
    }
    let sides = [Side::Ours, Side::NixCopy, Side::Realise];
    let mut samples: [Vec<f64>; 3] = Default::default();
    let mut stalls = [0usize; 3];
    for rep in 0..P2_REPS {
        // Rotate who goes first, so drift and cache warmth favour nobody.
        for k in 0..sides.len() {
            let idx = (k + rep) % sides.len();
            let mut attempts = 0;
            let took = loop {
                nixns::delete_closure(closure, &[&gcroots, &node.gcroots])?;
                let state = node.dir.join(format!("p2-state-{rep}"));
                let mut cmd = match sides[idx] {
                    Side::Ours => {
                        let config = node.dir.join(format!("p2-node-{rep}.toml"));
                        std::fs::write(&config, node::node_config(&node.hub, &bins.activator, &state, &gcroots)?)?;
                        let mut c = Command::new(bins.imageless());
                        c.args(["pull", env, "--config"]).arg(&config);
                        c
                    }
                    Side::Realise => {
                        let mut c = Command::new("nix-store");
                        c.arg("--realise").args(closure);
                        c.args(["--option", "substituters", &cache_url]).args([
                            "--option",
                            "trusted-public-keys",
                            &key,
                        ]);
                        c.args(["--option", "narinfo-cache-negative-ttl", "0", "--option", "max-jobs", "0"]);
                        c
                    }
                    Side::NixCopy => {
                        let mut c = Command::new("nix");
                        c.args(["copy", "--from", &cache_url])
                            .args(["--option", "trusted-public-keys", &key])
                            .args(closure);
                        c
                    }
                };
                let result = timed_with_deadline(&mut cmd, STALL)?;
                let rendered = result.as_ref().is_some_and(|(_, stdout)| Path::new(stdout).join("bin").is_dir());
                let _ = std::fs::remove_dir_all(&state);
                match result {
                    Some((took, stdout)) => {
                        if sides[idx] == Side::Ours && !rendered {
                            bail!("imageless pull printed {stdout:?}, which has no bin/");
                        }
                        break took;
                    }
                    None => {
                        stalls[idx] += 1;
                        attempts += 1;
                        progress.say(&format!("P2: a run stalled for {STALL:?} and was killed; retrying"));
                        if attempts == 3 {
                            bail!("P2: 3 runs in a row stalled");
                        }
                    }
                }
            };
            samples[idx].push(ms(took));
            let missing = closure.len() - nixns::valid_paths(closure)?.len();
            if missing > 0 {
                bail!("after a cold realization {missing} paths of {env} are still missing");
            }
        }
    }
    // Leave nothing rooted for the next figures' cold starts.
    nixns::delete_closure(closure, &[&gcroots])?;
    results.samples("P2.ours", &samples[0]);
    results.samples("P2.nix_copy", &samples[1]);
    results.samples("P2.realise_step", &samples[2]);
    results.samples("P2.stalled_runs_ours_nixcopy_realise", &stalls.map(|n| n as f64));
    let med = |i: usize| summarize(&samples[i]).expect("samples").median / 1000.0;
    let stall_note = |i: usize| {
        if stalls[i] > 0 {
            format!(", {} stalled run(s) retried", stalls[i])
        } else {
            String::new()
        }
    };
    results.add(figure(
        "P2.cold_realization.median",
        &format!("P2 cold realization of {env} ({} paths), median of {P2_REPS}{}", closure.len(), stall_note(0)),
        "s",
        med(0),
        Some(med(1)),
        &format!("nix copy --from hub{}", stall_note(1)),
        Target::RatioAtMost(1.0),
    ));
    results.add(figure(
        "P2.context.realise_step",
        "P2 context: its nix-store --realise step alone vs nix copy",
        "s",
        med(2),
        Some(med(1)),
        "nix copy --from hub",
        Target::None,
    ));
    Ok(())
}

async fn p3_concurrency(
    progress: &Progress,
    node: &BenchNode,
    env: &str,
    closure: &[String],
    results: &mut Results,
) -> anyhow::Result<()> {
    let runner = node.runner().await?;
    let mut opts = node.containerd.run_options();
    opts.force_host_network = true;
    let flox = |name: &str| pod_yaml(name, Some("flox"), Some(env), FLOX_EMPTY_IMAGE, &["hello"]);
    let plain = |name: &str| pod_yaml(name, None, None, BUSYBOX_IMAGE, &["echo", HELLO_TEXT]);

    progress.say(&format!("P3: one cold pod of {env}"));
    node.make_cold(closure)?;
    let mark = node.hub.log_mark();
    let t0 = Instant::now();
    let one = start_timed(&runner, &flox("p3-single"), &opts, t0).await?;
    let single = one.first_output;
    let out = one.pod.stdout(None)?;
    one.pod.remove().await?;
    if !out.contains("Hello, world!") {
        bail!("P3 pod printed {out:?}");
    }
    let (single_narinfo, single_nar) = node.hub.cache_gets_since(mark);
    if single_nar == 0 {
        bail!("the cold pod fetched no NAR from the hub: the environment was not cold");
    }

    progress.say(&format!("P3: {P3_PODS} cold pods of {env} at once"));
    node.make_cold(closure)?;
    let mark = node.hub.log_mark();
    let flox_wall =
        start_many(&node.containerd.endpoint(), &opts, (0..P3_PODS).map(|i| flox(&format!("p3-{i}"))).collect())
            .await?;
    let (many_narinfo, many_nar) = node.hub.cache_gets_since(mark);

    progress.say(&format!("P3 context: 1 and {P3_PODS} runc pods at once"));
    let t0 = Instant::now();
    let one = start_timed(&runner, &plain("p3-runc-single"), &opts, t0).await?;
    let runc_single = one.first_output;
    one.pod.remove().await?;
    let runc_wall =
        start_many(&node.containerd.endpoint(), &opts, (0..P3_PODS).map(|i| plain(&format!("p3-runc-{i}"))).collect())
            .await?;

    let realizations = many_nar as f64 / single_nar as f64;
    results.samples("P3.single_cold_ms", &[ms(single)]);
    results.samples("P3.many_cold_wall_ms", &[ms(flox_wall)]);
    results.samples("P3.cache_gets", &[single_narinfo as f64, single_nar as f64, many_narinfo as f64, many_nar as f64]);
    results.add(figure(
        "P3.realizations",
        &format!(
            "P3 realizations for {P3_PODS} cold pods at once (NAR GETs {many_nar} / {single_nar} of one cold pod)"
        ),
        "count",
        realizations,
        None,
        "",
        Target::Exactly(1.0),
    ));
    results.add(figure(
        "P3.wall",
        &format!("P3 {P3_PODS} cold pods at once: wall to all first outputs vs one cold pod"),
        "s",
        flox_wall.as_secs_f64(),
        Some(single.as_secs_f64()),
        "1 cold pod",
        Target::RatioAtMost(1.3),
    ));
    results.add(figure(
        "P3.context.runc",
        &format!("P3 context: {P3_PODS} runc pods at once vs one (containerd's own cost)"),
        "s",
        runc_wall.as_secs_f64(),
        Some(runc_single.as_secs_f64()),
        "1 runc pod",
        Target::None,
    ));
    results.add(figure(
        "P3.context.flox_vs_runc",
        &format!("P3 context: {P3_PODS} cold flox pods at once vs {P3_PODS} runc pods at once"),
        "s",
        flox_wall.as_secs_f64(),
        Some(runc_wall.as_secs_f64()),
        &format!("{P3_PODS} runc pods"),
        Target::None,
    ));
    Ok(())
}

/// Starts all pods at once; the wall time until every one has printed. Removes them after.
async fn start_many(endpoint: &str, opts: &imageless_e2e::RunOptions, yamls: Vec<String>) -> anyhow::Result<Duration> {
    // One CRI connection per pod, as separate kubelet workers would have; connected first.
    let mut runners = Vec::new();
    for _ in &yamls {
        runners.push(imageless_e2e::PodRunner::new(imageless_e2e::CriClient::connect(endpoint).await?));
    }
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (yaml, runner) in yamls.into_iter().zip(runners) {
        let opts = opts.clone();
        set.spawn(async move { start_timed(&runner, &yaml, &opts, t0).await });
    }
    let mut pods = Vec::new();
    let mut first_error = None;
    while let Some(r) = set.join_next().await {
        match r.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(t) => pods.push(t),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let wall = pods.iter().map(|t| t.first_output).max().unwrap_or_default();
    let mut removals = tokio::task::JoinSet::new();
    for t in pods {
        removals.spawn(async move { t.pod.remove().await });
    }
    while let Some(r) = removals.join_next().await {
        r??;
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(wall),
    }
}

async fn p1_warm_start(progress: &Progress, node: &BenchNode, results: &mut Results) -> anyhow::Result<()> {
    let runner = node.runner().await?;
    let mut opts = node.containerd.run_options();
    opts.force_host_network = true;
    let flox = pod_yaml("p1-flox", Some("flox"), Some(WARM_ENV), FLOX_EMPTY_IMAGE, &["hello"]);
    let pinned = pod_yaml("p1-flox-pinned", Some("flox"), Some(WARM_ENV_PINNED), FLOX_EMPTY_IMAGE, &["hello"]);
    let plain = pod_yaml("p1-runc", None, None, BUSYBOX_IMAGE, &["echo", HELLO_TEXT]);
    progress.say(&format!("P1: warming {WARM_ENV} and the runc path"));
    for yaml in [&flox, &pinned, &plain] {
        let t = start_timed(&runner, yaml, &opts, Instant::now()).await?;
        // The first line may take a moment longer than the first bytes; wait for it.
        let mut out = String::new();
        for _ in 0..100 {
            out = t.pod.stdout(None)?;
            if out.contains('\n') {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        t.pod.remove().await?;
        if out.trim() != HELLO_TEXT {
            bail!("P1 warm-up pod printed {out:?}, expected {HELLO_TEXT:?}");
        }
    }
    progress
        .say(&format!("P1: {P1_STARTS} warm starts each: flox ({WARM_ENV}), flox pinned ({WARM_ENV_PINNED}), runc"));
    let kinds = [("flox", &flox), ("pinned", &pinned), ("runc", &plain)];
    let mut running: [Vec<f64>; 3] = Default::default();
    let mut first: [Vec<f64>; 3] = Default::default();
    for i in 0..P1_STARTS {
        // Rotate the order so neither side always runs right after the other's teardown.
        for k in 0..kinds.len() {
            let idx = (k + i) % kinds.len();
            let t = start_timed(&runner, kinds[idx].1, &opts, Instant::now()).await?;
            running[idx].push(ms(t.running));
            first[idx].push(ms(t.first_output));
            t.pod.remove().await?;
        }
    }
    for (idx, (kind, _)) in kinds.iter().enumerate() {
        results.samples(&format!("P1.{kind}.running"), &running[idx]);
        results.samples(&format!("P1.{kind}.first_output"), &first[idx]);
    }
    let s = |v: &Vec<f64>| summarize(v).expect("samples");
    let (fr, pr, rr) = (s(&running[0]), s(&running[1]), s(&running[2]));
    let (ff, pf, rf) = (s(&first[0]), s(&first[1]), s(&first[2]));
    let base = "runc + busybox";
    let t = Target::RatioAtMost(1.05);
    results.add(figure(
        "P1.running.median",
        &format!("P1 warm start → running, median of {P1_STARTS} ({WARM_ENV})"),
        "ms",
        fr.median,
        Some(rr.median),
        base,
        t,
    ));
    results.add(figure("P1.running.p90", "P1 warm start → running, p90", "ms", fr.p90, Some(rr.p90), base, t));
    results.add(figure(
        "P1.first_output.median",
        "P1 warm start → first output, median",
        "ms",
        ff.median,
        Some(rf.median),
        base,
        t,
    ));
    results.add(figure(
        "P1.first_output.p90",
        "P1 warm start → first output, p90",
        "ms",
        ff.p90,
        Some(rf.p90),
        base,
        t,
    ));
    results.add(figure(
        "P1.pinned.running.median",
        &format!("P1 pinned {WARM_ENV_PINNED} (no hub check) → running, median"),
        "ms",
        pr.median,
        Some(rr.median),
        base,
        t,
    ));
    results.add(figure(
        "P1.pinned.first_output.median",
        &format!("P1 pinned {WARM_ENV_PINNED} → first output, median"),
        "ms",
        pf.median,
        Some(rf.median),
        base,
        t,
    ));
    Ok(())
}

fn p4_activation(progress: &Progress, node: &BenchNode, bins: &Binaries, results: &mut Results) -> anyhow::Result<()> {
    progress
        .say(&format!("P4: activation, {P4_RUNS} runs each of true, activate (no hook), activate ({HOOK_ENV} hook)"));
    let pull = |env: &str| -> anyhow::Result<String> {
        Ok(timed(Command::new(bins.imageless()).args(["pull", env, "--config"]).arg(&node.config_path))?.1)
    };
    let plain_env = pull(WARM_ENV)?;
    let hook_env = pull(HOOK_ENV)?;
    let cache = node.dir.join("p4-cache");
    std::fs::create_dir_all(&cache)?;
    let run = |env: Option<&str>| -> anyhow::Result<f64> {
        let mut cmd = match env {
            None => Command::new("true"),
            Some(env) => {
                let mut c = Command::new(&bins.activator);
                c.arg("--env").arg(env).arg("--cache").arg(&cache).args(["--", "true"]);
                c
            }
        };
        cmd.env_clear().env("PATH", "/usr/bin:/bin").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let t0 = Instant::now();
        let status = cmd.status()?;
        let took = t0.elapsed();
        if !status.success() {
            bail!("activation of {env:?} -- true failed ({status})");
        }
        Ok(ms(took))
    };
    let (mut bare, mut plain, mut hook) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..P4_RUNS {
        bare.push(run(None)?);
        plain.push(run(Some(&plain_env))?);
        hook.push(run(Some(&hook_env))?);
    }
    results.samples("P4.true", &bare);
    results.samples("P4.activate", &plain);
    results.samples("P4.activate_hook", &hook);
    let (b, p, h) = (summarize(&bare).unwrap(), summarize(&plain).unwrap(), summarize(&hook).unwrap());
    results.add(figure(
        "P4.no_hook",
        &format!("P4 activation → exec, no hook ({WARM_ENV}), median of {P4_RUNS}"),
        "ms",
        p.median,
        Some(b.median),
        "true alone",
        Target::AddedAtMost(5.0),
    ));
    results.add(figure(
        "P4.hook",
        &format!("P4 activation → exec, with hook ({HOOK_ENV}), median of {P4_RUNS}"),
        "ms",
        h.median,
        Some(b.median),
        "true alone",
        Target::None,
    ));
    Ok(())
}

/// The runc root (`--root`) under which the shim created container `id`.
fn runc_root_of(id: &str) -> anyhow::Result<PathBuf> {
    let base = Path::new("/run/containerd/runc");
    for entry in std::fs::read_dir(base).with_context(|| format!("reading {}", base.display()))?.flatten() {
        if entry.path().join(id).join("state.json").is_file() {
            return Ok(entry.path());
        }
    }
    bail!("no runc state of container {id} under {}/*", base.display())
}

async fn p5_wrapper(
    progress: &Progress,
    node: &BenchNode,
    bins: &Binaries,
    results: &mut Results,
) -> anyhow::Result<()> {
    let runner = node.runner().await?;
    let mut opts = node.containerd.run_options();
    opts.force_host_network = true;
    progress.say(&format!("P5: flox-runc state vs runc state, {P5_RUNS} runs each"));
    let yaml = pod_yaml("p5-sleeper", Some("flox"), Some(WARM_ENV), BUSYBOX_IMAGE, &["sleep", "3600"]);
    let manifest = imageless_e2e::PodManifest::from_yaml(&yaml).map_err(anyhow::Error::msg)?;
    let pod = runner.run(&manifest, &opts).await?;
    let id = pod.container(None)?.id.clone();
    let root = runc_root_of(&id)?;
    let state = |program: &Path| -> anyhow::Result<f64> {
        let mut cmd = Command::new(program);
        cmd.arg("--root")
            .arg(&root)
            .args(["state", &id])
            .env("IMAGELESS_CONFIG", &node.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let t0 = Instant::now();
        let status = cmd.status()?;
        let took = t0.elapsed();
        if !status.success() {
            bail!("{} state {id} failed ({status})", program.display());
        }
        Ok(ms(took))
    };
    let (mut wrapped, mut real) = (Vec::new(), Vec::new());
    for i in 0..P5_RUNS {
        if i % 2 == 0 {
            wrapped.push(state(&bins.flox_runc())?);
            real.push(state(Path::new("/usr/bin/runc"))?);
        } else {
            real.push(state(Path::new("/usr/bin/runc"))?);
            wrapped.push(state(&bins.flox_runc())?);
        }
    }
    pod.remove().await?;
    results.samples("P5.flox_runc_state", &wrapped);
    results.samples("P5.runc_state", &real);
    let (w, r) = (summarize(&wrapped).unwrap(), summarize(&real).unwrap());
    results.add(figure(
        "P5.state",
        &format!("P5 `flox-runc state` vs `runc state`, median of {P5_RUNS}"),
        "ms",
        w.median,
        Some(r.median),
        "runc state",
        Target::AddedAtMost(3.0),
    ));

    progress.say("P5: peak RSS of flox-runc during the creates of a warm flox pod");
    let log = node.dir.join("rss-probe.log");
    let script = probe::write_script(&node.dir, &log, &bins.flox_runc())?;
    node.set_wrapper(&script)?;
    let measured = start_timed(
        &runner,
        &pod_yaml("p5-rss", Some("flox"), Some(WARM_ENV), FLOX_EMPTY_IMAGE, &["hello"]),
        &opts,
        Instant::now(),
    )
    .await;
    node.set_wrapper(&bins.flox_runc())?;
    measured?.pod.remove().await?;
    let peaks = probe::read_log(&log);
    // Two creates: the sandbox's and the container's.
    if peaks.len() < 2 {
        bail!(
            "the RSS probe logged {} creates (want 2: sandbox and container); log: {:?}",
            peaks.len(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    results.samples("P5.create_vmhwm_kb", &peaks.iter().map(|k| *k as f64).collect::<Vec<_>>());
    let peak_mb = *peaks.iter().max().expect("non-empty") as f64 / 1024.0;
    results.add(figure(
        "P5.create_rss",
        "P5 peak RSS of flox-runc during create (VmHWM, max of sandbox + container)",
        "MB",
        peak_mb,
        None,
        "",
        Target::AtMost(10.0),
    ));
    Ok(())
}

/// Profiling aid (IMAGELESS_BENCH_STRACE=DIR): one warm start each of the unpinned and the
/// pinned environment with flox-runc under `strace -f -b execve -tt`, one trace file per
/// flox-runc call in DIR: each child's execve and the wait4 that reaps it show which child
/// processes a create waits for and how long. (`-b execve` stops following a process once it
/// execs, so strace does not wait for the container's init that runc leaves behind.)
async fn strace_warm_starts(progress: &Progress, node: &BenchNode, bins: &Binaries, dir: &Path) -> anyhow::Result<()> {
    progress.say(&format!("strace of warm flox pod starts into {}", dir.display()));
    std::fs::create_dir_all(dir)?;
    let script = node.dir.join("flox-runc-strace");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec strace -f -b execve -tt -e trace=execve,clone,clone3,vfork,wait4,exit_group -o '{}/flox-runc.'$$ '{}' \"$@\"\n",
            dir.display(),
            bins.flox_runc().display()
        ),
    )?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let runner = node.runner().await?;
    let mut opts = node.containerd.run_options();
    opts.force_host_network = true;
    node.set_wrapper(&script)?;
    let mut outcome = Ok(());
    for env in [WARM_ENV, WARM_ENV_PINNED] {
        match start_timed(
            &runner,
            &pod_yaml("strace", Some("flox"), Some(env), FLOX_EMPTY_IMAGE, &["hello"]),
            &opts,
            Instant::now(),
        )
        .await
        {
            Ok(t) => {
                progress.say(&format!("{env}: running after {:.1} ms under strace", ms(t.running)));
                t.pod.remove().await?;
            }
            Err(e) => outcome = Err(e),
        }
    }
    node.set_wrapper(&bins.flox_runc())?;
    outcome
}

fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").trim().to_string())
}

fn machine() -> serde_json::Value {
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem_gb = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kb| (kb / 1024.0 / 1024.0).round())
        .unwrap_or(0.0);
    json!({
        "summary": format!("{cores} cores, {mem_gb} GB, {os}, kernel {kernel}"),
        "cores": cores,
        "memory_gb": mem_gb,
        "os": os,
        "kernel": kernel,
        "cpu": cpu,
    })
}
