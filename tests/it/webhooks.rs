//! Webhooks (`[webhooks]`): the real binary POSTing to a real HTTP backend
//! (axum, started by each test), driven by real WebSocket clients: the
//! events, their signature, batching, retries, a backend that is down, and
//! occupancy reported once across two nodes sharing a Redis.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use serde_json::{json, Value};

use crate::backend::{Backend, Reply, Seen};
use crate::util::{eventually, free_port, Client, Redis, Server};

const SECRET: &str = "webhook-secret";

/// `pr:*` keeps presence; anything else is a plain topic.
const NAMESPACES: &str = "[[namespaces]]\npattern = \"pr:*\"\nsubscribe = \"anyone\"\npublish = \"anyone\"\npresence = true\n\
                          [[namespaces]]\npattern = \"*\"\nsubscribe = \"anyone\"\npublish = \"anyone\"\n";

fn webhooks(url: &str, extra: &str) -> String {
    let delay = if extra.contains("max_delay_ms") { "" } else { "max_delay_ms = 50\n" };
    format!("{NAMESPACES}[limits]\npublish_rate = 0\n[webhooks]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n{delay}{extra}\n")
}

fn ok(_: &str, _: &Value) -> Reply {
    Reply::Json(json!({}))
}

/// Every event the backend received so far, in order, each POST's
/// signature checked against its bytes.
fn events(backend: &Backend) -> Vec<Value> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let mut all = Vec::new();
    for call in backend.calls("/hooks") {
        verify(&key, &call);
        all.extend(call.body["events"].as_array().unwrap().iter().cloned());
    }
    all
}

fn verify(key: &hmac::Key, call: &Seen) {
    let signature = call.headers.get("x-shardcast-signature").expect("signed");
    let hex = signature.strip_prefix("sha256=").expect("sha256=<hex>");
    let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    hmac::verify(key, &call.raw, &bytes).expect("the signature is the body's HMAC-SHA256");
    let stamp: u64 = call.headers["x-shardcast-timestamp"].parse().unwrap();
    assert_eq!(call.body["time_ms"].as_u64(), Some(stamp), "the timestamp header is the body's time_ms");
    assert_eq!(call.headers.get("content-type").map(String::as_str), Some("application/json"));
}

fn named<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["name"] == name).collect()
}

#[test]
fn clients_members_and_topics_are_reported_once_and_signed() {
    let backend = Backend::start(ok);
    let server = Server::start(&webhooks(&backend.url("/hooks"), ""), &["--shards", "2"]);
    let mut clients = server.clients_on_every_shard(2);
    let (a_id, b_id) = (json!(clients[0].id), json!(clients[1].id));
    clients[0].subscribe("pr:room");
    clients[1].subscribe("pr:room");
    clients[0].subscribe("plain");
    eventually(Duration::from_secs(5), "joins reported", || named(&events(&backend), "member_added").len() == 2);
    let seen = events(&backend);
    // Finding a client on each shard may have taken a few more.
    let mine = |name: &str, events: &[Value]| named(events, name).iter().filter(|e| e["client"] == a_id || e["client"] == b_id).count();
    assert_eq!(mine("client_connected", &seen), 2, "{seen:?}");
    assert!(named(&seen, "client_connected").iter().any(|e| e["client"] == a_id && e["user"] == ""));
    let occupied: Vec<_> = named(&seen, "topic_occupied").iter().map(|e| e["topic"].clone()).collect();
    assert_eq!(occupied.len(), 2, "once per topic, not per shard or subscriber: {seen:?}");
    assert!(occupied.contains(&json!("pr:room")) && occupied.contains(&json!("plain")));
    assert!(named(&seen, "member_added").iter().any(|e| e["client"] == b_id && e["topic"] == "pr:room"));
    assert!(named(&seen, "member_added").iter().all(|e| e["topic"] == "pr:room"), "plain topics have no members");
    assert!(seen.iter().all(|e| !e["topic"].as_str().unwrap_or("").starts_with('$')), "internal topics are not reported");

    clients[0].send(json!({"type": "unsubscribe", "topic": "pr:room"}));
    eventually(Duration::from_secs(5), "a leave", || named(&events(&backend), "member_removed").len() == 1);
    assert!(named(&events(&backend), "topic_vacated").is_empty(), "another subscriber is left");
    drop(clients);
    eventually(Duration::from_secs(5), "everything vacated", || named(&events(&backend), "topic_vacated").len() == 2);
    let seen = events(&backend);
    assert_eq!(named(&seen, "member_removed").len(), 2, "{seen:?}");
    assert_eq!(mine("client_disconnected", &seen), 2, "{seen:?}");
    assert_eq!(named(&seen, "client_connected").len(), named(&seen, "client_disconnected").len());
    assert_eq!(server.metric_labelled("webhook_events_total", &[("result", "sent")]), seen.len() as u64);
}

#[test]
fn events_are_batched_up_to_max_batch() {
    let backend = Backend::start(ok);
    let config = webhooks(&backend.url("/hooks"), "max_batch = 10\nmax_delay_ms = 300\nevents = [\"client_connected\"]");
    let server = Server::start(&config, &["--shards", "2"]);
    let _clients: Vec<Client> = (0..25).map(|_| server.client()).collect();
    eventually(Duration::from_secs(5), "25 connections reported", || events(&backend).len() == 25);
    let sizes: Vec<usize> = backend.calls("/hooks").iter().map(|c| c.body["events"].as_array().unwrap().len()).collect();
    assert!(sizes.iter().all(|n| *n <= 10), "no batch over max_batch: {sizes:?}");
    assert!(sizes.len() < 25, "events share POSTs: {sizes:?}");
    assert!(named(&events(&backend), "client_disconnected").is_empty(), "only the events asked for");
}

#[test]
fn a_failed_post_is_retried_and_a_4xx_is_not() {
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let backend = Backend::start(move |_, body| {
        let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let refused = body["events"].as_array().is_some_and(|e| e.iter().any(|e| e["topic"] == "refused"));
        match (n, refused) {
            (_, true) => Reply::Status(400),
            (0 | 1, _) => Reply::Status(500),
            _ => Reply::Json(json!({})),
        }
    });
    let config = webhooks(&backend.url("/hooks"), "events = [\"topic_occupied\"]");
    let server = Server::start(&config, &["--shards", "1"]);
    let mut c = server.client();
    c.subscribe("first");
    eventually(Duration::from_secs(5), "three attempts", || backend.calls("/hooks").len() == 3);
    let attempts = backend.calls("/hooks");
    assert!(attempts.iter().all(|a| a.body["events"] == json!([{"name": "topic_occupied", "topic": "first"}])), "the same batch each time");
    assert_eq!(server.node_metric("webhook_retries_total"), 2);
    assert_eq!(server.metric_labelled("webhook_events_total", &[("result", "sent")]), 1);
    c.subscribe("refused");
    eventually(Duration::from_secs(5), "the refusal counted", || {
        server.metric_labelled("webhook_events_total", &[("result", "failed")]) == 1
    });
    assert_eq!(backend.calls("/hooks").len(), 4, "a 4xx is not retried");
}

#[test]
fn a_post_that_outlives_timeout_ms_is_retried_until_max_retry_ms_then_failed() {
    // The backend takes every POST and never answers in time.
    let backend = Backend::start(|_, _| Reply::After(Duration::from_secs(5), json!({})));
    let config = webhooks(&backend.url("/hooks"), "events = [\"topic_occupied\"]\ntimeout_ms = 200\nmax_retry_ms = 1500");
    let server = Server::start(&config, &["--shards", "1"]);
    let mut c = server.client();
    let started = Instant::now();
    c.subscribe("slow");
    eventually(Duration::from_secs(10), "the batch given up", || {
        server.metric_labelled("webhook_events_total", &[("result", "failed")]) == 1
    });
    let took = started.elapsed();
    let attempts = backend.calls("/hooks").len();
    // Attempts of 200 ms with a doubling backoff from 100 ms fit 3 to 5 times in 1.5 s.
    assert!((3..=6).contains(&attempts), "each attempt cut at timeout_ms and retried: {attempts} attempts");
    assert!(took >= Duration::from_millis(1400) && took < Duration::from_secs(5), "given up at max_retry_ms, not before: {took:?}");
    assert!(server.node_metric("webhook_retries_total") >= 2);
    assert_eq!(server.metric_labelled("webhook_events_total", &[("result", "sent")]), 0);
    // The connection whose subscribe made the event never waited for any of it.
    c.subscribe("after");
}

#[test]
fn a_backend_down_for_ten_seconds_blocks_nothing_and_loses_only_the_overflow() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hooks");
    let config = webhooks(&url, "queue_size = 20\nmax_batch = 10\nevents = [\"client_connected\"]");
    let server = Server::start(&config, &["--shards", "2"]);
    let down = Instant::now();
    let mut sub = server.client();
    sub.subscribe("live");
    let mut publisher = server.client();
    // 30 more connections while the backend is down: 10 in the batch being
    // retried, 20 in the queue, the 2 oldest of the rest dropped.
    let extra: Vec<Client> = (0..30).map(|_| server.client()).collect();
    // Delivery goes on at full speed meanwhile.
    for i in 0..200 {
        let sent = Instant::now();
        publisher.publish("live", json!(i));
        assert_eq!(sub.recv()["payload"], json!(i));
        assert!(sent.elapsed() < Duration::from_millis(500), "a publish waited for the webhooks");
    }
    eventually(Duration::from_secs(5), "the overflow counted", || {
        server.metric_labelled("webhook_events_total", &[("result", "dropped")]) == 2
    });
    assert!(server.node_metric("webhook_queue_depth") <= 20);
    assert!(server.node_metric("webhook_retries_total") > 0, "the batch in flight is being retried");
    std::thread::sleep(Duration::from_secs(10).saturating_sub(down.elapsed()));
    let backend = Backend::start_on(port, ok);
    eventually(Duration::from_secs(10), "the held events sent", || {
        server.node_metric("webhook_queue_depth") == 0 && !backend.calls("/hooks").is_empty()
    });
    let got = events(&backend).len() as u64;
    let sent = server.metric_labelled("webhook_events_total", &[("result", "sent")]);
    let dropped = server.metric_labelled("webhook_events_total", &[("result", "dropped")]);
    assert_eq!(got, sent);
    assert_eq!(sent + dropped, 32, "every connection is either sent or counted dropped");
    drop(extra);
}

/// A node with 2 shards bridged to `redis`, its webhooks going to `url`.
fn node(redis: &Redis, url: &str) -> Server {
    let config = webhooks(url, "events = [\"topic_occupied\", \"topic_vacated\"]");
    let config = format!("{config}[redis]\nurl = \"{}\"\nreconnect_min_ms = 20\nreconnect_max_ms = 200\n", redis.url());
    Server::start(&config, &["--shards", "2"])
}

#[test]
fn occupied_and_vacated_once_across_two_nodes() {
    let redis = Redis::start();
    let backend = Backend::start(ok);
    let url = backend.url("/hooks");
    let (one, two) = (node(&redis, &url), node(&redis, &url));
    let count = |name: &str| {
        let mut per_topic: HashMap<String, usize> = HashMap::new();
        for e in named(&events(&backend), name) {
            *per_topic.entry(e["topic"].as_str().unwrap().to_string()).or_default() += 1;
        }
        per_topic
    };
    let topics: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
    // Both nodes race for every topic's first subscriber.
    let mut on_one = one.client();
    let mut on_two = two.client();
    for t in &topics {
        on_one.send(json!({"type": "subscribe", "topic": t}));
        on_two.send(json!({"type": "subscribe", "topic": t}));
    }
    eventually(Duration::from_secs(10), "every topic occupied", || count("topic_occupied").len() == topics.len());
    std::thread::sleep(Duration::from_millis(300));
    assert!(count("topic_occupied").values().all(|n| *n == 1), "each once: {:?}", count("topic_occupied"));
    assert!(count("topic_vacated").is_empty());
    // The first node leaving vacates nothing; the last one everything.
    drop(on_one);
    std::thread::sleep(Duration::from_millis(500));
    assert!(count("topic_vacated").is_empty(), "the other node still holds them");
    drop(on_two);
    eventually(Duration::from_secs(10), "every topic vacated", || count("topic_vacated").len() == topics.len());
    std::thread::sleep(Duration::from_millis(300));
    assert!(count("topic_vacated").values().all(|n| *n == 1), "each once: {:?}", count("topic_vacated"));
    // A topic occupied again is reported again.
    let mut again = two.client();
    again.subscribe("t0");
    eventually(Duration::from_secs(10), "t0 occupied again", || count("topic_occupied")["t0"] == 2);
}
