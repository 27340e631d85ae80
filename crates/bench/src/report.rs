//! What the figures produce: the figures and raw samples of a run, and at the end the
//! printed table and target/bench.json (machine, versions, figures with `met` flags, samples).
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use imageless_e2e::repo_root;
use serde_json::json;

use crate::stats::{self, Figure, Target};

/// The figures plus raw samples, for the JSON.
#[derive(Default)]
pub struct Results {
    pub figures: Vec<Figure>,
    pub samples: serde_json::Map<String, serde_json::Value>,
}

impl Results {
    pub fn add(&mut self, f: Figure) {
        self.figures.push(f);
    }
    pub fn samples(&mut self, key: &str, v: &[f64]) {
        self.samples.insert(key.into(), json!(v.iter().map(|x| (x * 1000.0).round() / 1000.0).collect::<Vec<_>>()));
    }
}

pub fn figure(
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

/// Prints the table and writes target/bench.json.
pub fn write(results: &Results, containerd: &str, elapsed: Duration) -> anyhow::Result<()> {
    let machine = machine();
    let date = command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
    let table = stats::table(&results.figures);
    println!(
        "\nimageless benchmarks, {date}, {}, containerd {containerd}, {:.0} s\n",
        machine["summary"].as_str().unwrap_or(""),
        elapsed.as_secs_f64()
    );
    print!("{table}");
    let doc = json!({
        "date": date,
        "machine": machine,
        "containerd": containerd,
        "runc": command_line(crate::context::REAL_RUNC, &["--version"]),
        "nix": command_line("nix-store", &["--version"]),
        "nginx": command_line("nginx", &["-v"]),
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

/// The first line a command prints (stdout, else stderr), trimmed.
pub fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = if out.stdout.is_empty() { out.stderr } else { out.stdout };
    Some(String::from_utf8_lossy(&text).lines().next().unwrap_or("").trim().to_string())
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
