//! Subscription tokens (`[[namespaces]] subscribe = "token"`): a subscribe
//! carrying a JWT for the connection's user and the topic, refused
//! otherwise; the subscription ends at the token's `exp` with an
//! `unsubscribed` frame unless a fresh token renewed it; in JSON and in
//! FlatBuffers. And a connection token's `channels` claim, which subscribes
//! the connection at connect.

use std::time::{Duration, Instant, SystemTime};

use flatbuffers::FlatBufferBuilder;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use shardcast::protocol::flatbuf::schema as fb;
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

use crate::util::{Client, Server};

const SECRET: &str = "sub-token-test-secret";

/// `room:*` needs a subscription token; anyone may publish there. No
/// leeway, so an `exp` passes when it says.
const CONFIG: &str = "[auth]
hmac_secret = \"sub-token-test-secret\"
allow_anonymous = true
leeway_ms = 0
[[namespaces]]
pattern = \"room:*\"
subscribe = \"token\"
publish = \"anyone\"
";

fn now_s() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64()
}

fn hs256(claims: Value) -> String {
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// A subscription token for `user` and `channel`, valid for `secs` seconds.
fn sub_token(user: &str, channel: &str, secs: f64) -> String {
    hs256(json!({"sub": user, "channel": channel, "exp": now_s() + secs}))
}

fn server(shards: &str) -> Server {
    Server::start(CONFIG, &["--shards", shards])
}

/// Connects as `user` (a one-minute connection token with `extra` claims)
/// and reads the welcome.
fn login(server: &Server, user: &str, extra: Value) -> Client {
    let mut claims = json!({"sub": user, "exp": now_s() + 60.0});
    claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let mut c = Client::upgrade(format!("{}?token={}", server.url("/ws"), hs256(claims)));
    assert_eq!(c.expect_welcome()["user"], user);
    c
}

fn subscribe(c: &mut Client, topic: &str, token: Option<&str>, id: u64) -> Value {
    let mut req = json!({"type":"subscribe","topic":topic});
    if let Some(t) = token {
        req["token"] = json!(t);
    }
    c.request(req, id)
}

/// Publishes `n` from `publisher` and reads it back at `subscriber`.
fn delivered(publisher: &mut Client, subscriber: &mut Client, topic: &str, n: u64) {
    publisher.publish(topic, json!({"n": n}));
    let m = subscriber.recv();
    assert_eq!((m["type"].as_str(), m["topic"].as_str(), &m["payload"]), (Some("message"), Some(topic), &json!({"n": n})), "{m}");
}

fn still_open(c: &mut Client, id: u64) {
    assert_eq!(c.request(json!({"type":"ping"}), id)["type"], "pong");
}

#[test]
fn a_valid_subscription_token_subscribes_and_messages_arrive() {
    let server = server("2");
    let mut alice = login(&server, "alice", json!({}));
    let mut publishers = server.clients_on_every_shard(2);
    let r = subscribe(&mut alice, "room:1", Some(&sub_token("alice", "room:1", 60.0)), 1);
    assert_eq!(r["type"], "ack", "{r}");
    for (i, p) in publishers.iter_mut().enumerate() {
        delivered(p, &mut alice, "room:1", i as u64);
    }
    // A token topic is open to `history` / `presence` requests of its
    // subscribers only (here the namespace keeps no history: not_available).
    let r = publishers[0].request(json!({"type":"history","topic":"room:1"}), 3);
    assert_eq!(r["code"], "forbidden", "{r}");
    let r = alice.request(json!({"type":"history","topic":"room:1"}), 4);
    assert_eq!(r["code"], "not_available", "{r}");
    // Re-subscribing with a token is idempotent: acked, one copy per message.
    assert_eq!(subscribe(&mut alice, "room:1", Some(&sub_token("alice", "room:1", 60.0)), 2)["type"], "ack");
    delivered(&mut publishers[0], &mut alice, "room:1", 7);
    alice.expect_silence(Duration::from_millis(200));
}

#[test]
fn every_refused_subscription_token_is_answered_and_the_connection_stays_open() {
    let server = server("1");
    let mut alice = login(&server, "alice", json!({}));
    let mut anon = Client::connect(&server.url("/ws"));
    let mut publisher = server.client();
    let other_key = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub":"alice","channel":"room:1","exp":now_s() + 60.0}),
        &EncodingKey::from_secret(b"not the secret"),
    )
    .unwrap();
    // (anonymous connection?, token, code, what the message says)
    let cases = [
        (false, Some(sub_token("bob", "room:1", 60.0)), "forbidden", "another user"),
        (false, Some(sub_token("alice", "room:2", 60.0)), "forbidden", "another channel"),
        (false, Some(hs256(json!({"sub":"alice","exp":now_s() + 60.0}))), "forbidden", "another channel"),
        (false, Some(sub_token("alice", "room:1", -5.0)), "unauthorized", "token expired"),
        (false, Some(other_key), "unauthorized", "bad signature"),
        (false, None, "forbidden", "needs a subscription token"),
        (true, Some(sub_token("alice", "room:1", 60.0)), "forbidden", "anonymous"),
    ];
    for (i, (anonymous, token, code, says)) in cases.into_iter().enumerate() {
        let client = if anonymous { &mut anon } else { &mut alice };
        let r = subscribe(client, "room:1", token.as_deref(), i as u64 + 10);
        assert_eq!((r["type"].as_str(), r["code"].as_str()), (Some("error"), Some(code)), "case {i}: {r}");
        assert!(r["message"].as_str().unwrap().contains(says), "case {i}: {r}");
    }
    let r = subscribe(&mut alice, "room:1", Some("not.a.token"), 20);
    assert_eq!((r["code"].as_str(), r["message"].as_str()), (Some("unauthorized"), Some("subscription token refused: malformed token")));
    // Nothing was subscribed; both connections go on.
    publisher.publish("room:1", json!(1));
    alice.expect_silence(Duration::from_millis(300));
    anon.expect_silence(Duration::from_millis(50));
    still_open(&mut alice, 30);
    still_open(&mut anon, 31);
    // A topic outside the token namespace needs none (and ignores one).
    assert_eq!(subscribe(&mut alice, "lobby", Some("ignored"), 32)["type"], "ack");
}

#[test]
fn an_expiring_subscription_ends_with_unsubscribed_and_the_connection_stays_open() {
    let server = server("2");
    let mut alice = login(&server, "alice", json!({}));
    let mut publisher = login(&server, "bob", json!({}));
    let started = Instant::now();
    assert_eq!(subscribe(&mut alice, "room:1", Some(&sub_token("alice", "room:1", 2.0)), 1)["type"], "ack");
    assert_eq!(subscribe(&mut alice, "room:2", Some(&sub_token("alice", "room:2", 60.0)), 2)["type"], "ack");
    delivered(&mut publisher, &mut alice, "room:1", 1);
    let u = alice.recv();
    assert_eq!(u, json!({"type":"unsubscribed","topic":"room:1","reason":"token expired"}));
    let at = started.elapsed();
    assert!(at >= Duration::from_millis(1500) && at < Duration::from_millis(4000), "unsubscribed after {at:?}");
    publisher.publish("room:1", json!("late"));
    delivered(&mut publisher, &mut alice, "room:2", 2);
    alice.expect_silence(Duration::from_millis(300));
    still_open(&mut alice, 3);
    // The topic can be subscribed again with a fresh token.
    assert_eq!(subscribe(&mut alice, "room:1", Some(&sub_token("alice", "room:1", 60.0)), 4)["type"], "ack");
    delivered(&mut publisher, &mut alice, "room:1", 3);
    // And left: an unsubscribe after the expiry is acked too.
    assert_eq!(alice.request(json!({"type":"unsubscribe","topic":"room:1"}), 5)["type"], "ack");
    publisher.publish("room:1", json!("gone"));
    alice.expect_silence(Duration::from_millis(300));
}

#[test]
fn a_fresh_token_renews_the_subscription_past_the_first_exp() {
    let server = server("1");
    let mut alice = login(&server, "alice", json!({}));
    let mut publisher = server.client();
    assert_eq!(subscribe(&mut alice, "room:1", Some(&sub_token("alice", "room:1", 2.0)), 1)["type"], "ack");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(subscribe(&mut alice, "room:1", Some(&sub_token("alice", "room:1", 60.0)), 2)["type"], "ack");
    // A refused renewal leaves the subscription as it was.
    assert_eq!(subscribe(&mut alice, "room:1", Some(&sub_token("bob", "room:1", 1.0)), 3)["code"], "forbidden");
    // Past the first token's exp: nothing ended, messages still arrive.
    alice.expect_silence(Duration::from_millis(2000));
    delivered(&mut publisher, &mut alice, "room:1", 1);
    alice.expect_silence(Duration::from_millis(200));
}

#[test]
fn flatbuffers_subscribe_with_a_token_and_the_unsubscribed_event() {
    let server = server("1");
    let connection = hs256(json!({"sub":"alice","exp":now_s() + 60.0}));
    let mut req = format!("{}?token={connection}", server.url("/ws")).into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", "shardcast.flatbuffers.v1".parse().unwrap());
    let mut alice = Client::upgrade(req);
    let recv = |c: &mut Client| match c.recv_message() {
        Message::Binary(b) => b.to_vec(),
        other => panic!("expected a binary frame, got {other:?}"),
    };
    let frame = recv(&mut alice);
    assert_eq!(flatbuffers::root::<fb::ServerFrame>(&frame).unwrap().event_type(), fb::Event::Welcome);
    let subscribe = |c: &mut Client, id: u64, token: &str| {
        let mut b = FlatBufferBuilder::new();
        let topic = b.create_string("room:1");
        let token = b.create_string(token);
        let sub = fb::Subscribe::create(&mut b, &fb::SubscribeArgs { topic: Some(topic), recover: None, token: Some(token), data: None });
        let root = fb::ClientFrame::create(&mut b, &fb::ClientFrameArgs { id: Some(id), request_type: fb::Request::Subscribe, request: Some(sub.as_union_value()) });
        b.finish(root, None);
        c.send_raw(Message::binary(b.finished_data().to_vec()));
    };
    subscribe(&mut alice, 1, &sub_token("bob", "room:1", 60.0));
    let frame = recv(&mut alice);
    let f = flatbuffers::root::<fb::ServerFrame>(&frame).unwrap();
    assert_eq!((f.id(), f.event_as_error().and_then(|e| e.code())), (Some(1), Some("forbidden")));
    subscribe(&mut alice, 2, &sub_token("alice", "room:1", 3.0));
    let frame = recv(&mut alice);
    let f = flatbuffers::root::<fb::ServerFrame>(&frame).unwrap();
    assert_eq!((f.id(), f.event_type()), (Some(2), fb::Event::Ack));
    server.client().publish("room:1", json!("hello"));
    let frame = recv(&mut alice);
    let m = flatbuffers::root::<fb::ServerFrame>(&frame).unwrap().event_as_message().expect("a message");
    assert_eq!(m.payload().unwrap().bytes(), br#""hello""#);
    let frame = recv(&mut alice);
    let f = flatbuffers::root::<fb::ServerFrame>(&frame).unwrap();
    let u = f.event_as_unsubscribed().unwrap_or_else(|| panic!("expected Unsubscribed, got {:?}", f.event_type()));
    assert_eq!((f.id(), u.topic(), u.reason()), (None, Some("room:1"), Some("token expired")));
}

#[test]
fn a_channels_claim_subscribes_at_connect_without_a_subscribe_request() {
    let server = server("2");
    let mut publishers = server.clients_on_every_shard(2);
    // Permission checks are skipped (room:9 is a token namespace); invalid
    // names are skipped; the rest is subscribed before the welcome.
    let channels = json!({"channels": ["news", "room:9", "$reserved", "", "news"]});
    for _ in 0..4 {
        let mut alice = login(&server, "alice", channels.clone());
        for (i, p) in publishers.iter_mut().enumerate() {
            delivered(p, &mut alice, "news", i as u64);
            delivered(p, &mut alice, "room:9", i as u64);
        }
        alice.expect_silence(Duration::from_millis(200));
        // They are ordinary subscriptions: an unsubscribe ends them.
        assert_eq!(alice.request(json!({"type":"unsubscribe","topic":"news"}), 1)["type"], "ack");
        publishers[0].publish("news", json!("gone"));
        delivered(&mut publishers[0], &mut alice, "room:9", 9);
        alice.expect_silence(Duration::from_millis(200));
    }
    // Through an `auth` request too.
    let mut late = Client::connect(&server.url("/ws"));
    let token = hs256(json!({"sub":"carol","exp":now_s() + 60.0,"channels":["news"]}));
    assert_eq!(late.request(json!({"type":"auth","token":token}), 1)["type"], "ack");
    assert_eq!(late.expect_welcome()["user"], "carol");
    delivered(&mut publishers[1], &mut late, "news", 5);
}

#[test]
fn channels_beyond_max_topics_per_connection_are_not_subscribed() {
    let server = Server::start(&format!("{CONFIG}[limits]\nmax_topics_per_connection = 2\n"), &["--shards", "1"]);
    let mut publisher = server.client();
    let mut alice = login(&server, "alice", json!({"channels": ["a", "b", "c"]}));
    delivered(&mut publisher, &mut alice, "a", 1);
    delivered(&mut publisher, &mut alice, "b", 2);
    publisher.publish("c", json!(3));
    alice.expect_silence(Duration::from_millis(300));
    let r = alice.request(json!({"type":"subscribe","topic":"d"}), 1);
    assert_eq!(r["code"], "too_many_subscriptions", "{r}");
}

#[test]
fn a_channels_claim_that_is_not_a_list_of_strings_closes_4001() {
    let server = server("1");
    for channels in [json!("news"), json!(["news", 7]), json!({"news": true})] {
        let token = hs256(json!({"sub":"alice","exp":now_s() + 60.0,"channels":channels}));
        let mut c = Client::upgrade(format!("{}?token={token}", server.url("/ws")));
        match c.recv_message() {
            Message::Close(Some(f)) => {
                assert_eq!((u16::from(f.code), f.reason.as_str()), (4001, "channels claim is not a list of strings"), "{channels}");
            }
            other => panic!("expected only a close frame, got {other:?}"),
        }
    }
}

#[test]
fn publish_token_is_a_config_error_naming_the_key() {
    let config = "[auth]\nhmac_secret = \"s\"\n[[namespaces]]\npattern = \"a:*\"\nsubscribe = \"users\"\npublish = \"users\"\n[[namespaces]]\npattern = \"room:*\"\nsubscribe = \"token\"\npublish = \"token\"\n";
    let err = Server::try_start(config, &[]).err().expect("refused");
    assert!(err.contains("namespaces[1].publish") && err.contains("\"token\""), "{err}");
}
