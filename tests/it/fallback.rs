//! The fallback transports against the real binary, driven by a plain HTTP
//! client written here (a TCP socket, a chunked-body reader): HTTP-streaming
//! and SSE sessions for every request type, requests POSTed to the other
//! node of two sharing a Redis, recovery after a stream drops, a slow
//! consumer, and every refusal of a bad POST.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::util::{eventually, raw_request, Redis, Server};

const SECRET: &str = "fallback-secret";

fn token_for(user: &str) -> String {
    let exp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() + 60;
    encode(&Header::new(Algorithm::HS256), &json!({"sub": user, "exp": exp}), &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// `room:*` keeps presence and history; anything else is plain.
const CONFIG: &str = "[auth]\nhmac_secret = \"fallback-secret\"\nallow_anonymous = true\n\
     [[namespaces]]\npattern = \"room:*\"\nsubscribe = \"anyone\"\npublish = \"anyone\"\npresence = true\nhistory_size = 100\nhistory_ttl_ms = 60000\nrecover = true\n\
     [[namespaces]]\npattern = \"*\"\nsubscribe = \"anyone\"\npublish = \"anyone\"\n";

/// One fallback session seen from its client: the response read as it
/// comes, frame by frame.
struct Session {
    reader: BufReader<TcpStream>,
    sse: bool,
    /// Decoded body not yet split into frames.
    body: String,
    addr: String,
    pub head: String,
    pub welcome: Value,
}

impl Session {
    /// `POST /stream` with `connect` as the first line.
    fn stream(addr: &str, connect: Value) -> Session {
        let body = format!("{connect}\n");
        let request = format!("POST /stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        Session::open(addr, &request, false)
    }

    /// `GET /sse` with the connect request in the query.
    fn sse(addr: &str, connect: Value) -> Session {
        let query: String = form_urlencoded::Serializer::new(String::new()).append_pair("connect", &connect.to_string()).finish();
        Session::open(addr, &format!("GET /sse?{query} HTTP/1.1\r\nHost: x\r\n\r\n"), true)
    }

    fn open(addr: &str, request: &str, sse: bool) -> Session {
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.write_all(request.as_bytes()).unwrap();
        let mut reader = BufReader::new(tcp);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            head.push_str(&line);
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let mut session = Session { reader, sse, body: String::new(), addr: addr.to_string(), head, welcome: Value::Null };
        assert!(session.head.starts_with("HTTP/1.1 200"), "{}", session.head);
        session.welcome = session.recv();
        assert_eq!(session.welcome["type"], "welcome", "{}", session.welcome);
        session
    }

    fn id(&self) -> String {
        self.welcome["session"].as_str().unwrap().to_string()
    }

    /// Reads one more chunk into `body`; false at the end of the response.
    fn read_chunk(&mut self) -> bool {
        let mut size = String::new();
        if self.reader.read_line(&mut size).unwrap_or(0) == 0 {
            return false;
        }
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or_else(|_| panic!("a chunk size, not {size:?}"));
        let mut data = vec![0; size + 2];
        self.reader.read_exact(&mut data).unwrap();
        assert_eq!(&data[size..], b"\r\n");
        self.body.push_str(std::str::from_utf8(&data[..size]).unwrap());
        size > 0
    }

    /// The next frame (heartbeats skipped); `None` when the response ended.
    fn try_recv(&mut self) -> Option<Value> {
        loop {
            let separator = if self.sse { "\n\n" } else { "\n" };
            while let Some(end) = self.body.find(separator) {
                let item: String = self.body.drain(..end + separator.len()).collect();
                let item = item.trim_end();
                let json = if self.sse { item.strip_prefix("data: ") } else { Some(item).filter(|i| !i.is_empty()) };
                if let Some(json) = json {
                    return Some(serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json:?}")));
                }
            }
            if !self.read_chunk() {
                return None;
            }
        }
    }

    fn recv(&mut self) -> Value {
        self.try_recv().expect("the stream ended")
    }

    /// The next frame of `kind` (others skipped).
    fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.recv();
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// POSTs `requests` for this session to `addr` (this session's node
    /// when `None`); the answer's status.
    fn post(&self, addr: Option<&str>, requests: Value) -> u16 {
        emulate(addr.unwrap_or(&self.addr), &json!({"session": self.id(), "requests": requests}).to_string())
    }
}

/// `POST /emulation` with `body`; the answer's status.
fn emulate(addr: &str, body: &str) -> u16 {
    let request = format!("POST /emulation HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    status(&raw_request(addr, request.as_bytes()))
}

fn status(answer: &str) -> u16 {
    answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {answer:?}"))
}

/// A server of `CONFIG` with `limits` in its `[limits]` table.
fn server(limits: &str, extra: &str, shards: &str) -> Server {
    Server::start(&format!("{CONFIG}[limits]\npublish_rate = 0\n{limits}\n{extra}"), &["--shards", shards])
}

fn addr(server: &Server) -> String {
    server.url("").trim_start_matches("ws://").trim_end_matches('/').to_string()
}

fn every_request_type(mut s: Session, server: &Server) {
    let user = s.welcome["user"].as_str().unwrap().to_string();
    assert_eq!(s.post(None, json!([{"type": "subscribe", "topic": "room:1", "id": 1}, {"type": "ping", "id": 2}])), 204);
    assert_eq!(s.recv()["id"], 1, "acks come in order");
    assert_eq!(s.recv(), json!({"type": "pong", "id": 2}));
    // A WebSocket user's publish reaches the session, and the session's
    // publish reaches the WebSocket user.
    let mut ws = server.client();
    ws.subscribe("room:1");
    ws.publish("room:1", json!("from ws"));
    assert_eq!(s.recv_type("message")["payload"], "from ws");
    assert_eq!(s.post(None, json!([{"type": "publish", "topic": "room:1", "payload": {"n": 1}, "id": 3}])), 204);
    assert_eq!(s.recv_type("ack")["id"], 3);
    loop {
        let m = ws.recv();
        if m["type"] == "message" && m["payload"] == json!({"n": 1}) {
            break;
        }
    }
    // Presence lists the session by its client id, never its session id.
    assert_eq!(s.post(None, json!([{"type": "presence", "topic": "room:1", "id": 4}])), 204);
    let presence = s.recv_type("presence");
    assert!(presence["clients"].get(s.welcome["client"].as_str().unwrap()).is_some(), "{presence}");
    assert!(!presence.to_string().contains(&s.id()));
    // History, a direct message to its user, a bad request: answered down the stream.
    assert_eq!(s.post(None, json!([{"type": "history", "topic": "room:1", "id": 5}, {"type": "nope", "id": 6}])), 204);
    assert_eq!(s.recv_type("history")["publications"].as_array().unwrap().len(), 2);
    assert_eq!(s.recv_type("error")["code"], "unknown_type");
    crate::util::http_post(server.admin(), "/api/send", &json!({"user": user, "payload": "psst"}));
    assert_eq!(s.recv_type("direct")["payload"], "psst");
    assert_eq!(s.post(None, json!([{"type": "unsubscribe", "topic": "room:1", "id": 7}])), 204);
    assert_eq!(s.recv_type("ack")["id"], 7);
    // An admin disconnect ends the stream with the close frame, then the response.
    crate::util::http_post(server.admin(), "/api/disconnect", &json!({"user": user, "code": 4100, "reason": "bye"}));
    assert_eq!(s.recv_type("close"), json!({"type": "close", "code": 4100, "reason": "bye"}));
    assert!(s.try_recv().is_none(), "the response ends after the close frame");
}

#[test]
fn http_streaming_carries_every_request_type() {
    let server = server("", "", "2");
    let s = Session::stream(&addr(&server), json!({"type": "connect", "token": token_for("hana")}));
    assert_eq!((s.welcome["user"].as_str(), s.welcome["transport"].as_str()), (Some("hana"), Some("http_stream")));
    assert!(s.head.contains("Content-Type: application/x-ndjson\r\n") && s.head.contains("Transfer-Encoding: chunked\r\n"), "{}", s.head);
    assert_eq!(server.metric("stream_sessions"), 1);
    every_request_type(s, &server);
    eventually(Duration::from_secs(5), "the session gone", || server.metric("stream_sessions") == 0);
}

#[test]
fn sse_carries_every_request_type() {
    let server = server("", "", "2");
    let s = Session::sse(&addr(&server), json!({"type": "auth", "token": token_for("ivo")}));
    assert_eq!((s.welcome["user"].as_str(), s.welcome["transport"].as_str()), (Some("ivo"), Some("sse")));
    assert!(s.head.contains("Content-Type: text/event-stream\r\n") && s.head.contains("X-Accel-Buffering: no\r\n"), "{}", s.head);
    assert_eq!(server.metric("sse_sessions"), 1);
    every_request_type(s, &server);
}

#[test]
fn a_post_to_the_other_node_reaches_the_session() {
    let redis = Redis::start();
    let config = format!("[redis]\nurl = \"{}\"\n", redis.url());
    let (one, two) = (server("", &config, "2"), server("", &config, "2"));
    let mut s = Session::stream(&addr(&one), json!({}));
    assert_eq!(s.post(Some(&addr(&two)), json!([{"type": "subscribe", "topic": "chat", "id": 1}])), 204, "any node takes it");
    assert_eq!(s.recv()["id"], 1);
    let mut ws = two.client();
    ws.publish("chat", json!("across"));
    assert_eq!(s.recv_type("message")["payload"], "across");
    // A session id of a node nobody runs: 204 (forwarded), then nothing.
    let ghost = format!("{}:no-such-node", "0".repeat(32));
    assert_eq!(emulate(&addr(&two), &json!({"session": ghost, "requests": [{"type": "ping"}]}).to_string()), 204);
    // A session of this node that does not exist: 404.
    let local = format!("{}:{}", "0".repeat(32), s.welcome["node"].as_str().unwrap());
    assert_eq!(emulate(&addr(&one), &json!({"session": local, "requests": []}).to_string()), 404);
}

#[test]
fn sse_recovers_what_was_missed_while_its_stream_was_down() {
    let server = server("", "", "2");
    let mut s = Session::sse(&addr(&server), json!({}));
    assert_eq!(s.post(None, json!([{"type": "subscribe", "topic": "room:r", "id": 1}])), 204);
    let ack = s.recv();
    let epoch = ack["epoch"].clone();
    let mut ws = server.client();
    ws.publish("room:r", json!(1));
    let first = s.recv_type("message");
    assert_eq!(first["payload"], 1);
    let old = s.id();
    drop(s);
    for n in 2..=4 {
        ws.publish("room:r", json!(n));
    }
    let mut again = Session::sse(&addr(&server), json!({}));
    assert_ne!(again.id(), old);
    let recover = json!({"offset": first["offset"], "epoch": epoch});
    assert_eq!(again.post(None, json!([{"type": "subscribe", "topic": "room:r", "id": 2, "recover": recover}])), 204);
    let ack = again.recv_type("ack");
    assert_eq!(ack["recovered"], true, "{ack}");
    let payloads: Vec<&Value> = ack["publications"].as_array().unwrap().iter().map(|p| &p["payload"]).collect();
    assert_eq!(payloads, [&json!(2), &json!(3), &json!(4)]);
    // The old session is gone: its id gets 404.
    assert_eq!(emulate(&addr(&server), &json!({"session": old, "requests": []}).to_string()), 404);
}

#[test]
fn a_slow_stream_consumer_is_closed_alone() {
    let server = server("", "[queue]\nmax_messages = 16\nmax_bytes = 65536\nclose_timeout_ms = 300\n", "1");
    let slow = Session::stream(&addr(&server), json!({}));
    let mut fast = Session::stream(&addr(&server), json!({}));
    assert_eq!(slow.post(None, json!([{"type": "subscribe", "topic": "flood", "id": 1}])), 204);
    assert_eq!(fast.post(None, json!([{"type": "subscribe", "topic": "flood", "id": 1}])), 204);
    assert_eq!(fast.recv()["id"], 1);
    let mut ws = server.client();
    // 16 MB in all, paced by the reader that keeps up: the one that never
    // reads overflows its socket's buffers, then its queue.
    let payload = "x".repeat(4000);
    for _ in 0..500 {
        for _ in 0..8 {
            ws.publish("flood", json!(payload));
        }
        for _ in 0..8 {
            assert_eq!(fast.recv_type("message")["payload"].as_str().map(str::len), Some(4000));
        }
    }
    eventually(Duration::from_secs(5), "the slow session closed", || server.metric("slow_consumer_disconnects_total") == 1);
    // Its close cannot be written to a client that reads nothing: it goes
    // at close_timeout_ms; the one that kept up stays.
    eventually(Duration::from_secs(5), "the slow session gone", || server.metric("stream_sessions") == 1);
    ws.publish("flood", json!("still here"));
    assert_eq!(fast.recv_type("message")["payload"], "still here");
    drop(slow);
}

#[test]
fn bad_posts_get_their_status_and_harm_nothing() {
    let server = server("max_emulation_pending = 2\nmax_emulation_body_bytes = 1024", "", "1");
    let server_addr = addr(&server);
    let mut s = Session::stream(&server_addr, json!({}));
    let unknown = format!("{}:{}", "f".repeat(32), s.welcome["node"].as_str().unwrap());
    assert_eq!(emulate(&server_addr, &json!({"session": unknown, "requests": []}).to_string()), 404, "unknown session");
    assert_eq!(emulate(&server_addr, &json!({"session": "garbage", "requests": []}).to_string()), 404, "not a session id");
    for malformed in ["not json", "{\"session\":1}", "{\"session\":\"s\",\"requests\":[1]}", "[]"] {
        assert_eq!(emulate(&server_addr, malformed), 400, "{malformed}");
    }
    assert_eq!(emulate(&server_addr, &"x".repeat(2000)), 413);
    let chunked = "POST /emulation HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(status(&raw_request(&server_addr, chunked.as_bytes())), 411);
    let three = json!([{"type": "ping", "id": 1}, {"type": "ping", "id": 2}, {"type": "ping", "id": 3}]);
    assert_eq!(s.post(None, three), 413, "more than max_emulation_pending at once can never be taken");
    assert_eq!(s.post(None, json!([{"type": "ping", "id": 4}])), 204);
    assert_eq!(s.recv(), json!({"type": "pong", "id": 4}), "the refused batch ran nothing");
    // Malformed lines for a new stream: refused before any session opens.
    let bad = "POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n[1,2]";
    assert_eq!(status(&raw_request(&server_addr, bad.as_bytes())), 400);
    let options = "OPTIONS /emulation HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n\r\n";
    let preflight = raw_request(&server_addr, options.as_bytes());
    assert!(preflight.starts_with("HTTP/1.1 204") && preflight.contains("Access-Control-Allow-Origin: https://app.example\r\n"), "{preflight}");
    // The session is untouched by all of it.
    assert_eq!(s.post(None, json!([{"type": "ping", "id": 5}])), 204);
    assert_eq!(s.recv(), json!({"type": "pong", "id": 5}));
}

#[test]
fn the_connect_hook_decides_a_stream_by_its_cookie_at_once() {
    let backend = crate::backend::Backend::start(|_, body| {
        let cookie = body["headers"]["cookie"].as_str().unwrap_or("").to_string();
        let user = cookie.strip_prefix("session=").unwrap_or("").to_string();
        crate::backend::Reply::Json(json!({"result": {"user": user, "data": {"transport": body["transport"], "got": body["data"]}}}))
    });
    // connect_wait_ms is long: a stream must not wait for a first request.
    let proxy = format!("[proxy]\nconnect_url = \"{}\"\nconnect_wait_ms = 5000\n", backend.url("/connect"));
    let server = server("", &proxy, "1");
    let started = std::time::Instant::now();
    let body = "{\"type\":\"connect\",\"data\":{\"device\":\"kiosk\"}}\n";
    let request = format!("POST /stream HTTP/1.1\r\nHost: x\r\nCookie: session=jo\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let s = Session::open(&addr(&server), &request, false);
    assert_eq!(s.welcome["user"], "jo");
    assert_eq!(s.welcome["data"], json!({"transport": "http_stream", "got": {"device": "kiosk"}}));
    let sse = Session::open(&addr(&server), "GET /sse HTTP/1.1\r\nHost: x\r\nCookie: session=kai\r\n\r\n", true);
    assert_eq!(sse.welcome["user"], "kai");
    assert_eq!(sse.welcome["data"]["transport"], "sse");
    assert!(started.elapsed() < Duration::from_secs(4), "neither waited connect_wait_ms: {:?}", started.elapsed());
}

#[test]
fn a_session_that_must_authenticate_brings_its_token_or_is_closed() {
    let server = Server::start("[auth]\nhmac_secret = \"fallback-secret\"\n", &["--shards", "1"]);
    let request = "POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
    let answer = raw_request(&addr(&server), request.as_bytes());
    assert!(answer.contains(r#"{"type":"close","code":4001,"reason":"authentication required: send the token in the connect request"}"#), "{answer}");
    assert!(answer.ends_with("0\r\n\r\n"), "the response ends: {answer:?}");
    let s = Session::stream(&addr(&server), json!({"type": "connect", "token": token_for("lia")}));
    assert_eq!(s.welcome["user"], "lia");
}

#[test]
fn a_session_that_cannot_keep_up_with_its_posts_gets_429() {
    // A publish hook that takes a second: the session runs one request at a
    // time, so what is POSTed meanwhile waits, up to max_emulation_pending.
    let backend = crate::backend::Backend::start(|_, _| crate::backend::Reply::After(Duration::from_secs(1), json!({"result": {}})));
    let proxy = format!("[[namespaces]]\npattern = \"slow:*\"\nsubscribe = \"anyone\"\npublish = \"proxy\"\n[proxy]\npublish_url = \"{}\"\n", backend.url("/publish"));
    let server = Server::start(&format!("{proxy}[limits]\nmax_emulation_pending = 2\n"), &["--shards", "1"]);
    let mut s = Session::stream(&addr(&server), json!({}));
    let publish = |id: u64| json!([{"type": "publish", "topic": "slow:1", "payload": id, "id": id}]);
    assert_eq!(s.post(None, publish(1)), 204);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(s.post(None, publish(2)), 204);
    assert_eq!(s.post(None, publish(3)), 204);
    assert_eq!(s.post(None, publish(4)), 429, "two wait already");
    for id in 1..=3 {
        assert_eq!(s.recv_type("ack")["id"], id);
    }
    assert_eq!(s.post(None, publish(5)), 204, "room again once they ran");
}
