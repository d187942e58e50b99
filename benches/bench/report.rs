//! What a run measured, printed as a table or one JSON object, and the
//! measurement window that produces it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::proc::{self, Usage};

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub samples: u64,
}

impl Latency {
    /// From a histogram of nanoseconds.
    pub fn from_hist(h: &Histogram<u64>) -> Option<Latency> {
        (!h.is_empty()).then(|| {
            let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            Latency { p50_us: us(0.5), p90_us: us(0.9), p99_us: us(0.99), p999_us: us(0.999), max_us: h.max() as f64 / 1000.0, samples: h.len() }
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerUsage {
    pub pid: u32,
    /// utime + stime of the server during the measured window.
    pub cpu_seconds: f64,
    /// Of which in user space (utime; the rest is the kernel's, mostly the
    /// sockets' sends).
    pub user_cpu_seconds: f64,
    /// Of one core.
    pub cpu_percent: f64,
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub url: String,
    /// How the subscribers were connected (`fanout`, `idle`: `--transport`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport: Option<&'static str>,
    /// Measured window, in seconds (after warm-up).
    pub seconds: f64,
    /// What `ops` counts: deliveries, handshakes, round_trips, connections.
    pub ops_kind: &'static str,
    pub ops: u64,
    pub ops_per_second: f64,
    /// `ops` per server CPU-second: the efficiency figure.
    pub ops_per_server_cpu_second: Option<f64>,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub latency: Option<Latency>,
    pub server: Option<ServerUsage>,
    pub generator_cpu_seconds: f64,
    /// Scenario parameters and extra figures.
    pub details: BTreeMap<String, f64>,
}

/// The server's thread that makes the backend hooks' and webhooks' HTTP calls.
const HOOKS_THREAD: &str = "shardcast-hooks";

/// Snapshot at the start of the measured window.
pub struct Window {
    started: Instant,
    pid: Option<u32>,
    server: Option<Usage>,
    generator_cpu: f64,
    others: Vec<(u32, Option<Usage>)>,
    /// The in-process hook backend's counters and CPU, when one runs.
    backend: Option<crate::backend::Snapshot>,
    /// The server's `shardcast-hooks` thread's CPU, when it has one.
    hooks_thread: Option<f64>,
}

/// Deltas over the window.
pub struct Measured {
    pub seconds: f64,
    pub server: Option<ServerUsage>,
    pub generator_cpu_seconds: f64,
    /// CPU seconds of each `--also-pid` process over the window.
    pub others: Vec<(u32, f64)>,
    /// More figures for the report's details (the hook backend's, the
    /// server's hooks thread's).
    pub extra: Vec<(String, f64)>,
}

impl Window {
    pub fn start(pid: Option<u32>, others: &[u32]) -> Window {
        Window {
            started: Instant::now(),
            pid,
            server: pid.and_then(proc::usage),
            generator_cpu: proc::self_cpu_seconds(),
            others: others.iter().map(|&p| (p, proc::usage(p))).collect(),
            backend: crate::backend::Snapshot::take(),
            hooks_thread: pid.and_then(|p| proc::thread_cpu_seconds(p, HOOKS_THREAD)),
        }
    }

    pub fn finish(self) -> Measured {
        let seconds = self.started.elapsed().as_secs_f64();
        let server = match (self.pid, self.server) {
            (Some(pid), Some(before)) => proc::usage(pid).map(|after| ServerUsage {
                pid,
                cpu_seconds: after.cpu_seconds - before.cpu_seconds,
                user_cpu_seconds: after.user_seconds - before.user_seconds,
                cpu_percent: (after.cpu_seconds - before.cpu_seconds) / seconds * 100.0,
                rss_before_bytes: before.rss_bytes,
                rss_after_bytes: after.rss_bytes,
            }),
            _ => None,
        };
        let others = self
            .others
            .iter()
            .filter_map(|&(p, before)| Some((p, proc::usage(p)?.cpu_seconds - before?.cpu_seconds)))
            .collect();
        let mut generator_cpu_seconds = proc::self_cpu_seconds() - self.generator_cpu;
        let mut extra = Vec::new();
        if let (Some(before), Some(after)) = (self.backend, crate::backend::Snapshot::take()) {
            // The backend thread is in this process, but it is not the generator.
            generator_cpu_seconds -= before.cpu_delta(&after).unwrap_or(0.0);
            extra.extend(before.details(&after));
        }
        if let Some(after) = self.pid.and_then(|p| proc::thread_cpu_seconds(p, HOOKS_THREAD)) {
            let cpu = after - self.hooks_thread.unwrap_or(0.0);
            extra.push(("server_hooks_thread_cpu_seconds".to_string(), (cpu * 1000.0).round() / 1000.0));
        }
        Measured { seconds, server, generator_cpu_seconds, others, extra }
    }
}

impl Report {
    pub fn new(scenario: &str, url: &str, m: Measured, ops_kind: &'static str, ops: u64) -> Report {
        let per_cpu = m.server.as_ref().filter(|s| s.cpu_seconds > 0.0).map(|s| ops as f64 / s.cpu_seconds);
        let mut details: BTreeMap<String, f64> =
            m.others.iter().map(|(p, cpu)| (format!("pid_{p}_cpu_seconds"), (cpu * 1000.0).round() / 1000.0)).collect();
        details.extend(m.extra);
        Report {
            scenario: scenario.to_string(),
            url: url.to_string(),
            transport: None,
            seconds: m.seconds,
            ops_kind,
            ops,
            ops_per_second: ops as f64 / m.seconds,
            ops_per_server_cpu_second: per_cpu,
            lost: 0,
            duplicated: 0,
            out_of_order: 0,
            latency: None,
            server: m.server,
            generator_cpu_seconds: m.generator_cpu_seconds,
            details,
        }
    }

    pub fn transport(mut self, t: crate::fallback::Transport) -> Report {
        self.transport = Some(t.name());
        self
    }

    pub fn detail(mut self, key: &str, value: f64) -> Report {
        self.details.insert(key.to_string(), value);
        self
    }

    /// Rows of (label, value) for the human table.
    pub fn rows(&self) -> Vec<(String, String)> {
        let mut rows = vec![
            ("scenario".into(), self.scenario.clone()),
            ("url".into(), self.url.clone()),
            ("measured".into(), format!("{:.2} s", self.seconds)),
            (self.ops_kind.into(), self.ops.to_string()),
            (format!("{}/s", self.ops_kind), format!("{:.0}", self.ops_per_second)),
        ];
        if let Some(t) = self.transport {
            rows.insert(2, ("transport".into(), t.to_string()));
        }
        if let Some(e) = self.ops_per_server_cpu_second {
            rows.push((format!("{} per server CPU-s", self.ops_kind), format!("{e:.0}")));
        }
        rows.push(("lost / dup / out-of-order".into(), format!("{} / {} / {}", self.lost, self.duplicated, self.out_of_order)));
        if let Some(l) = &self.latency {
            rows.push((
                "latency p50/p90/p99/p99.9/max".into(),
                format!("{:.0} / {:.0} / {:.0} / {:.0} / {:.0} µs", l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us),
            ));
        }
        if let Some(s) = &self.server {
            rows.push(("server CPU".into(), format!("{:.2} s ({:.0}% of a core; user {:.2} s)", s.cpu_seconds, s.cpu_percent, s.user_cpu_seconds)));
            rows.push(("server RSS before/after".into(), format!("{:.1} / {:.1} MiB", mib(s.rss_before_bytes), mib(s.rss_after_bytes))));
        }
        rows.push((
            "generator CPU".into(),
            format!("{:.2} s ({:.0}% of a core)", self.generator_cpu_seconds, self.generator_cpu_seconds / self.seconds * 100.0),
        ));
        for (k, v) in &self.details {
            rows.push((k.clone(), if v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v:.3}") }));
        }
        rows
    }

    pub fn print(&self, json: bool) {
        if json {
            println!("{}", serde_json::to_string(self).expect("report serialises"));
        } else {
            print_table(&["", "value"], &self.rows().into_iter().map(|(k, v)| vec![k, v]).collect::<Vec<_>>());
        }
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let cols = header.len();
    let mut width = vec![0; cols];
    for (i, h) in header.iter().enumerate() {
        width[i] = h.chars().count();
    }
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = width[i])).collect();
        println!("| {} |", padded.join(" | "));
    };
    line(header.iter().map(|s| s.to_string()).collect());
    println!("|{}|", width.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("|"));
    for r in rows {
        line(r.clone());
    }
}

/// Draws the latency distribution (latency against percentile) as SVG.
pub fn plot(path: &Path, title: &str, hist: &Histogram<u64>) -> Result<(), String> {
    use plotters::prelude::*;
    if hist.is_empty() {
        return Err("no latency samples to plot".into());
    }
    // x = "nines": 0 -> p0, 1 -> p90, 2 -> p99, 3 -> p99.9 ...
    let points: Vec<(f64, f64)> = (0..=400)
        .map(|i| {
            let nines = i as f64 / 100.0;
            let q = 1.0 - 10f64.powf(-nines);
            (nines, hist.value_at_quantile(q.min(1.0)) as f64 / 1000.0)
        })
        .collect();
    let max_y = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..4f64, 0f64..max_y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_label_formatter(&|x| format!("p{}", 100.0 - 100.0 * 10f64.powf(-x)))
        .draw()
        .map_err(|e| e.to_string())?;
    chart.draw_series(LineSeries::new(points, &BLUE)).map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
