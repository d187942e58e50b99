//! Presence and join/leave: across shards on one node, and across nodes
//! through Redis (with a node killed outright).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::util::*;

const SECRET: &str = "presence-test-secret";

fn token_for(user: &str) -> String {
    let exp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() + 600;
    let claims = json!({"sub": user, "exp": exp});
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// `room:*` has presence and join/leave; `quiet:*` neither; `secret:*`
/// needs a claim. Anonymous connections are allowed.
fn config(limits: &str, extra: &str) -> String {
    format!(
        "[[namespaces]]\npattern = \"room:*\"\nsubscribe = \"anyone\"\npublish = \"anyone\"\npresence = true\njoin_leave = true\n\
         history_size = 10\nhistory_ttl_ms = 60000\n\
         [[namespaces]]\npattern = \"quiet:*\"\nsubscribe = \"anyone\"\npublish = \"anyone\"\n\
         [[namespaces]]\npattern = \"secret:*\"\nsubscribe = \"claim\"\npublish = \"claim\"\npresence = true\n\
         [auth]\nhmac_secret = \"{SECRET}\"\nallow_anonymous = true\n[limits]\npublish_rate = 0\n{limits}\n{extra}"
    )
}

fn login(server: &Server, user: &str) -> Client {
    let mut c = Client::upgrade(format!("{}?token={}", server.url("/ws"), token_for(user)));
    c.expect_welcome();
    c
}

/// `presence` as a map client id -> user (null when anonymous).
fn presence(c: &mut Client, topic: &str, id: u64) -> BTreeMap<String, Value> {
    let r = c.request(json!({"type":"presence","topic":topic}), id);
    assert_eq!(r["type"], "presence", "{r}");
    r["clients"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v["user"].clone())).collect()
}

fn stats(c: &mut Client, topic: &str, id: u64) -> (u64, u64) {
    let r = c.request(json!({"type":"presence_stats","topic":topic}), id);
    assert_eq!(r["type"], "presence_stats", "{r}");
    (r["clients"].as_u64().unwrap(), r["users"].as_u64().unwrap())
}

#[test]
fn presence_and_join_leave_across_shards() {
    let server = Server::start(&config("", ""), &["--shards", "2"]);
    let mut alice = on_every_shard(2, || login(&server, "alice"));
    let mut anon = server.client();
    for c in alice.iter_mut() {
        c.subscribe("room:1");
    }
    // Everyone already there hears the newcomer join; the newcomer does not.
    let join = |c: &mut Client| c.recv();
    assert_eq!(join(&mut alice[0])["client"], alice[1].id.as_str());
    anon.subscribe("room:1");
    for c in alice.iter_mut() {
        assert_eq!(join(c), json!({"type":"join","topic":"room:1","client":anon.id,"user":null}));
    }
    anon.expect_silence(Duration::from_millis(200));
    let mut asker = login(&server, "bob");
    let expected: BTreeMap<String, Value> =
        [(alice[0].id.clone(), json!("alice")), (alice[1].id.clone(), json!("alice")), (anon.id.clone(), Value::Null)].into_iter().collect();
    assert_eq!(presence(&mut asker, "room:1", 1), expected, "every shard's subscribers, asked from anywhere");
    assert_eq!(stats(&mut asker, "room:1", 2), (3, 1), "three connections, one distinct user");
    // Unsubscribe and disconnect both leave.
    alice[1].send(json!({"type":"unsubscribe","topic":"room:1","id":3}));
    assert_eq!(alice[1].recv()["type"], "ack");
    for c in [&mut alice[0], &mut anon] {
        let left = c.recv();
        assert_eq!((left["type"].as_str(), left["user"].as_str()), (Some("leave"), Some("alice")), "{left}");
    }
    let anon_id = anon.id.clone();
    drop(anon);
    let left = alice[0].recv();
    assert_eq!(left, json!({"type":"leave","topic":"room:1","client":anon_id,"user":null}));
    assert_eq!(stats(&mut asker, "room:1", 4), (1, 1));
    assert!(presence(&mut asker, "room:2", 5).is_empty(), "nobody in an empty room");
}

#[test]
fn presence_limits_and_refusals() {
    let server = Server::start(&config("max_presence_clients = 2", ""), &["--shards", "2"]);
    let mut subs: Vec<Client> = (0..3).map(|_| server.client()).collect();
    for s in &mut subs {
        // Earlier subscribers hear the later ones join: skip those.
        s.send(json!({"type":"subscribe","topic":"room:full","id":9}));
        while s.recv()["type"] != "ack" {}
    }
    let mut c = server.client();
    let r = c.request(json!({"type":"presence","topic":"room:full"}), 1);
    assert_eq!(r["code"], "too_many_results", "{r}");
    assert_eq!(stats(&mut c, "room:full", 2), (3, 0), "stats still answer");
    let r = c.request(json!({"type":"presence","topic":"quiet:1"}), 3);
    assert_eq!(r["code"], "not_available");
    let r = c.request(json!({"type":"presence_stats","topic":"unmatched"}), 4);
    assert_eq!(r["code"], "not_available");
    let r = c.request(json!({"type":"presence","topic":"secret:1"}), 5);
    assert_eq!(r["code"], "forbidden", "presence needs subscribe permission");
    c.send(json!({"type":"presence","topic":"room:full"}));
    assert_eq!(c.recv()["code"], "bad_request", "no id to answer under");
    let r = c.request(json!({"type":"presence"}), 6);
    assert_eq!(r["code"], "bad_request");
    // The quiet namespace announces nothing.
    let mut quiet: Vec<Client> = (0..2).map(|_| server.client()).collect();
    quiet[0].subscribe("quiet:1");
    quiet[1].subscribe("quiet:1");
    quiet[0].expect_silence(Duration::from_millis(200));
}

fn redis_node(redis: &Redis) -> Server {
    let extra = format!("[redis]\nurl = \"{}\"\nreconnect_min_ms = 20\nreconnect_max_ms = 200\npresence_ttl_ms = 1000\n", redis.url());
    Server::start(&config("", &extra), &["--shards", "2"])
}

#[test]
fn presence_spans_nodes_and_a_killed_node_drops_out_within_the_ttl() {
    let redis = Redis::start();
    let a = redis_node(&redis);
    let mut b = redis_node(&redis);
    let mut on_a = login(&a, "alice");
    on_a.subscribe("room:x");
    let mut on_b = login(&b, "bob");
    on_b.subscribe("room:x");
    let joined = on_a.recv();
    assert_eq!(joined, json!({"type":"join","topic":"room:x","client":on_b.id,"user":"bob"}), "a join on another node");
    assert_ne!(on_a.id, on_b.id, "client ids are unique across nodes");
    let both: BTreeMap<String, Value> = [(on_a.id.clone(), json!("alice")), (on_b.id.clone(), json!("bob"))].into_iter().collect();
    // With Redis a subscribe is acked once its presence entry is there:
    // asked right after the acks, from either node, both are listed.
    let mut asker = a.client();
    assert_eq!(presence(&mut asker, "room:x", 1), both);
    let mut on_b_asker = b.client();
    assert_eq!(presence(&mut on_b_asker, "room:x", 1), both);
    assert_eq!(stats(&mut asker, "room:x", 2), (2, 2));
    // A leave on A reaches B.
    let mut second = a.client();
    second.subscribe("room:x");
    assert_eq!(on_b.recv()["type"], "join");
    drop(second);
    assert_eq!(on_b.recv()["type"], "leave");
    // B dies without a word: its entries expire within presence_ttl_ms.
    b.signal(libc::SIGKILL);
    b.wait_exit(Duration::from_secs(5));
    let only_a: BTreeMap<String, Value> = [(on_a.id.clone(), json!("alice"))].into_iter().collect();
    let killed = std::time::Instant::now();
    eventually(Duration::from_secs(5), "the killed node to drop out", || presence(&mut asker, "room:x", 3) == only_a);
    // presence_ttl_ms is 1 s; the margin is for a loaded CI machine.
    assert!(killed.elapsed() < Duration::from_millis(3000), "dropped out after {:?}", killed.elapsed());
    // A's own entries are refreshed, so they outlive the TTL.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(presence(&mut asker, "room:x", 4), only_a);
}

/// A join heard on another node means the member gets what is published
/// from then on: the join is announced once the joining node's SUBSCRIBE
/// is confirmed, not when the presence entry is written. Node B's
/// SUBSCRIBEs reach Redis 600 ms late (held by a proxy), its other commands
/// do not; Alice publishes the moment she hears Bob joined.
#[test]
fn a_join_is_announced_only_once_the_member_receives_the_topic() {
    let redis = Redis::start();
    let a = redis_node(&redis);
    let proxy = DelayProxy::start(redis.port, b"SUBSCRIBE", Duration::from_millis(600));
    let extra = format!("[redis]\nurl = \"redis://127.0.0.1:{}\"\nreconnect_min_ms = 20\nreconnect_max_ms = 200\n", proxy.port);
    let b = Server::start(&config("", &extra), &["--shards", "2"]);
    // Until its bridge is up a node acks at once (never waiting on Redis).
    eventually(Duration::from_secs(10), "node B's bridge to connect", || b.metric("redis_connected") == 1);
    let mut on_a = login(&a, "alice");
    on_a.subscribe("room:x");
    let mut on_b = login(&b, "bob");
    on_b.send(json!({"type":"subscribe","topic":"room:x","id":1}));
    let joined = on_a.recv();
    assert_eq!(joined["type"], "join", "{joined}");
    on_a.publish("room:x", json!("hello bob"));
    let ack = on_b.recv();
    assert_eq!((ack["type"].as_str(), ack["id"].as_u64()), (Some("ack"), Some(1)), "{ack}");
    let got = on_b.try_recv(Duration::from_secs(5)).expect("bob gets what alice published after hearing he joined");
    assert_eq!((got["type"].as_str(), &got["payload"]), (Some("message"), &json!("hello bob")), "{got}");
    // Gone before the confirmation: the connection is not read while its
    // subscribe waits, so its leave follows its join, never precedes it.
    let mut watcher = login(&a, "dave");
    watcher.subscribe("room:y");
    let mut brief = login(&b, "carol");
    brief.send(json!({"type":"subscribe","topic":"room:y","id":2}));
    std::thread::sleep(Duration::from_millis(100));
    brief.abort();
    let events: Vec<Value> = (0..2).map(|_| watcher.try_recv(Duration::from_secs(5)).expect("an event")).collect();
    assert_eq!((events[0]["type"].as_str(), events[1]["type"].as_str()), (Some("join"), Some("leave")), "{events:?}");
    drop(proxy);
}

