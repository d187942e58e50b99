//! The admin plane: every API endpoint and error against the real binary,
//! across shards and nodes, and the dashboard in headless Chromium.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::util::{eventually, http_get, on_every_shard, raw_request, Client, Redis, Server};

const SECRET: &str = "admin-test-secret";

/// One HTTP/1.1 request (`Connection: close`); returns the status and the
/// body parsed as JSON (`Value::Null` when it is not JSON).
fn call(addr: &str, method: &str, path: &str, body: &str, headers: &str) -> (u16, Value) {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}\r\n{body}",
        body.len()
    );
    let response = raw_request(addr, request.as_bytes());
    let status = response.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {response:?}"));
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn post(server: &Server, path: &str, body: Value) -> (u16, Value) {
    call(server.admin(), "POST", path, &body.to_string(), "")
}

fn get(server: &Server, path: &str) -> (u16, Value) {
    call(server.admin(), "GET", path, "", "")
}

/// Asserts an error answer: status, code, and (for 400s about a field) the field.
#[track_caller]
fn assert_error((status, body): (u16, Value), want_status: u16, code: &str, field: Option<&str>) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    if let Some(field) = field {
        assert_eq!(body["error"]["field"], field, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(field), "the message names the field: {body}");
    }
}

fn token(user: &str) -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 300;
    encode(&Header::new(Algorithm::HS256), &json!({"sub": user, "exp": exp}), &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

fn login(server: &Server, user: &str) -> Client {
    let mut c = Client::upgrade(format!("{}?token={}", server.url("/ws"), token(user)));
    c.expect_welcome();
    c
}

#[test]
fn api_publish_and_broadcast_reach_subscribers_on_every_shard() {
    let server = Server::start("[limits]\nmax_message_bytes = 1024\n", &["--shards", "2"]);
    let mut subs = server.clients_on_every_shard(2);
    for c in &mut subs {
        c.subscribe("news");
    }
    let mut other = server.client();
    other.subscribe("sport");
    assert_eq!(post(&server, "/api/publish", json!({"topic":"news","payload":{"headline":"paid"}})), (200, json!({})));
    for c in &mut subs {
        assert_eq!(c.recv(), json!({"type":"message","topic":"news","payload":{"headline":"paid"}}));
    }
    assert_eq!(post(&server, "/api/broadcast", json!({"topics":["news","sport","nobody"],"payload":[1,2]})), (200, json!({})));
    for c in subs.iter_mut().chain([&mut other]) {
        let m = c.recv();
        assert_eq!(m["payload"], json!([1, 2]), "{m}");
    }
    // Order per topic holds across API calls.
    for i in 0..50 {
        assert_eq!(post(&server, "/api/publish", json!({"topic":"news","payload":i})).0, 200);
    }
    for c in &mut subs {
        for i in 0..50 {
            assert_eq!(c.recv()["payload"], i);
        }
    }
    assert!(server.metric("api_publishes_total") >= 54);
    other.expect_silence(Duration::from_millis(100));
}

#[test]
fn bad_requests_get_json_errors_naming_the_field() {
    let server = Server::start("[limits]\nmax_message_bytes = 1024\n[admin]\nmax_body_bytes = 4096\n", &["--admin-listen", "127.0.0.1:0"]);
    let mut watcher = server.client();
    watcher.subscribe("news");
    assert_error(post(&server, "/api/publish", json!({"topic":"$user:bob","payload":1})), 400, "invalid_topic", Some("topic"));
    assert_error(post(&server, "/api/publish", json!({"topic":"","payload":1})), 400, "invalid_topic", Some("topic"));
    assert_error(post(&server, "/api/publish", json!({"topic":"news"})), 400, "bad_request", Some("payload"));
    assert_error(post(&server, "/api/publish", json!({"topic":7,"payload":1})), 400, "bad_request", Some("topic"));
    assert_error(post(&server, "/api/publish", json!({"topic":"news","payload":1,"extra":true})), 400, "bad_request", Some("extra"));
    assert_error(post(&server, "/api/publish", json!({"topic":"news","payload":"x".repeat(2000)})), 400, "message_too_large", Some("payload"));
    assert_error(call(server.admin(), "POST", "/api/publish", "{\"topic\":", ""), 400, "bad_request", None);
    assert_error(call(server.admin(), "POST", "/api/publish", "[1]", ""), 400, "bad_request", None);
    assert_error(post(&server, "/api/broadcast", json!({"topics":[],"payload":1})), 400, "bad_request", Some("topics"));
    assert_error(post(&server, "/api/broadcast", json!({"topics":["ok","$no"],"payload":1})), 400, "invalid_topic", Some("topics[1]"));
    assert_error(post(&server, "/api/send", json!({"user":"","payload":1})), 400, "bad_request", Some("user"));
    assert_error(post(&server, "/api/disconnect", json!({"user":"bob","code":1000})), 400, "bad_request", Some("code"));
    assert_error(post(&server, "/api/disconnect", json!({"user":"bob","code":"4010"})), 400, "bad_request", Some("code"));
    assert_error(post(&server, "/api/disconnect", json!({"user":"bob","reason":"r".repeat(124)})), 400, "bad_request", Some("reason"));
    let big = json!({"topic":"news","payload":"x".repeat(5000)}).to_string();
    assert_error(call(server.admin(), "POST", "/api/publish", &big, ""), 413, "payload_too_large", None);
    assert_error(get(&server, "/api/nope"), 404, "not_found", None);
    assert_error(get(&server, "/nope"), 404, "not_found", None);
    assert_error(get(&server, "/api/publish"), 405, "method_not_allowed", None);
    assert_error(post(&server, "/api/info", json!({})), 405, "method_not_allowed", None);
    assert_error(get(&server, "/api/topics?limit=0"), 400, "bad_request", Some("limit"));
    assert_error(get(&server, "/api/topics?limit=10001"), 400, "bad_request", Some("limit"));
    assert_error(get(&server, "/api/topics?color=red"), 400, "bad_request", Some("color"));
    // None of that reached anyone, and the server still serves.
    watcher.expect_silence(Duration::from_millis(100));
    assert_eq!(post(&server, "/api/publish", json!({"topic":"news","payload":1})).0, 200);
    assert_eq!(watcher.recv()["payload"], 1);
}

#[test]
fn send_and_disconnect_reach_every_connection_of_a_user() {
    let server = Server::start(&format!("[auth]\nhmac_secret = \"{SECRET}\"\n"), &["--shards", "2"]);
    let mut alices = on_every_shard(2, || login(&server, "alice"));
    let mut bob = login(&server, "bob");
    bob.subscribe("news");
    assert_eq!(post(&server, "/api/send", json!({"user":"alice","payload":{"hi":1}})), (200, json!({})));
    for a in &mut alices {
        assert_eq!(a.recv(), json!({"type":"direct","from":null,"payload":{"hi":1}}));
    }
    let (status, body) = post(&server, "/api/disconnect", json!({"user":"alice","code":4011,"reason":"banned"}));
    assert_eq!((status, body), (200, json!({"closed": 2})));
    for a in &mut alices {
        assert_eq!(a.expect_close(), (4011, "banned".to_string()));
    }
    // Bob is untouched; a second disconnect of alice finds nobody; the
    // default code and reason apply.
    assert_eq!(post(&server, "/api/disconnect", json!({"user":"alice"})), (200, json!({"closed": 0})));
    let mut again = login(&server, "alice");
    assert_eq!(post(&server, "/api/disconnect", json!({"user":"alice"})), (200, json!({"closed": 1})));
    assert_eq!(again.expect_close(), (4010, "disconnected by server".to_string()));
    assert_eq!(post(&server, "/api/publish", json!({"topic":"news","payload":2})).0, 200);
    assert_eq!(bob.recv()["payload"], 2);
    assert_eq!(server.metric("server_disconnects_total"), 3);
}

#[test]
fn info_topics_health_and_metrics_describe_the_node() {
    let server = Server::start("", &["--shards", "2"]);
    assert_eq!(get(&server, "/healthz"), (200, json!({"status":"ok"})));
    assert_eq!(get(&server, "/readyz"), (200, json!({"ready": true})));
    let mut clients = server.clients_on_every_shard(2);
    for (i, c) in clients.iter_mut().enumerate() {
        for t in ["room:a", "room:b", "room:c", "lobby"] {
            c.subscribe(t);
        }
        c.subscribe(&format!("solo:{i}"));
    }
    let (status, info) = get(&server, "/api/info");
    assert_eq!(status, 200);
    let node = &info["node"];
    assert_eq!(node["connections"], 2, "{info}");
    assert_eq!(node["subscriptions"], 10, "{info}");
    assert_eq!(node["topics"], 6, "distinct topics on the node: {info}");
    assert_eq!(node["shards"].as_array().unwrap().len(), 2);
    assert_eq!(node["missing_shards"], json!([]));
    assert_eq!(node["redis"], Value::Null);
    assert_eq!(node["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["nodes"], json!([]));
    for shard in node["shards"].as_array().unwrap() {
        assert_eq!(shard["connections"], 1, "{shard}");
        assert_eq!(shard["topics"], 5, "{shard}");
    }
    // Rates are per second, from counters sampled each second.
    for i in 0..20 {
        clients[0].publish("lobby", json!(i));
    }
    eventually(Duration::from_secs(5), "a non-zero message rate", || {
        get(&server, "/api/info").1["node"]["messages_in_per_second"].as_f64().unwrap() > 0.0
    });
    let (_, history) = get(&server, "/api/history");
    assert!(!history["samples"].as_array().unwrap().is_empty(), "{history}");

    let (status, topics) = get(&server, "/api/topics?prefix=room:&limit=2");
    assert_eq!(status, 200);
    assert_eq!(
        topics,
        json!({"topics":[{"topic":"room:a","subscribers":2},{"topic":"room:b","subscribers":2}],"truncated":true,"missing_shards":[]})
    );
    let (_, all) = get(&server, "/api/topics");
    assert_eq!(all["topics"].as_array().unwrap().len(), 6, "$ topics stay hidden: {all}");
    assert_eq!(all["truncated"], false);

    let page = http_get(server.admin(), "/metrics");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    for name in [
        "shardcast_connections{shard=\"0\"} 1",
        "shardcast_publishes_total{shard=",
        "shardcast_fanout_delay_seconds_bucket{le=",
        "shardcast_write_delay_seconds_count{shard=",
        "shardcast_redis_published_total{shard=",
        "shardcast_redis_reconnects_total{shard=",
        "shardcast_redis_pipeline_depth{shard=",
        "# EOF",
    ] {
        assert!(page.contains(name), "{name} missing from /metrics");
    }
    assert!(server.metric("fanout_delay_seconds_count") > 0);
    // The public port serves no metrics by default.
    assert!(http_get(&server.addr, "/metrics").starts_with("HTTP/1.1 404"));
}

#[test]
fn readyz_turns_503_as_soon_as_the_drain_starts() {
    let server = Server::start("[shutdown]\ndrain_timeout_ms = 3000\n[queue]\nclose_timeout_ms = 3000\n", &["--shards", "2"]);
    // A client that never answers the close keeps the drain going.
    let _stubborn = server.client();
    assert_eq!(get(&server, "/readyz").0, 200);
    server.signal(libc::SIGTERM);
    eventually(Duration::from_secs(2), "503 while draining", || {
        let (status, body) = get(&server, "/readyz");
        status == 503 && body["reason"].as_str().is_some_and(|r| r.contains("shutting down"))
    });
    assert_eq!(get(&server, "/healthz").0, 200, "the process still runs");
}

#[test]
fn the_api_key_guards_the_api_and_a_public_address_needs_one() {
    let server = Server::start("[admin]\napi_key = \"s3cret\"\n", &["--admin-listen", "127.0.0.1:0"]);
    assert_error(get(&server, "/api/info"), 401, "unauthorized", None);
    assert_error(call(server.admin(), "GET", "/api/info", "", "Authorization: apikey wrong\r\n"), 401, "unauthorized", None);
    assert_error(call(server.admin(), "GET", "/api/info", "", "Authorization: Bearer s3cret\r\n"), 401, "unauthorized", None);
    let body = json!({"topic":"t","payload":1}).to_string();
    assert_error(call(server.admin(), "POST", "/api/publish", &body, ""), 401, "unauthorized", None);
    assert_eq!(call(server.admin(), "GET", "/api/info", "", "Authorization: apikey s3cret\r\n").0, 200);
    assert_eq!(call(server.admin(), "POST", "/api/publish", &body, "Authorization: apikey s3cret\r\n").0, 200);
    // Health, metrics and the page itself need no key.
    assert_eq!(get(&server, "/healthz").0, 200);
    assert!(http_get(server.admin(), "/metrics").starts_with("HTTP/1.1 200"));
    assert!(http_get(server.admin(), "/").contains("<title>shardcast"));

    let err = Server::try_start("[admin]\nlisten = \"0.0.0.0:0\"\n", &["--admin-listen", "0.0.0.0:0"]).err().expect("must not start");
    assert!(err.contains("admin.api_key"), "{err}");
}

#[test]
fn admin_connections_are_bounded_by_max_connections() {
    let server = Server::start("[admin]\nmax_connections = 1\n", &["--admin-listen", "127.0.0.1:0"]);
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut first = TcpStream::connect(server.admin()).unwrap();
    first.write_all(request).unwrap();
    let mut buf = [0u8; 512];
    assert!(first.read(&mut buf).unwrap() > 0, "the first connection is served and kept alive");
    let mut second = TcpStream::connect(server.admin()).unwrap();
    second.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    second.write_all(request).unwrap();
    assert!(second.read(&mut buf).is_err(), "the second waits while the first holds the only slot");
    drop(first);
    second.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = second.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

/// Issue 22.7: a client that never finished its headers held one of
/// `max_connections` for ever. It is closed at `header_timeout_ms`, and the
/// slot serves the next client.
#[test]
fn a_slow_admin_client_is_closed_at_header_timeout_and_frees_its_slot() {
    let server = Server::start("[admin]\nmax_connections = 1\nheader_timeout_ms = 300\n", &["--admin-listen", "127.0.0.1:0"]);
    let mut slow = TcpStream::connect(server.admin()).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = std::time::Instant::now();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 512];
    let n = slow.read(&mut buf).unwrap_or(0);
    let waited = started.elapsed();
    assert!(n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"), "closed: {:?}", String::from_utf8_lossy(&buf[..n]));
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(5), "closed at the header timeout ({waited:?})");
    // The only slot is free again (the slow one still holds its socket open).
    let mut next = TcpStream::connect(server.admin()).unwrap();
    next.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    next.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let n = next.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

/// `[admin] cpu` pins the admin thread (it shares shard 0's CPU under
/// `taskset` otherwise); a CPU the process may not use stops the start.
#[test]
fn the_admin_thread_is_pinned_to_admin_cpu() {
    let server = Server::start("[admin]\ncpu = 0\n", &["--admin-listen", "127.0.0.1:0", "--shards", "1"]);
    let pid = server.child.id();
    let admin_thread = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| t.unwrap().path())
        .find(|t| std::fs::read_to_string(t.join("comm")).unwrap().trim() == "shardcast-admin")
        .expect("a thread named shardcast-admin");
    let status = std::fs::read_to_string(admin_thread.join("status")).unwrap();
    let allowed = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap().trim().to_string();
    assert_eq!(allowed, "0");
    let err = Server::try_start("[admin]\ncpu = 1023\n", &["--admin-listen", "127.0.0.1:0"]).err().expect("must not start");
    assert!(err.contains("admin.cpu = 1023"), "{err}");
}

#[test]
fn an_explicit_admin_address_in_use_stops_the_start_but_the_default_does_not() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = Server::try_start("", &["--admin-listen", &addr]).err().expect("must not start");
    assert!(err.contains(&addr), "{err}");
    // The default address taken (by us, or by whatever already holds it):
    // logged, and the node serves WebSockets without the admin plane.
    let _held = std::net::TcpListener::bind("127.0.0.1:9090");
    let mut defaults = Command::new(crate::util::BIN);
    defaults.args(["--listen", "127.0.0.1:0"]);
    let server = Server::spawn(defaults, false).unwrap();
    let _ = server.client();
    assert!(server.stderr().contains("default admin address"), "{}", server.stderr());
}

/// A node with 2 shards bridged to `redis`, announcing itself every 200 ms.
fn node(redis: &Redis, extra: &str) -> Server {
    let config = format!(
        "[auth]\nhmac_secret = \"{SECRET}\"\nallow_anonymous = true\n[redis]\nurl = \"{}\"\nreconnect_min_ms = 20\nreconnect_max_ms = 200\n[admin]\nnode_info_interval_ms = 200\n{extra}",
        redis.url()
    );
    Server::start(&config, &["--shards", "2", "--admin-listen", "127.0.0.1:0"])
}

#[test]
fn publish_and_disconnect_cross_nodes_and_readyz_follows_redis() {
    let mut redis = Redis::start();
    let a = node(&redis, "[server]\nnode_id = \"node-a\"\n");
    let b = node(&redis, "[server]\nnode_id = \"node-b\"\n");
    let mut listeners = [a.client(), b.client()];
    for c in &mut listeners {
        c.subscribe("orders");
    }
    let mut alice_on_b = login(&b, "alice");
    eventually(Duration::from_secs(10), "both nodes subscribed in redis", || redis.numsub("shardcast:orders") == 2);
    eventually(Duration::from_secs(5), "node-a ready", || get(&a, "/readyz").0 == 200);

    assert_eq!(post(&a, "/api/publish", json!({"topic":"orders","payload":{"id":7}})), (200, json!({})));
    for c in &mut listeners {
        assert_eq!(c.recv(), json!({"type":"message","topic":"orders","payload":{"id":7}}));
    }
    assert_eq!(post(&a, "/api/send", json!({"user":"alice","payload":"hello"})).0, 200);
    assert_eq!(alice_on_b.recv(), json!({"type":"direct","from":null,"payload":"hello"}));
    assert_eq!(post(&a, "/api/disconnect", json!({"user":"alice","reason":"banned"})), (200, json!({"closed": 0})));
    assert_eq!(alice_on_b.expect_close(), (4010, "banned".to_string()));

    // Each node sees the other in /api/info.
    eventually(Duration::from_secs(5), "node-a lists node-b", || {
        let (_, info) = get(&a, "/api/info");
        info["nodes"].as_array().unwrap().iter().any(|n| n["id"] == "node-b" && n["connections"] == 1)
    });
    let (_, info) = get(&a, "/api/info");
    assert_eq!(info["node"]["redis"]["connected"], true, "{info}");

    // Redis gone: not ready, with the reason; node-b drops out of the list.
    redis.kill();
    eventually(Duration::from_secs(5), "node-a not ready", || {
        let (status, body) = get(&a, "/readyz");
        status == 503 && body["reason"].as_str().unwrap().contains("redis")
    });
    eventually(Duration::from_secs(5), "node-b forgotten after three intervals", || get(&a, "/api/info").1["nodes"] == json!([]));
    assert_eq!(get(&a, "/healthz").0, 200, "alive, just not ready");
    redis.restart();
    eventually(Duration::from_secs(10), "node-a ready again", || get(&a, "/readyz").0 == 200);
}

/// `tests/browser/` has playwright-core and Debian's chromium is installed
/// (tests/run.sh does both).
fn browser_ready() -> Result<(), String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");
    if !std::path::Path::new(&format!("{dir}/node_modules/playwright-core")).exists() {
        return Err(format!("{dir}/node_modules is missing: run `bash tests/run.sh` (it runs npm ci there)"));
    }
    if !std::path::Path::new("/usr/bin/chromium").exists() {
        return Err("/usr/bin/chromium is missing: run `bash tests/run.sh` (it installs Debian's chromium)".into());
    }
    Ok(())
}

#[test]
fn the_dashboard_shows_connections_live_in_headless_chromium() {
    browser_ready().unwrap_or_else(|e| panic!("{e}"));
    let server = Server::start("[admin]\napi_key = \"dash-key\"\n", &["--shards", "2", "--admin-listen", "127.0.0.1:0"]);
    let shot = concat!(env!("CARGO_MANIFEST_DIR"), "/target/dashboard.png");
    let _ = std::fs::remove_file(shot);
    let mut node = Command::new("node")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/dashboard.mjs"))
        .args([&format!("http://{}/", server.admin()), "3", shot, "dash-key"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let ready = lines.next().and_then(Result::ok).unwrap_or_default();
    if !ready.starts_with("ready ") {
        let mut err = String::new();
        let _ = node.stderr.take().unwrap().read_to_string(&mut err);
        panic!("the page did not come up: {ready:?} {err}");
    }
    assert_eq!(ready, "ready 0");
    let mut clients: Vec<Client> = (0..3).map(|_| server.client()).collect();
    for c in &mut clients {
        c.subscribe("lobby");
    }
    clients[0].publish("lobby", json!("hello"));
    let seen = lines.next().and_then(Result::ok).unwrap_or_default();
    let status = node.wait().unwrap();
    let mut err = String::new();
    let _ = node.stderr.take().unwrap().read_to_string(&mut err);
    assert!(status.success(), "dashboard test failed: {seen:?} {err}");
    assert_eq!(seen, "seen 3");
    assert!(std::fs::metadata(shot).unwrap().len() > 10_000, "a real screenshot at {shot}");
}
