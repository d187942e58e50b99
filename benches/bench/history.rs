//! `history`: what topic history costs, measured side by side in one run
//! (interleaved rounds, the same binary).
//!
//! 1. Fan-out (S subscribers, one publisher, `--window W`, B-byte payloads)
//!    to a plain topic and to a history topic, on one node and with the
//!    node bridged to Redis (a `redis-server` this run starts): four
//!    variants. A history topic's publishes are numbered on its home shard
//!    (one node) or by a Lua script in Redis, so the Redis variant pays a
//!    round trip through Redis before any delivery.
//! 2. Recovery of M missed messages in a subscribe's ack, closed loop on one
//!    connection: recoveries per second and per server CPU-second, and the
//!    time from request to complete ack, single node vs Redis.
//!
//! The servers get `benches/server.toml`'s settings plus a `hist:*`
//! namespace (history_size = max(M, 1000), recover) and
//! `max_message_bytes = 1 MiB` so that an ack can carry M messages.


use clap::Args;

use crate::report::Report;
use crate::{interleave, print_medians, sibling, Metric, RoundArgs, TempConfig, Variant};

#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    rounds: RoundArgs,
    /// Subscribers in the fan-out runs.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Messages in flight per publisher in the fan-out runs.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Messages missed and recovered per recovery.
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// The redis-server to start for the Redis variants.
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
}

/// The `--also-pid` process's (redis-server's) CPU over the window, in % of a core.
fn redis_cpu_percent(r: &Report) -> Option<f64> {
    r.details.iter().find(|(k, _)| k.starts_with("pid_")).map(|(_, cpu)| cpu / r.seconds * 100.0)
}

pub fn run(a: HistoryArgs) -> Result<(), String> {
    let redis = crate::bridge::Redises::start(&a.redis_server, 1, false)?;
    let size = a.messages.max(1000);
    let base = format!(
        "[[namespaces]]\npattern = \"hist:*\"\nsubscribe = \"anyone\"\npublish = \"anyone\"\nhistory_size = {size}\nhistory_ttl_ms = 600000\nrecover = true\n\
         [limits]\npublish_rate = 0\nmax_message_bytes = 1048576\n[log]\nlevel = \"warn\"\n[server]\nmax_connections = 19500\n"
    );
    let single = TempConfig::write("history", &base)?;
    let bridged = TempConfig::write("history-redis", &format!("{base}[redis]\nurl = \"redis://127.0.0.1:{}\"\n", redis.ports()[0]))?;
    let binary = sibling("shardcast")?;
    let server = |config: &TempConfig| {
        format!("{}{binary} --listen 127.0.0.1:0 --admin-listen '' --config {}", a.rounds.server_prefix, config.0.display())
    };
    let common = a.rounds.run_options();
    let args = |scenario: &str, extra: &[String]| {
        let mut v = vec![scenario.to_string()];
        v.extend(common.iter().cloned());
        v.extend(extra.iter().cloned());
        v
    };
    // Redis' own CPU is reported beside the server's.
    let redis_pid = redis.pids()[0].to_string();
    let fanout = |prefix: &str, with_redis: bool| {
        let (subs, window, payload) = (a.subscribers.to_string(), a.window.to_string(), a.payload.to_string());
        let mut v = vec!["--subscribers", &subs, "--max", "--window", &window, "--payload", &payload, "--topic-prefix", prefix];
        if with_redis {
            v.extend(["--also-pid", &redis_pid]);
        }
        args("fanout", &v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    };
    let variants: [Variant; 4] = [
        ("plain", fanout("fanout-", false), server(&single)),
        ("history", fanout("hist:", false), server(&single)),
        ("plain, redis", fanout("fanout-", true), server(&bridged)),
        ("history, redis", fanout("hist:", true), server(&bridged)),
    ];
    let (fanouts, json) = interleave(a.rounds.rounds, &variants)?;
    let recover = args("recover", &["--messages".into(), a.messages.to_string(), "--payload".into(), a.payload.to_string()]);
    let recover_redis = [recover.clone(), vec!["--also-pid".into(), redis_pid.clone()]].concat();
    let recoveries: [Variant; 2] = [("single node", recover, server(&single)), ("redis", recover_redis, server(&bridged))];
    let (recovered, _) = interleave(a.rounds.rounds, &recoveries)?;
    if json {
        return Ok(());
    }
    let rounds = a.rounds.rounds;
    let (subs, window, payload) = (a.subscribers, a.window, a.payload);
    println!("fan-out to {subs} subscribers, 1 publisher, --max --window {window}, {payload} B — medians of {rounds} interleaved rounds");
    let metrics: [(&str, Metric); 8] = [
        ("deliveries/s", |r: &Report| Some(r.ops_per_second)),
        ("deliveries per server CPU-s", |r: &Report| r.ops_per_server_cpu_second),
        ("server CPU %", |r: &Report| r.server.as_ref().map(|s| s.cpu_percent)),
        ("redis-server CPU %", redis_cpu_percent),
        ("p50 latency µs", |r: &Report| r.latency.as_ref().map(|l| l.p50_us)),
        ("p99 latency µs", |r: &Report| r.latency.as_ref().map(|l| l.p99_us)),
        ("generator CPU s", |r: &Report| Some(r.generator_cpu_seconds)),
        ("lost + out of order", |r: &Report| Some((r.lost + r.out_of_order) as f64)),
    ];
    print_medians(&metrics, &["plain", "history", "plain, redis", "history, redis"], &fanouts, &[(1, 0), (3, 2)]);
    println!();
    println!("recovery of {} messages of {payload} B in the subscribe's ack, closed loop on one connection — medians of {rounds} interleaved rounds", a.messages);
    let metrics: [(&str, Metric); 7] = [
        ("recoveries/s", |r: &Report| Some(r.ops_per_second)),
        ("recoveries per server CPU-s", |r: &Report| r.ops_per_server_cpu_second),
        ("server CPU ms per recovery", |r: &Report| r.server.as_ref().map(|s| s.cpu_seconds * 1000.0 / r.ops.max(1) as f64)),
        ("redis-server CPU %", redis_cpu_percent),
        ("p50 time to ack µs", |r: &Report| r.latency.as_ref().map(|l| l.p50_us)),
        ("p99 time to ack µs", |r: &Report| r.latency.as_ref().map(|l| l.p99_us)),
        ("failed recoveries", |r: &Report| r.details.get("failed_recoveries").copied()),
    ];
    print_medians(&metrics, &["single node", "redis"], &recovered, &[(1, 0)]);
    Ok(())
}
