//! The bundled benches never rot: a tiny run of every scenario against the
//! real server, checking the figures they print are there and sane.

use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The longest a bench run may take here: one that hangs fails, with what
/// it printed, instead of holding the test command up.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// Runs the bench with `args` in a process group of its own; past
/// [`RUN_LIMIT`] the group (the bench and the servers it spawned) is
/// killed and the test fails.
fn run(args: &[&str]) -> Output {
    let child = Command::new(BENCH).args(args).process_group(0).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let group = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(RUN_LIMIT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: kill(2) of the process group this test created.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let out = rx.recv().unwrap().unwrap();
            panic!("shardcast-bench {args:?} did not finish in {RUN_LIMIT:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
    }
}

const BENCH: &str = env!("CARGO_BIN_EXE_shardcast-bench");
const SERVER: &str = env!("CARGO_BIN_EXE_shardcast");
const BASELINE: &str = env!("CARGO_BIN_EXE_shardcast-baseline");

fn spawn_cmd() -> String {
    format!("{SERVER} --listen 127.0.0.1:0 --shards 1 --config {}/benches/server.toml", env!("CARGO_MANIFEST_DIR"))
}

/// Runs `shardcast-bench <args> --json` and returns its JSON lines.
fn bench(args: &[&str]) -> Vec<Value> {
    let all: Vec<&str> = args.iter().copied().chain(["--duration", "0.5", "--warmup", "0.2", "--json"]).collect();
    let out = run(&all);
    assert!(out.status.success(), "shardcast-bench {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn one(args: &[&str]) -> Value {
    let mut v = bench(args);
    assert_eq!(v.len(), 1, "one JSON object per run");
    v.remove(0)
}

fn assert_measured(r: &Value, kind: &str) {
    assert_eq!(r["ops_kind"], kind, "{r}");
    assert!(r["ops"].as_u64().unwrap() > 0, "{r}");
    assert!(r["server"]["cpu_seconds"].as_f64().is_some(), "server CPU reported: {r}");
    assert!(r["server"]["rss_after_bytes"].as_u64().unwrap() > 0, "{r}");
    assert!(r["ops_per_server_cpu_second"].as_f64().is_some(), "{r}");
    assert!(r["generator_cpu_seconds"].as_f64().is_some(), "{r}");
}

#[test]
fn fanout_smoke() {
    let svg = tempfile::Builder::new().suffix(".svg").tempfile().unwrap();
    let spawn = spawn_cmd();
    let r = one(&["fanout", "--spawn", &spawn, "--subscribers", "20", "--topics", "2", "--publishers", "2", "--max", "--plot", svg.path().to_str().unwrap()]);
    assert_measured(&r, "deliveries");
    assert_eq!((r["lost"].as_u64(), r["duplicated"].as_u64(), r["out_of_order"].as_u64()), (Some(0), Some(0), Some(0)), "{r}");
    assert!(r["latency"]["p99_us"].as_f64().unwrap() > 0.0);
    assert!(std::fs::read_to_string(svg.path()).unwrap().contains("<svg"));
    let fixed = one(&["fanout", "--spawn", &spawn, "--subscribers", "5", "--rate", "200"]);
    assert_eq!(fixed["lost"], 0, "{fixed}");
}

#[test]
fn auth_smoke() {
    let runs = bench(&["auth", "--rounds", "1", "--subscribers", "20", "--concurrency", "4"]);
    assert_eq!(runs.len(), 5, "no token, HS256, RS256, auth off, auth on");
    for r in &runs[..3] {
        assert_measured(r, "handshakes");
    }
    for r in &runs[3..] {
        assert_measured(r, "deliveries");
        assert_eq!(r["lost"], 0, "{r}");
    }
    let names: Vec<&str> = runs.iter().map(|r| r["server_name"].as_str().unwrap()).collect();
    assert_eq!(names, ["no token", "HS256", "RS256", "auth off", "auth on"]);
}

#[test]
fn wire_smoke() {
    let runs = bench(&["wire", "--rounds", "1", "--subscribers", "10", "--connections", "20"]);
    let names: Vec<&str> = runs.iter().map(|r| r["server_name"].as_str().unwrap()).collect();
    assert_eq!(names, ["plain", "TLS", "plain", "TLS", "plain", "TLS", "compress once", "per subscriber"]);
    assert!(runs[1]["url"].as_str().unwrap().starts_with("wss://"), "{}", runs[1]);
    for r in [&runs[0], &runs[1], &runs[6], &runs[7]] {
        assert_measured(r, "deliveries");
        assert_eq!(r["lost"], 0, "{r}");
    }
    assert_measured(&runs[3], "handshakes");
    assert!(runs[5]["details"]["server_rss_per_connection_bytes"].as_f64().is_some(), "{}", runs[5]);
    assert!(runs[6]["details"]["compression_ratio"].as_f64().unwrap() > 1.5, "{}", runs[6]);
}

#[test]
fn rooms_smoke() {
    let r = one(&["rooms", "--spawn", &spawn_cmd(), "--clients", "20", "--room-size", "5", "--msg-rate", "20"]);
    assert_measured(&r, "deliveries");
    assert_eq!(r["lost"], 0, "{r}");
}

#[test]
fn idle_smoke() {
    let r = one(&["idle", "--spawn", &spawn_cmd(), "--connections", "200"]);
    assert!(r["details"]["server_rss_per_connection_bytes"].as_f64().is_some(), "{r}");
    assert!(r["details"]["server_idle_cpu_percent"].as_f64().is_some(), "{r}");
}

#[test]
fn connect_smoke() {
    let r = one(&["connect", "--spawn", &spawn_cmd(), "--concurrency", "4"]);
    assert_measured(&r, "handshakes");
}

#[test]
fn echo_smoke() {
    let r = one(&["echo", "--spawn", &spawn_cmd(), "--connections", "4"]);
    assert_measured(&r, "round_trips");
}

#[test]
fn compare_sweeps_windows_over_the_three_servers_alternately() {
    let baseline = format!("{BASELINE} --listen 127.0.0.1:0 --threads 1");
    // Installed by tests/run.sh (benches/peers/install.sh).
    let node = format!("node {}/benches/peers/ws/server.mjs --listen 127.0.0.1:0", env!("CARGO_MANIFEST_DIR"));
    let runs = bench(&[
        "compare", "--rounds", "1", "--shardcast", &spawn_cmd(), "--baseline", &baseline, "--node", &node, "--no-uws",
        "--windows", "1,8", "--scenario", "fanout", "--subscribers", "10", "--max",
    ]);
    let names: Vec<(&str, f64)> = runs.iter().map(|r| (r["server_name"].as_str().unwrap(), r["details"]["window"].as_f64().unwrap())).collect();
    assert_eq!(
        names,
        [("shardcast", 1.0), ("baseline", 1.0), ("node-ws", 1.0), ("shardcast", 8.0), ("baseline", 8.0), ("node-ws", 8.0)]
    );
    for r in &runs {
        assert_measured(r, "deliveries");
        assert_eq!(r["lost"], 0, "{r}");
    }
}

#[test]
fn idle_spreads_over_child_processes_beyond_the_descriptor_limit() {
    let server = crate::util::Server::start(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/server.toml")).unwrap(),
        &["--shards", "1"],
    );
    let script = format!(
        "ulimit -n 200 && exec {BENCH} idle --url ws://{}/ws --server-pid {} --connections 300 --duration 0.3 --warmup 0 --json",
        server.addr,
        server.child.id()
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["details"]["processes"].as_f64().unwrap() >= 2.0, "{r}");
    assert_eq!(r["ops"], 300, "{r}");
    assert!(server.metric("connections_accepted_total") >= 300);
}

#[test]
fn admin_smoke() {
    let spawn = format!("{} --admin-listen 127.0.0.1:0", spawn_cmd());
    let r = one(&["api", "--spawn", &spawn, "--connections", "2"]);
    assert_measured(&r, "publishes");
    assert_eq!(r["details"]["failed"], 0.0, "{r}");
    assert!(r["details"]["deliveries"].as_f64().unwrap() > 0.0, "the subscriber received: {r}");
    let polled = one(&["fanout", "--spawn", &spawn, "--subscribers", "5", "--max", "--poll-admin-hz", "20"]);
    assert!(polled["details"]["dashboard_polls"].as_f64().unwrap() >= 1.0, "{polled}");
    assert_eq!(polled["lost"], 0, "{polled}");
    let runs = bench(&["admin", "--rounds", "1", "--subscribers", "20", "--connections", "2", "--poll-hz", "5"]);
    assert_eq!(runs.len(), 4, "api, websocket publishes, fan-out without and with a dashboard");
    assert_measured(&runs[0], "publishes");
    for r in &runs[1..] {
        assert_measured(r, "deliveries");
    }
}

#[test]
fn history_smoke() {
    let runs = bench(&["history", "--rounds", "1", "--subscribers", "10", "--messages", "50"]);
    let names: Vec<&str> = runs.iter().map(|r| r["server_name"].as_str().unwrap()).collect();
    assert_eq!(names, ["plain", "history", "plain, redis", "history, redis", "single node", "redis"]);
    for r in &runs[..4] {
        assert_measured(r, "deliveries");
        assert_eq!((r["lost"].as_u64(), r["out_of_order"].as_u64()), (Some(0), Some(0)), "{r}");
    }
    for r in &runs[4..] {
        assert_measured(r, "recoveries");
        assert_eq!(r["details"]["failed_recoveries"], 0.0, "{r}");
        assert_eq!(r["details"]["messages_per_recovery"], 50.0, "{r}");
    }
    assert!(runs[3]["details"].as_object().unwrap().keys().any(|k| k.starts_with("pid_")), "redis-server's CPU is reported: {}", runs[3]);
}

#[test]
fn publish_and_churn_smoke() {
    let r = one(&["publish", "--spawn", &spawn_cmd(), "--connections", "3", "--window", "2", "--subscribers", "2"]);
    assert_measured(&r, "publishes");
    assert_eq!((r["lost"].as_u64(), r["out_of_order"].as_u64()), (Some(0), Some(0)), "{r}");
    assert_eq!((r["details"]["failed"].as_f64(), r["details"]["acks_out_of_order"].as_f64()), (Some(0.0), Some(0.0)), "{r}");
    assert!(r["details"]["deliveries"].as_f64().unwrap() >= 2.0 * r["ops"].as_f64().unwrap(), "each subscriber got every publish: {r}");
    let r = one(&["fanout", "--spawn", &spawn_cmd(), "--subscribers", "5", "--max", "--churn-rate", "50"]);
    assert_measured(&r, "deliveries");
    assert!(r["details"]["churn_cycles_per_second"].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(r["details"]["churn_failed"], 0.0, "{r}");
}

#[test]
fn handshakes_smoke() {
    let runs = bench(&["handshakes", "--rounds", "1", "--concurrency", "4", "--users", "10"]);
    let names: Vec<&str> = runs.iter().map(|r| r["server_name"].as_str().unwrap()).collect();
    assert_eq!(names, ["no auth", "JWT", "connect proxy", "no auth", "JWT", "connect proxy"], "loaded, then one at a time");
    for r in &runs {
        assert_measured(r, "handshakes");
        assert_eq!(r["details"]["failed"], 0.0, "every handshake welcomed (as a user, for JWT and the hook): {r}");
        assert!(r["details"]["backend_cpu_seconds"].as_f64().is_some(), "the backend's CPU is reported: {r}");
    }
    let calls = |r: &Value| r["details"]["backend_connect_calls"].as_f64().unwrap();
    assert_eq!((calls(&runs[0]), calls(&runs[1])), (0.0, 0.0));
    assert!(calls(&runs[2]) > 0.0, "{}", runs[2]);
    assert!(runs[2]["details"]["server_hooks_thread_cpu_seconds"].as_f64().is_some(), "{}", runs[2]);
}

#[test]
fn publish_proxy_smoke() {
    let runs = bench(&["publish-proxy", "--rounds", "1", "--connections", "4"]);
    let names: Vec<&str> = runs.iter().map(|r| r["server_name"].as_str().unwrap()).collect();
    assert_eq!(names, ["anyone", "proxy", "anyone", "proxy"]);
    for r in &runs {
        assert_measured(r, "publishes");
        assert_eq!((r["lost"].as_u64(), r["out_of_order"].as_u64()), (Some(0), Some(0)), "{r}");
        assert_eq!(r["details"]["failed"], 0.0, "{r}");
    }
    let calls = |r: &Value| r["details"]["backend_publish_calls"].as_f64().unwrap();
    assert_eq!(calls(&runs[0]), 0.0, "anyone does not call the hook: {}", runs[0]);
    // Counted at either end of the window: a few calls of the 4 connections may straddle it.
    assert!(calls(&runs[1]) + 4.0 >= runs[1]["ops"].as_f64().unwrap(), "every acked publish went through the hook: {}", runs[1]);
}

#[test]
fn webhooks_smoke() {
    let runs = bench(&["webhooks", "--rounds", "1", "--subscribers", "10", "--churn-rate", "100", "--max-delay-ms", "20"]);
    let names: Vec<&str> = runs.iter().map(|r| r["server_name"].as_str().unwrap()).collect();
    assert_eq!(names, ["webhooks off", "webhooks on"]);
    for r in &runs {
        assert_measured(r, "deliveries");
        assert_eq!(r["details"]["churn_failed"], 0.0, "{r}");
    }
    let events = |r: &Value| r["details"]["webhook_events"].as_f64().unwrap();
    assert_eq!(events(&runs[0]), 0.0, "{}", runs[0]);
    assert!(events(&runs[1]) > 0.0, "{}", runs[1]);
    assert_eq!(runs[1]["details"]["backend_other_calls"], 0.0, "every POST had time_ms and events: {}", runs[1]);
}

/// Runs `shardcast-bench <args>` as given; returns its stdout.
fn bench_text(args: &[&str]) -> String {
    let out = run(args);
    assert!(out.status.success(), "shardcast-bench {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn soak_smoke() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let text = bench_text(&[
        "soak", "--duration", "4", "--settle", "2", "--churners", "40", "--steady", "10", "--topics", "2", "--rate", "20", "--out", out,
    ]);
    // It exits non-zero when a well-behaved client lost anything; the table says so too.
    let lost = text.lines().find(|l| l.starts_with("| lost (owed - delivered)")).expect(&text);
    assert_eq!(lost.split('|').nth(2).map(str::trim), Some("0"), "{text}");
    assert!(text.contains("slow readers (closed; 1013 frame read)"), "{text}");
    assert!(std::fs::read_to_string(dir.path().join("soak.svg")).unwrap().contains("<svg"));
    let samples = std::fs::read_to_string(dir.path().join("samples.csv")).unwrap();
    assert!(samples.lines().count() > 3 && samples.contains(",churn,"), "{samples}");
}

#[test]
fn slowloris_smoke() {
    let text = bench_text(&["slowloris", "--connections", "50", "--probes", "10", "--handshake-timeout-ms", "1000"]);
    assert!(text.contains("under slowloris"), "{text}");
    // Every slow connection was closed, at the handshake timeout.
    let closed = text.lines().find(|l| l.starts_with("slow connections closed after")).expect(&text);
    let min: u64 = closed.split("min ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!((1000..3000).contains(&min), "{closed}");
}

#[test]
fn fanout_and_idle_over_the_fallback_transports_smoke() {
    let spawn = spawn_cmd();
    for transport in ["http_stream", "sse"] {
        let r = one(&["fanout", "--spawn", &spawn, "--subscribers", "20", "--topics", "2", "--publishers", "2", "--max", "--transport", transport]);
        assert_measured(&r, "deliveries");
        assert_eq!(r["transport"], transport, "{r}");
        assert_eq!((r["lost"].as_u64(), r["duplicated"].as_u64(), r["out_of_order"].as_u64()), (Some(0), Some(0), Some(0)), "{r}");
        assert!(r["url"].as_str().unwrap().starts_with("http://"), "{r}");
        // A 64 B payload in a message frame, plus the transport's framing.
        let bytes = r["details"]["subscriber_bytes_per_delivery"].as_f64().unwrap();
        assert!((100.0..200.0).contains(&bytes), "{r}");
        let fixed = one(&["fanout", "--spawn", &spawn, "--subscribers", "5", "--rate", "200", "--transport", transport]);
        assert_eq!(fixed["lost"], 0, "{fixed}");
        let idle = one(&["idle", "--spawn", &spawn, "--connections", "100", "--transport", transport]);
        assert_eq!(idle["transport"], transport, "{idle}");
        assert!(idle["details"]["server_rss_per_connection_bytes"].as_f64().is_some(), "{idle}");
    }
}

#[test]
fn idle_fallback_sessions_spread_over_child_processes() {
    let server = crate::util::Server::start(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/server.toml")).unwrap(),
        &["--shards", "1"],
    );
    let script = format!(
        "ulimit -n 200 && exec {BENCH} idle --url ws://{}/ws --server-pid {} --connections 300 --transport sse --duration 0.3 --warmup 0 --json",
        server.addr,
        server.child.id()
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["details"]["processes"].as_f64().unwrap() >= 2.0, "{r}");
    assert_eq!((r["ops"].as_u64(), r["transport"].as_str()), (Some(300), Some("sse")), "{r}");
    // The children subscribed SSE sessions: one POSTed request each.
    assert!(server.metric("emulation_requests_total") >= 300, "{r}");
}

#[test]
fn transports_smoke() {
    let runs = bench(&["transports", "--rounds", "1", "--subscribers", "10", "--rate", "100", "--connections", "50"]);
    let names: Vec<&str> = runs.iter().map(|r| r["server_name"].as_str().unwrap()).collect();
    assert_eq!(names, ["websocket", "http_stream", "sse"].repeat(3), "fan-out --max, fan-out --rate, idle; interleaved");
    for r in &runs {
        assert_eq!(r["transport"], r["server_name"], "{r}");
    }
    for r in &runs[..6] {
        assert_measured(r, "deliveries");
        assert_eq!((r["lost"].as_u64(), r["out_of_order"].as_u64()), (Some(0), Some(0)), "{r}");
        // Its servers have an admin listener: the frames per send are read from /metrics.
        assert!(r["details"]["server_frames_per_send"].as_f64().unwrap() >= 1.0, "{r}");
        // Both are differences of /proc tick counts: equal ones may differ in the last bit.
        assert!(r["server"]["user_cpu_seconds"].as_f64().unwrap() <= r["server"]["cpu_seconds"].as_f64().unwrap() + 1e-9, "{r}");
    }
    for r in &runs[6..] {
        assert!(r["details"]["server_rss_per_connection_bytes"].as_f64().is_some(), "{r}");
    }
}
