//! History and recovery: offsets, epochs, `history` requests, subscribes
//! with `recover`, on one node (offsets from each topic's home shard) and
//! across nodes (offsets from Redis).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::util::*;

/// A `chat:*` namespace with history (`size` messages, `ttl_ms`) and recovery.
fn history_ns(size: u64, ttl_ms: u64) -> String {
    format!(
        "[[namespaces]]\npattern = \"chat:*\"\nsubscribe = \"anyone\"\npublish = \"anyone\"\nhistory_size = {size}\nhistory_ttl_ms = {ttl_ms}\nrecover = true\n"
    )
}

/// `limits` are extra `[limits]` keys; `extra` more tables.
pub(crate) fn node_config(size: u64, ttl_ms: u64, limits: &str, extra: &str) -> String {
    let ns = history_ns(size, ttl_ms);
    format!("{ns}[limits]\npublish_rate = 0\n{limits}\n[queue]\nmax_messages = 20000\nmax_bytes = 16777216\n{extra}")
}

/// Subscribes (optionally recovering from `since`) and returns the ack.
pub(crate) fn subscribe(c: &mut Client, topic: &str, recover: Option<(u64, &str)>, id: u64) -> Value {
    let mut req = json!({"type":"subscribe","topic":topic});
    if let Some((offset, epoch)) = recover {
        req["recover"] = json!({"offset":offset,"epoch":epoch});
    }
    let ack = c.request(req, id);
    assert_eq!(ack["type"], "ack", "{ack}");
    ack
}

/// The next `message` frame's (offset, epoch, payload).
pub(crate) fn next_message(c: &mut Client) -> (u64, String, Value) {
    let m = c.recv();
    assert_eq!(m["type"], "message", "{m}");
    (m["offset"].as_u64().unwrap_or_else(|| panic!("no offset: {m}")), m["epoch"].as_str().unwrap().to_string(), m["payload"].clone())
}

#[test]
fn messages_get_gap_free_offsets_from_one_place_across_shards() {
    let server = Server::start(&node_config(100, 60_000, "", ""), &["--shards", "2"]);
    let mut subs = server.clients_on_every_shard(2);
    let mut pubs = server.clients_on_every_shard(2);
    let mut epoch = String::new();
    for (i, s) in subs.iter_mut().enumerate() {
        let ack = subscribe(s, "chat:1", None, 1);
        assert_eq!(ack["offset"], 0, "nothing published yet: {ack}");
        let e = ack["epoch"].as_str().expect("a plain subscribe to a history topic acks with the epoch").to_string();
        if i > 0 {
            assert_eq!(e, epoch, "one epoch per topic, whichever shard asks");
        }
        epoch = e;
        s.subscribe("news");
    }
    // Publishers on both shards interleave; each subscriber sees one order.
    for round in 0..20 {
        for (p, publisher) in pubs.iter_mut().enumerate() {
            publisher.publish("chat:1", json!({"p": p, "round": round}));
        }
    }
    let orders: Vec<Vec<Value>> = subs
        .iter_mut()
        .map(|s| {
            (1..=40)
                .map(|expected| {
                    let (offset, e, payload) = next_message(s);
                    assert_eq!((offset, e.as_str()), (expected, epoch.as_str()));
                    payload
                })
                .collect()
        })
        .collect();
    assert_eq!(orders[0], orders[1], "every subscriber sees the same order");
    for p in 0..2 {
        let rounds: Vec<u64> = orders[0].iter().filter(|v| v["p"] == p).map(|v| v["round"].as_u64().unwrap()).collect();
        assert_eq!(rounds, (0..20).collect::<Vec<_>>(), "per-publisher order holds");
    }
    // A plain topic is untouched: no offset, no epoch.
    pubs[0].publish("news", json!(1));
    for s in &mut subs {
        assert_eq!(s.recv(), json!({"type":"message","topic":"news","payload":1}));
    }
    // skip_self works through the home shard.
    pubs[1].send(json!({"type":"subscribe","topic":"chat:1","id":2}));
    assert_eq!(pubs[1].recv()["offset"], 40);
    pubs[1].send(json!({"type":"publish","topic":"chat:1","payload":"mine","skip_self":true}));
    for s in &mut subs {
        assert_eq!(next_message(s).0, 41);
    }
    pubs[1].expect_silence(Duration::from_millis(200));
    assert_eq!(server.metric("history_appended_total"), 41);
}

#[test]
fn history_requests_answer_ranges_and_refuse_what_they_cannot() {
    let config = format!(
        "{}[[namespaces]]\npattern = \"plain:*\"\nsubscribe = \"anyone\"\npublish = \"anyone\"\n[[namespaces]]\npattern = \"norecover:*\"\nsubscribe = \"anyone\"\npublish = \"anyone\"\nhistory_size = 10\nhistory_ttl_ms = 60000\n[limits]\npublish_rate = 0\n",
        history_ns(5, 60_000)
    );
    let server = Server::start(&config, &["--shards", "2"]);
    let mut c = server.client();
    subscribe(&mut c, "chat:h", None, 1);
    for i in 1..=8 {
        c.publish("chat:h", json!(i));
        assert_eq!(next_message(&mut c).0, i);
    }
    let latest = c.request(json!({"type":"history","topic":"chat:h","limit":2}), 2);
    let epoch = latest["epoch"].as_str().unwrap().to_string();
    assert_eq!(latest, json!({"type":"history","id":2,"publications":[{"offset":7,"payload":7},{"offset":8,"payload":8}],"offset":8,"epoch":epoch}));
    let all = c.request(json!({"type":"history","topic":"chat:h"}), 3);
    let offsets: Vec<u64> = all["publications"].as_array().unwrap().iter().map(|p| p["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, vec![4, 5, 6, 7, 8], "the ring keeps history_size messages");
    let since = c.request(json!({"type":"history","topic":"chat:h","since":{"offset":5,"epoch":epoch},"limit":2}), 4);
    assert_eq!(since["publications"], json!([{"offset":6,"payload":6},{"offset":7,"payload":7}]));
    let wrong = c.request(json!({"type":"history","topic":"chat:h","since":{"offset":5,"epoch":"nope"}}), 5);
    assert_eq!((wrong["publications"].clone(), wrong["epoch"].as_str()), (json!([]), Some(epoch.as_str())), "wrong epoch: no publications, the right epoch");
    let position = c.request(json!({"type":"history","topic":"chat:h","limit":0}), 6);
    assert_eq!((position["publications"].clone(), position["offset"].clone()), (json!([]), json!(8)));
    // Recovery from a trimmed position: not recovered, told where the topic is.
    let mut late = server.client();
    let ack = subscribe(&mut late, "chat:h", Some((2, &epoch)), 7);
    assert_eq!((ack["recovered"].clone(), ack["offset"].clone(), ack["epoch"].as_str()), (json!(false), json!(8), Some(epoch.as_str())));
    let ack = subscribe(&mut late, "chat:h", Some((6, &epoch)), 8);
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(ack["publications"], json!([{"offset":7,"payload":7},{"offset":8,"payload":8}]));
    let ack = subscribe(&mut late, "chat:h", Some((8, &epoch)), 9);
    assert_eq!((ack["recovered"].clone(), ack["publications"].clone()), (json!(true), json!([])), "up to date");
    // Errors: each answered, the connection still usable.
    let err = |c: &mut Client, req: Value, id: u64| c.request(req, id)["code"].as_str().unwrap().to_string();
    assert_eq!(err(&mut c, json!({"type":"history","topic":"plain:x"}), 10), "not_available");
    assert_eq!(err(&mut c, json!({"type":"history","topic":"unmatched"}), 11), "not_available");
    assert_eq!(err(&mut c, json!({"type":"subscribe","topic":"norecover:1","recover":{"offset":0,"epoch":"e"}}), 12), "not_available");
    assert_eq!(err(&mut c, json!({"type":"subscribe","topic":"chat:h","recover":{"offset":"x","epoch":"e"}}), 13), "bad_request");
    assert_eq!(err(&mut c, json!({"type":"history","topic":"chat:h","since":{"offset":1}}), 14), "bad_request");
    // Issue 22.14: an array in place of the object was taken.
    assert_eq!(err(&mut c, json!({"type":"subscribe","topic":"chat:h","recover":[1, epoch]}), 40), "bad_request");
    assert_eq!(err(&mut c, json!({"type":"history","topic":"chat:h","since":[1, epoch]}), 41), "bad_request");
    assert_eq!(err(&mut c, json!({"type":"history","topic":"chat:h","limit":-1}), 15), "bad_request");
    assert_eq!(err(&mut c, json!({"type":"history","topic":""}), 16), "invalid_topic");
    c.send(json!({"type":"history","topic":"chat:h"}));
    assert_eq!(c.recv()["code"], "bad_request", "a history request needs an id");
    let ack = subscribe(&mut c, "norecover:1", None, 17);
    assert_eq!(ack["offset"], 0, "history without recover still positions subscribes");
    c.publish("chat:h", json!(9));
    assert_eq!(next_message(&mut c).0, 9);
}

#[test]
fn recovery_fails_after_the_history_expires_with_a_new_epoch() {
    let server = Server::start(&node_config(100, 300, "", ""), &["--shards", "2"]);
    let mut c = server.client();
    let ack = subscribe(&mut c, "chat:ttl", None, 1);
    c.publish("chat:ttl", json!("a"));
    let (offset, epoch, _) = next_message(&mut c);
    assert_eq!((offset, epoch.as_str()), (1, ack["epoch"].as_str().unwrap()));
    std::thread::sleep(Duration::from_millis(700));
    let mut back = server.client();
    let ack = subscribe(&mut back, "chat:ttl", Some((1, &epoch)), 2);
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_ne!(ack["epoch"].as_str().unwrap(), epoch, "expired history: a new epoch");
    assert_eq!(ack["offset"], 0);
    eventually(Duration::from_secs(3), "the expiry counted", || server.metric("history_expirations_total") >= 1);
}

#[test]
fn history_memory_is_bounded_and_evicts_the_least_recently_published() {
    // 1 MiB for the node over 2 shards; 200 topics x 20 KiB cannot fit.
    let server = Server::start(&node_config(10, 60_000, "history_memory_bytes = 1048576", ""), &["--shards", "2"]);
    let mut c = server.client();
    let big = "x".repeat(20_000);
    let first = c.request(json!({"type":"history","topic":"chat:t0","limit":0}), 1)["epoch"].as_str().unwrap().to_string();
    for t in 0..200 {
        c.send(json!({"type":"publish","topic":format!("chat:t{t}"),"payload":big,"id":10 + t}));
        assert_eq!(c.recv()["type"], "ack");
    }
    eventually(Duration::from_secs(5), "evictions", || server.metric("history_evictions_total") > 0);
    assert!(server.metric("history_bytes") <= 1 << 20, "{} bytes held", server.metric("history_bytes"));
    let again = c.request(json!({"type":"history","topic":"chat:t0","limit":0}), 2);
    assert_ne!(again["epoch"].as_str().unwrap(), first, "an evicted topic gets a new epoch");
    let recent = c.request(json!({"type":"history","topic":"chat:t199"}), 3);
    assert_eq!(recent["publications"].as_array().unwrap().len(), 1, "the most recent topic kept its message");
}

#[test]
fn replies_never_exceed_max_message_bytes() {
    let server = Server::start(&node_config(100, 60_000, "max_message_bytes = 4096", ""), &["--shards", "1"]);
    let mut c = server.client();
    let ack = subscribe(&mut c, "chat:big", None, 1);
    let epoch = ack["epoch"].as_str().unwrap().to_string();
    for _ in 0..10 {
        c.publish("chat:big", json!("y".repeat(1000)));
        next_message(&mut c);
    }
    let h = c.request(json!({"type":"history","topic":"chat:big"}), 2);
    let n = h["publications"].as_array().unwrap().len();
    assert!((1..10).contains(&n), "{n} publications");
    assert_eq!(h["publications"].as_array().unwrap().last().unwrap()["offset"], 10, "the latest are kept");
    let mut back = server.client();
    let ack = subscribe(&mut back, "chat:big", Some((0, &epoch)), 3);
    assert_eq!(ack["recovered"], false, "too big to recover in one reply");
    assert!(ack.to_string().len() <= 4096);
}

/// Issue 22.3: `history` with `since`, cut for size on one node, kept the
/// newest (26-30 of 30), so a client paging forward skipped 1-25. Both
/// paths keep the oldest after `since`, and paging forward reaches the end.
#[test]
fn history_since_cut_for_size_keeps_the_oldest_on_one_node_and_through_redis() {
    let redis = Redis::start();
    let one = Server::start(&node_config(100, 60_000, "max_message_bytes = 8192", ""), &["--shards", "2"]);
    let extra = format!("[redis]\nurl = \"{}\"\n", redis.url());
    let bridged = Server::start(&node_config(100, 60_000, "max_message_bytes = 8192", &extra), &["--shards", "2"]);
    for (path, server) in [("one node", &one), ("redis", &bridged)] {
        let mut c = server.client();
        let epoch = subscribe(&mut c, "chat:pages", None, 1)["epoch"].as_str().unwrap().to_string();
        for i in 1..=30u64 {
            c.publish("chat:pages", json!(format!("{i:04}{}", "x".repeat(1000))));
            assert_eq!(next_message(&mut c).0, i);
        }
        let mut after = 0;
        let mut pages = 0;
        while after < 30 {
            let page = c.request(json!({"type":"history","topic":"chat:pages","since":{"offset":after,"epoch":epoch}}), 2 + pages);
            assert!(page.to_string().len() <= 8192, "{path}: a reply fits max_message_bytes");
            let offsets: Vec<u64> = page["publications"].as_array().unwrap().iter().map(|p| p["offset"].as_u64().unwrap()).collect();
            assert!(!offsets.is_empty() && offsets.len() < 30, "{path}: cut for size: {offsets:?}");
            assert_eq!(offsets, (after + 1..=after + offsets.len() as u64).collect::<Vec<_>>(), "{path}: the oldest after since, in order");
            after = *offsets.last().unwrap();
            pages += 1;
        }
        assert!(pages >= 3, "{path}: paged forward through all 30 in {pages} replies");
    }
}

/// Publishes `total` numbered messages (payload = sequence number) while
/// `stop` is false, as fast as the server takes them.
pub(crate) fn publisher(url: String, topic: &'static str, total: u64, paused: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut p = Client::connect(&url);
        for i in 1..=total {
            while paused.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
            p.publish(topic, json!(i));
            if i % 200 == 0 {
                // Keep the publisher a little behind real time.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = p.request(json!({"type":"ping"}), 1);
    })
}

/// Reads messages until payload `last`; checks every offset follows the
/// previous one (no gap, no duplicate) and every payload is the next.
pub(crate) fn read_until(c: &mut Client, mut offset: u64, mut seq: u64, last: u64) -> (u64, u64) {
    while seq < last {
        let (o, _, payload) = next_message(c);
        assert_eq!(o, offset + 1, "offsets are contiguous");
        assert_eq!(payload.as_u64().unwrap(), seq + 1, "payloads in order");
        offset = o;
        seq += 1;
    }
    (offset, seq)
}

/// The recovery scenario on `sub_url` while `pub_url` publishes: read some,
/// disconnect, let about 1,000 messages go by, reconnect with `recover`
/// while publishing continues, check everything arrives exactly once.
fn recover_while_publishing(sub_url: &str, resub_url: &str, pub_url: &str) {
    const TOTAL: u64 = 3000;
    let mut sub = Client::connect(sub_url);
    let ack = subscribe(&mut sub, "chat:live", None, 1);
    let epoch = ack["epoch"].as_str().unwrap().to_string();
    let start = ack["offset"].as_u64().unwrap();
    let paused = Arc::new(AtomicBool::new(false));
    let publishing = publisher(pub_url.to_string(), "chat:live", TOTAL, paused.clone());
    let (offset, seq) = read_until(&mut sub, start, 0, 500);
    drop(sub);
    // Wait until at least 1,000 more were published while away.
    let mut watcher = Client::connect(pub_url);
    eventually(Duration::from_secs(20), "1,000 messages published while disconnected", || {
        let h = watcher.request(json!({"type":"history","topic":"chat:live","limit":0}), 7);
        h["offset"].as_u64().unwrap() >= offset + 1000
    });
    let mut back = Client::connect(resub_url);
    let ack = subscribe(&mut back, "chat:live", Some((offset, &epoch)), 2);
    assert_eq!(ack["recovered"], true, "recovered: {}", ack["offset"]);
    let pubs = ack["publications"].as_array().unwrap();
    assert!(pubs.len() >= 1000, "{} recovered", pubs.len());
    let mut o = offset;
    let mut s = seq;
    for p in pubs {
        assert_eq!(p["offset"].as_u64().unwrap(), o + 1);
        assert_eq!(p["payload"].as_u64().unwrap(), s + 1);
        o += 1;
        s += 1;
    }
    // Then live, seamlessly, to the end.
    let (_, s) = read_until(&mut back, o, s, TOTAL);
    assert_eq!(s, TOTAL);
    publishing.join().unwrap();
    back.expect_silence(Duration::from_millis(200));
}

#[test]
fn a_thousand_messages_missed_while_away_are_recovered_exactly() {
    let server = Server::start(&node_config(5000, 60_000, "max_message_bytes = 1048576", ""), &["--shards", "2"]);
    let url = server.url("/ws");
    recover_while_publishing(&url, &url, &url);
    assert!(server.metric("recoveries_total") >= 1);
}

fn redis_node(redis: &Redis, size: u64, ttl_ms: u64) -> Server {
    let extra = format!("[redis]\nurl = \"{}\"\nreconnect_min_ms = 20\nreconnect_max_ms = 200\n", redis.url());
    Server::start(&node_config(size, ttl_ms, "max_message_bytes = 1048576", &extra), &["--shards", "2"])
}

#[test]
fn recovery_across_nodes_through_redis() {
    let redis = Redis::start();
    let a = redis_node(&redis, 5000, 60_000);
    let b = redis_node(&redis, 5000, 60_000);
    // Subscribed on B, back on A; publishing on A the whole time.
    recover_while_publishing(&b.url("/ws"), &a.url("/ws"), &a.url("/ws"));
}

#[test]
fn nodes_share_one_order_and_epoch_and_a_flush_changes_the_epoch() {
    let redis = Redis::start();
    let a = redis_node(&redis, 100, 60_000);
    let b = redis_node(&redis, 100, 60_000);
    let mut subs = vec![a.client(), b.client()];
    let mut epoch = String::new();
    for s in &mut subs {
        let ack = subscribe(s, "chat:x", None, 1);
        epoch = ack["epoch"].as_str().unwrap().to_string();
    }
    let mut pa = a.client();
    let mut pb = b.client();
    for i in 0..10 {
        pa.publish("chat:x", json!({"a": i}));
        pb.publish("chat:x", json!({"b": i}));
    }
    let orders: Vec<Vec<(u64, Value)>> = subs
        .iter_mut()
        .map(|s| {
            (0..20)
                .map(|_| {
                    let (o, e, p) = next_message(s);
                    assert_eq!(e, epoch);
                    (o, p)
                })
                .collect()
        })
        .collect();
    assert_eq!(orders[0], orders[1], "both nodes see one order");
    assert_eq!(orders[0].iter().map(|(o, _)| *o).collect::<Vec<_>>(), (1..=20).collect::<Vec<_>>());
    // A backend's bare PUBLISH cannot carry an offset: refused on history topics.
    redis.publish("shardcast:chat:x", b"{\"bare\":true}");
    subs[0].expect_silence(Duration::from_millis(200));
    // Redis loses everything: the epoch changes.
    redis::cmd("FLUSHALL").exec(&mut redis.connection()).unwrap();
    let mut back = b.client();
    let ack = subscribe(&mut back, "chat:x", Some((20, &epoch)), 2);
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_ne!(ack["epoch"].as_str().unwrap(), epoch);
    let new_epoch = ack["epoch"].as_str().unwrap().to_string();
    pa.publish("chat:x", json!("after"));
    let (o, e, _) = next_message(&mut back);
    assert_eq!((o, e), (1, new_epoch), "offsets restart in the new epoch");
}

#[test]
fn history_is_unavailable_while_redis_is_down_and_back_after() {
    let mut redis = Redis::start();
    let a = redis_node(&redis, 100, 60_000);
    let mut c = a.client();
    subscribe(&mut c, "chat:d", None, 1);
    redis.kill();
    eventually(Duration::from_secs(5), "the bridge noticed", || a.metric("redis_reconnects_total") > 0);
    let r = c.request(json!({"type":"history","topic":"chat:d"}), 2);
    assert_eq!(r["code"], "not_available", "{r}");
    let mut d = a.client();
    let r = d.request(json!({"type":"subscribe","topic":"chat:d"}), 3);
    assert_eq!(r["code"], "not_available", "{r}");
    d.send(json!({"type":"ping","id":4}));
    assert_eq!(d.recv()["type"], "pong", "the connection stays usable");
    redis.restart();
    eventually(Duration::from_secs(10), "history answers again", || {
        c.request(json!({"type":"history","topic":"chat:d"}), 5)["type"] == "history"
    });
}

#[test]
fn numbered_messages_wait_in_the_relay_when_a_channel_is_full_and_stay_in_order() {
    // A one-message bus: the home shard's relay must hold what the other
    // shard's channel cannot take yet, without reordering or losing any.
    const N: u64 = 3000;
    let server = Server::start(&node_config(10, 60_000, "", "[bus]\ncapacity = 1\n"), &["--shards", "2"]);
    let mut subs = server.clients_on_every_shard(2);
    for s in &mut subs {
        subscribe(s, "chat:relay", None, 1);
    }
    let mut p = server.client();
    for i in 1..=N {
        p.publish("chat:relay", json!(i));
    }
    for s in &mut subs {
        read_until(s, 0, 0, N);
    }
    assert!(server.metric("history_relay_waits_total") > 0, "the relay was used");
}

#[test]
fn a_subscriber_whose_held_messages_overflow_is_a_slow_consumer() {
    // Recovery through Redis takes a round trip; meanwhile live messages are
    // held, at most [queue] max_messages of them.
    let redis = Redis::start();
    let extra = format!("[redis]\nurl = \"{}\"\nreconnect_min_ms = 20\n[queue]\nmax_messages = 4\n", redis.url());
    let config = format!("{}[limits]\npublish_rate = 0\n{extra}", history_ns(10_000, 60_000));
    let server = Server::start(&config, &["--shards", "2"]);
    let mut first = server.client();
    let epoch = subscribe(&mut first, "chat:flood", None, 1)["epoch"].as_str().unwrap().to_string();
    drop(first);
    let paused = Arc::new(AtomicBool::new(false));
    let publishing = publisher(server.url("/ws"), "chat:flood", 200_000, paused);
    let mut closed = false;
    for attempt in 0..50 {
        let mut c = server.client();
        c.send(json!({"type":"subscribe","topic":"chat:flood","recover":{"offset":0,"epoch":epoch},"id":attempt}));
        loop {
            match c.ws.read() {
                Ok(tungstenite::Message::Close(Some(f))) => {
                    closed = u16::from(f.code) == 1013;
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if closed {
            break;
        }
    }
    drop(publishing);
    assert!(closed, "a hold overflowed into a 1013 close");
    assert!(server.metric("slow_consumer_disconnects_total") > 0);
}

#[test]
fn a_node_that_loses_its_redis_subscription_refills_the_gap_from_the_stream() {
    const TOTAL: u64 = 4000;
    let redis = Redis::start();
    let a = redis_node(&redis, 10_000, 60_000);
    // B reconnects 300 ms after losing its subscription: what A publishes
    // right after the kill surely falls in that window. (With the default
    // 20 ms, a loaded machine could finish publishing first: no gap.)
    let extra = format!("[redis]\nurl = \"{}\"\nreconnect_min_ms = 300\nreconnect_max_ms = 300\n", redis.url());
    let b = Server::start(&node_config(10_000, 60_000, "max_message_bytes = 1048576", &extra), &["--shards", "2"]);
    let mut sub = b.client();
    subscribe(&mut sub, "chat:gap", None, 1);
    let mut p = a.client();
    for i in 1..=300 {
        p.publish("chat:gap", json!(i));
    }
    let (offset, seq) = read_until(&mut sub, 0, 0, 300);
    // Redis drops every subscriber connection while A keeps publishing: B
    // misses messages on the channel, and fills the gap from the stream.
    redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").exec(&mut redis.connection()).unwrap();
    for i in 301..=TOTAL {
        p.publish("chat:gap", json!(i));
    }
    let (_, s) = read_until(&mut sub, offset, seq, TOTAL);
    assert_eq!(s, TOTAL);
    assert!(b.metric("redis_reconnects_total") >= 1, "the subscription was lost");
    assert!(b.metric("history_refilled_total") > 0, "the gap was filled from the stream");
}

#[test]
fn a_node_whose_redis_subscription_comes_back_catches_up_without_waiting_for_a_new_message() {
    let redis = Redis::start();
    let a = redis_node(&redis, 1000, 60_000);
    // B waits 800 ms before reconnecting: a window in which it surely misses messages.
    let extra = format!("[redis]\nurl = \"{}\"\nreconnect_min_ms = 800\nreconnect_max_ms = 800\n", redis.url());
    let b = Server::start(&node_config(1000, 60_000, "", &extra), &["--shards", "2"]);
    let mut sub = b.client();
    subscribe(&mut sub, "chat:quiet", None, 1);
    let mut p = a.client();
    for i in 1..=10 {
        p.publish("chat:quiet", json!(i));
    }
    read_until(&mut sub, 0, 0, 10);
    redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").exec(&mut redis.connection()).unwrap();
    for i in 11..=30 {
        p.publish("chat:quiet", json!(i));
    }
    assert_eq!(p.request(json!({"type":"ping"}), 2)["type"], "pong");
    // Nothing more is published: the catch-up alone brings 11..=30.
    read_until(&mut sub, 10, 10, 30);
    sub.expect_silence(Duration::from_millis(300));
    assert!(b.metric("history_refilled_total") >= 20, "{}", b.metric("history_refilled_total"));
}
