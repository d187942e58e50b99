//! `admin`: what the admin plane costs, measured side by side in one run
//! (interleaved rounds, the same binary and config).
//!
//! 1. Publishes per server CPU-second: `POST /api/publish` on C keep-alive
//!    HTTP connections (one request in flight each) vs the same publishes
//!    over C WebSocket connections (`fanout --window 1`, one in flight each),
//!    64 B, to one subscriber. The admin thread's own CPU share is reported.
//! 2. Fan-out (S subscribers, `--window W`, 64 B) with nobody watching vs
//!    with a dashboard polling `/api/info` and `/api/history` H times a second.

use clap::Args;

use crate::report::Report;
use crate::{bench_config, interleave, print_medians, sibling, Metric, RoundArgs, Variant};

#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    rounds: RoundArgs,
    /// HTTP (and WebSocket) publishing connections in the publish runs.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Subscribers in the fan-out runs.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Messages in flight per publisher in the fan-out runs.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Dashboard polls per second in the polled fan-out runs (the page polls
    /// once a second; 10 is ten operators).
    #[arg(long, default_value_t = 10.0)]
    poll_hz: f64,
}

pub fn run(a: AdminArgs) -> Result<(), String> {
    let server = format!(
        "{}{} --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --config {}",
        a.rounds.server_prefix,
        sibling("shardcast")?,
        bench_config()?
    );
    let common = a.rounds.run_options();
    let args = |scenario: &str, extra: &[String]| {
        let mut v = vec![scenario.to_string()];
        v.extend(common.iter().cloned());
        v.extend(extra.iter().cloned());
        v
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let conns = a.connections.to_string();
    let publish: [Variant; 2] = [
        ("HTTP API", args("api", &s(&["--connections", &conns, "--subscribers", "1", "--payload", "64"])), server.clone()),
        (
            "WebSocket",
            args("fanout", &s(&["--subscribers", "1", "--publishers", &conns, "--max", "--window", "1", "--payload", "64"])),
            server.clone(),
        ),
    ];
    let (publishes, json) = interleave(a.rounds.rounds, &publish)?;
    let (subs, window, hz) = (a.subscribers.to_string(), a.window.to_string(), a.poll_hz.to_string());
    let fanout = s(&["--subscribers", &subs, "--max", "--window", &window, "--payload", "64"]);
    let polled = [fanout.clone(), s(&["--poll-admin-hz", &hz])].concat();
    let watched: [Variant; 2] = [("no dashboard", args("fanout", &fanout), server.clone()), ("dashboard polling", args("fanout", &polled), server)];
    let (fanouts, _) = interleave(a.rounds.rounds, &watched)?;
    if json {
        return Ok(());
    }
    let rounds = a.rounds.rounds;
    println!("publishes, 64 B, {conns} connections with one request in flight each, to 1 subscriber — medians of {rounds} interleaved rounds");
    let metrics: [(&str, Metric); 7] = [
        ("publishes/s", |r: &Report| Some(r.ops_per_second)),
        ("publishes per server CPU-s", |r: &Report| r.ops_per_server_cpu_second),
        ("server CPU %", |r: &Report| r.server.as_ref().map(|s| s.cpu_percent)),
        ("admin thread share of server CPU", |r: &Report| r.details.get("admin_thread_cpu_share").copied()),
        ("generator CPU s", |r: &Report| Some(r.generator_cpu_seconds)),
        ("p50 latency µs", |r: &Report| r.latency.as_ref().map(|l| l.p50_us)),
        ("p99 latency µs", |r: &Report| r.latency.as_ref().map(|l| l.p99_us)),
    ];
    print_medians(&metrics, &["HTTP API", "WebSocket"], &publishes, &[(0, 1)]);
    println!();
    println!("fan-out to {subs} subscribers, 64 B, --max --window {window}; dashboard: {hz} polls/s — medians of {rounds} interleaved rounds");
    let metrics: [(&str, Metric); 6] = [
        ("deliveries/s", |r: &Report| Some(r.ops_per_second)),
        ("deliveries per server CPU-s", |r: &Report| r.ops_per_server_cpu_second),
        ("server CPU %", |r: &Report| r.server.as_ref().map(|s| s.cpu_percent)),
        ("p99 latency µs", |r: &Report| r.latency.as_ref().map(|l| l.p99_us)),
        ("dashboard polls answered", |r: &Report| Some(r.details.get("dashboard_polls").copied().unwrap_or(0.0))),
        ("lost + out of order", |r: &Report| Some((r.lost + r.out_of_order) as f64)),
    ];
    print_medians(&metrics, &["no dashboard", "dashboard polling"], &fanouts, &[(1, 0)]);
    Ok(())
}
