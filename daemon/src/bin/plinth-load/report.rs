//! What a run counted: latencies and errors per operation, verification failures, and the
//! report (text for people, JSON for `table`, Markdown from `table`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use plinthd::commands::table as text_table;
use serde::{Deserialize, Serialize};

use crate::procstat::Sample;

/// Examples of unexpected errors and verification failures kept per client.
const EXAMPLES: usize = 20;

/// One operation's counts.
#[derive(Debug, Default, Clone)]
pub(crate) struct OpStats {
    /// Latency of each success, µs.
    pub(crate) latencies_us: Vec<u32>,
    /// Errors the operation may meet (a NotFound after a racing delete), by code.
    pub(crate) expected: BTreeMap<String, u64>,
    /// Errors it must not meet, by code.
    pub(crate) unexpected: BTreeMap<String, u64>,
}

/// What a client (or all of them) counted.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Per operation.
    pub(crate) ops: BTreeMap<&'static str, OpStats>,
    /// Answers that were wrong (bytes, lists, parents), the first few.
    pub(crate) failures: Vec<String>,
    /// How many answers were wrong.
    pub(crate) failure_count: u64,
    /// Unexpected errors, the first few, with their operation.
    pub(crate) examples: Vec<String>,
}

impl Stats {
    /// A success of `op` after `elapsed`.
    pub(crate) fn ok(&mut self, op: &'static str, elapsed: Duration) {
        let micros = u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX);
        self.ops.entry(op).or_default().latencies_us.push(micros);
    }

    /// An error `op` may meet.
    pub(crate) fn expected(&mut self, op: &'static str, code: tonic::Code) {
        *self
            .ops
            .entry(op)
            .or_default()
            .expected
            .entry(format!("{code:?}"))
            .or_default() += 1;
    }

    /// An error `op` must not meet.
    pub(crate) fn unexpected(&mut self, op: &'static str, status: &tonic::Status) {
        *self
            .ops
            .entry(op)
            .or_default()
            .unexpected
            .entry(format!("{:?}", status.code()))
            .or_default() += 1;
        if self.examples.len() < EXAMPLES {
            self.examples
                .push(format!("{op}: {} ({:?})", status.message(), status.code()));
        }
    }

    /// A wrong answer.
    pub(crate) fn failure(&mut self, what: String) {
        self.failure_count += 1;
        if self.failures.len() < EXAMPLES {
            self.failures.push(what);
        }
    }

    /// Successes so far.
    pub(crate) fn total_ok(&self) -> u64 {
        self.ops.values().map(|o| o.latencies_us.len() as u64).sum()
    }

    /// Unexpected errors so far.
    pub(crate) fn total_unexpected(&self) -> u64 {
        self.ops.values().flat_map(|o| o.unexpected.values()).sum()
    }

    /// Adds `other`'s counts to these.
    pub(crate) fn merge(&mut self, other: Stats) {
        for (name, op) in other.ops {
            let mine = self.ops.entry(name).or_default();
            mine.latencies_us.extend(op.latencies_us);
            for (code, n) in op.expected {
                *mine.expected.entry(code).or_default() += n;
            }
            for (code, n) in op.unexpected {
                *mine.unexpected.entry(code).or_default() += n;
            }
        }
        self.failure_count += other.failure_count;
        let room = EXAMPLES.saturating_sub(self.failures.len());
        self.failures.extend(other.failures.into_iter().take(room));
        let room = EXAMPLES.saturating_sub(self.examples.len());
        self.examples.extend(other.examples.into_iter().take(room));
    }
}

/// The daemon's resources over a run.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct Resources {
    /// With the clients connected, before any warm-up (`--warm-up`; else as `start`).
    pub(crate) cold: Sample,
    /// With the clients connected and warmed up, before they start.
    pub(crate) start: Sample,
    /// The largest of each figure while they ran.
    pub(crate) peak: Sample,
    /// When they stopped and (unless kept) removed what they wrote, still connected.
    pub(crate) end: Sample,
    /// After they disconnected (and, unless kept, removed what they wrote).
    pub(crate) after: Sample,
}

/// One operation's row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OpRow {
    /// The operation.
    pub(crate) name: String,
    /// Successes.
    pub(crate) count: u64,
    /// Successes per second.
    pub(crate) per_sec: f64,
    /// Latency percentiles, µs.
    pub(crate) p50_us: u32,
    /// 99th percentile, µs.
    pub(crate) p99_us: u32,
    /// 99.9th percentile, µs.
    pub(crate) p999_us: u32,
    /// Expected errors by code.
    pub(crate) expected: BTreeMap<String, u64>,
    /// Unexpected errors by code.
    pub(crate) unexpected: BTreeMap<String, u64>,
}

impl OpRow {
    /// The row of `op` (its latencies sorted in place) over `seconds`.
    pub(crate) fn new(name: String, op: &mut OpStats, seconds: f64) -> OpRow {
        op.latencies_us.sort_unstable();
        let count = op.latencies_us.len() as u64;
        OpRow {
            name,
            count,
            per_sec: count as f64 / seconds.max(1e-9),
            p50_us: quantile(&op.latencies_us, 0.5),
            p99_us: quantile(&op.latencies_us, 0.99),
            p999_us: quantile(&op.latencies_us, 0.999),
            expected: op.expected.clone(),
            unexpected: op.unexpected.clone(),
        }
    }
}

/// A run's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Report {
    /// The daemon's name in tables.
    pub(crate) label: String,
    /// Concurrent clients.
    pub(crate) clients: usize,
    /// How long they ran, s.
    pub(crate) seconds: f64,
    /// Per operation.
    pub(crate) ops: Vec<OpRow>,
    /// All successes per second.
    pub(crate) ops_per_sec: f64,
    /// Unexpected errors.
    pub(crate) unexpected: u64,
    /// Wrong answers.
    pub(crate) failure_count: u64,
    /// The first wrong answers.
    pub(crate) failures: Vec<String>,
    /// The first unexpected errors.
    pub(crate) examples: Vec<String>,
    /// The daemon's resources (absent when they could not be read).
    pub(crate) resources: Option<Resources>,
    /// What grew and stayed grown after the clients left.
    pub(crate) leaks: Vec<String>,
    /// The daemon went away during the run (--until-gone).
    pub(crate) gone: bool,
}

/// The `q` quantile of sorted `values` (nearest rank).
fn quantile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Report {
    /// The report of `stats` over `elapsed`.
    pub(crate) fn new(
        label: String,
        clients: usize,
        elapsed: Duration,
        mut stats: Stats,
    ) -> Report {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let ops = stats
            .ops
            .iter_mut()
            .map(|(name, op)| OpRow::new((*name).to_string(), op, seconds))
            .collect();
        Report {
            label,
            clients,
            seconds,
            ops,
            ops_per_sec: stats.total_ok() as f64 / seconds,
            unexpected: stats.total_unexpected(),
            failure_count: stats.failure_count,
            failures: stats.failures,
            examples: stats.examples,
            resources: None,
            leaks: Vec::new(),
            gone: false,
        }
    }

    /// Whether the run met its bar: no unexpected error, no wrong answer, no leak.
    pub(crate) fn passed(&self) -> bool {
        self.unexpected == 0 && self.failure_count == 0 && self.leaks.is_empty()
    }

    /// The report for people.
    pub(crate) fn text(&self) -> String {
        let codes = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(c, n)| format!("{c}={n}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let rows: Vec<[String; 7]> = self
            .ops
            .iter()
            .map(|o| {
                [
                    o.name.clone(),
                    o.count.to_string(),
                    format!("{:.0}", o.per_sec),
                    millis(o.p50_us),
                    millis(o.p99_us),
                    millis(o.p999_us),
                    [codes(&o.expected), codes(&o.unexpected)]
                        .iter()
                        .zip(["expected ", "UNEXPECTED "])
                        .filter(|(c, _)| !c.is_empty())
                        .map(|(c, what)| format!("{what}{c}"))
                        .collect::<Vec<_>>()
                        .join("; "),
                ]
            })
            .collect();
        let mut out = format!(
            "{}: {} clients for {:.1} s{}\n",
            self.label,
            self.clients,
            self.seconds,
            if self.gone {
                " (the daemon went away)"
            } else {
                ""
            }
        );
        out.push_str(&text_table(
            &["OPERATION", "OK", "OPS/S", "P50", "P99", "P99.9", "ERRORS"],
            &rows,
        ));
        let _ = writeln!(
            out,
            "total: {:.0} ops/s, {} unexpected errors, {} verification failures",
            self.ops_per_sec, self.unexpected, self.failure_count
        );
        for example in &self.examples {
            let _ = writeln!(out, "  unexpected: {example}");
        }
        for failure in &self.failures {
            let _ = writeln!(out, "  wrong: {failure}");
        }
        if let Some(r) = &self.resources {
            if r.cold != r.start {
                let _ = writeln!(
                    out,
                    "daemon before the warm-up: RSS {} MiB, {} fds, {} threads",
                    mib(r.cold.rss_kib),
                    r.cold.fds,
                    r.cold.threads
                );
            }
            let _ = writeln!(
                out,
                "daemon: RSS {} / {} / {} / {} MiB, fds {} / {} / {} / {}, threads {} / {} / {} / {} (start / peak / end / after)",
                mib(r.start.rss_kib),
                mib(r.peak.rss_kib),
                mib(r.end.rss_kib),
                mib(r.after.rss_kib),
                r.start.fds,
                r.peak.fds,
                r.end.fds,
                r.after.fds,
                r.start.threads,
                r.peak.threads,
                r.end.threads,
                r.after.threads
            );
        }
        for leak in &self.leaks {
            let _ = writeln!(out, "  LEAK: {leak}");
        }
        out
    }
}

pub(crate) fn millis(micros: u32) -> String {
    format!("{:.2} ms", f64::from(micros) / 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// Reports side by side, in Markdown: throughput per client count, then per operation at
/// each client count, then the daemons' resources.
/// The median of `values` (the mean of the middle two of an even count); 0 for none.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Reports of the same daemon (label) and client count, from rounds of the same run, as one:
/// per operation the median over the rounds of its calls/s and of each latency percentile,
/// the median of the total calls/s, errors and wrong answers summed, the resources of the
/// first round. Rounds that some operation did not reach count as absent for it.
fn merge_rounds(rounds: &[&Report]) -> Report {
    let first = rounds[0];
    let mut names: Vec<&str> = Vec::new();
    for r in rounds {
        for o in &r.ops {
            if !names.contains(&o.name.as_str()) {
                names.push(&o.name);
            }
        }
    }
    let ops = names
        .iter()
        .map(|&name| {
            let rows: Vec<&OpRow> = rounds
                .iter()
                .filter_map(|r| r.ops.iter().find(|o| o.name == name))
                .collect();
            let of = |f: fn(&OpRow) -> f64| median(rows.iter().map(|o| f(o)).collect());
            let mut expected = BTreeMap::new();
            let mut unexpected = BTreeMap::new();
            for o in &rows {
                for (code, n) in &o.expected {
                    *expected.entry(code.clone()).or_default() += n;
                }
                for (code, n) in &o.unexpected {
                    *unexpected.entry(code.clone()).or_default() += n;
                }
            }
            OpRow {
                name: name.to_string(),
                count: rows.iter().map(|o| o.count).sum(),
                per_sec: of(|o| o.per_sec),
                p50_us: of(|o| f64::from(o.p50_us)).round() as u32,
                p99_us: of(|o| f64::from(o.p99_us)).round() as u32,
                p999_us: of(|o| f64::from(o.p999_us)).round() as u32,
                expected,
                unexpected,
            }
        })
        .collect();
    Report {
        label: first.label.clone(),
        clients: first.clients,
        seconds: rounds.iter().map(|r| r.seconds).sum(),
        ops,
        ops_per_sec: median(rounds.iter().map(|r| r.ops_per_sec).collect()),
        unexpected: rounds.iter().map(|r| r.unexpected).sum(),
        failure_count: rounds.iter().map(|r| r.failure_count).sum(),
        failures: rounds.iter().flat_map(|r| r.failures.clone()).collect(),
        examples: rounds.iter().flat_map(|r| r.examples.clone()).collect(),
        resources: first.resources,
        leaks: rounds.iter().flat_map(|r| r.leaks.clone()).collect(),
        gone: rounds.iter().any(|r| r.gone),
    }
}

/// Markdown tables of `reports` side by side, one column group per daemon (label): total
/// calls/s, then per operation at each client count, then the resources of each report.
/// Several reports of the same daemon and client count are rounds of one run: the tables
/// show their medians ([`merge_rounds`]), say how many rounds, and list the resources of
/// every round. With two daemons, each per-operation table ends with the operations whose
/// p99 for the first is not below the second's.
pub(crate) fn table(reports: &[Report]) -> String {
    let mut groups: Vec<Vec<&Report>> = Vec::new();
    for r in reports {
        match groups
            .iter_mut()
            .find(|g| g[0].label == r.label && g[0].clients == r.clients)
        {
            Some(group) => group.push(r),
            None => groups.push(vec![r]),
        }
    }
    let rounds = groups.iter().map(Vec::len).max().unwrap_or(1);
    let merged: Vec<Report> = groups.iter().map(|g| merge_rounds(g)).collect();
    let mut out = table_of(&merged, reports, rounds);
    if rounds > 1 {
        out.insert_str(
            0,
            &format!("Medians over {rounds} rounds (each operation's calls/s and percentiles, the total calls/s).\n\n"),
        );
    }
    out
}

/// [`table`] of `merged` (one report per daemon and client count), the resources of every
/// report in `all`.
fn table_of(reports: &[Report], all: &[Report], rounds: usize) -> String {
    let mut labels: Vec<&str> = Vec::new();
    let mut clients: Vec<usize> = Vec::new();
    for r in reports {
        if !labels.contains(&r.label.as_str()) {
            labels.push(&r.label);
        }
        if !clients.contains(&r.clients) {
            clients.push(r.clients);
        }
    }
    let find = |label: &str, n: usize| reports.iter().find(|r| r.label == label && r.clients == n);
    let mut out = String::new();
    // Throughput.
    out.push_str("| clients |");
    for l in &labels {
        let _ = write!(out, " {l} ops/s | {l} unexpected / wrong |");
    }
    if labels.len() == 2 {
        let _ = write!(out, " {} ÷ {} |", labels[0], labels[1]);
    }
    out.push('\n');
    out.push_str(&"|---".repeat(1 + 2 * labels.len() + usize::from(labels.len() == 2)));
    out.push_str("|\n");
    for &n in &clients {
        let _ = write!(out, "| {n} |");
        for l in &labels {
            match find(l, n) {
                Some(r) => {
                    let _ = write!(
                        out,
                        " {:.0} | {} / {} |",
                        r.ops_per_sec, r.unexpected, r.failure_count
                    );
                }
                None => out.push_str(" – | – |"),
            }
        }
        if let [a, b] = labels[..] {
            match (find(a, n), find(b, n)) {
                (Some(x), Some(y)) if y.ops_per_sec > 0.0 => {
                    let _ = write!(out, " {:.2}× |", x.ops_per_sec / y.ops_per_sec);
                }
                _ => out.push_str(" – |"),
            }
        }
        out.push('\n');
    }
    // Per operation, at each client count.
    for &n in &clients {
        let _ = write!(
            out,
            "\n{n} clients, per operation (ops/s, p50 / p99 / p99.9 ms):\n\n| operation |"
        );
        for l in &labels {
            let _ = write!(out, " {l} ops/s | {l} latency |");
        }
        out.push('\n');
        out.push_str(&"|---".repeat(1 + 2 * labels.len()));
        out.push_str("|\n");
        let mut names: Vec<&str> = Vec::new();
        for l in &labels {
            for o in find(l, n).map(|r| r.ops.as_slice()).unwrap_or_default() {
                if !names.contains(&o.name.as_str()) {
                    names.push(&o.name);
                }
            }
        }
        for name in names {
            let _ = write!(out, "| {name} |");
            for l in &labels {
                match find(l, n).and_then(|r| r.ops.iter().find(|o| o.name == name)) {
                    Some(o) => {
                        let _ = write!(
                            out,
                            " {:.0} | {:.2} / {:.2} / {:.2} |",
                            o.per_sec,
                            f64::from(o.p50_us) / 1000.0,
                            f64::from(o.p99_us) / 1000.0,
                            f64::from(o.p999_us) / 1000.0
                        );
                    }
                    None => out.push_str(" – | – |"),
                }
            }
            out.push('\n');
        }
        if let [a, b] = labels[..]
            && let (Some(x), Some(y)) = (find(a, n), find(b, n))
        {
            let not_lower: Vec<String> = x
                .ops
                .iter()
                .filter_map(|o| {
                    let other = y.ops.iter().find(|p| p.name == o.name)?;
                    (o.p99_us >= other.p99_us).then(|| {
                        format!(
                            "{} ({:.2} vs {:.2})",
                            o.name,
                            f64::from(o.p99_us) / 1000.0,
                            f64::from(other.p99_us) / 1000.0
                        )
                    })
                })
                .collect();
            let compared = x
                .ops
                .iter()
                .filter(|o| y.ops.iter().any(|p| p.name == o.name))
                .count();
            let _ = writeln!(
                out,
                "\n{a}'s p99 not below {b}'s: {} of {compared} operations{}{}",
                not_lower.len(),
                if not_lower.is_empty() { "" } else { ": " },
                not_lower.join(", ")
            );
        }
    }
    // Resources.
    let each = if rounds > 1 { ", each round" } else { "" };
    let _ = write!(
        out,
        "\nThe daemons' resources (start / peak / end / after the clients left{each}; before a warm-up, when there was one, in brackets):\n\n| daemon | clients | RSS MiB | fds | threads |\n|---|---|---|---|---|\n"
    );
    for r in all {
        if let Some(s) = &r.resources {
            let cold = if s.cold == s.start {
                String::new()
            } else {
                format!("({}) ", mib(s.cold.rss_kib))
            };
            let _ = writeln!(
                out,
                "| {} | {} | {cold}{} / {} / {} / {} | {} / {} / {} / {} | {} / {} / {} / {} |",
                r.label,
                r.clients,
                mib(s.start.rss_kib),
                mib(s.peak.rss_kib),
                mib(s.end.rss_kib),
                mib(s.after.rss_kib),
                s.start.fds,
                s.peak.fds,
                s.end.fds,
                s.after.fds,
                s.start.threads,
                s.peak.threads,
                s.end.threads,
                s.after.threads
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let values: Vec<u32> = (1..=1000).collect();
        assert_eq!(quantile(&values, 0.5), 500);
        assert_eq!(quantile(&values, 0.99), 990);
        assert_eq!(quantile(&values, 0.999), 999);
        assert_eq!(quantile(&[7], 0.999), 7);
        assert_eq!(quantile(&[], 0.5), 0);
    }

    #[test]
    fn counts_merge_and_decide() {
        let mut a = Stats::default();
        a.ok("read", Duration::from_micros(10));
        a.expected("read", tonic::Code::NotFound);
        let mut b = Stats::default();
        b.ok("read", Duration::from_micros(30));
        b.ok("info", Duration::from_micros(20));
        let report = |s: Stats| Report::new("d".into(), 2, Duration::from_secs(2), s);
        a.merge(b);
        let clean = report(a);
        assert!(clean.passed());
        assert_eq!(clean.ops_per_sec, 1.5);
        let read = clean.ops.iter().find(|o| o.name == "read").unwrap();
        assert_eq!((read.count, read.p50_us, read.p99_us), (2, 10, 30));
        assert_eq!(read.expected["NotFound"], 1);

        let mut c = Stats::default();
        c.unexpected("read", &tonic::Status::internal("boom"));
        let failed = report(c);
        assert!(!failed.passed());
        assert_eq!(failed.examples, ["read: boom (Internal)"]);
        let mut d = Stats::default();
        d.failure("wrong bytes".into());
        assert!(!report(d).passed());
        let mut leaky = report(Stats::default());
        leaky.leaks.push("fds".into());
        assert!(!leaky.passed());
    }

    #[test]
    fn markdown_side_by_side() {
        let mut s = Stats::default();
        s.ok("read", Duration::from_micros(1500));
        let a = Report::new("plinthd".into(), 1, Duration::from_secs(1), s);
        let mut s = Stats::default();
        s.ok("read", Duration::from_micros(3000));
        s.ok("read", Duration::from_micros(3000));
        let mut b = Report::new("containerd".into(), 1, Duration::from_secs(8), s);
        b.resources = Some(Resources::default());
        let md = table(&[a, b]);
        assert!(md.contains("| 1 | 1 | 0 / 0 | 0 | 0 / 0 | 4.00× |"), "{md}");
        assert!(
            md.contains("| read | 1 | 1.50 / 1.50 / 1.50 | 0 | 3.00 / 3.00 / 3.00 |"),
            "{md}"
        );
        assert!(
            md.contains("| containerd | 1 | 0.0 / 0.0 / 0.0 / 0.0 |"),
            "{md}"
        );
    }

    /// Reports of the same daemon and client count are rounds: the table shows the median
    /// of each figure over them (the middle one of three, the mean of the middle two of
    /// four), sums their errors, lists every round's resources, and names the operations
    /// whose p99 is not below the other daemon's.
    #[test]
    fn rounds_merge_into_medians() {
        let round = |label: &str, millis: &[(&'static str, u64)], seconds: u64| {
            let mut s = Stats::default();
            for &(op, ms) in millis {
                s.ok(op, Duration::from_millis(ms));
            }
            let mut r = Report::new(label.into(), 4, Duration::from_secs(seconds), s);
            r.resources = Some(Resources::default());
            r
        };
        let mut failed = round("b", &[("read", 2), ("info", 1)], 1);
        failed.failure_count = 1;
        let reports = [
            round("a", &[("read", 9), ("info", 1)], 1),
            round("b", &[("read", 5), ("info", 2)], 1),
            round("a", &[("read", 1), ("info", 3)], 2),
            failed,
            round("a", &[("read", 4), ("info", 2)], 4),
            round("b", &[("read", 7), ("info", 3)], 1),
            round("b", &[("read", 3), ("info", 5)], 1),
        ];
        let md = table(&reports);
        assert!(md.starts_with("Medians over 4 rounds"), "{md}");
        // a: 2, 1, 0.5 calls/s; b: 2, 2, 2, 2.
        assert!(md.contains("| 4 | 1 | 0 / 0 | 2 | 0 / 1 | 0.50× |"), "{md}");
        // read p99: a 9, 1, 4 -> 4; b 5, 2, 7, 3 -> 4. info: a 1, 3, 2 -> 2; b 2, 1, 3, 5 -> 2.5.
        assert!(
            md.contains("| read | 0 | 4.00 / 4.00 / 4.00 | 1 | 4.00 / 4.00 / 4.00 |"),
            "{md}"
        );
        assert!(
            md.contains("| info | 0 | 2.00 / 2.00 / 2.00 | 1 | 2.50 / 2.50 / 2.50 |"),
            "{md}"
        );
        assert!(
            md.contains("a's p99 not below b's: 1 of 2 operations: read (4.00 vs 4.00)"),
            "{md}"
        );
        assert_eq!(md.matches("| a | 4 |").count(), 3, "{md}");
        assert_eq!(md.matches("| b | 4 |").count(), 4, "{md}");
        assert!(
            md.contains("end / after the clients left, each round;"),
            "{md}"
        );

        let single = table(&reports[..2]);
        assert!(!single.contains("Medians"), "{single}");
        assert!(
            single.contains("a's p99 not below b's: 1 of 2 operations: read (9.00 vs 5.00)"),
            "{single}"
        );
    }
}
