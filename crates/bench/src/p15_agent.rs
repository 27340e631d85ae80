//! P15 the node agent's own cost: `imageless node agent --standalone` (the release binary the
//! installer image ships, on the bench node's config: gc every 10 s, the pull-record tail every
//! second, the metrics endpoint) measured from /proc while the node works and while it idles.
//!
//! The agent's config is the bench node's with gc thresholds it never reaches (see
//! [`agent_config`]).
//!
//! - During bursts: 20 cold flox pods of one environment started at once (P3's burst), 3 times.
//!   CPU is the agent's utime + stime from the burst's start until the pods are removed and at
//!   least 2 s after every pod printed (the tail reads each second, so the burst's records are in
//!   by then), in % of one core and in seconds; the peak RSS is VmHWM after resetting it
//!   (`/proc/PID/clear_refs` 5) at the burst's start, and its anonymous part is the most RssAnon
//!   sampled every 10 ms. Context, no target. Each burst's pull must show in the agent's metrics.
//! - Idle: afterwards, with the burst's environment and flox/large (300+ store paths, which each
//!   gc tick reads the records of) in the store and no pod running, 30 s with a scrape every 15 s
//!   (a common Prometheus interval). CPU over the 30 s ≤ 1 % of a core; RSS ≤ 20 MB.
//!
//! RSS is VmRSS (/proc/PID/status): all the agent's resident pages, the anonymous ones (heap,
//! stacks: what it allocates) and the file-backed ones (the pages of its static binary it has
//! touched). VmRSS is the target's figure: it is what `ps` and `top` call RSS, and the larger
//! of the two, so a met target holds for either reading. RssAnon and smaps_rollup's Pss (the
//! binary's pages shared with the node's other `imageless` processes counted in part) are
//! context: the anonymous part is what would grow with a leak.
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use imageless_e2e::flox_node::{env_pod, free_port};
use imageless_e2e::FLOX_EMPTY_IMAGE;

use crate::context::Bench;
use crate::report::{figure, Results};
use crate::stats::{summarize, Target};
use crate::timing::{start_many, start_timed, Settle};

const PODS: usize = 20;
const BURSTS: usize = 3;
const IDLE: Duration = Duration::from_secs(30);
const SCRAPE_EVERY: Duration = Duration::from_secs(15);
/// After a burst's last first output: the tail (every second) has read its records.
const DRAIN: Duration = Duration::from_secs(2);
/// USER_HZ on Linux: /proc/PID/stat's times are in 1/100 s.
const TICKS_PER_S: f64 = 100.0;

/// The agent, killed when dropped.
struct Agent {
    child: Child,
    addr: String,
}

impl Agent {
    fn start(bench: &Bench, log: &Path) -> anyhow::Result<Agent> {
        let addr = format!("127.0.0.1:{}", free_port());
        let config = bench.dir.join("p15-agent.toml");
        std::fs::write(&config, agent_config(&std::fs::read_to_string(&bench.node.config_path)?))?;
        let child = Command::new(bench.bins.imageless())
            .args(["node", "agent", "--standalone", "--metrics-listen", &addr])
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("starting {} node agent", bench.bins.imageless().display()))?;
        let mut agent = Agent { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while agent.scrape().is_err() {
            if let Some(status) = agent.child.try_wait()? {
                bail!("the node agent exited ({status}): {}", std::fs::read_to_string(log).unwrap_or_default());
            }
            if Instant::now() > deadline {
                bail!("the node agent served no /metrics within 20 s: {}", std::fs::read_to_string(log)?);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(agent)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `GET /metrics`: the body.
    fn scrape(&self) -> anyhow::Result<String> {
        let mut s = std::net::TcpStream::connect(&self.addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let (head, body) = resp.split_once("\r\n\r\n").context("no HTTP header")?;
        if !head.contains(" 200 ") {
            bail!("GET /metrics: {head}");
        }
        Ok(body.to_string())
    }

    /// A sample's value in the last scrape (`name{labels}` as written), 0 when absent.
    fn metric(&self, sample: &str) -> anyhow::Result<f64> {
        let body = self.scrape()?;
        Ok(body
            .lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent's node config: the bench node's, with disk-pressure thresholds of 100 and 99 %.
/// The gc check still runs every 10 s (measuring the filesystem and reading the store's records)
/// but never sweeps: this shared machine's disk is filled by other work (60 to over 90 % full
/// has been seen), and a gc at the default 85 % would remove what the bursts and the idle store
/// hold, under the exclusive store lock. The figures are those of a node not under disk pressure.
fn agent_config(node_config: &str) -> String {
    let mut lines: Vec<&str> = node_config.lines().filter(|l| !l.starts_with("gc_")).collect();
    lines.extend(["gc_high_threshold_percent = 100", "gc_low_threshold_percent = 99"]);
    lines.join("\n") + "\n"
}

/// utime + stime of `pid` (all its threads), in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): state is the first, utime the 12th.
    let after_name = stat.rsplit_once(") ").map(|(_, rest)| rest).context("/proc/PID/stat")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 =
        fields.get(11..13).context("/proc/PID/stat")?.iter().map(|f| f.parse::<u64>()).sum::<Result<_, _>>()?;
    Ok(ticks as f64 / TICKS_PER_S)
}

/// The memory of `pid` in kB: /proc/PID/status's VmRSS, RssAnon, VmHWM.
#[derive(Debug, Default, Clone, Copy)]
struct Memory {
    rss: u64,
    anon: u64,
    hwm: u64,
}

fn kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |key| kb_field(&status, key).with_context(|| format!("/proc/{pid}/status has no {key}"));
    Ok(Memory { rss: field("VmRSS:")?, anon: field("RssAnon:")?, hwm: field("VmHWM:")? })
}

/// smaps_rollup's Pss in kB (None where the kernel has no smaps_rollup).
fn pss(pid: u32) -> Option<u64> {
    kb_field(&std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?, "Pss:")
}

/// Resets VmHWM to the current RSS; false when the kernel refuses.
fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Samples the agent's memory every `every` on a thread until stopped: the largest of each.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Memory>,
}

impl Sampler {
    fn start(pid: u32, every: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut most = Memory::default();
            while !flag.load(Ordering::Relaxed) {
                if let Ok(m) = memory(pid) {
                    most = Memory { rss: most.rss.max(m.rss), anon: most.anon.max(m.anon), hwm: most.hwm.max(m.hwm) };
                }
                std::thread::sleep(every);
            }
            most
        });
        Sampler { stop, thread }
    }

    fn finish(self) -> Memory {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// What one window measured: CPU in % of a core, peak RSS and its anonymous part in MB.
#[derive(Default)]
struct Windows {
    cpu_percent: Vec<f64>,
    cpu_s: Vec<f64>,
    rss_mb: Vec<f64>,
    anon_mb: Vec<f64>,
}

const KB_PER_MB: f64 = 1024.0;

pub async fn run(bench: &Bench, env: &str, closure: &[String], results: &mut Results) -> anyhow::Result<()> {
    let runner = bench.runner().await?;
    let opts = bench.run_options();
    let settle = Settle::now(Duration::from_secs(1));
    bench.make_cold(closure)?;
    let log = bench.dir.join("p15-agent.log");
    let agent = Agent::start(bench, &log)?;
    let pid = agent.pid();
    bench.say(&format!(
        "P15: node agent (pid {pid}, {}) on the bench node; {BURSTS} bursts of {PODS} cold {env} pods",
        bench.bins.imageless().display()
    ));

    let mut burst = Windows::default();
    for round in 0..BURSTS {
        if round > 0 {
            bench.make_cold(closure)?;
        }
        settle.wait().await;
        let pulls = agent.metric("imageless_pulls_total{result=\"success\"}")?;
        let exact_peak = reset_peak(pid);
        let sampler = Sampler::start(pid, Duration::from_millis(10));
        let cpu0 = cpu_seconds(pid)?;
        let t0 = Instant::now();
        let yamls =
            (0..PODS).map(|i| env_pod(&format!("p15-{round}-{i}"), env, FLOX_EMPTY_IMAGE, &["hello"])).collect();
        let started = start_many(&bench.node.containerd.endpoint(), &opts, yamls).await?;
        // The window ends once start_many has removed the pods, and at least DRAIN after the last
        // first output.
        let end = started.wall + DRAIN;
        if let Some(rest) = end.checked_sub(t0.elapsed()) {
            tokio::time::sleep(rest).await;
        }
        let window = t0.elapsed();
        let cpu = cpu_seconds(pid)? - cpu0;
        let sampled = sampler.finish();
        let now = memory(pid)?;
        let peak = if exact_peak { now.hwm.max(sampled.rss) } else { sampled.rss };
        let pulled = agent.metric("imageless_pulls_total{result=\"success\"}")? - pulls;
        if pulled < 1.0 {
            bail!("P15: the agent's metrics show no pull for burst {} (log: {})", round + 1, log.display());
        }
        burst.cpu_s.push(cpu);
        burst.cpu_percent.push(cpu / window.as_secs_f64() * 100.0);
        burst.rss_mb.push(peak as f64 / KB_PER_MB);
        burst.anon_mb.push(sampled.anon.max(now.anon) as f64 / KB_PER_MB);
        bench.say(&format!(
            "P15: burst {}: {:.1} s, agent CPU {cpu:.2} s ({:.2} % of a core), peak RSS {:.1} MB (anonymous {:.1} MB)",
            round + 1,
            window.as_secs_f64(),
            burst.cpu_percent[round],
            burst.rss_mb[round],
            burst.anon_mb[round]
        ));
    }

    bench.say(&format!(
        "P15: {} into the store (a pod of it), then {} s idle",
        crate::p6_large::LARGE_ENV,
        IDLE.as_secs()
    ));
    let large = env_pod("p15-large", crate::p6_large::LARGE_ENV, FLOX_EMPTY_IMAGE, &["echo", "p15"]);
    start_timed(&runner, &large, &opts, Instant::now()).await?.pod.remove().await?;
    settle.wait().await;
    // Let a gc tick and a tail tick pass over the larger store before the window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let store_paths = agent.metric("imageless_store_paths")?;
    reset_peak(pid);
    let sampler = Sampler::start(pid, Duration::from_millis(100));
    let cpu0 = cpu_seconds(pid)?;
    let t0 = Instant::now();
    let mut scrapes = 0;
    while t0.elapsed() < IDLE {
        let next = SCRAPE_EVERY * (scrapes + 1) - SCRAPE_EVERY / 2;
        if next < IDLE && t0.elapsed() >= next {
            agent.scrape()?;
            scrapes += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let window = t0.elapsed();
    let idle_cpu = cpu_seconds(pid)? - cpu0;
    let sampled = sampler.finish();
    let now = memory(pid)?;
    let idle_pss = pss(pid);
    drop(agent);
    let idle_cpu_percent = idle_cpu / window.as_secs_f64() * 100.0;
    let idle_rss = now.rss.max(sampled.rss) as f64 / KB_PER_MB;
    let idle_anon = now.anon.max(sampled.anon) as f64 / KB_PER_MB;
    bench.say(&format!(
        "P15: idle {:.0} s ({store_paths} store paths, {scrapes} scrapes): CPU {idle_cpu:.2} s ({idle_cpu_percent:.3} % of a \
         core), RSS {idle_rss:.1} MB (anonymous {idle_anon:.1} MB, Pss {})",
        window.as_secs_f64(),
        idle_pss.map(|k| format!("{:.1} MB", k as f64 / KB_PER_MB)).unwrap_or_else(|| "-".into())
    ));

    add_figures(
        results,
        &burst,
        Idle {
            cpu_percent: idle_cpu_percent,
            cpu_s: idle_cpu,
            rss_mb: idle_rss,
            anon_mb: idle_anon,
            pss_mb: idle_pss.map(|k| k as f64 / KB_PER_MB),
            store_paths,
            scrapes,
        },
    );
    Ok(())
}

struct Idle {
    cpu_percent: f64,
    cpu_s: f64,
    rss_mb: f64,
    anon_mb: f64,
    pss_mb: Option<f64>,
    store_paths: f64,
    scrapes: u32,
}

fn add_figures(results: &mut Results, burst: &Windows, idle: Idle) {
    results.samples("P15.burst_cpu_percent", &burst.cpu_percent);
    results.samples("P15.burst_cpu_s", &burst.cpu_s);
    results.samples("P15.burst_rss_mb", &burst.rss_mb);
    results.samples("P15.burst_anon_mb", &burst.anon_mb);
    results.samples("P15.idle_cpu_s", &[idle.cpu_s]);
    let idle_what = format!(
        "{} s, no pod, {} store paths, a scrape every {} s",
        IDLE.as_secs(),
        idle.store_paths,
        SCRAPE_EVERY.as_secs()
    );
    results.add(figure(
        "P15.rss_idle",
        &format!("P15 node agent RSS at idle (VmRSS, most over {idle_what})"),
        "MB",
        idle.rss_mb,
        None,
        "",
        Target::AtMost(20.0),
    ));
    results.add(figure(
        "P15.context.rss_idle_anon",
        &format!(
            "P15 context: its anonymous part (RssAnon; Pss {})",
            idle.pss_mb.map(|p| format!("{p:.1} MB")).unwrap_or_else(|| "-".into())
        ),
        "MB",
        idle.anon_mb,
        None,
        "",
        Target::None,
    ));
    results.add(figure(
        "P15.cpu_idle",
        &format!("P15 node agent CPU at idle (utime + stime over {idle_what}; {} scrapes)", idle.scrapes),
        "%",
        idle.cpu_percent,
        None,
        "",
        Target::AtMost(1.0),
    ));
    let most = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    results.add(figure(
        "P15.rss_burst",
        &format!("P15 node agent peak RSS while {PODS} cold flox pods start at once (VmHWM, most of {BURSTS} bursts)"),
        "MB",
        most(&burst.rss_mb),
        None,
        "",
        Target::None,
    ));
    results.add(figure(
        "P15.context.rss_burst_anon",
        &format!("P15 context: its anonymous part (RssAnon sampled every 10 ms, most of {BURSTS} bursts)"),
        "MB",
        most(&burst.anon_mb),
        None,
        "",
        Target::None,
    ));
    results.add(figure(
        "P15.cpu_burst",
        &format!(
            "P15 node agent CPU while {PODS} cold flox pods start at once (utime + stime from the burst's start until \
             they are removed, at least {} s after the last first output; median of {BURSTS})",
            DRAIN.as_secs()
        ),
        "%",
        summarize(&burst.cpu_percent).map(|s| s.median).unwrap_or(0.0),
        None,
        "",
        Target::None,
    ));
}
