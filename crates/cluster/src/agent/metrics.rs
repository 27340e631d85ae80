//! The agent's metrics in the Prometheus text exposition format (version 0.0.4), written by
//! hand: a dozen counters, gauges and one histogram do not need a metrics library, and the
//! writer is checked by a real parser (Python's `prometheus_client`) in the e2e suite.
//!
//! Sources: the pull records the runtime appends (pulls, durations, bytes by substituter, cache
//! hits and misses, failures by kind), the agent's own gc runs and pre-pulls, and a measure of
//! the node store taken at each scrape.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use imageless_node::pressure::{PressureReport, Usage};
use imageless_node::pull_record::{Phase, PullRecord};

/// Upper bounds (seconds) of the pull duration histogram's buckets.
pub const DURATION_BUCKETS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// What the node store looks like now (measured at each scrape).
#[derive(Debug, Clone, Default)]
pub struct StoreGauges {
    pub usage: Usage,
    pub environments: u64,
    pub views: u64,
}

#[derive(Debug, Default)]
struct State {
    pulls_succeeded: u64,
    pulls_failed: u64,
    /// Cumulative counts per bucket of [`DURATION_BUCKETS`], then the sum and count.
    duration_buckets: [u64; DURATION_BUCKETS.len()],
    duration_sum: f64,
    duration_count: u64,
    fetched_bytes: BTreeMap<String, u64>,
    fetched_paths: BTreeMap<String, u64>,
    /// NARs that failed their checks, by substituter.
    corrupt_nars: BTreeMap<String, u64>,
    /// Pulls that skipped a substituter, by (substituter, why: down, slow, invalid).
    skipped: BTreeMap<(String, String), u64>,
    hits: u64,
    misses: u64,
    gc_runs: u64,
    gc_freed_bytes: u64,
    gc_envs: u64,
    gc_paths: u64,
    errors: BTreeMap<String, u64>,
    prepull: BTreeMap<String, bool>,
}

#[derive(Debug, Default)]
pub struct Metrics {
    state: Mutex<State>,
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Counts one pull record.
    pub fn observe(&self, record: &PullRecord) {
        self.with(|s| match &record.phase {
            Phase::Start { .. } => s.misses += 1,
            Phase::Hit => s.hits += 1,
            Phase::End { duration_ms, sources, .. } => {
                s.pulls_succeeded += 1;
                s.observe_duration(*duration_ms);
                for (url, got) in sources {
                    if got.paths > 0 {
                        *s.fetched_bytes.entry(url.clone()).or_default() += got.bytes;
                        *s.fetched_paths.entry(url.clone()).or_default() += got.paths;
                    }
                    if got.corrupt > 0 {
                        *s.corrupt_nars.entry(url.clone()).or_default() += got.corrupt;
                    }
                    if let Some(why) = &got.skipped {
                        *s.skipped.entry((url.clone(), why.clone())).or_default() += 1;
                    }
                }
            }
            Phase::Failed { duration_ms, kind, .. } => {
                s.pulls_failed += 1;
                s.observe_duration(*duration_ms);
                *s.errors.entry(kind.clone()).or_default() += 1;
            }
        })
    }

    /// Counts a pressure gc that ran.
    pub fn observe_gc(&self, report: &PressureReport) {
        if !report.ran {
            return;
        }
        self.with(|s| {
            s.gc_runs += 1;
            s.gc_freed_bytes += report.bytes_freed;
            s.gc_envs += report.envs.len() as u64;
            s.gc_paths += report.store_paths as u64;
        })
    }

    /// Counts an error of the agent's own (`gc`, `prepull`, `events`, `config`).
    pub fn error(&self, kind: &str) {
        self.with(|s| *s.errors.entry(kind.to_string()).or_default() += 1)
    }

    pub fn set_prepull(&self, env: &str, ready: bool) {
        self.with(|s| s.prepull.insert(env.to_string(), ready));
    }

    /// The exposition, with the store gauges measured by the caller.
    pub fn render(&self, store: &StoreGauges) -> String {
        self.with(|s| s.render(store))
    }
}

impl State {
    fn observe_duration(&mut self, ms: u64) {
        let secs = ms as f64 / 1000.0;
        for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.duration_buckets[i] += 1;
            }
        }
        self.duration_sum += secs;
        self.duration_count += 1;
    }

    fn render(&self, store: &StoreGauges) -> String {
        let mut out = String::new();
        let u = &store.usage;
        gauge(&mut out, "imageless_store_bytes", "NAR bytes of the paths in the node store.", u.store_bytes);
        gauge(&mut out, "imageless_store_paths", "Store paths in the node store.", u.store_paths);
        gauge(
            &mut out,
            "imageless_store_filesystem_capacity_bytes",
            "Size of the filesystem holding the node store.",
            u.fs_capacity,
        );
        gauge(
            &mut out,
            "imageless_store_filesystem_available_bytes",
            "Bytes available on the filesystem holding the node store.",
            u.fs_available,
        );
        gauge(&mut out, "imageless_environments", "Rendered environments on the node.", store.environments);
        gauge(&mut out, "imageless_views", "Closure views on the node.", store.views);

        header(&mut out, "imageless_pulls_total", "counter", "Environment pulls that rendered (success) or failed.");
        for (result, n) in [("success", self.pulls_succeeded), ("failure", self.pulls_failed)] {
            let _ = writeln!(out, "imageless_pulls_total{{result=\"{result}\"}} {n}");
        }
        header(
            &mut out,
            "imageless_pull_duration_seconds",
            "histogram",
            "Time from a pull's start to its end or failure.",
        );
        for (bound, n) in DURATION_BUCKETS.iter().zip(self.duration_buckets) {
            let _ = writeln!(out, "imageless_pull_duration_seconds_bucket{{le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(out, "imageless_pull_duration_seconds_bucket{{le=\"+Inf\"}} {}", self.duration_count);
        let _ = writeln!(out, "imageless_pull_duration_seconds_sum {}", self.duration_sum);
        let _ = writeln!(out, "imageless_pull_duration_seconds_count {}", self.duration_count);
        labelled(
            &mut out,
            "imageless_pull_fetched_bytes_total",
            "NAR bytes fetched by pulls, by substituter.",
            "source",
            &self.fetched_bytes,
        );
        labelled(
            &mut out,
            "imageless_pull_fetched_paths_total",
            "Store paths fetched by pulls, by substituter.",
            "source",
            &self.fetched_paths,
        );
        labelled(
            &mut out,
            "imageless_substituter_corrupt_nars_total",
            "NARs a substituter served that failed their checks (discarded, fetched from another), by substituter.",
            "source",
            &self.corrupt_nars,
        );
        header(
            &mut out,
            "imageless_substituter_skipped_total",
            "counter",
            "Pulls that skipped a substituter, by substituter and reason (down: refused, stalled or 5xx; slow: no nix-cache-info in time; invalid: not a cache for /nix/store).",
        );
        for ((url, why), n) in &self.skipped {
            let _ = writeln!(
                out,
                "imageless_substituter_skipped_total{{source=\"{}\",reason=\"{}\"}} {n}",
                escape(url),
                escape(why)
            );
        }
        counter(
            &mut out,
            "imageless_environment_cache_hits_total",
            "Environment lookups (creates, prefetches, pulls) that found it rendered.",
            self.hits,
        );
        counter(
            &mut out,
            "imageless_environment_cache_misses_total",
            "Environment lookups that had to fetch and render it.",
            self.misses,
        );
        counter(&mut out, "imageless_gc_runs_total", "Disk-pressure gc runs.", self.gc_runs);
        counter(
            &mut out,
            "imageless_gc_freed_bytes_total",
            "Filesystem bytes freed by disk-pressure gc.",
            self.gc_freed_bytes,
        );
        counter(
            &mut out,
            "imageless_gc_removed_environments_total",
            "Environments removed by disk-pressure gc.",
            self.gc_envs,
        );
        counter(
            &mut out,
            "imageless_gc_removed_paths_total",
            "Store paths removed by disk-pressure gc.",
            self.gc_paths,
        );
        labelled(
            &mut out,
            "imageless_errors_total",
            "Errors by kind (pull failures and the agent's own).",
            "kind",
            &self.errors,
        );
        header(
            &mut out,
            "imageless_prepull_ready",
            "gauge",
            "1 when a pre-pulled environment is rendered on the node.",
        );
        for (env, ready) in &self.prepull {
            let _ = writeln!(out, "imageless_prepull_ready{{environment=\"{}\"}} {}", escape(env), u8::from(*ready));
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

fn labelled(out: &mut String, name: &str, help: &str, label: &str, values: &BTreeMap<String, u64>) {
    header(out, name, "counter", help);
    for (k, v) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {v}", escape(k));
    }
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use imageless_node::pull_record::SourceBytes;

    fn record(phase: Phase) -> PullRecord {
        PullRecord {
            v: 1,
            time_ms: 0,
            pull: "1.0".into(),
            env: "flox/hello".into(),
            generation: Some(1),
            mode: "run".into(),
            pod: None,
            phase,
        }
    }

    #[test]
    fn counts_pulls_bytes_by_source_hits_gc_and_errors() {
        let m = Metrics::default();
        m.observe(&record(Phase::Start { paths: 2, bytes: 300 }));
        m.observe(&record(Phase::End {
            duration_ms: 700,
            paths: 2,
            bytes: 300,
            sources: [
                ("http://h/\"cache\"".to_string(), SourceBytes { paths: 2, bytes: 300, ..SourceBytes::default() }),
                (
                    "http://down/cache".to_string(),
                    SourceBytes { skipped: Some("down".into()), ..SourceBytes::default() },
                ),
                ("http://bad/cache".to_string(), SourceBytes { corrupt: 3, ..SourceBytes::default() }),
            ]
            .into(),
            warnings: Vec::new(),
        }));
        m.observe(&record(Phase::Hit));
        m.observe(&record(Phase::Failed { duration_ms: 50, kind: "no-room".into(), message: "x".into() }));
        m.observe_gc(&PressureReport {
            ran: true,
            bytes_freed: 4096,
            envs: vec!["k".into()],
            store_paths: 3,
            ..Default::default()
        });
        m.observe_gc(&PressureReport::default());
        m.set_prepull("flox/hello", true);
        let text = m.render(&StoreGauges::default());
        for line in [
            "imageless_pulls_total{result=\"success\"} 1",
            "imageless_substituter_skipped_total{source=\"http://down/cache\",reason=\"down\"} 1",
            "imageless_substituter_corrupt_nars_total{source=\"http://bad/cache\"} 3",
            "imageless_pulls_total{result=\"failure\"} 1",
            "imageless_pull_duration_seconds_bucket{le=\"0.1\"} 1",
            "imageless_pull_duration_seconds_bucket{le=\"1\"} 2",
            "imageless_pull_duration_seconds_bucket{le=\"+Inf\"} 2",
            "imageless_pull_duration_seconds_sum 0.75",
            "imageless_pull_fetched_bytes_total{source=\"http://h/\\\"cache\\\"\"} 300",
            "imageless_environment_cache_hits_total 1",
            "imageless_environment_cache_misses_total 1",
            "imageless_gc_runs_total 1",
            "imageless_gc_freed_bytes_total 4096",
            "imageless_errors_total{kind=\"no-room\"} 1",
            "imageless_prepull_ready{environment=\"flox/hello\"} 1",
            "# TYPE imageless_pull_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
