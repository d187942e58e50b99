//! Backend hooks (`[proxy]`): the real binary calling a real HTTP backend
//! (axum, started by each test on its own port), driven by real WebSocket
//! clients. Every hook's result, error, disconnect, timeout and bad body.

use std::time::{Duration, SystemTime};

use flatbuffers::FlatBufferBuilder;
use serde_json::{json, Value};
use shardcast::protocol::flatbuf::schema::*;
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

use crate::backend::{Backend, Reply};
use crate::util::{eventually, Client, Server};

/// A server whose `[proxy]` points at `backend`, with `proxy` keys added to
/// that table (`timeout_ms` is 500 unless they set it) and `extra` config.
fn server_with(backend: &Backend, proxy: &str, extra: &str) -> Server {
    let timeout = if proxy.contains("timeout_ms") { "" } else { "timeout_ms = 500\n" };
    let config = format!(
        "{extra}\n[proxy]\nconnect_url = \"{}\"\nrefresh_url = \"{}\"\nsubscribe_url = \"{}\"\npublish_url = \"{}\"\nrpc_url = \"{}\"\n{timeout}{proxy}\n[proxy.static_headers]\nx-api-key = \"k1\"\n",
        backend.url("/connect"),
        backend.url("/refresh"),
        backend.url("/subscribe"),
        backend.url("/publish"),
        backend.url("/rpc"),
    );
    Server::start(&config, &["--shards", "2"])
}

fn server(backend: &Backend, extra: &str) -> Server {
    server_with(backend, "", extra)
}

const NAMESPACES: &str = "[[namespaces]]\npattern = \"p:*\"\nsubscribe = \"proxy\"\npublish = \"proxy\"\n";

/// A backend that connects `cookie: session=<user>` as that user (else anonymous).
fn by_cookie(path: &str, body: &Value) -> Reply {
    match path {
        "/connect" => {
            let cookie = body["headers"]["cookie"].as_str().unwrap_or("");
            let user = cookie.split("; ").find_map(|c| c.strip_prefix("session=")).unwrap_or("");
            Reply::Json(json!({"result": {"user": user, "data": {"hello": user}, "channels": ["news"]}}))
        }
        _ => Reply::Json(json!({"result": {}})),
    }
}

fn with_cookie(server: &Server, cookie: &str) -> Client {
    let mut request = server.url("/ws").into_client_request().unwrap();
    request.headers_mut().insert("cookie", cookie.parse().unwrap());
    request.headers_mut().insert("user-agent", "hooks-test".parse().unwrap());
    Client::upgrade(request)
}

fn closed(c: &mut Client) -> (u16, String) {
    loop {
        match c.recv_message() {
            Message::Close(Some(f)) => return (f.code.into(), f.reason.to_string()),
            Message::Close(None) => return (1005, String::new()),
            _ => continue,
        }
    }
}

#[test]
fn connect_by_cookie_without_a_token_names_the_user_and_subscribes_its_channels() {
    let backend = Backend::start(by_cookie);
    let server = server(&backend, "");
    let mut alice = with_cookie(&server, "theme=dark; session=alice");
    let welcome = alice.expect_welcome();
    assert_eq!(welcome["user"], "alice");
    assert_eq!(welcome["data"], json!({"hello": "alice"}));
    let call = &backend.calls("/connect")[0];
    assert_eq!(call.body["headers"]["cookie"], "theme=dark; session=alice");
    assert_eq!(call.body["headers"]["user-agent"], "hooks-test");
    assert_eq!(call.body["transport"], "websocket");
    assert_eq!(call.body["encoding"], "json");
    assert_eq!(call.body["client"], welcome["client"]);
    assert!(call.body["data"].is_null() && call.body.get("user").is_none(), "{:?}", call.body);
    assert_eq!(call.headers["x-api-key"], "k1", "static headers go on every call");
    // `news` came from the result's channels: no subscribe request needed.
    let mut publisher = server.client();
    publisher.publish("news", json!("hi"));
    assert_eq!(alice.recv()["payload"], "hi");
    // Anonymous: an empty user.
    let mut anon = with_cookie(&server, "theme=dark");
    assert!(anon.expect_welcome()["user"].is_null());
}

#[test]
fn a_connect_request_sent_first_gives_its_data_to_the_backend() {
    let backend = Backend::start(by_cookie);
    let server = server_with(&backend, "connect_wait_ms = 5000", "");
    let mut c = with_cookie(&server, "session=bob");
    c.send(json!({"type": "connect", "data": {"device": "phone"}}));
    let welcome = c.expect_welcome();
    assert_eq!(welcome["user"], "bob");
    assert_eq!(backend.calls("/connect")[0].body["data"], json!({"device": "phone"}));
    // Any other first request calls connect without data, then is answered.
    let mut d = with_cookie(&server, "session=carol");
    d.send(json!({"type": "ping", "id": 7}));
    assert_eq!(d.expect_welcome()["user"], "carol");
    assert_eq!(d.recv(), json!({"type": "pong", "id": 7}));
    // Later, connect is a bad request.
    let reply = d.request(json!({"type": "connect", "data": 1}), 8);
    assert_eq!(reply["code"], "bad_request");
}

#[test]
fn connect_error_disconnect_timeout_and_bad_bodies_close_as_documented() {
    let backend = Backend::start(|_, body| {
        let cookie = body["headers"]["cookie"].as_str().unwrap_or("").to_string();
        match cookie.as_str() {
            "error" => Reply::Json(json!({"error": {"code": 1000, "message": "who are you"}})),
            "disconnect" => Reply::Json(json!({"disconnect": {"code": 4501, "reason": "banned"}})),
            "slow" => Reply::After(Duration::from_secs(2), json!({"result": {"user": "late"}})),
            "500" => Reply::Status(500),
            "garbage" => Reply::Raw("{\"result\":{},\"error\":{\"code\":1}}"),
            _ => Reply::Raw("not json"),
        }
    });
    let server = server_with(&backend, "connect_wait_ms = 0", "");
    assert_eq!(closed(&mut with_cookie(&server, "error")), (4001, "who are you".into()));
    assert_eq!(closed(&mut with_cookie(&server, "disconnect")), (4501, "banned".into()));
    for failing in ["slow", "500", "garbage", "other"] {
        assert_eq!(closed(&mut with_cookie(&server, failing)), (1011, "backend unavailable".into()), "{failing}");
    }
    let m = |result: &str| server.metric_labelled("proxy_requests_total", &[("hook", "connect"), ("result", result)]);
    assert_eq!((m("error"), m("disconnect"), m("timeout"), m("bad_status"), m("bad_body")), (1, 1, 1, 1, 2));
    // With connect_on_failure = "anonymous" a failure admits it without a user.
    let lenient = server_with(&backend, "connect_wait_ms = 0\nconnect_on_failure = \"anonymous\"", "");
    assert!(with_cookie(&lenient, "500").expect_welcome()["user"].is_null());
}

#[test]
fn subscribe_proxy_adds_data_to_the_ack_or_refuses_with_the_backends_code() {
    let backend = Backend::start(|path, body| match (path, body["topic"].as_str()) {
        ("/subscribe", Some("p:open")) => Reply::Json(json!({"result": {"data": {"welcome": body["data"]}}})),
        ("/subscribe", Some("p:slow")) => Reply::After(Duration::from_secs(2), json!({"result": {}})),
        ("/subscribe", _) => Reply::Json(json!({"error": {"code": 403, "message": "members only"}})),
        _ => by_cookie(path, body),
    });
    let server = server(&backend, NAMESPACES);
    let mut c = with_cookie(&server, "session=dave");
    c.expect_welcome();
    let ack = c.request(json!({"type": "subscribe", "topic": "p:open", "data": {"k": 1}}), 1);
    assert_eq!(ack, json!({"type": "ack", "id": 1, "data": {"welcome": {"k": 1}}}));
    let call = &backend.calls("/subscribe")[0];
    assert_eq!((call.body["user"].as_str(), call.body["topic"].as_str()), (Some("dave"), Some("p:open")));
    let refused = c.request(json!({"type": "subscribe", "topic": "p:closed"}), 2);
    assert_eq!(refused, json!({"type": "error", "id": 2, "code": "forbidden", "message": "members only", "backend_code": 403}));
    let timed_out = c.request(json!({"type": "subscribe", "topic": "p:slow"}), 3);
    assert_eq!((timed_out["code"].as_str(), timed_out["message"].as_str()), (Some("not_available"), Some("backend unavailable")));
    // Only p:open is subscribed: a publish through the API reaches it alone.
    let mut api = server.client();
    api.publish("news", json!(0));
    assert_eq!(c.recv()["topic"], "news");
    crate::util::http_post(server.admin(), "/api/publish", &json!({"topic": "p:closed", "payload": 1}));
    crate::util::http_post(server.admin(), "/api/publish", &json!({"topic": "p:open", "payload": 2}));
    let m = c.recv();
    assert_eq!((m["topic"].as_str(), m["payload"].as_i64()), (Some("p:open"), Some(2)));
    // A history topic's ack carries its position, and the data too.
    let history = "[[namespaces]]\npattern = \"p:*\"\nsubscribe = \"proxy\"\npublish = \"anyone\"\nhistory_size = 10\nhistory_ttl_ms = 60000\n";
    let with_history = self::server(&backend, history);
    let mut c = with_cookie(&with_history, "session=erin");
    c.expect_welcome();
    let ack = c.request(json!({"type": "subscribe", "topic": "p:open", "data": 7}), 1);
    assert_eq!((&ack["data"], &ack["offset"]), (&json!({"welcome": 7}), &json!(0)), "{ack}");
}

#[test]
fn publish_proxy_rewrites_and_skips_in_the_publishers_order_whatever_order_the_backend_answers_in() {
    // The backend answers odd payloads late and even ones at once: without
    // the per-connection order, evens would overtake odds.
    let backend = Backend::start(|path, body| match path {
        "/publish" => match body["payload"].as_i64() {
            Some(n) if n < 0 => Reply::Json(json!({"result": {"skip": true}})),
            Some(n) if n % 2 == 1 => Reply::After(Duration::from_millis(30), json!({"result": {"payload": {"n": n}}})),
            Some(n) => Reply::Json(json!({"result": {"payload": {"n": n}}})),
            None => Reply::Json(json!({"error": {"code": 400, "message": "numbers only"}})),
        },
        _ => by_cookie(path, body),
    });
    let server = server(&backend, &format!("{NAMESPACES}[[namespaces]]\npattern = \"*\"\nsubscribe = \"anyone\"\npublish = \"anyone\"\n"));
    let mut sub = with_cookie(&server, "session=sub");
    sub.expect_welcome();
    // The subscriber subscribes through the proxy too (it answers {} for subscribe).
    assert_eq!(sub.request(json!({"type": "subscribe", "topic": "p:room"}), 1)["type"], "ack");
    let mut publisher = with_cookie(&server, "session=pub");
    publisher.expect_welcome();
    for n in 1..=20 {
        publisher.send(json!({"type": "publish", "topic": "p:room", "payload": n, "id": n}));
        if n == 10 {
            publisher.send(json!({"type": "publish", "topic": "p:room", "payload": -1, "id": 100}));
        }
    }
    let mut acks = Vec::new();
    while acks.len() < 21 {
        acks.push(publisher.recv()["id"].as_u64().unwrap());
    }
    let want: Vec<u64> = (1..=10).chain([100]).chain(11..=20).collect();
    assert_eq!(acks, want, "acks in the order sent");
    let got: Vec<i64> = (0..20).map(|_| sub.recv()["payload"]["n"].as_i64().unwrap()).collect();
    assert_eq!(got, (1..=20).collect::<Vec<_>>(), "rewritten, skipped one left out, in order");
    sub.expect_silence(Duration::from_millis(200));
    let refused = publisher.request(json!({"type": "publish", "topic": "p:room", "payload": "x"}), 200);
    assert_eq!((refused["code"].as_str(), refused["backend_code"].as_u64()), (Some("forbidden"), Some(400)));
}

#[test]
fn rpc_answers_in_both_encodings_and_relays_the_backends_error() {
    let backend = Backend::start(|path, body| match (path, body["method"].as_str()) {
        ("/rpc", Some("echo")) => Reply::Json(json!({"result": {"data": {"echo": body["data"]}}})),
        ("/rpc", Some("bye")) => Reply::Json(json!({"disconnect": {"code": 4321, "reason": "rpc says bye"}})),
        ("/rpc", _) => Reply::Json(json!({"error": {"code": 1404, "message": "no such method"}})),
        _ => by_cookie(path, body),
    });
    let server = server(&backend, "");
    let mut c = with_cookie(&server, "session=erin");
    c.expect_welcome();
    let reply = c.request(json!({"type": "rpc", "method": "echo", "data": [1, 2]}), 5);
    assert_eq!(reply, json!({"type": "rpc_result", "id": 5, "data": {"echo": [1, 2]}}));
    assert_eq!(backend.calls("/rpc")[0].body["user"], "erin");
    let err = c.request(json!({"type": "rpc", "method": "nope"}), 6);
    assert_eq!(err, json!({"type": "error", "id": 6, "code": "backend_error", "message": "no such method", "backend_code": 1404}));
    c.send(json!({"type": "rpc", "method": "echo"}));
    assert_eq!(c.recv()["code"], "bad_request", "an rpc without an id");

    // FlatBuffers: Rpc in, RpcResult out, the data bytes as JSON text.
    let mut request = server.url("/ws").into_client_request().unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", "shardcast.flatbuffers.v1".parse().unwrap());
    request.headers_mut().insert("cookie", "session=fb".parse().unwrap());
    let mut fb = Client::upgrade(request);
    let welcome = fb.recv_message().into_data();
    let frame = flatbuffers::root::<ServerFrame>(&welcome).unwrap();
    assert_eq!(frame.event_as_welcome().unwrap().user(), Some("fb"));
    let mut b = FlatBufferBuilder::new();
    let method = b.create_string("echo");
    let data = b.create_vector(br#""bin""#);
    let rpc = Rpc::create(&mut b, &RpcArgs { method: Some(method), data: Some(data) });
    let root = ClientFrame::create(&mut b, &ClientFrameArgs { id: Some(9), request_type: Request::Rpc, request: Some(rpc.as_union_value()) });
    b.finish(root, None);
    fb.send_raw(Message::binary(b.finished_data().to_vec()));
    let answer = fb.recv_message().into_data();
    let frame = flatbuffers::root::<ServerFrame>(&answer).unwrap();
    assert_eq!((frame.id(), frame.event_type()), (Some(9), Event::RpcResult));
    let data: Value = serde_json::from_slice(frame.event_as_rpc_result().unwrap().data().unwrap().bytes()).unwrap();
    assert_eq!(data, json!({"echo": "bin"}));
    assert_eq!(backend.calls("/rpc").last().unwrap().body["encoding"], "flatbuffers");

    c.send(json!({"type": "rpc", "method": "bye", "id": 7}));
    assert_eq!(closed(&mut c), (4321, "rpc says bye".into()));
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn refresh_extends_a_session_before_it_expires_or_ends_it_with_4002() {
    let backend = Backend::start(|path, body| {
        let user = body["user"].as_str().unwrap_or("");
        match path {
            "/connect" => by_cookie(path, body).with_expiry(unix_now() + 2),
            "/refresh" if user == "keeper" => Reply::Json(json!({"result": {"expire_at": unix_now() + 2}})),
            "/refresh" => Reply::Json(json!({"result": {"expired": true}})),
            _ => Reply::Json(json!({"result": {}})),
        }
    });
    let server = server(&backend, "");
    let mut keeper = with_cookie(&server, "session=keeper");
    keeper.expect_welcome();
    let mut leaver = with_cookie(&server, "session=leaver");
    leaver.expect_welcome();
    assert_eq!(closed(&mut leaver), (4002, "token expired".into()));
    // Past three of its 2 s windows, the keeper is still served.
    std::thread::sleep(Duration::from_millis(4500));
    assert_eq!(keeper.request(json!({"type": "ping"}), 1)["type"], "pong");
    let refreshes = backend.calls("/refresh").iter().filter(|c| c.body["user"] == "keeper").count();
    assert!(refreshes >= 2, "refreshed {refreshes} times");
}

impl Reply {
    /// A connect result with `expire_at` added.
    fn with_expiry(self, at: u64) -> Reply {
        match self {
            Reply::Json(mut v) => {
                v["result"]["expire_at"] = json!(at);
                Reply::Json(v)
            }
            other => other,
        }
    }
}

#[test]
fn calls_beyond_max_inflight_fail_at_once_and_are_counted() {
    let backend = Backend::start(|path, body| match path {
        "/rpc" => Reply::After(Duration::from_millis(800), json!({"result": {}})),
        _ => by_cookie(path, body),
    });
    let server = server_with(&backend, "max_inflight = 1\ntimeout_ms = 3000", "");
    let mut a = with_cookie(&server, "session=a");
    a.expect_welcome();
    let mut b = with_cookie(&server, "session=b");
    b.expect_welcome();
    a.send(json!({"type": "rpc", "method": "slow", "id": 1}));
    eventually(Duration::from_secs(5), "a's call in flight", || backend.calls("/rpc").len() == 1);
    let refused = b.request(json!({"type": "rpc", "method": "slow"}), 2);
    assert_eq!((refused["code"].as_str(), refused["message"].as_str()), (Some("not_available"), Some("backend unavailable")));
    assert_eq!(a.recv()["type"], "rpc_result");
    assert_eq!(server.metric_labelled("proxy_requests_total", &[("hook", "rpc"), ("result", "overloaded")]), 1);
    assert_eq!(server.metric_labelled("proxy_requests_total", &[("hook", "rpc"), ("result", "ok")]), 1);
    assert!(server.metric_labelled("proxy_duration_seconds_count", &[("hook", "rpc")]) >= 1);
}

#[test]
fn a_proxy_mode_without_its_url_is_a_config_error_naming_the_key() {
    let err = Server::try_start(NAMESPACES, &[]).err().expect("refused");
    assert!(err.contains("namespaces[0].subscribe") && err.contains("proxy.subscribe_url"), "{err}");
}

/// A backend whose connect result carries `info` for user `with-info`.
fn with_info(path: &str, body: &Value) -> Reply {
    match path {
        "/connect" => {
            let cookie = body["headers"]["cookie"].as_str().unwrap_or("");
            let user = cookie.strip_prefix("session=").unwrap_or("");
            Reply::Json(json!({"result": {"user": user, "info": {"name": format!("{user} the user"), "role": "admin"}}}))
        }
        _ => Reply::Json(json!({"result": {}})),
    }
}

const PRESENCE: &str = "[[namespaces]]\npattern = \"room:*\"\nsubscribe = \"anyone\"\npublish = \"anyone\"\npresence = true\n";

#[test]
fn connect_info_is_shown_in_presence_on_a_node_and_through_redis() {
    let backend = Backend::start(with_info);
    let redis = crate::util::Redis::start();
    let with_redis = format!("{PRESENCE}[redis]\nurl = \"{}\"\n", redis.url());
    for extra in [PRESENCE.to_string(), with_redis] {
        let server = server_with(&backend, "connect_wait_ms = 0", &extra);
        let mut alice = with_cookie(&server, "session=alice");
        assert_eq!(alice.expect_welcome()["user"], "alice");
        alice.subscribe("room:1");
        let mut anon = with_cookie(&server, "");
        anon.expect_welcome();
        anon.subscribe("room:1");
        let reply = anon.request(json!({"type": "presence", "topic": "room:1"}), 5);
        let me = &reply["clients"][&alice.id];
        assert_eq!(me["info"], json!({"name": "alice the user", "role": "admin"}), "{reply}");
        assert_eq!(me["user"], "alice");
        assert!(reply["clients"][&anon.id]["user"].is_null(), "{reply}");
    }
}

#[test]
fn an_answer_over_max_response_bytes_or_an_info_over_max_info_bytes_is_a_failure() {
    let backend = Backend::start(|path, body| match (path, body["method"].as_str()) {
        ("/rpc", Some("big")) => Reply::Json(json!({"result": {"data": "x".repeat(600)}})),
        ("/connect", _) => Reply::Json(json!({"result": {"user": "u", "info": "i".repeat(100)}})),
        _ => Reply::Json(json!({"result": {"data": 1}})),
    });
    let server = server_with(&backend, "connect_wait_ms = 0\nmax_response_bytes = 512\nmax_info_bytes = 64\nconnect_on_failure = \"anonymous\"", "");
    let mut c = with_cookie(&server, "");
    assert!(c.expect_welcome()["user"].is_null(), "an info of 102 bytes is over 64: a failure, so anonymous");
    assert_eq!(c.request(json!({"type": "rpc", "method": "small"}), 1)["data"], 1);
    let reply = c.request(json!({"type": "rpc", "method": "big"}), 2);
    assert_eq!((reply["type"].as_str(), reply["code"].as_str()), (Some("error"), Some("not_available")), "{reply}");
    let m = |hook: &str| server.metric_labelled("proxy_requests_total", &[("hook", hook), ("result", "bad_body")]);
    assert_eq!((m("connect"), m("rpc")), (1, 1));
}

#[test]
fn a_connection_waiting_for_connect_is_bounded_by_handshake_timeout() {
    let backend = Backend::start(|_, _| Reply::After(Duration::from_secs(3), json!({"result": {"user": "late"}})));
    let server = server_with(&backend, "connect_wait_ms = 0\ntimeout_ms = 10000", "[server]\nhandshake_timeout_ms = 300\n");
    let started = std::time::Instant::now();
    let mut c = with_cookie(&server, "");
    assert_eq!(closed(&mut c), (1011, "backend unavailable".into()));
    assert!(started.elapsed() < Duration::from_secs(2), "closed at handshake_timeout_ms, not timeout_ms: {:?}", started.elapsed());
}

#[test]
fn an_https_hook_is_verified_against_ca_file() {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, made.cert.pem()).unwrap();
    let backend = Backend::start_tls(&made.cert.pem(), &made.signing_key.serialize_pem(), by_cookie);
    assert!(backend.url("/connect").starts_with("https://"));
    let trusted = server_with(&backend, &format!("connect_wait_ms = 0\nca_file = \"{}\"", ca.display()), "");
    assert_eq!(with_cookie(&trusted, "session=tls").expect_welcome()["user"], "tls");
    // Without the private CA the certificate is not trusted: a failure.
    let untrusted = server_with(&backend, "connect_wait_ms = 0", "");
    assert_eq!(closed(&mut with_cookie(&untrusted, "session=tls")), (1011, "backend unavailable".into()));
    assert_eq!(untrusted.metric_labelled("proxy_requests_total", &[("hook", "connect"), ("result", "unreachable")]), 1);
}
