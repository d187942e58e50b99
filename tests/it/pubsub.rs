//! Subscribe, publish, fan-out across shards, ordering.

use std::time::Duration;

use serde_json::json;

use crate::util::{eventually, Server};

const UNLIMITED: &str = "[limits]\npublish_rate = 0\n";

#[test]
fn cross_shard_fanout_reaches_subscribers_on_every_shard() {
    let server = Server::start(UNLIMITED, &["--shards", "2"]);
    let mut clients = server.clients_on_every_shard(2);
    assert_eq!((clients[0].shard, clients[1].shard), (0, 1), "welcome frames name both shards");
    for c in &mut clients {
        c.subscribe("news");
    }
    for from in 0..2 {
        clients[from].publish("news", json!({"from": from}));
        for c in &mut clients {
            let m = c.recv();
            assert_eq!(m, json!({"type":"message","topic":"news","payload":{"from":from}}));
        }
    }
}

#[test]
fn payload_is_delivered_verbatim() {
    let server = Server::start("", &["--shards", "1"]);
    let mut c = server.client();
    c.subscribe("t");
    c.send_raw(tungstenite::Message::text(r#"{"type":"publish","topic":"t","payload":{"b": 1.50,  "a":[ "x" ]}}"#));
    match c.recv_message() {
        tungstenite::Message::Text(t) => {
            assert_eq!(t.as_str(), r#"{"type":"message","topic":"t","payload":{"b": 1.50,  "a":[ "x" ]}}"#)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn ten_thousand_messages_keep_publisher_order_on_every_subscriber() {
    const N: u64 = 10_000;
    // Queues big enough for the whole run: this test is about order and
    // loss, not about slow consumers.
    let config = format!("{UNLIMITED}[queue]\nmax_messages = 20000\nmax_bytes = 16777216\n");
    let server = Server::start(&config, &["--shards", "2"]);
    let mut subscribers = server.clients_on_every_shard(2);
    subscribers.push(server.client());
    subscribers.push(server.client());
    for s in &mut subscribers {
        s.subscribe("seq");
    }
    let readers: Vec<_> = subscribers
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                for expected in 0..N {
                    let m = s.recv();
                    assert_eq!(m["payload"]["n"], json!(expected), "subscriber on shard {}", s.shard);
                }
                s.expect_silence(Duration::from_millis(200));
            })
        })
        .collect();
    let mut publishers = server.clients_on_every_shard(2);
    let publisher = &mut publishers[0];
    for n in 0..N {
        publisher.publish("seq", json!({"n": n}));
    }
    for r in readers {
        r.join().expect("subscriber saw every message in order");
    }
}

#[test]
fn skip_self_excludes_only_the_publisher() {
    let server = Server::start("", &["--shards", "2"]);
    let mut a = server.client();
    let mut b = server.client();
    a.subscribe("room");
    b.subscribe("room");
    a.send(json!({"type":"publish","topic":"room","payload":1,"skip_self":true}));
    assert_eq!(b.recv()["payload"], 1);
    a.send(json!({"type":"publish","topic":"room","payload":2}));
    assert_eq!(b.recv()["payload"], 2);
    assert_eq!(a.recv()["payload"], 2, "the skipped message never arrives, the next one does");
}

#[test]
fn unsubscribe_stops_delivery() {
    let server = Server::start("", &["--shards", "2"]);
    let mut subs = server.clients_on_every_shard(2);
    let mut publisher = server.client();
    for s in &mut subs {
        s.subscribe("t");
    }
    for s in &mut subs {
        let r = s.request(json!({"type":"unsubscribe","topic":"t"}), 7);
        assert_eq!(r, json!({"type":"ack","id":7}));
        // Idempotent.
        assert_eq!(s.request(json!({"type":"unsubscribe","topic":"t"}), 8)["type"], "ack");
    }
    publisher.publish("t", json!("gone"));
    for s in &mut subs {
        s.expect_silence(Duration::from_millis(300));
    }
}

#[test]
fn requests_with_ids_get_one_reply_each() {
    let server = Server::start("", &["--shards", "1"]);
    let mut c = server.client();
    assert_eq!(c.request(json!({"type":"ping"}), 4), json!({"type":"pong","id":4}));
    assert_eq!(c.request(json!({"type":"subscribe","topic":"x"}), 1), json!({"type":"ack","id":1}));
    assert_eq!(c.request(json!({"type":"subscribe","topic":"x"}), 2), json!({"type":"ack","id":2}), "idempotent");
    c.send(json!({"type":"publish","topic":"x","payload":"p","id":3}));
    let mut got = vec![c.recv(), c.recv()];
    got.sort_by_key(|v| v["type"].as_str().unwrap().to_string());
    assert_eq!(got, vec![json!({"type":"ack","id":3}), json!({"type":"message","topic":"x","payload":"p"})]);
    c.send(json!({"type":"subscribe","topic":"y"}));
    c.expect_silence(Duration::from_millis(200));
}

#[test]
fn publishing_without_subscription_reaches_others() {
    let server = Server::start("", &["--shards", "2"]);
    let mut sub = server.client();
    sub.subscribe("only-sub");
    let mut publishers = server.clients_on_every_shard(2);
    for p in &mut publishers {
        p.publish("only-sub", json!(p.shard));
    }
    let mut got: Vec<u64> = (0..2).map(|_| sub.recv()["payload"].as_u64().unwrap()).collect();
    got.sort();
    assert_eq!(got, vec![0, 1]);
}

#[test]
fn full_cross_shard_channel_pushes_back_without_loss_or_reordering() {
    const N: u64 = 5_000;
    // A one-message channel: the publisher's shard must wait for the other.
    let server = Server::start(
        "[limits]\npublish_rate = 0\n[bus]\ncapacity = 1\n[queue]\nmax_messages = 20000\nmax_bytes = 16777216\n",
        &["--shards", "2"],
    );
    let mut pair = server.clients_on_every_shard(2);
    let mut subscriber = pair.remove(1);
    let mut publisher = pair.remove(0);
    subscriber.subscribe("bp");
    let reader = std::thread::spawn(move || {
        for n in 0..N {
            assert_eq!(subscriber.recv()["payload"], json!(n));
        }
    });
    for n in 0..N {
        publisher.publish("bp", json!(n));
    }
    reader.join().expect("every message, in order, through a full channel");
    assert!(server.metric("bus_full_waits_total") > 0, "the channel was full at least once");
}

#[test]
fn the_upgrade_response_and_the_welcome_leave_in_one_write() {
    let server = Server::start("", &["--shards", "1"]);
    let mut c = server.client();
    assert_eq!(server.metric("socket_writes_total"), 1, "101 Switching Protocols and the welcome frame: one send");
    c.subscribe("t");
    assert_eq!(server.metric("socket_writes_total"), 2, "then the ack");
}

#[test]
fn deliveries_queued_in_one_batch_reach_a_subscriber_in_one_send() {
    const N: usize = 100;
    let server = Server::start(UNLIMITED, &["--shards", "1"]);
    let mut subscriber = server.client();
    subscriber.subscribe("batch");
    let mut publisher = server.client();
    let before = server.metric("socket_writes_total");
    // One TCP write carrying N publishes (no ids: no acks), read by the
    // server in one go: the subscriber's N frames are corked and sent together.
    for i in 0..N {
        let publish = json!({"type": "publish", "topic": "batch", "payload": i});
        publisher.ws.write(tungstenite::Message::text(publish.to_string())).unwrap();
    }
    publisher.ws.flush().unwrap();
    for i in 0..N {
        assert_eq!(subscriber.recv()["payload"], json!(i));
    }
    let sends = server.metric("socket_writes_total") - before;
    assert!(sends <= 3, "{N} deliveries took {sends} sends");
    // Counted once the send completes, which may be after the client read it.
    eventually(Duration::from_secs(5), "the frames to be counted", || server.metric("frames_written_total") >= N as u64);
}
