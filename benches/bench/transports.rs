//! `transports`: what the fallback transports cost against WebSocket,
//! measured side by side in one run (interleaved rounds, the same binary
//! and config, a fresh server per run).
//!
//! 1. Fan-out to S subscribers on WebSocket, HTTP-streaming and SSE
//!    (`fanout --transport`), as fast as it goes (`--max --window W`):
//!    deliveries per server CPU-second, and the bytes each delivery took
//!    on the subscriber's wire.
//! 2. The same at a fixed rate (`--rate`, one frame per send, mostly).
//! 3. C idle subscribed sessions on each transport (`idle --transport`):
//!    server RSS per session, idle CPU, and the server's CPU per session
//!    set up (connect, welcome, subscribe: on a fallback transport the
//!    subscribe is a POST on a connection of its own).
//!
//! Publishers are WebSocket clients in every run; a fallback subscriber
//! opens its stream, reads its welcome and subscribes with one
//! `POST /emulation`.

use clap::Args;

use crate::fallback::Transport;
use crate::report::Report;
use crate::{bench_config, interleave, print_medians, sibling, Metric, RoundArgs, Variant};

#[derive(Debug, Clone, Args)]
pub struct TransportsArgs {
    #[command(flatten)]
    rounds: RoundArgs,
    /// Subscribers in the fan-out runs.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Messages in flight per publisher in the `--max` fan-out runs.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Publishes per second in the fixed-rate fan-out runs (0: none).
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Sessions in the idle runs (0: none).
    #[arg(long, default_value_t = 2000)]
    connections: usize,
}

const TRANSPORTS: [Transport; 3] = [Transport::WebSocket, Transport::HttpStream, Transport::Sse];

/// A printed table: its title, its rows, each transport's reports.
type Section = (String, Vec<(&'static str, Metric)>, Vec<Vec<Report>>);

pub fn run(a: TransportsArgs) -> Result<(), String> {
    // The admin listener's /metrics gives the frames per send.
    let server =
        format!("{}{} --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --config {}", a.rounds.server_prefix, sibling("shardcast")?, bench_config()?);
    let common = a.rounds.run_options();
    let variants = |scenario: &str, extra: &[String]| -> Vec<Variant> {
        TRANSPORTS
            .iter()
            .map(|t| {
                let mut v = vec![scenario.to_string()];
                v.extend(common.iter().cloned());
                v.extend(extra.iter().cloned());
                v.extend(["--transport".to_string(), t.name().to_string()]);
                (t.name(), v, server.clone())
            })
            .collect()
    };
    let fanout_rows: Vec<(&str, Metric)> = vec![
        ("deliveries/s", |r: &Report| Some(r.ops_per_second)),
        ("deliveries per server CPU-s", |r: &Report| r.ops_per_server_cpu_second),
        ("server CPU %", |r: &Report| r.server.as_ref().map(|s| s.cpu_percent)),
        ("server user-space ns per delivery", |r: &Report| r.server.as_ref().filter(|_| r.ops > 0).map(|s| s.user_cpu_seconds * 1e9 / r.ops as f64)),
        ("server kernel ns per delivery", |r: &Report| {
            r.server.as_ref().filter(|_| r.ops > 0).map(|s| (s.cpu_seconds - s.user_cpu_seconds) * 1e9 / r.ops as f64)
        }),
        ("generator CPU %", |r: &Report| Some(r.generator_cpu_seconds / r.seconds * 100.0)),
        ("p50 latency µs", |r: &Report| r.latency.as_ref().map(|l| l.p50_us)),
        ("p99 latency µs", |r: &Report| r.latency.as_ref().map(|l| l.p99_us)),
        ("server frames per send", |r: &Report| r.details.get("server_frames_per_send").copied()),
        ("subscriber bytes per delivery", |r: &Report| r.details.get("subscriber_bytes_per_delivery").copied()),
        ("lost + dup + out of order", |r: &Report| Some((r.lost + r.duplicated + r.out_of_order) as f64)),
    ];
    let (subs, payload) = (a.subscribers.to_string(), a.payload.to_string());
    let fanout = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["--subscribers", &subs, "--payload", &payload].iter().map(|s| s.to_string()).collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let mut sections: Vec<Section> = Vec::new();
    let window = a.window.to_string();
    let (reports, json) = interleave(a.rounds.rounds, &variants("fanout", &fanout(&["--max", "--window", &window])))?;
    sections.push((format!("fan-out to {subs} subscribers, {payload} B, 1 publisher, --max --window {window}"), fanout_rows.clone(), reports));
    if a.rate > 0.0 {
        let rate = a.rate.to_string();
        let (reports, _) = interleave(a.rounds.rounds, &variants("fanout", &fanout(&["--rate", &rate])))?;
        sections.push((format!("fan-out to {subs} subscribers, {payload} B, 1 publisher, --rate {rate} msg/s"), fanout_rows.clone(), reports));
    }
    if a.connections > 0 {
        let conns = a.connections.to_string();
        let (reports, _) = interleave(a.rounds.rounds, &variants("idle", &["--connections".to_string(), conns.clone()]))?;
        let rows: Vec<(&str, Metric)> = vec![
            ("server RSS per session, bytes", |r: &Report| r.details.get("server_rss_per_connection_bytes").copied()),
            ("server RSS connected, MiB", |r: &Report| r.details.get("server_rss_connected_bytes").map(|b| b / 1048576.0)),
            ("server idle CPU %", |r: &Report| r.details.get("server_idle_cpu_percent").copied()),
            ("server CPU µs per session set up", |r: &Report| r.details.get("server_cpu_us_per_connection_setup").copied()),
        ];
        sections.push((format!("{conns} idle subscribed sessions (100 topics)"), rows, reports));
    }
    if json {
        return Ok(());
    }
    let labels: Vec<&str> = TRANSPORTS.iter().map(|t| t.name()).collect();
    for (title, rows, reports) in &sections {
        println!("{title}, {} s runs — medians of {} interleaved rounds", a.rounds.duration, a.rounds.rounds);
        print_medians(rows, &labels, reports, &[(1, 0), (2, 0)]);
        println!();
    }
    Ok(())
}
