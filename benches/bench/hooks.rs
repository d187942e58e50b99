//! What the backend hooks (`[proxy]`) and webhooks (`[webhooks]`) cost,
//! each measured against its baseline in one run (interleaved rounds, the
//! same binary, different configs), with the application's backend in this
//! process ([`crate::backend`]: its own thread, its CPU reported apart from
//! the server's and the generator's).
//!
//! - `handshakes`: connect, upgrade, welcome, close (`connect
//!   --welcome-only`) with no auth, with a JWT (HS256, a pool of `--users`
//!   tokens, one user each) and with the connect hook deciding (no token;
//!   the backend answers `{"result":{"user":"u<n>"}}`). The client sends
//!   `{"type":"connect"}` right after the upgrade, so the hook is called at
//!   once, not after `[proxy] connect_wait_ms`. Latency: TCP connect to
//!   the welcome. Loaded (`--concurrency`), then one at a time
//!   (`--latency-concurrency`).
//! - `publish-proxy`: acknowledged publishes (`publish`, C connections with
//!   W in flight each) to a namespace with `publish = "proxy"` against the
//!   same namespace with `publish = "anyone"`; latency is publish to ack,
//!   and the p99 the hook adds is the headline. Loaded (`--connections`),
//!   then one at a time (`--latency-connections`).
//! - `webhooks`: fan-out (`--max --window W`) to S subscribers while
//!   `--churn-rate` connections a second connect, subscribe to a presence
//!   topic of their own and close (6 events each: client_connected,
//!   topic_occupied, member_added, member_removed, topic_vacated,
//!   client_disconnected), with `[webhooks]` posting them to the backend
//!   vs without webhooks.

use clap::Args;

use crate::backend::Backend;
use crate::report::Report;
use crate::{bench_config, interleave, print_medians, sibling, Metric, RoundArgs, TempConfig, Variant};

/// The HMAC secret of the JWT variant and the webhooks' signing key.
const SECRET: &str = "shardcast-bench-secret";

#[derive(Debug, Clone, Args)]
pub struct HandshakesArgs {
    #[command(flatten)]
    rounds: RoundArgs,
    /// Concurrent connect loops.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Then the same with this many loops, for the latency of one
    /// handshake at a time (at --concurrency it is mostly queueing: even 4
    /// loops keep one server core ~85% busy); 0 = skip.
    #[arg(long, default_value_t = 1)]
    latency_concurrency: usize,
    /// Distinct users of the JWT variant: tokens for u0 … u(N-1), used in turn.
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Pin the backend's thread to this CPU (default: the bench's affinity).
    #[arg(long, value_name = "CPU")]
    backend_cpu: Option<usize>,
}

#[derive(Debug, Clone, Args)]
pub struct PublishProxyArgs {
    #[command(flatten)]
    rounds: RoundArgs,
    /// Publishing connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Publishes awaiting their ack per connection (the server makes one
    /// hook call at a time per connection, so more queue on the server).
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Then the same with this many connections, for the latency of one
    /// publish at a time (at --connections it is mostly queueing); 0 = skip.
    #[arg(long, default_value_t = 1)]
    latency_connections: usize,
    /// Topics the connections publish to (connection i to topic i mod T).
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// Subscribers checking that every acknowledged publish arrives in order.
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Pin the backend's thread to this CPU (default: the bench's affinity).
    #[arg(long, value_name = "CPU")]
    backend_cpu: Option<usize>,
}

#[derive(Debug, Clone, Args)]
pub struct WebhooksArgs {
    #[command(flatten)]
    rounds: RoundArgs,
    /// Subscribers of the fan-out.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Messages in flight per publisher.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Churning connections per second (each: 6 webhook events).
    #[arg(long, default_value_t = 500.0)]
    churn_rate: f64,
    /// `[webhooks] max_batch`.
    #[arg(long, default_value_t = 100)]
    max_batch: usize,
    /// `[webhooks] max_delay_ms`.
    #[arg(long, default_value_t = 200)]
    max_delay_ms: u64,
    /// Pin the backend's thread to this CPU (default: the bench's affinity).
    #[arg(long, value_name = "CPU")]
    backend_cpu: Option<usize>,
}

fn per_window(r: &Report, key: &str) -> Option<f64> {
    r.details.get(key).map(|v| v / r.seconds)
}

fn backend_cpu_percent(r: &Report) -> Option<f64> {
    per_window(r, "backend_cpu_seconds").map(|v| v * 100.0)
}

/// The server's `shardcast-hooks` thread's share of the server's CPU.
fn hooks_thread_share(r: &Report) -> Option<f64> {
    let server = r.server.as_ref()?.cpu_seconds;
    r.details.get("server_hooks_thread_cpu_seconds").filter(|_| server > 0.0).map(|t| t / server * 100.0)
}

fn median_of(reports: &[Report], f: Metric) -> f64 {
    let mut v: Vec<f64> = reports.iter().filter_map(f).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `benches/server.toml` plus `extra`, in a temporary file.
fn config(name: &str, extra: &str) -> Result<TempConfig, String> {
    let base = std::fs::read_to_string(bench_config()?).map_err(|e| e.to_string())?;
    TempConfig::write(name, &format!("{base}\n{extra}"))
}

/// The scenario argv of one run: the scenario, the rounds' options, `extra`.
fn argv(rounds: &RoundArgs, scenario: &str, extra: &[&str]) -> Vec<String> {
    let mut v = vec![scenario.to_string()];
    v.extend(rounds.run_options());
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn server(rounds: &RoundArgs, config: &TempConfig) -> Result<String, String> {
    Ok(format!("{}{} --listen 127.0.0.1:0 --admin-listen '' --config {}", rounds.server_prefix, sibling("shardcast")?, config.0.display()))
}

pub fn handshakes(a: HandshakesArgs) -> Result<(), String> {
    let backend = Backend::start(a.backend_cpu)?;
    let plain = config("hs-plain", "")?;
    let jwt = config("hs-jwt", &format!("[auth]\nhmac_secret = \"{SECRET}\"\nrequire_exp = true\n"))?;
    let proxy = config("hs-proxy", &format!("[proxy]\nconnect_url = \"{}\"\n", backend.url("/connect")))?;
    // One HS256 token per user, valid for the run.
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) + 3600;
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let mut tokens = String::new();
    for u in 0..a.users.max(1) {
        let claims = serde_json::json!({"sub": format!("u{u}"), "exp": exp});
        tokens += &jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key).map_err(|e| e.to_string())?;
        tokens.push('\n');
    }
    let token_file = TempConfig::write("hs-tokens", &tokens)?;
    let token_path = token_file.0.display().to_string();
    let runs = |concurrency: usize| -> Result<(Vec<Vec<Report>>, bool), String> {
        let c = concurrency.to_string();
        let connect = ["--concurrency", &c, "--welcome-only"];
        let variants: [Variant; 3] = [
            ("no auth", argv(&a.rounds, "connect", &connect), server(&a.rounds, &plain)?),
            ("JWT", argv(&a.rounds, "connect", &[&connect[..], &["--token-file", &token_path, "--expect-user"]].concat()), server(&a.rounds, &jwt)?),
            ("connect proxy", argv(&a.rounds, "connect", &[&connect[..], &["--connect-frame", "--expect-user"]].concat()), server(&a.rounds, &proxy)?),
        ];
        interleave(a.rounds.rounds, &variants)
    };
    let (loaded, json) = runs(a.concurrency)?;
    let light = if a.latency_concurrency > 0 { Some(runs(a.latency_concurrency)?.0) } else { None };
    drop(backend);
    if json {
        return Ok(());
    }
    let metrics: [(&str, Metric); 10] = [
        ("handshakes/s", |r: &Report| Some(r.ops_per_second)),
        ("handshakes per server CPU-s", |r: &Report| r.ops_per_server_cpu_second),
        ("server CPU %", |r: &Report| r.server.as_ref().map(|s| s.cpu_percent)),
        ("server hooks thread, % of server CPU", hooks_thread_share),
        ("generator CPU %", |r: &Report| Some(r.generator_cpu_seconds / r.seconds * 100.0)),
        ("backend CPU %", backend_cpu_percent),
        ("backend connect calls/s", |r: &Report| per_window(r, "backend_connect_calls")),
        ("p50 handshake µs", |r: &Report| r.latency.as_ref().map(|l| l.p50_us)),
        ("p99 handshake µs", |r: &Report| r.latency.as_ref().map(|l| l.p99_us)),
        ("failed handshakes", |r: &Report| r.details.get("failed").copied()),
    ];
    let labels = ["no auth", "JWT", "connect proxy"];
    for (concurrency, results) in [(a.concurrency, Some(loaded)), (a.latency_concurrency, light)] {
        let Some(results) = results else { continue };
        println!(
            "handshakes (connect, upgrade, welcome, close; latency TCP connect to welcome), {concurrency} loops, {} s runs — medians of {} interleaved rounds",
            a.rounds.duration, a.rounds.rounds
        );
        print_medians(&metrics, &labels, &results, &[(1, 0), (2, 0), (2, 1)]);
        println!();
    }
    Ok(())
}

pub fn publish_proxy(a: PublishProxyArgs) -> Result<(), String> {
    let backend = Backend::start(a.backend_cpu)?;
    // The same namespace and [proxy] in both; only its publish mode differs.
    let with = |mode: &str| {
        format!(
            "[[namespaces]]\npattern = \"pp:*\"\nsubscribe = \"anyone\"\npublish = \"{mode}\"\n[proxy]\npublish_url = \"{}\"\n",
            backend.url("/publish")
        )
    };
    let anyone = config("pp-anyone", &with("anyone"))?;
    let proxy = config("pp-proxy", &with("proxy"))?;
    let runs = |connections: usize| -> Result<(Vec<Vec<Report>>, bool), String> {
        let (conns, window, topics, subs, payload) =
            (connections.to_string(), a.window.to_string(), a.topics.to_string(), a.subscribers.to_string(), a.payload.to_string());
        let publish = [
            "--connections", &conns, "--window", &window, "--topics", &topics, "--subscribers", &subs, "--payload", &payload, "--topic-prefix", "pp:",
        ];
        let variants: [Variant; 2] = [
            ("anyone", argv(&a.rounds, "publish", &publish), server(&a.rounds, &anyone)?),
            ("proxy", argv(&a.rounds, "publish", &publish), server(&a.rounds, &proxy)?),
        ];
        interleave(a.rounds.rounds, &variants)
    };
    let (loaded, json) = runs(a.connections)?;
    let light = if a.latency_connections > 0 { Some(runs(a.latency_connections)?.0) } else { None };
    drop(backend);
    if json {
        return Ok(());
    }
    let p99: Metric = |r: &Report| r.latency.as_ref().map(|l| l.p99_us);
    let metrics: [(&str, Metric); 11] = [
        ("acked publishes/s", |r: &Report| Some(r.ops_per_second)),
        ("acked publishes per server CPU-s", |r: &Report| r.ops_per_server_cpu_second),
        ("server CPU %", |r: &Report| r.server.as_ref().map(|s| s.cpu_percent)),
        ("server hooks thread, % of server CPU", hooks_thread_share),
        ("generator CPU %", |r: &Report| Some(r.generator_cpu_seconds / r.seconds * 100.0)),
        ("backend CPU %", backend_cpu_percent),
        ("backend publish calls/s", |r: &Report| per_window(r, "backend_publish_calls")),
        ("p50 publish to ack µs", |r: &Report| r.latency.as_ref().map(|l| l.p50_us)),
        ("p99 publish to ack µs", p99),
        ("failed publishes", |r: &Report| r.details.get("failed").copied()),
        ("lost + out of order (subscribers)", |r: &Report| Some((r.lost + r.out_of_order) as f64)),
    ];
    for (connections, results) in [(a.connections, Some(loaded)), (a.latency_connections, light)] {
        let Some(results) = results else { continue };
        println!(
            "acknowledged publishes, {} B, {connections} connections with {} in flight each, to {} topic(s) with {} subscriber(s), {} s runs — medians of {} interleaved rounds",
            a.payload, a.window, a.topics, a.subscribers, a.rounds.duration, a.rounds.rounds
        );
        print_medians(&metrics, &["anyone", "proxy"], &results, &[(1, 0)]);
        let (before, after) = (median_of(&results[0], p99), median_of(&results[1], p99));
        println!("p99 publish to ack added by the publish hook: {:.0} µs ({before:.0} → {after:.0} µs, medians)", after - before);
        println!();
    }
    Ok(())
}

pub fn webhooks(a: WebhooksArgs) -> Result<(), String> {
    let backend = Backend::start(a.backend_cpu)?;
    // Churning connections subscribe to presence topics (member_* events).
    let namespace = "[[namespaces]]\npattern = \"churn-*\"\nsubscribe = \"anyone\"\npublish = \"anyone\"\npresence = true\n";
    // Off: no [webhooks] table at all (url = "" is the default).
    let off = config("wh-off", namespace)?;
    let on = config(
        "wh-on",
        &format!(
            "{namespace}[webhooks]\nurl = \"{}\"\nsecret = \"{SECRET}\"\n\
             events = [\"topic_occupied\", \"topic_vacated\", \"member_added\", \"member_removed\", \"client_connected\", \"client_disconnected\"]\n\
             max_batch = {}\nmax_delay_ms = {}\nqueue_size = 100000\nmax_retry_ms = 60000\ntimeout_ms = 3000\n",
            backend.url("/webhooks"),
            a.max_batch,
            a.max_delay_ms
        ),
    )?;
    let (subs, window, churn) = (a.subscribers.to_string(), a.window.to_string(), a.churn_rate.to_string());
    let fanout = ["--subscribers", &subs, "--max", "--window", &window, "--payload", "64", "--churn-rate", &churn];
    let variants: [Variant; 2] = [
        ("webhooks off", argv(&a.rounds, "fanout", &fanout), server(&a.rounds, &off)?),
        ("webhooks on", argv(&a.rounds, "fanout", &fanout), server(&a.rounds, &on)?),
    ];
    let (results, json) = interleave(a.rounds.rounds, &variants)?;
    drop(backend);
    if json {
        return Ok(());
    }
    println!(
        "fan-out to {} subscribers, 64 B, --max --window {}, while {} connections/s churn (connect, subscribe to a presence topic of their own, close); \
         webhooks: all 6 events, max_batch {}, max_delay_ms {}, signed; {} s runs — medians of {} interleaved rounds",
        a.subscribers, a.window, a.churn_rate, a.max_batch, a.max_delay_ms, a.rounds.duration, a.rounds.rounds
    );
    let metrics: [(&str, Metric); 12] = [
        ("deliveries/s", |r: &Report| Some(r.ops_per_second)),
        ("deliveries per server CPU-s", |r: &Report| r.ops_per_server_cpu_second),
        ("server CPU %", |r: &Report| r.server.as_ref().map(|s| s.cpu_percent)),
        ("server hooks thread, % of server CPU", hooks_thread_share),
        ("generator CPU %", |r: &Report| Some(r.generator_cpu_seconds / r.seconds * 100.0)),
        ("backend CPU %", backend_cpu_percent),
        ("churn cycles/s", |r: &Report| r.details.get("churn_cycles_per_second").copied()),
        ("webhook events/s (backend)", |r: &Report| per_window(r, "webhook_events")),
        ("webhook POSTs/s (backend)", |r: &Report| per_window(r, "webhook_posts")),
        ("p99 delivery µs", |r: &Report| r.latency.as_ref().map(|l| l.p99_us)),
        ("churn failed", |r: &Report| r.details.get("churn_failed").copied()),
        ("lost + out of order", |r: &Report| Some((r.lost + r.out_of_order) as f64)),
    ];
    print_medians(&metrics, &["webhooks off", "webhooks on"], &results, &[(1, 0)]);
    Ok(())
}
