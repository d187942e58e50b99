//! Bad input: every error code, close code and HTTP refusal, each handled
//! alone while other clients carry on.

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::Message;

use crate::util::{raw_request, refused_status, Client, Server};

fn error_of(c: &mut Client, text: &str) -> serde_json::Value {
    c.send_raw(Message::text(text));
    let e = c.recv();
    assert_eq!(e["type"], "error", "{e}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    e
}

#[test]
fn every_error_code_and_the_connection_stays_usable() {
    let server = Server::start(
        "[limits]\nmax_topics_per_connection = 2\nmax_topic_len = 8\npublish_rate = 1\npublish_burst = 1\n",
        &["--shards", "1"],
    );
    let mut c = server.client();
    assert_eq!(error_of(&mut c, "not json")["code"], "bad_json");
    assert_eq!(error_of(&mut c, "[1,2]")["code"], "bad_json");
    let e = error_of(&mut c, r#"{"type":"subscribe","id":5}"#);
    assert_eq!((e["code"].as_str(), e["id"].as_u64()), (Some("bad_request"), Some(5)));
    assert_eq!(error_of(&mut c, r#"{"type":"publish","topic":1,"payload":1}"#)["code"], "bad_request");
    let e = error_of(&mut c, r#"{"type":"teleport","id":6}"#);
    assert_eq!((e["code"].as_str(), e["id"].as_u64()), (Some("unknown_type"), Some(6)));
    for topic in ["", "waytoolongtopic", "a\u{1}b"] {
        let req = json!({"type":"subscribe","topic":topic,"id":9}).to_string();
        assert_eq!(error_of(&mut c, &req)["code"], "invalid_topic", "{topic:?}");
    }
    c.subscribe("a");
    c.subscribe("b");
    c.subscribe("a");
    let e = error_of(&mut c, r#"{"type":"subscribe","topic":"c","id":10}"#);
    assert_eq!((e["code"].as_str(), e["id"].as_u64()), (Some("too_many_subscriptions"), Some(10)));
    assert_eq!(c.request(json!({"type":"publish","topic":"z","payload":1}), 11)["type"], "ack");
    let e = error_of(&mut c, r#"{"type":"publish","topic":"z","payload":2,"id":12}"#);
    assert_eq!((e["code"].as_str(), e["id"].as_u64()), (Some("rate_limited"), Some(12)));
    assert_eq!(c.request(json!({"type":"ping"}), 13), json!({"type":"pong","id":13}));
    assert!(server.metric("request_errors_total") >= 10);
}

#[test]
fn oversized_message_closes_with_1009_and_spares_others() {
    let server = Server::start("[limits]\nmax_message_bytes = 1024\n", &["--shards", "1"]);
    let mut bystander = server.client();
    bystander.subscribe("t");
    let mut c = server.client();
    c.send_raw(Message::text("x".repeat(2000)));
    assert_eq!(c.expect_close().0, 1009);
    // Fragmented past the limit too.
    let mut f = server.client();
    f.send_raw(Message::Frame(Frame::message(Bytes::from(vec![b' '; 800]), OpCode::Data(Data::Text), false)));
    f.send_raw(Message::Frame(Frame::message(Bytes::from(vec![b' '; 800]), OpCode::Data(Data::Continue), true)));
    assert_eq!(f.expect_close().0, 1009);
    let mut p = server.client();
    p.publish("t", json!("still here"));
    assert_eq!(bystander.recv()["payload"], "still here");
}

#[test]
fn invalid_utf8_text_closes_with_1007() {
    let server = Server::start("", &["--shards", "1"]);
    for path in ["/ws", "/echo"] {
        let mut c = Client::connect(&server.url(path));
        let bad = Bytes::from_static(b"{\"type\":\"ping\xff\"}");
        c.send_raw(Message::Frame(Frame::message(bad, OpCode::Data(Data::Text), true)));
        assert_eq!(c.expect_close().0, 1007, "{path}");
    }
}

#[test]
fn repeated_rate_limit_abuse_closes_with_1008() {
    let server = Server::start(
        "[limits]\npublish_rate = 1\npublish_burst = 1\nrate_limit_disconnect = 20\n",
        &["--shards", "1"],
    );
    let mut c = server.client();
    for _ in 0..30 {
        c.publish("t", json!(1));
    }
    let mut rate_limited = 0;
    loop {
        match c.ws.read().unwrap() {
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["code"], "rate_limited");
                rate_limited += 1;
            }
            Message::Close(Some(f)) => {
                assert_eq!(u16::from(f.code), 1008);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(rate_limited, 20);
}

#[test]
fn http_refusals() {
    let server = Server::start(
        "[server]\nallowed_origins = [\"https://ok.example\"]\nmax_connections = 2\n",
        &["--shards", "2"],
    );
    assert_eq!(refused_status(&server.url("/elsewhere"), None), 404);
    assert_eq!(refused_status(&server.url("/ws"), Some("https://evil.example")), 403);
    let plain = raw_request(&server.addr, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(plain.starts_with("HTTP/1.1 426 "), "{plain}");
    // Issue 22.12-13: an HTTP/1.0 upgrade, and keys that are 24 characters
    // but not base64 of 16 bytes, got 101.
    let upgrade = |version: &str, key: &str| {
        let request = format!("GET /ws {version}\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n");
        raw_request(&server.addr, request.as_bytes())
    };
    assert!(upgrade("HTTP/1.0", "dGhlIHNhbXBsZSBub25jZQ==").starts_with("HTTP/1.1 400 "));
    for key in ["!!!!!!!!!!!!!!!!!!!!!!!!", "AAAAAAAAAAAAAAAAAAAAAAAA"] {
        let refused = upgrade("HTTP/1.1", key);
        assert!(refused.starts_with("HTTP/1.1 400 ") && refused.contains("Sec-WebSocket-Key"), "{key}: {refused}");
    }
    let garbage = raw_request(&server.addr, b"\x16\x03\x01\x02\x00garbage\r\n\r\n");
    assert!(garbage.starts_with("HTTP/1.1 400 "), "{garbage}");
    let huge = format!("GET /ws HTTP/1.1\r\nX: {}\r\n", "a".repeat(20_000));
    let huge = raw_request(&server.addr, huge.as_bytes());
    assert!(huge.starts_with("HTTP/1.1 431 "), "{huge}");
    let _a = Client::connect(&server.url("/ws"));
    let _b = Client::connect(&server.url("/ws"));
    assert_eq!(refused_status(&server.url("/ws"), Some("https://ok.example")), 503);
    drop(_a);
    // The slot frees once the server has seen the close.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while refused_status(&server.url("/ws"), None) != 101 {
        assert!(std::time::Instant::now() < deadline, "slot never freed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn silent_handshake_times_out_alone() {
    let server = Server::start("[server]\nhandshake_timeout_ms = 300\n", &["--shards", "1"]);
    let started = std::time::Instant::now();
    let silent = std::net::TcpStream::connect(&server.addr).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut c = server.client();
    assert_eq!(c.request(json!({"type":"ping"}), 1)["type"], "pong");
    let mut buf = [0u8; 16];
    assert_eq!(std::io::Read::read(&mut &silent, &mut buf).unwrap(), 0, "server closed the silent socket");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn protocol_violation_closes_with_1002() {
    let server = Server::start("", &["--shards", "1"]);
    let mut c = server.client();
    // A reserved opcode.
    let mut frame = Frame::message(Bytes::from_static(b"x"), OpCode::Data(Data::Reserved(3)), true);
    frame.header_mut().rsv1 = false;
    c.send_raw(Message::Frame(frame));
    assert_eq!(c.expect_close().0, 1002);
}

/// A tiny deterministic generator, so a failure reproduces.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn random_bytes_after_the_handshake_never_hurt_anyone_else() {
    use std::io::Write;
    let server = Server::start("", &["--shards", "2"]);
    let mut bystander = server.client();
    bystander.subscribe("calm");
    let mut rng = Lcg(0x5eed);
    for round in 0..200 {
        let mut c = server.client();
        let tungstenite::stream::MaybeTlsStream::Plain(stream) = c.ws.get_mut() else { unreachable!() };
        let mut junk: Vec<u8> = (0..(rng.next() % 300)).map(|_| rng.next() as u8).collect();
        // Half the rounds start with a plausible masked header, huge lengths included.
        if round % 2 == 0 {
            let lens: [&[u8]; 3] = [&[0x80 | 126, 0xff, 0xff], &[0x80 | 127, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], &[0x85]];
            let mut head = vec![[0x01u8, 0x81, 0x00, 0x89][round % 4]];
            head.extend_from_slice(lens[(round / 2) % 3]);
            head.extend_from_slice(&junk);
            junk = head;
        }
        let _ = stream.write_all(&junk);
    }
    let mut publisher = server.client();
    publisher.publish("calm", json!("still standing"));
    assert_eq!(bystander.recv()["payload"], "still standing");
    assert!(server.metric("protocol_errors_total") > 0);
}

#[test]
fn huge_continuation_length_after_a_fragment_closes_with_1009_not_a_crash() {
    use std::io::Write;
    let server = Server::start("", &["--shards", "1"]);
    let mut c = server.client();
    c.send_raw(Message::Frame(Frame::message(Bytes::from_static(b"{\"type\""), OpCode::Data(Data::Text), false)));
    let tungstenite::stream::MaybeTlsStream::Plain(stream) = c.ws.get_mut() else { unreachable!() };
    // Continuation, FIN, masked, 64-bit length 2^64 - 1 (RFC 6455 forbids the
    // top bit; the parser accepts it): once wrapped past the size check.
    stream.write_all(&[0x80, 0x80 | 127, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]).unwrap();
    assert_eq!(c.expect_close().0, 1009);
    let mut other = server.client();
    assert_eq!(other.request(json!({"type":"ping"}), 1)["type"], "pong");
}

#[test]
fn a_message_larger_than_the_queue_bound_still_echoes_from_an_empty_queue() {
    // Autobahn 9.*: /echo with max_message_bytes far above queue.max_bytes.
    let server = Server::start("[limits]\nmax_message_bytes = 33554432\n[queue]\nmax_bytes = 1048576", &["--shards", "1"]);
    let mut c = Client::connect(&server.url("/echo"));
    for size in [1 << 20, 4 << 20, 16 << 20] {
        let big = "x".repeat(size);
        c.send_raw(Message::text(big.clone()));
        match c.recv_message() {
            Message::Text(t) => assert_eq!(t.len(), size),
            other => panic!("expected the {size}-byte echo, got {other:?}"),
        }
    }
}

#[test]
fn a_client_still_writing_after_a_policy_close_reads_the_close_frame_not_a_reset() {
    let server = Server::start("[limits]\npublish_rate = 1\npublish_burst = 1\nrate_limit_disconnect = 5\n", &["--shards", "1"]);
    let mut c = server.client();
    let publish = || Message::text(r#"{"type":"publish","topic":"t","payload":1}"#);
    for _ in 0..10 {
        c.ws.send(publish()).unwrap();
    }
    // The server has sent its 1008 by now. A client that has not read it yet
    // keeps writing: the server must keep draining (a lingering close), or
    // its kernel answers these bytes with a reset that destroys the close
    // frame waiting in the client's receive buffer.
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..10 {
        c.ws.send(publish()).expect("writes after the close frame are drained, not reset");
    }
    loop {
        match c.ws.read() {
            Ok(Message::Text(_)) => continue,
            Ok(Message::Close(Some(f))) => {
                assert_eq!(u16::from(f.code), 1008);
                break;
            }
            other => panic!("expected the 1008 close frame, got {other:?}"),
        }
    }
}
