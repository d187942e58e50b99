//! `auth`: what connection tokens cost, measured side by side in one run.
//!
//! 1. Handshakes (connect, upgrade, welcome, subscribe, ack, close) per
//!    server CPU-second with no token, an HS256 token and an RS256 token,
//!    against the same configuration (an HMAC secret and an RSA public key,
//!    anonymous connections allowed), rounds interleaved.
//! 2. Fan-out deliveries per server CPU-second with auth off (no key) and on
//!    (every subscriber and the publisher authenticated with HS256): auth is
//!    paid at connect time only, so the two should agree within noise.
//!
//! Tokens are minted here with the repository's test RSA key
//! (`tests/fixtures/keys/`), or the key given with `--rsa-key`. Every
//! connection of a variant presents the same token (one user), so the
//! figures isolate verification from anything a user count would add.

use std::time::{Duration, SystemTime};

use clap::Args;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

use crate::report::Report;
use crate::{bench_config, interleave, print_medians, sibling, Metric, RoundArgs, TempConfig, Variant};

const SECRET: &str = "shardcast-bench-secret";

#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    #[command(flatten)]
    rounds: RoundArgs,
    /// Concurrent connectors in the handshake runs.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Subscribers in the fan-out runs.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Messages in flight per publisher in the fan-out runs.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Private RSA key (PEM) to sign RS256 tokens; its public half must sit
    /// beside it as `<name>.pub.pem` in place of `.key.pem`.
    #[arg(long, value_name = "FILE")]
    rsa_key: Option<String>,
}

fn token(alg: Algorithm, key: &EncodingKey) -> Result<String, String> {
    let exp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs() + 3600;
    let claims = serde_json::json!({"sub": "bench-user", "exp": exp});
    encode(&Header::new(alg), &claims, key).map_err(|e| format!("cannot sign a {alg:?} token: {e}"))
}

/// The bench config plus `[auth]`, in a temporary file.
fn auth_config(public_key: &str) -> Result<TempConfig, String> {
    let base = std::fs::read_to_string(bench_config()?).map_err(|e| e.to_string())?;
    let text =
        format!("{base}\n[auth]\nhmac_secret = \"{SECRET}\"\npublic_key_file = \"{public_key}\"\nallow_anonymous = true\nrequire_exp = true\n");
    TempConfig::write("auth", &text)
}

pub fn run(a: AuthArgs) -> Result<(), String> {
    let private = a
        .rsa_key
        .clone()
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/rsa.key.pem").to_string());
    let public = private.replace(".key.pem", ".pub.pem");
    let pem = std::fs::read(&private).map_err(|e| format!("{private}: {e}"))?;
    let rsa = EncodingKey::from_rsa_pem(&pem).map_err(|e| format!("{private}: {e}"))?;
    let hs256 = token(Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()))?;
    let rs256 = token(Algorithm::RS256, &rsa)?;
    let config = auth_config(&public)?;
    let binary = sibling("shardcast")?;
    let server = |config: &str| format!("{}{binary} --listen 127.0.0.1:0 --config {config}", a.rounds.server_prefix);
    let with_auth = server(&config.0.display().to_string());
    let without_auth = server(&bench_config()?);

    let common = a.rounds.run_options();
    let args = |scenario: &str, extra: &[String], token: Option<&str>| {
        let mut v = vec![scenario.to_string()];
        v.extend(common.iter().cloned());
        v.extend(extra.iter().cloned());
        if let Some(t) = token {
            v.extend(["--token".to_string(), t.to_string()]);
        }
        v
    };
    let metrics: [(&str, Metric); 5] = [
        ("ops/s", |r: &Report| Some(r.ops_per_second)),
        ("ops per server CPU-s", |r: &Report| r.ops_per_server_cpu_second),
        ("server CPU %", |r: &Report| r.server.as_ref().map(|s| s.cpu_percent)),
        ("p99 latency µs", |r: &Report| r.latency.as_ref().map(|l| l.p99_us)),
        ("lost + out of order", |r: &Report| Some((r.lost + r.out_of_order) as f64)),
    ];

    let connect = ["--concurrency".to_string(), a.concurrency.to_string()];
    let variants: [Variant; 3] = [
        ("no token", args("connect", &connect, None), with_auth.clone()),
        ("HS256", args("connect", &connect, Some(&hs256)), with_auth.clone()),
        ("RS256", args("connect", &connect, Some(&rs256)), with_auth.clone()),
    ];
    let (handshakes, json) = interleave(a.rounds.rounds, &variants)?;
    let fanout = [
        "--subscribers".to_string(),
        a.subscribers.to_string(),
        "--max".to_string(),
        "--window".to_string(),
        a.window.to_string(),
    ];
    let variants: [Variant; 2] = [
        ("auth off", args("fanout", &fanout, None), without_auth),
        ("auth on", args("fanout", &fanout, Some(&hs256)), with_auth),
    ];
    let (fanouts, _) = interleave(a.rounds.rounds, &variants)?;
    if json {
        return Ok(());
    }
    println!(
        "handshakes (connect, concurrency {}), {} s runs — medians of {} interleaved rounds",
        a.concurrency, a.rounds.duration, a.rounds.rounds
    );
    print_medians(&metrics, &["no token", "HS256", "RS256"], &handshakes, &[(1, 0), (2, 0)]);
    println!();
    println!(
        "fan-out to {} subscribers, 64 B, --max --window {}, {} s runs — medians of {} interleaved rounds",
        a.subscribers, a.window, a.rounds.duration, a.rounds.rounds
    );
    print_medians(&metrics, &["auth off", "auth on"], &fanouts, &[(1, 0)]);
    Ok(())
}
