//! Pure part of the benchmark: summaries of samples, figures with their targets, the printed
//! table and the JSON document. No I/O here, so it is unit-tested.
use std::time::Duration;

use serde_json::{json, Value};

/// Summary of timing samples, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p90: f64,
    pub min: f64,
    pub max: f64,
}

/// Nearest-rank percentile (`q` in 0..=1) of sorted values: the smallest value with at least
/// `q` of the samples at or below it. For 20 samples, p90 is the 18th smallest.
fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Median (mean of the two middle values for an even count), nearest-rank p90, min, max.
/// `None` for no samples.
pub fn summarize(samples_ms: &[f64]) -> Option<Summary> {
    if samples_ms.is_empty() {
        return None;
    }
    let mut s = samples_ms.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
    Some(Summary { n, median, p90: nearest_rank(&s, 0.9), min: s[0], max: s[n - 1] })
}

/// The difference between two kinds of start measured in rounds (sample `i` of each side
/// taken in round `i`, about a second apart): Yuen's trimmed mean of the per-round
/// differences and its standard error. A median of each side is too coarse for a 2 % target
/// on this machine: a start's time has a spread of about 10 %, with drifts of 30 % over a few
/// minutes and two clusters (the median falls between them in some runs), so the ratio of
/// two medians of 40 moved between 0.96 and 1.07 over runs with nothing changed. Pairing
/// within a round takes out the drift; trimming the tails takes out the outliers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairedDifference {
    /// Rounds compared.
    pub n: usize,
    /// Trimmed mean of the baseline's samples.
    pub baseline: f64,
    /// Trimmed mean of (ours − baseline) per round.
    pub difference: f64,
    /// Standard error of `difference` (winsorized standard deviation / ((1 − 2·trim) √n)).
    pub standard_error: f64,
}

impl PairedDifference {
    /// The baseline plus the difference: what ours is, estimated against the same baseline.
    pub fn ours(&self) -> f64 {
        self.baseline + self.difference
    }
}

/// Share of samples cut from each end for [`paired_difference`]: 20 %, Yuen's usual choice.
pub const TRIM: f64 = 0.2;

/// `ours[i]` and `baseline[i]` measured in round `i`; `None` with fewer than 3 rounds or
/// sides of different lengths.
pub fn paired_difference(ours: &[f64], baseline: &[f64]) -> Option<PairedDifference> {
    if ours.len() != baseline.len() || ours.len() < 3 {
        return None;
    }
    let diffs: Vec<f64> = ours.iter().zip(baseline).map(|(o, b)| o - b).collect();
    let n = diffs.len();
    let (difference, winsorized_sd) = trimmed_mean_and_winsorized_sd(&diffs, TRIM);
    let (base, _) = trimmed_mean_and_winsorized_sd(baseline, TRIM);
    let standard_error = winsorized_sd / ((1.0 - 2.0 * TRIM) * (n as f64).sqrt());
    Some(PairedDifference { n, baseline: base, difference, standard_error })
}

/// Mean of the samples left after cutting `trim` of them from each end, and the sample
/// standard deviation after clamping those ends to the extreme values kept.
fn trimmed_mean_and_winsorized_sd(samples: &[f64], trim: f64) -> (f64, f64) {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let cut = ((trim * n as f64).floor() as usize).min((n - 1) / 2);
    let kept = &s[cut..n - cut];
    let mean = kept.iter().sum::<f64>() / kept.len() as f64;
    let (lo, hi) = (s[cut], s[n - cut - 1]);
    let winsorized: Vec<f64> = s.iter().map(|v| v.clamp(lo, hi)).collect();
    let w_mean = winsorized.iter().sum::<f64>() / n as f64;
    let var = winsorized.iter().map(|v| (v - w_mean).powi(2)).sum::<f64>() / (n as f64 - 1.0);
    (mean, var.sqrt())
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What a figure must meet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// ours / baseline <= limit
    RatioAtMost(f64),
    /// ours - baseline <= limit (in the figure's unit)
    AddedAtMost(f64),
    /// ours <= limit (in the figure's unit)
    AtMost(f64),
    /// ours == value
    Exactly(f64),
    /// No target: context for reading the other figures.
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Short id, e.g. `P1.running.median`.
    pub id: String,
    pub name: String,
    /// `ms`, `s`, `MB`, `%` (of one core) or `count`.
    pub unit: &'static str,
    pub ours: f64,
    pub baseline: Option<f64>,
    pub target: Target,
    /// What the baseline is, e.g. "runc + busybox".
    pub baseline_name: String,
}

/// How a figure fares against its target.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Met,
    /// Missed; the text says by how much.
    Missed(String),
    /// No target, or no baseline to compare with.
    NotApplicable,
}

impl Figure {
    pub fn ratio(&self) -> Option<f64> {
        self.baseline.filter(|b| *b > 0.0).map(|b| self.ours / b)
    }

    pub fn added(&self) -> Option<f64> {
        self.baseline.map(|b| self.ours - b)
    }

    pub fn verdict(&self) -> Verdict {
        match self.target {
            Target::RatioAtMost(limit) => match self.ratio() {
                Some(r) if r <= limit => Verdict::Met,
                Some(r) => {
                    Verdict::Missed(format!("ratio {r:.2} is {:.0}% over {limit:.2}", (r / limit - 1.0) * 100.0))
                }
                None => Verdict::NotApplicable,
            },
            Target::AddedAtMost(limit) => match self.added() {
                Some(a) if a <= limit => Verdict::Met,
                Some(a) => {
                    Verdict::Missed(format!("adds {a:.2} {u}, {:.2} {u} over {limit} {u}", a - limit, u = self.unit))
                }
                None => Verdict::NotApplicable,
            },
            Target::AtMost(limit) if self.ours <= limit => Verdict::Met,
            Target::AtMost(limit) => Verdict::Missed(format!(
                "{:.2} {u} is {:.2} {u} over {limit} {u}",
                self.ours,
                self.ours - limit,
                u = self.unit
            )),
            Target::Exactly(v) if self.ours == v => Verdict::Met,
            Target::Exactly(v) => Verdict::Missed(format!("{} instead of {v}", fmt_value(self.ours, self.unit))),
            Target::None => Verdict::NotApplicable,
        }
    }

    pub fn target_text(&self) -> String {
        match self.target {
            Target::RatioAtMost(l) => format!("ratio <= {l}"),
            Target::AddedAtMost(l) => format!("<= {l} {} added", self.unit),
            Target::AtMost(l) => format!("<= {l} {}", self.unit),
            Target::Exactly(v) => format!("= {v}"),
            Target::None => "-".into(),
        }
    }

    pub fn to_json(&self) -> Value {
        let (met, missed_by) = match self.verdict() {
            Verdict::Met => (json!(true), Value::Null),
            Verdict::Missed(why) => (json!(false), json!(why)),
            Verdict::NotApplicable => (Value::Null, Value::Null),
        };
        json!({
            "id": self.id,
            "name": self.name,
            "unit": self.unit,
            "ours": round3(self.ours),
            "baseline": self.baseline.map(round3),
            "baseline_name": self.baseline_name,
            "ratio": self.ratio().map(round3),
            "added": self.added().map(round3),
            "target": self.target_text(),
            "met": met,
            "missed_by": missed_by,
        })
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

pub fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "count" => format!("{v:.0}"),
        "s" => format!("{v:.2} s"),
        "MB" => format!("{v:.1} MB"),
        "%" => format!("{v:.2} %"),
        _ => format!("{v:.1} {unit}"),
    }
}

/// The table printed at the end (also pasted into docs/benchmarks.md: it is Markdown).
pub fn table(figures: &[Figure]) -> String {
    let header = ["figure", "ours", "baseline", "ratio", "target", "met?"];
    let rows: Vec<[String; 6]> = figures
        .iter()
        .map(|f| {
            let met = match f.verdict() {
                Verdict::Met => "yes".to_string(),
                Verdict::Missed(why) => format!("NO ({why})"),
                Verdict::NotApplicable => "-".to_string(),
            };
            [
                f.name.clone(),
                fmt_value(f.ours, f.unit),
                f.baseline
                    .map(|b| format!("{} ({})", fmt_value(b, f.unit), f.baseline_name))
                    .unwrap_or_else(|| "-".into()),
                f.ratio().map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into()),
                f.target_text(),
                met,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(header.to_vec());
    out.push_str(&line(widths.iter().map(|_| "").collect::<Vec<_>>()).replace(' ', "-"));
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(ours: f64, baseline: Option<f64>, target: Target) -> Figure {
        Figure { id: "x".into(), name: "x".into(), unit: "ms", ours, baseline, target, baseline_name: "b".into() }
    }

    #[test]
    fn median_and_p90_of_twenty() {
        let samples: Vec<f64> = (1..=20).rev().map(f64::from).collect();
        let s = summarize(&samples).unwrap();
        assert_eq!(s.median, 10.5);
        assert_eq!(s.p90, 18.0);
        assert_eq!((s.min, s.max, s.n), (1.0, 20.0, 20));
    }

    #[test]
    fn median_of_odd_count_and_empty() {
        assert_eq!(summarize(&[3.0, 1.0, 2.0]).unwrap().median, 2.0);
        assert_eq!(summarize(&[5.0]).unwrap().p90, 5.0);
        assert!(summarize(&[]).is_none());
    }

    #[test]
    fn ratio_target_met_and_missed() {
        assert_eq!(fig(105.0, Some(100.0), Target::RatioAtMost(1.05)).verdict(), Verdict::Met);
        match fig(120.0, Some(100.0), Target::RatioAtMost(1.05)).verdict() {
            Verdict::Missed(why) => {
                assert!(why.contains("1.20") && why.contains("14% over"), "{why}")
            }
            v => panic!("{v:?}"),
        }
        assert_eq!(fig(1.0, None, Target::RatioAtMost(1.0)).verdict(), Verdict::NotApplicable);
    }

    #[test]
    fn added_and_absolute_targets() {
        assert_eq!(fig(4.0, Some(1.5), Target::AddedAtMost(3.0)).verdict(), Verdict::Met);
        match fig(5.0, Some(1.0), Target::AddedAtMost(3.0)).verdict() {
            Verdict::Missed(why) => assert!(why.contains("adds 4.00 ms, 1.00 ms over 3"), "{why}"),
            v => panic!("{v:?}"),
        }
        assert_eq!(fig(9.9, None, Target::AtMost(10.0)).verdict(), Verdict::Met);
        assert!(matches!(fig(2.0, None, Target::Exactly(1.0)).verdict(), Verdict::Missed(_)));
        assert_eq!(fig(2.0, None, Target::None).verdict(), Verdict::NotApplicable);
    }

    #[test]
    fn table_is_markdown_with_one_row_per_figure() {
        let t = table(&[fig(105.0, Some(100.0), Target::RatioAtMost(1.05)), fig(2.0, None, Target::Exactly(1.0))]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("| figure"));
        assert!(lines[1].starts_with("|--") && !lines[1].contains(' '));
        assert!(lines[2].contains("105.0 ms") && lines[2].contains("1.05") && lines[2].contains("yes"));
        assert!(lines[3].contains("NO (2.0 ms instead of 1)"), "{}", lines[3]);
        assert!(lines.iter().all(|l| l.chars().count() == lines[0].chars().count()));
    }

    #[test]
    fn json_has_ratio_and_verdict() {
        let v = fig(120.0, Some(100.0), Target::RatioAtMost(1.05)).to_json();
        assert_eq!(v["ratio"], 1.2);
        assert_eq!(v["met"], false);
        assert!(v["missed_by"].as_str().unwrap().contains("over"));
    }

    #[test]
    fn paired_difference_takes_out_a_drift_shared_by_both_sides() {
        // Both sides drift by 47.5 over the rounds; ours is always 2 slower.
        let base: Vec<f64> = (0..20).map(|i| 100.0 + 2.5 * f64::from(i)).collect();
        let ours: Vec<f64> = base.iter().map(|b| b + 2.0).collect();
        let p = paired_difference(&ours, &base).unwrap();
        assert_eq!(p.n, 20);
        assert!((p.difference - 2.0).abs() < 1e-9, "{p:?}");
        assert!(p.standard_error.abs() < 1e-9, "{p:?}");
        // The trimmed mean of 100, 102.5 … 147.5 without 4 at each end.
        assert!((p.baseline - 123.75).abs() < 1e-9, "{p:?}");
        assert!((p.ours() - 125.75).abs() < 1e-9);
    }

    #[test]
    fn paired_difference_trims_outliers_and_reports_their_spread() {
        // Differences 1, -1, 1, -1 … with two wild rounds (+80, -60) that the trim cuts.
        let base = vec![100.0; 10];
        let mut ours: Vec<f64> = (0..10).map(|i| if i % 2 == 0 { 101.0 } else { 99.0 }).collect();
        ours[3] = 180.0;
        ours[6] = 40.0;
        let p = paired_difference(&ours, &base).unwrap();
        assert!(p.difference.abs() < 1e-9, "{p:?}");
        // Winsorized: 1,-1 × 4 each plus the two clamped to ±1: sd of ten ±1 values = 1.054;
        // divided by 0.6 √10.
        assert!((p.standard_error - 1.0541 / (0.6 * 10f64.sqrt())).abs() < 1e-3, "{p:?}");
        assert!(paired_difference(&ours, &base[..9]).is_none());
        assert!(paired_difference(&[1.0, 2.0], &[1.0, 2.0]).is_none());
    }
}
