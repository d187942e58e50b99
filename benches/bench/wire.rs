//! `wire`: what TLS and permessage-deflate cost, measured side by side in
//! one run (interleaved rounds, the same binary, different configs).
//!
//! 1. Fan-out (`--window`, 64 B) to S subscribers, plain vs TLS: deliveries
//!    per server CPU-second.
//! 2. Handshakes (`connect`), plain vs TLS.
//! 3. Idle subscribed connections, plain vs TLS: server RSS per connection.
//! 4. Fan-out of a 1 KiB JSON payload to S compressing subscribers with the
//!    server compressing each message once per node vs once per subscriber
//!    (`[compression] compress_once`), and the compression ratio the
//!    subscribers saw.
//!
//! The TLS certificate is self-signed, made here (rcgen) and trusted by the
//! generator; nothing leaves the machine.

use clap::Args;

use crate::report::Report;
use crate::{bench_config, interleave, print_medians, sibling, Metric, RoundArgs, Variant};

#[derive(Debug, Clone, Args)]
pub struct WireArgs {
    #[command(flatten)]
    rounds: RoundArgs,
    /// Subscribers in the fan-out runs.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Messages in flight per publisher in the fan-out runs.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Connections in the idle runs.
    #[arg(long, default_value_t = 2000)]
    connections: usize,
}

/// A temporary directory with the certificate, the key and the configs.
struct Files(std::path::PathBuf);

impl Files {
    fn write() -> Result<Files, String> {
        let dir = std::env::temp_dir().join(format!("shardcast-bench-wire-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()]).map_err(|e| e.to_string())?;
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).map_err(|e| format!("{}: {e}", dir.join(name).display()));
        write("cert.pem", &made.cert.pem())?;
        write("key.pem", &made.signing_key.serialize_pem())?;
        let base = std::fs::read_to_string(bench_config()?).map_err(|e| e.to_string())?;
        let d = dir.display();
        write("plain.toml", &base)?;
        write("tls.toml", &format!("{base}\n[tls]\ncert_file = \"{d}/cert.pem\"\nkey_file = \"{d}/key.pem\"\n"))?;
        write("once.toml", &format!("{base}\n[compression]\nenabled = true\ncompress_once = true\n"))?;
        write("each.toml", &format!("{base}\n[compression]\nenabled = true\ncompress_once = false\n"))?;
        Ok(Files(dir))
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A printed table: its title, the variants' labels, each variant's reports.
type Section = (String, Vec<&'static str>, Vec<Vec<Report>>);

pub fn run(a: WireArgs) -> Result<(), String> {
    let files = Files::write()?;
    let binary = sibling("shardcast")?;
    let server = |config: &str| format!("{}{binary} --listen 127.0.0.1:0 --config {}", a.rounds.server_prefix, files.path(config));
    let ca = files.path("cert.pem");
    let common = a.rounds.run_options();
    let args = |scenario: &str, extra: &[&str], tls: bool, deflate: bool| {
        let mut v = vec![scenario.to_string()];
        v.extend(common.iter().cloned());
        v.extend(extra.iter().map(|s| s.to_string()));
        if tls {
            v.extend(["--ca".to_string(), ca.clone()]);
        }
        if deflate {
            v.push("--deflate".into());
        }
        v
    };
    let metrics: [(&str, Metric); 6] = [
        ("ops/s", |r: &Report| Some(r.ops_per_second)),
        ("ops per server CPU-s", |r: &Report| r.ops_per_server_cpu_second),
        ("server CPU %", |r: &Report| r.server.as_ref().map(|s| s.cpu_percent)),
        ("generator CPU s", |r: &Report| Some(r.generator_cpu_seconds)),
        ("p99 latency µs", |r: &Report| r.latency.as_ref().map(|l| l.p99_us)),
        ("lost + out of order", |r: &Report| Some((r.lost + r.out_of_order) as f64)),
    ];
    let (subs, window, conns) = (a.subscribers.to_string(), a.window.to_string(), a.connections.to_string());
    let fanout: [&str; 6] = ["--subscribers", &subs, "--max", "--window", &window, "--payload"];

    let mut sections: Vec<Section> = Vec::new();
    let variants: [Variant; 2] = [
        ("plain", args("fanout", &[&fanout[..], &["64"]].concat(), false, false), server("plain.toml")),
        ("TLS", args("fanout", &[&fanout[..], &["64"]].concat(), true, false), server("tls.toml")),
    ];
    let (reports, json) = interleave(a.rounds.rounds, &variants)?;
    sections.push((format!("fan-out to {subs} subscribers, 64 B, --max --window {window}"), vec!["plain", "TLS"], reports));
    let variants: [Variant; 2] = [
        ("plain", args("connect", &[], false, false), server("plain.toml")),
        ("TLS", args("connect", &[], true, false), server("tls.toml")),
    ];
    sections.push(("handshakes (connect, concurrency 64)".into(), vec!["plain", "TLS"], interleave(a.rounds.rounds, &variants)?.0));
    let variants: [Variant; 2] = [
        ("plain", args("idle", &["--connections", &conns], false, false), server("plain.toml")),
        ("TLS", args("idle", &["--connections", &conns], true, false), server("tls.toml")),
    ];
    sections.push((format!("{conns} idle subscribed connections"), vec!["plain", "TLS"], interleave(a.rounds.rounds, &variants)?.0));
    let variants: [Variant; 2] = [
        ("compress once", args("fanout", &[&fanout[..], &["1024"]].concat(), false, true), server("once.toml")),
        ("per subscriber", args("fanout", &[&fanout[..], &["1024"]].concat(), false, true), server("each.toml")),
    ];
    sections.push((
        format!("fan-out of 1 KiB JSON to {subs} compressing subscribers, --max --window {window}"),
        vec!["compress once", "per subscriber"],
        interleave(a.rounds.rounds, &variants)?.0,
    ));
    if json {
        return Ok(());
    }
    for (title, labels, reports) in &sections {
        println!("{title}, {} s runs — medians of {} interleaved rounds", a.rounds.duration, a.rounds.rounds);
        let mut rows: Vec<(&str, Metric)> = metrics.to_vec();
        if title.starts_with(&format!("{conns} idle")) {
            rows = vec![
                ("server RSS per connection, bytes", |r: &Report| r.details.get("server_rss_per_connection_bytes").copied()),
                ("server idle CPU %", |r: &Report| r.details.get("server_idle_cpu_percent").copied()),
            ];
        }
        if title.contains("compressing") {
            rows.push(("compression ratio (subscribers)", |r: &Report| r.details.get("compression_ratio").copied()));
        }
        print_medians(&rows, labels, reports, &[(1, 0)]);
        println!();
    }
    Ok(())
}
