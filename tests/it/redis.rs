//! Several nodes joined through a real redis-server.

use std::time::Duration;

use serde_json::json;

use crate::util::{eventually, free_port, Redis, Server};

/// A node with 2 shards bridged to `redis`.
fn node(redis_url: &str, extra: &str) -> Server {
    let config = format!(
        "[limits]\npublish_rate = 0\n[redis]\nurl = \"{redis_url}\"\nreconnect_min_ms = 20\nreconnect_max_ms = 200\n{extra}"
    );
    Server::start(&config, &["--shards", "2"])
}

/// Waits until `n` nodes subscribed `topic` in Redis.
fn await_subscribers(redis: &Redis, topic: &str, n: u64) {
    eventually(Duration::from_secs(10), &format!("{n} subscribers of {topic} in redis"), || {
        redis.numsub(&format!("shardcast:{topic}")) == n
    });
}

#[test]
fn fans_out_across_nodes_without_duplicates() {
    let redis = Redis::start();
    let a = node(&redis.url(), "");
    let b = node(&redis.url(), "");
    let mut on_b = b.clients_on_every_shard(2);
    let mut on_a = a.clients_on_every_shard(2);
    for c in on_b.iter_mut().chain(on_a.iter_mut()) {
        c.subscribe("news");
    }
    await_subscribers(&redis, "news", 2);
    for from in 0..2 {
        on_a[from].publish("news", json!({"from": from}));
        for c in on_b.iter_mut().chain(on_a.iter_mut()) {
            assert_eq!(c.recv(), json!({"type":"message","topic":"news","payload":{"from":from}}));
        }
    }
    for c in on_b.iter_mut().chain(on_a.iter_mut()) {
        c.expect_silence(Duration::from_millis(300));
    }
}

#[test]
fn ten_thousand_messages_across_nodes_in_order() {
    const N: u64 = 10_000;
    let redis = Redis::start();
    // Queues big enough for the whole run: this test is about order and
    // loss, not about slow consumers (the test client is slower than Redis).
    let roomy = "[queue]\nmax_messages = 20000\nmax_bytes = 16777216\n";
    let a = node(&redis.url(), "");
    let b = Server::start(
        &format!("[limits]\npublish_rate = 0\n[redis]\nurl = \"{}\"\n{roomy}", redis.url()),
        &["--shards", "2"],
    );
    let mut subs = b.clients_on_every_shard(2);
    for s in &mut subs {
        s.subscribe("seq");
    }
    await_subscribers(&redis, "seq", 1);
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                for n in 0..N {
                    assert_eq!(s.recv()["payload"]["n"], json!(n));
                }
            })
        })
        .collect();
    let mut publishers = a.clients_on_every_shard(2);
    // From the non-bridge shard: the longest path (shard 1 -> bridge shard 0 -> Redis -> node B).
    for n in 0..N {
        publishers[1].publish("seq", json!({"n": n}));
    }
    for r in readers {
        r.join().expect("every message, in order, on node B");
    }
    assert!(b.metric("redis_received_total") >= N);
}

#[test]
fn subscribes_in_redis_only_while_there_is_local_interest() {
    let redis = Redis::start();
    let a = node(&redis.url(), "");
    let mut clients = a.clients_on_every_shard(2);
    assert!(redis.channels().is_empty(), "no interest, no SUBSCRIBE");
    // Interest on the non-bridge shard counts too.
    clients[1].subscribe("one");
    clients[0].subscribe("two");
    clients[1].subscribe("two");
    eventually(Duration::from_secs(5), "both channels", || redis.channels() == ["shardcast:one", "shardcast:two"]);
    clients[1].request(json!({"type":"unsubscribe","topic":"one"}), 1);
    clients[0].request(json!({"type":"unsubscribe","topic":"two"}), 2);
    eventually(Duration::from_secs(5), "one channel left", || redis.channels() == ["shardcast:two"]);
    drop(clients);
    eventually(Duration::from_secs(5), "no channel left", || redis.channels().is_empty());
}

#[test]
fn backends_publish_raw_json_with_any_redis_client() {
    let redis = Redis::start();
    let a = node(&redis.url(), "");
    let b = node(&redis.url(), "");
    let mut ca = a.client();
    let mut cb = b.client();
    ca.subscribe("alerts");
    cb.subscribe("alerts");
    await_subscribers(&redis, "alerts", 2);
    assert_eq!(redis.publish("shardcast:alerts", b"not json {"), 2);
    assert_eq!(redis.publish("shardcast:alerts", br#"{"level":"high"}"#), 2);
    for c in [&mut ca, &mut cb] {
        assert_eq!(c.recv(), json!({"type":"message","topic":"alerts","payload":{"level":"high"}}));
    }
    assert_eq!(a.metric("redis_bad_messages_total"), 1);
}

#[test]
fn survives_redis_restart_and_resumes_cross_node_delivery() {
    let mut redis = Redis::start();
    let a = node(&redis.url(), "");
    let b = node(&redis.url(), "");
    let mut sub_a = a.client();
    let mut sub_b = b.client();
    let mut publisher = a.client();
    sub_a.subscribe("t");
    sub_b.subscribe("t");
    await_subscribers(&redis, "t", 2);
    publisher.publish("t", json!(1));
    assert_eq!(sub_a.recv()["payload"], 1);
    assert_eq!(sub_b.recv()["payload"], 1);

    redis.kill();
    // Local fan-out never stops.
    publisher.publish("t", json!(2));
    assert_eq!(sub_a.recv()["payload"], 2);
    std::thread::sleep(Duration::from_millis(300));

    redis.restart();
    await_subscribers(&redis, "t", 2);
    eventually(Duration::from_secs(10), "publisher connection back", || a.metric("redis_connects_total") >= 4);
    publisher.publish("t", json!(3));
    assert_eq!(sub_a.recv()["payload"], 3);
    // Message 2 was buffered while Redis was down: it reaches B first, or was
    // lost with the dead connection; never out of order.
    let first = sub_b.recv()["payload"].as_u64().unwrap();
    if first == 2 {
        assert_eq!(sub_b.recv()["payload"], 3);
    } else {
        assert_eq!(first, 3);
    }
}

#[test]
fn starts_without_redis_and_connects_when_it_appears() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let a = node(&url, "");
    let b = node(&url, "");
    let mut sub_a = a.client();
    let mut sub_b = b.client();
    let mut publisher = a.client();
    sub_a.subscribe("t");
    sub_b.subscribe("t");
    publisher.publish("t", json!("local"));
    assert_eq!(sub_a.recv()["payload"], "local");
    assert!(a.stderr().contains("redis unavailable"), "{}", a.stderr());

    let redis = Redis::start_on(port, None);
    await_subscribers(&redis, "t", 2);
    eventually(Duration::from_secs(10), "publisher connected", || a.metric("redis_connects_total") >= 2);
    publisher.publish("t", json!("remote"));
    assert_eq!(sub_a.recv()["payload"], "remote");
    loop {
        // The buffered "local" may arrive first.
        if sub_b.recv()["payload"] == "remote" {
            break;
        }
    }
}

#[test]
fn password_and_database_in_the_url() {
    let redis = Redis::start_on(free_port(), Some("s3cret"));
    let good = format!("redis://:s3cret@127.0.0.1:{}/2", redis.port);
    let a = node(&good, "");
    let b = node(&good, "");
    let mut sub = b.client();
    sub.subscribe("t");
    await_subscribers(&redis, "t", 1);
    let mut publisher = a.client();
    eventually(Duration::from_secs(10), "publisher connected", || a.metric("redis_connects_total") >= 2);
    publisher.publish("t", json!("authenticated"));
    assert_eq!(sub.recv()["payload"], "authenticated");

    let bad = node(&format!("redis://:wrong@127.0.0.1:{}", redis.port), "");
    eventually(Duration::from_secs(10), "a clear auth error in the log", || {
        let log = bad.stderr();
        log.contains("refused the connection setup") && (log.contains("WRONGPASS") || log.contains("invalid"))
    });
    let mut local = bad.client();
    local.subscribe("x");
    local.publish("x", json!(1));
    assert_eq!(local.recv()["payload"], 1, "local fan-out unaffected");
}

#[test]
fn outbound_buffer_is_bounded_while_redis_is_down() {
    let port = free_port();
    let a = node(&format!("redis://127.0.0.1:{port}"), "buffer_messages = 100\n");
    let mut publisher = a.client();
    for n in 0..1000 {
        publisher.publish("t", json!(n));
    }
    assert_eq!(publisher.request(json!({"type":"ping"}), 1)["type"], "pong");
    eventually(Duration::from_secs(5), "900 drops counted", || a.metric("redis_dropped_total") == 900);
}

#[test]
fn a_subscribe_ack_means_delivery_from_other_nodes() {
    let redis = Redis::start();
    let a = node(&redis.url(), "");
    let b = node(&redis.url(), "");
    let mut subs = b.clients_on_every_shard(2);
    let mut publisher = a.client();
    eventually(Duration::from_secs(10), "node A's publisher connection", || a.metric("redis_connects_total") >= 2);
    eventually(Duration::from_secs(10), "node B's subscriber connection", || b.metric("redis_connected") >= 1);
    // No waiting for PUBSUB: the ack itself is the promise. Fresh topics, so
    // every subscribe is a new SUBSCRIBE, from the bridge shard and the other.
    for round in 0..40 {
        let sub = &mut subs[round % 2];
        let topic = format!("fresh-{round}");
        sub.subscribe(&topic);
        publisher.publish(&topic, json!(round));
        assert_eq!(sub.recv()["payload"], json!(round), "round {round} (shard {})", sub.shard);
    }
}
