//! The wire: the FlatBuffers client protocol (`schemas/client.fbs`) next to
//! JSON, payloads crossing encodings, and encode-once across encodings.

use std::time::{Duration, SystemTime};

use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
use serde_json::json;
use shardcast::protocol::flatbuf::schema::*;
use tungstenite::client::IntoClientRequest;
use tungstenite::Message as Ws;

use crate::util::{on_every_shard, Client, RawWs, Server};

const FB: &str = "shardcast.flatbuffers.v1";
const SECRET: &str = "wire-test-secret";

fn token_for(user: &str) -> String {
    let exp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() + 60;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": user, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A decoded `ServerFrame`, flattened for assertions.
#[derive(Debug, PartialEq)]
enum Event_ {
    Welcome { client: String, shard: u32, user: Option<String> },
    Ack(Option<u64>),
    Pong(Option<u64>),
    Message { topic: String, payload: Vec<u8> },
    Direct { from: Option<String>, payload: Vec<u8> },
    Error { id: Option<u64>, code: String },
}

fn decode(bytes: &[u8]) -> Event_ {
    let f = flatbuffers::root::<ServerFrame>(bytes).expect("a valid ServerFrame");
    match f.event_type() {
        Event::Welcome => {
            let w = f.event_as_welcome().unwrap();
            Event_::Welcome { client: w.client().unwrap().into(), shard: w.shard(), user: w.user().map(Into::into) }
        }
        Event::Ack => Event_::Ack(f.id()),
        Event::Pong => Event_::Pong(f.id()),
        Event::Message => {
            let m = f.event_as_message().unwrap();
            Event_::Message { topic: m.topic().unwrap().into(), payload: m.payload().unwrap().bytes().to_vec() }
        }
        Event::Direct => {
            let d = f.event_as_direct().unwrap();
            Event_::Direct { from: d.from().map(Into::into), payload: d.payload().unwrap().bytes().to_vec() }
        }
        Event::Error => Event_::Error { id: f.id(), code: f.event_as_error().unwrap().code().unwrap().into() },
        other => panic!("unexpected event {other:?}"),
    }
}

/// A FlatBuffers client (as any client generating code from the schema would be).
struct Fb(Client);

impl Fb {
    /// Connects offering `shardcast.flatbuffers.v1`, with `token` in the URL;
    /// checks the server chose it.
    fn upgrade(server: &Server, token: Option<&str>) -> Fb {
        let url = match token {
            Some(t) => format!("{}?token={t}", server.url("/ws")),
            None => server.url("/ws"),
        };
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert("Sec-WebSocket-Protocol", format!("x-unknown, {FB}").parse().unwrap());
        let (ws, resp) = tungstenite::connect(req).unwrap();
        assert_eq!(resp.headers().get("Sec-WebSocket-Protocol").unwrap(), FB);
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        }
        Fb(Client { ws, shard: usize::MAX, id: String::new() })
    }

    fn connect(server: &Server, token: Option<&str>) -> Fb {
        let mut c = Fb::upgrade(server, token);
        match c.recv() {
            Event_::Welcome { shard, client, .. } => {
                c.0.shard = shard as usize;
                c.0.id = client;
            }
            other => panic!("expected a welcome, got {other:?}"),
        }
        c
    }

    fn send(&mut self, id: Option<u64>, kind: Request, build: impl FnOnce(&mut FlatBufferBuilder<'static>) -> WIPOffset<UnionWIPOffset>) {
        let mut b = FlatBufferBuilder::new();
        let request = build(&mut b);
        let root = ClientFrame::create(&mut b, &ClientFrameArgs { id, request_type: kind, request: Some(request) });
        b.finish(root, None);
        self.0.send_raw(Ws::binary(b.finished_data().to_vec()));
    }

    fn recv(&mut self) -> Event_ {
        match self.0.recv_message() {
            Ws::Binary(b) => decode(&b),
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }

    fn topic_request(&mut self, id: u64, kind: Request, topic: &str) {
        self.send(Some(id), kind, |b| {
            let topic = Some(b.create_string(topic));
            if kind == Request::Subscribe {
                Subscribe::create(b, &SubscribeArgs { topic, recover: None, token: None }).as_union_value()
            } else {
                Unsubscribe::create(b, &UnsubscribeArgs { topic }).as_union_value()
            }
        });
    }

    fn subscribe(&mut self, topic: &str) {
        self.topic_request(1_000_000, Request::Subscribe, topic);
        assert_eq!(self.recv(), Event_::Ack(Some(1_000_000)));
    }

    fn publish(&mut self, id: Option<u64>, topic: &str, payload: &[u8]) {
        self.send(id, Request::Publish, |b| {
            let topic = b.create_string(topic);
            let payload = b.create_vector(payload);
            Publish::create(b, &PublishArgs { topic: Some(topic), payload: Some(payload), skip_self: true }).as_union_value()
        });
    }

    fn token_request(&mut self, id: u64, kind: Request, token: &str) {
        self.send(Some(id), kind, |b| {
            let token = Some(b.create_string(token));
            if kind == Request::Auth {
                Auth::create(b, &AuthArgs { token }).as_union_value()
            } else {
                Refresh::create(b, &RefreshArgs { token }).as_union_value()
            }
        });
    }
}

#[test]
fn flatbuffers_clients_can_make_every_request() {
    let server = Server::start(&format!("[auth]\nhmac_secret = \"{SECRET}\"\nallow_anonymous = true"), &["--shards", "1"]);
    let mut alice = Fb::connect(&server, Some(&token_for("alice")));
    alice.subscribe("news");
    alice.send(Some(2), Request::Ping, |b| Ping::create(b, &PingArgs {}).as_union_value());
    assert_eq!(alice.recv(), Event_::Pong(Some(2)));
    let mut bob = Fb::connect(&server, Some(&token_for("bob")));
    bob.publish(Some(3), "news", &[0, 1, 2]);
    assert_eq!(bob.recv(), Event_::Ack(Some(3)));
    assert_eq!(alice.recv(), Event_::Message { topic: "news".into(), payload: vec![0, 1, 2] });
    bob.send(Some(4), Request::Send, |b| {
        let user = b.create_string("alice");
        let payload = b.create_vector(b"hi");
        Send::create(b, &SendArgs { user: Some(user), payload: Some(payload) }).as_union_value()
    });
    assert_eq!(bob.recv(), Event_::Ack(Some(4)));
    assert_eq!(alice.recv(), Event_::Direct { from: Some("bob".into()), payload: b"hi".to_vec() });
    alice.token_request(5, Request::Refresh, &token_for("alice"));
    assert_eq!(alice.recv(), Event_::Ack(Some(5)));
    alice.topic_request(6, Request::Unsubscribe, "news");
    assert_eq!(alice.recv(), Event_::Ack(Some(6)));
    bob.publish(None, "news", b"gone");
    alice.0.expect_silence(Duration::from_millis(200));
    // An anonymous connection authenticates in FlatBuffers too: ack, then a welcome naming the user.
    let mut carol = Fb::connect(&server, None);
    carol.token_request(7, Request::Auth, &token_for("carol"));
    assert_eq!(carol.recv(), Event_::Ack(Some(7)));
    assert!(matches!(carol.recv(), Event_::Welcome { user: Some(u), .. } if u == "carol"));
    // Errors use the protocol's codes.
    carol.topic_request(8, Request::Subscribe, "");
    assert_eq!(carol.recv(), Event_::Error { id: Some(8), code: "invalid_topic".into() });
}

#[test]
fn payloads_cross_encodings_byte_for_byte_and_each_encoding_is_built_once() {
    let server = Server::start("[limits]\npublish_rate = 0", &["--shards", "2"]);
    let mut fb_subs = on_every_shard(2, || Fb::connect(&server, None).0);
    let mut json_subs = server.clients_on_every_shard(2);
    for c in &mut json_subs {
        c.subscribe("t");
    }
    for c in fb_subs.iter_mut() {
        c.ws.send(Ws::binary(subscribe_frame("t"))).unwrap();
        assert_eq!(recv_fb(c), Event_::Ack(Some(1)));
    }
    let (json_before, fb_before) = (server.metric("encodings_json_total"), server.metric("encodings_flatbuffers_total"));
    // JSON -> FlatBuffers: the payload's JSON text, byte for byte (whitespace included).
    let mut json_pub = server.client();
    json_pub.send(json!({"type":"publish","topic":"t","payload":"PLACEHOLDER"}));
    for c in &mut json_subs {
        assert_eq!(c.recv()["payload"], "PLACEHOLDER");
    }
    for c in fb_subs.iter_mut() {
        assert_eq!(recv_fb(c), Event_::Message { topic: "t".into(), payload: br#""PLACEHOLDER""#.to_vec() });
    }
    json_pub.send_raw(Ws::text(r#"{"type":"publish","topic":"t","payload": {"a" : [1, 2]} }"#));
    for c in fb_subs.iter_mut() {
        assert_eq!(recv_fb(c), Event_::Message { topic: "t".into(), payload: br#"{"a" : [1, 2]}"#.to_vec() });
    }
    for c in &mut json_subs {
        match c.recv_message() {
            Ws::Text(t) => assert!(t.contains(r#""payload":{"a" : [1, 2]}"#), "{t}"),
            other => panic!("{other:?}"),
        }
    }
    // Two messages, four FlatBuffers subscribers on two shards: two FlatBuffers encodings.
    assert_eq!(server.metric("encodings_flatbuffers_total") - fb_before, 2, "each message encoded once for FlatBuffers");
    assert_eq!(server.metric("encodings_json_total") - json_before, 2, "and once for JSON");
    // FlatBuffers -> JSON: valid JSON embedded verbatim, anything else as payload_base64.
    let mut fb_pub = Fb::connect(&server, None);
    fb_pub.publish(None, "t", br#"{"b":2}"#);
    fb_pub.publish(None, "t", &[0xff, 0x00, b'x']);
    for c in &mut json_subs {
        match c.recv_message() {
            Ws::Text(t) => assert!(t.ends_with(r#""payload":{"b":2}}"#), "{t}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.recv(), json!({"type":"message","topic":"t","payload_base64":"/wB4"}));
    }
    for c in fb_subs.iter_mut() {
        assert_eq!(recv_fb(c), Event_::Message { topic: "t".into(), payload: br#"{"b":2}"#.to_vec() });
        assert_eq!(recv_fb(c), Event_::Message { topic: "t".into(), payload: vec![0xff, 0x00, b'x'] });
    }
}

fn subscribe_frame(topic: &str) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let topic = b.create_string(topic);
    let sub = Subscribe::create(&mut b, &SubscribeArgs { topic: Some(topic), recover: None, token: None });
    let root = ClientFrame::create(&mut b, &ClientFrameArgs { id: Some(1), request_type: Request::Subscribe, request: Some(sub.as_union_value()) });
    b.finish(root, None);
    b.finished_data().to_vec()
}

fn recv_fb(c: &mut Client) -> Event_ {
    match c.recv_message() {
        Ws::Binary(b) => decode(&b),
        other => panic!("expected a binary frame, got {other:?}"),
    }
}

#[test]
fn bad_flatbuffers_get_bad_request_and_the_connection_stays_usable() {
    let server = Server::start("", &["--shards", "1"]);
    let mut c = Fb::connect(&server, None);
    for garbage in [vec![], vec![0xff; 3], vec![12, 0, 0, 0, 8, 0, 12, 0, 4, 0, 8, 0, 0xff, 0xff, 0xff, 0x7f], b"\x04\x00\x00\x00".to_vec()] {
        c.0.send_raw(Ws::binary(garbage.clone()));
        assert_eq!(c.recv(), Event_::Error { id: None, code: "bad_request".into() }, "{garbage:?}");
    }
    c.0.send_raw(Ws::text(r#"{"type":"ping","id":1}"#));
    assert_eq!(c.recv(), Event_::Error { id: None, code: "bad_request".into() }, "a text frame on a FlatBuffers connection");
    c.send(Some(9), Request::Ping, |b| Ping::create(b, &PingArgs {}).as_union_value());
    assert_eq!(c.recv(), Event_::Pong(Some(9)));
    // Unknown subprotocols only: the upgrade goes ahead as JSON, with no
    // protocol header (read raw: tungstenite's client refuses that answer).
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let upgrade = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat\r\n\r\n";
    s.write_all(upgrade.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("\"welcome\"") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(!text.to_ascii_lowercase().contains("sec-websocket-protocol"), "{text}");
}

/// Runs the Python `websockets` deflate client (installed by tests/run.sh).
fn deflate_client(server: &Server, subscribers: usize) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/deflate_client.py");
    let out = std::process::Command::new("python3").arg(script).arg(server.url("/ws")).arg(subscribers.to_string()).output().unwrap();
    assert!(out.status.success(), "deflate client: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_real_deflate_client_negotiates_and_each_message_is_compressed_once_per_node() {
    let server = Server::start("[compression]\nenabled = true\n[limits]\npublish_rate = 0", &["--shards", "2"]);
    let r = deflate_client(&server, 4);
    assert_eq!(r["extensions"], json!(["permessage-deflate"]), "{r}");
    assert_eq!(r["received"], json!([[true, true], [true, true], [true, true], [true, true]]), "{r}");
    // The large message, once for four subscribers on two shards; the small one
    // (under min_bytes) not at all. The client's own compressed publish was inflated.
    assert_eq!(server.metric("compressions_total"), 1);
    assert!(server.metric("compression_output_bytes_total") * 10 < server.metric("compression_input_bytes_total"));
    assert!(server.metric("inflations_total") >= 1);
}

const DEFLATE_OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    shardcast::ws::deflate::Compressor::new(9).compress(data, false, &mut out);
    out
}

#[test]
fn a_deflate_bomb_closes_1009_after_at_most_max_message_bytes_of_output() {
    let server = Server::start("[compression]\nenabled = true", &["--shards", "1"]);
    let (mut echo, head) = RawWs::open(&server.addr, "/echo", DEFLATE_OFFER);
    assert!(head.contains("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover"), "{head}");
    // A compressed message round-trips through /echo, compressed again on the way back.
    let text = "echo me ".repeat(100);
    echo.send_first_byte(0xC1, &deflate(text.as_bytes()));
    let (first, payload) = echo.recv_frame().unwrap();
    assert_eq!(first, 0xC1, "a final text frame with RSV1");
    let mut back = Vec::new();
    shardcast::ws::deflate::Decompressor::default().inflate(&payload, 1 << 20, &mut back).unwrap();
    assert_eq!(back, text.as_bytes());
    // 60 KB on the wire (under max_message_bytes = 64 KiB), 60 MB inflated.
    let bomb = deflate(&vec![b'a'; 60 << 20]);
    assert!(bomb.len() < 65_536, "{}", bomb.len());
    let rss_before = server.rss_kib();
    let (mut raw, _) = RawWs::open(&server.addr, "/ws", DEFLATE_OFFER);
    let _welcome = raw.recv_frame();
    raw.send_first_byte(0xC1, &bomb);
    assert_eq!(raw.close_code(), 1009);
    let grown = server.rss_kib().saturating_sub(rss_before);
    assert!(grown < 8 * 1024, "the bomb cost {grown} KiB");
    // Everyone else is unaffected.
    let mut other = server.client();
    assert_eq!(other.request(json!({"type":"ping"}), 1)["type"], "pong");
}

#[test]
fn rsv1_without_deflate_or_on_a_control_frame_closes_1002() {
    let server = Server::start("[compression]\nenabled = true", &["--shards", "1"]);
    let (mut plain, head) = RawWs::open(&server.addr, "/ws", "");
    assert!(!head.contains("Sec-WebSocket-Extensions"), "not offered, not answered: {head}");
    let _welcome = plain.recv_frame();
    plain.send_first_byte(0xC1, &deflate(br#"{"type":"ping"}"#));
    assert_eq!(plain.close_code(), 1002, "RSV1 without the extension");
    let (mut control, _) = RawWs::open(&server.addr, "/ws", DEFLATE_OFFER);
    let _welcome = control.recv_frame();
    control.send_first_byte(0xC9, b"");
    assert_eq!(control.close_code(), 1002, "RSV1 on a ping");
    let (mut corrupt, _) = RawWs::open(&server.addr, "/ws", DEFLATE_OFFER);
    let _welcome = corrupt.recv_frame();
    corrupt.send_first_byte(0xC1, b"\xff\xfe\xfd\xfc not deflate");
    assert_eq!(corrupt.close_code(), 1007, "invalid compressed data");
    // Off (the default): an offer is declined and the connection goes on uncompressed.
    let off = Server::start("", &["--shards", "1"]);
    let (mut declined, head) = RawWs::open(&off.addr, "/ws", DEFLATE_OFFER);
    assert!(head.starts_with("HTTP/1.1 101") && !head.contains("Sec-WebSocket-Extensions"), "{head}");
    assert_eq!(declined.recv_frame().unwrap().0, 0x81, "an uncompressed welcome");
}

#[test]
fn flatbuffers_clients_get_positions_recover_and_ask_presence() {
    let ns = "[[namespaces]]\npattern = \"chat:*\"\nsubscribe = \"anyone\"\npublish = \"anyone\"\npresence = true\nhistory_size = 10\nhistory_ttl_ms = 60000\nrecover = true\n";
    let server = Server::start(&format!("{ns}[limits]\npublish_rate = 0"), &["--shards", "2"]);
    let raw = |c: &mut Fb| match c.0.recv_message() {
        Ws::Binary(b) => b.to_vec(),
        other => panic!("expected a binary frame, got {other:?}"),
    };
    let subscribe = |c: &mut Fb, id: u64, recover: Option<(u64, &str)>| {
        c.send(Some(id), Request::Subscribe, |b| {
            let topic = Some(b.create_string("chat:fb"));
            let recover = recover.map(|(offset, epoch)| {
                let epoch = Some(b.create_string(epoch));
                StreamPosition::create(b, &StreamPositionArgs { offset, epoch })
            });
            Subscribe::create(b, &SubscribeArgs { topic, recover, token: None }).as_union_value()
        });
    };
    let mut sub = Fb::connect(&server, None);
    subscribe(&mut sub, 1, None);
    let bytes = raw(&mut sub);
    let ack = flatbuffers::root::<ServerFrame>(&bytes).unwrap().event_as_ack().expect("an ack");
    let epoch = ack.epoch().expect("the topic's epoch").to_string();
    assert_eq!((ack.offset(), ack.recovered()), (Some(0), None));
    let mut publisher = server.client();
    for i in 1..=3 {
        publisher.publish("chat:fb", json!(i));
        let bytes = raw(&mut sub);
        let m = flatbuffers::root::<ServerFrame>(&bytes).unwrap().event_as_message().unwrap();
        assert_eq!((m.offset(), m.epoch(), m.payload().unwrap().bytes()), (Some(i), Some(epoch.as_str()), i.to_string().as_bytes()));
    }
    let mut back = Fb::connect(&server, None);
    subscribe(&mut back, 2, Some((1, &epoch)));
    let bytes = raw(&mut back);
    let ack = flatbuffers::root::<ServerFrame>(&bytes).unwrap().event_as_ack().unwrap();
    assert_eq!((ack.recovered(), ack.offset()), (Some(true), Some(3)));
    let offsets: Vec<u64> = ack.publications().unwrap().iter().map(|p| p.offset()).collect();
    assert_eq!(offsets, vec![2, 3]);
    back.send(Some(3), Request::History, |b| {
        let topic = Some(b.create_string("chat:fb"));
        History::create(b, &HistoryArgs { topic, since: None, limit: Some(1) }).as_union_value()
    });
    let bytes = raw(&mut back);
    let h = flatbuffers::root::<ServerFrame>(&bytes).unwrap().event_as_history_result().expect("a history result");
    assert_eq!((h.offset(), h.publications().unwrap().len()), (3, 1));
    back.send(Some(4), Request::Presence, |b| {
        let topic = Some(b.create_string("chat:fb"));
        Presence::create(b, &PresenceArgs { topic }).as_union_value()
    });
    let bytes = raw(&mut back);
    let p = flatbuffers::root::<ServerFrame>(&bytes).unwrap().event_as_presence_result().expect("a presence result");
    let mut clients: Vec<String> = p.clients().unwrap().iter().map(|c| c.client().unwrap().to_string()).collect();
    clients.sort();
    let mut expected = vec![sub.0.id.clone(), back.0.id.clone()];
    expected.sort();
    assert_eq!(clients, expected);
    back.send(Some(5), Request::PresenceStats, |b| {
        let topic = Some(b.create_string("chat:fb"));
        PresenceStats::create(b, &PresenceStatsArgs { topic }).as_union_value()
    });
    let bytes = raw(&mut back);
    let s = flatbuffers::root::<ServerFrame>(&bytes).unwrap().event_as_presence_stats_result().unwrap();
    assert_eq!((s.clients(), s.users()), (2, 0));
}
