//! Identity: connection JWTs (signed here with real keys), the auth request,
//! refresh and expiry, namespace permissions, direct messages across shards
//! and nodes, and the per-user / per-IP limits.

use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

use crate::util::{eventually, http_get, on_every_shard, refused_status, Client, Redis, Server};

const SECRET: &str = "integration-test-secret";
const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");

fn now_s() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64()
}

fn hs256(claims: Value) -> String {
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// A token for `user`, valid for a minute.
fn token_for(user: &str) -> String {
    hs256(json!({"sub": user, "exp": now_s() + 60.0}))
}

fn key_file(name: &str) -> String {
    format!("{KEYS}/{name}")
}

/// A server with HS256 auth and `extra` config.
fn hs_server(extra: &str, shards: &str) -> Server {
    Server::start(&format!("[auth]\nhmac_secret = \"{SECRET}\"\n{extra}"), &["--shards", shards])
}

/// Connects with `token` in the URL and reads the welcome.
fn login(server: &Server, token: &str) -> (Client, Value) {
    let mut c = Client::upgrade(format!("{}?token={token}", server.url("/ws")));
    let w = c.expect_welcome();
    (c, w)
}

/// The first thing the server sends must be its close frame.
fn refused(c: &mut Client) -> (u16, String) {
    match c.recv_message() {
        Message::Close(Some(f)) => (f.code.into(), f.reason.to_string()),
        other => panic!("expected only a close frame, got {other:?}"),
    }
}

fn refused_token(server: &Server, token: &str) -> (u16, String) {
    refused(&mut Client::upgrade(format!("{}?token={token}", server.url("/ws"))))
}

/// A node-wide gauge without labels from `/metrics`.
fn gauge(server: &Server, name: &str) -> u64 {
    let page = http_get(server.admin(), "/metrics");
    let prefix = format!("shardcast_{name} ");
    page.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no {name} in {page}")).parse().unwrap()
}

#[test]
fn a_token_in_the_url_or_header_names_the_user_in_the_welcome() {
    let server = hs_server("", "1");
    let (_alice, w) = login(&server, &token_for("alice"));
    assert_eq!(w["user"], "alice", "{w}");
    let mut req = server.url("/ws").into_client_request().unwrap();
    req.headers_mut().insert("Authorization", format!("Bearer {}", token_for("bob")).parse().unwrap());
    let mut by_header = Client::upgrade(req);
    assert_eq!(by_header.expect_welcome()["user"], "bob");
    // The query parameter wins over the header.
    let mut req = format!("{}?token={}", server.url("/ws"), token_for("carol")).into_client_request().unwrap();
    req.headers_mut().insert("Authorization", format!("Bearer {}", token_for("dave")).parse().unwrap());
    let mut carol = Client::upgrade(req);
    assert_eq!(carol.expect_welcome()["user"], "carol");
    assert_eq!(gauge(&server, "users"), 3);
}

#[test]
fn every_bad_token_closes_4001_with_the_check_that_failed() {
    let server = hs_server("audience = \"app\"\nissuer = \"https://auth.test\"\nleeway_ms = 1000\nmax_token_bytes = 1024", "1");
    let good = || json!({"sub":"alice","exp":now_s() + 60.0,"aud":"app","iss":"https://auth.test"});
    let with = |field: &str, value: Value| {
        let mut claims = good();
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(field);
        } else {
            claims[field] = value;
        }
        hs256(claims)
    };
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let alg_none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&good().to_string()));
    let other_secret = encode(&Header::new(Algorithm::HS256), &good(), &EncodingKey::from_secret(b"not the secret")).unwrap();
    let rs256 = encode(
        &Header::new(Algorithm::RS256),
        &good(),
        &EncodingKey::from_rsa_pem(&std::fs::read(key_file("rsa.key.pem")).unwrap()).unwrap(),
    )
    .unwrap();
    let cases = [
        (with("exp", json!(now_s() - 5.0)), "token expired"),
        (with("nbf", json!(now_s() + 30.0)), "token not yet valid"),
        (other_secret, "bad signature"),
        (with("aud", json!("other")), "wrong audience"),
        (with("aud", Value::Null), "wrong audience"),
        (with("iss", json!("https://evil.test")), "wrong issuer"),
        (with("iss", Value::Null), "wrong issuer"),
        (with("sub", Value::Null), "sub missing or empty"),
        (with("sub", json!("")), "sub missing or empty"),
        (with("exp", Value::Null), "exp missing"),
        ("abc.def".to_string(), "malformed token"),
        ("".to_string(), "malformed token"),
        ("x".repeat(2000), "token too long"),
        (alg_none, "wrong algorithm"),
        (rs256, "wrong algorithm"),
    ];
    for (token, reason) in cases {
        assert_eq!(refused_token(&server, &token), (4001, reason.to_string()), "token {token}");
    }
    // Within the leeway is still valid; the server stayed up throughout.
    let (_, w) = login(&server, &with("exp", json!(now_s() - 0.2)));
    assert_eq!(w["user"], "alice");
    assert!(server.metric("auth_failures_total") >= 15);
}

#[test]
fn every_public_key_type_verifies_its_algorithms_and_refuses_hmac_confusion() {
    let rsa = std::fs::read(key_file("rsa.key.pem")).unwrap();
    let cases: [(&str, Vec<(Algorithm, EncodingKey)>); 5] = [
        ("rsa.pub.pem", vec![(Algorithm::RS256, EncodingKey::from_rsa_pem(&rsa).unwrap()), (Algorithm::PS512, EncodingKey::from_rsa_pem(&rsa).unwrap())]),
        ("rsa.pkcs1.pub.pem", vec![(Algorithm::RS384, EncodingKey::from_rsa_pem(&rsa).unwrap())]),
        ("ec256.pub.pem", vec![(Algorithm::ES256, EncodingKey::from_ec_pem(&std::fs::read(key_file("ec256.key.pem")).unwrap()).unwrap())]),
        ("ec384.pub.pem", vec![(Algorithm::ES384, EncodingKey::from_ec_pem(&std::fs::read(key_file("ec384.key.pem")).unwrap()).unwrap())]),
        ("ed25519.pub.pem", vec![(Algorithm::EdDSA, EncodingKey::from_ed_pem(&std::fs::read(key_file("ed25519.key.pem")).unwrap()).unwrap())]),
    ];
    let claims = json!({"sub":"alice","exp":now_s() + 60.0});
    for (public, signers) in cases {
        let server = Server::start(&format!("[auth]\npublic_key_file = \"{}\"", key_file(public)), &["--shards", "1"]);
        for (alg, key) in &signers {
            let token = encode(&Header::new(*alg), &claims, key).unwrap();
            assert_eq!(login(&server, &token).1["user"], "alice", "{public} {alg:?}");
        }
        // Algorithm confusion: an HMAC token "signed" with the public key itself.
        let pem = std::fs::read(key_file(public)).unwrap();
        let confused = encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(&pem)).unwrap();
        assert_eq!(refused_token(&server, &confused), (4001, "wrong algorithm".into()), "{public}");
        // The other family: an ES256 token to an RSA server and vice versa.
        if !public.starts_with("ec256") {
            let es = EncodingKey::from_ec_pem(&std::fs::read(key_file("ec256.key.pem")).unwrap()).unwrap();
            let token = encode(&Header::new(Algorithm::ES256), &claims, &es).unwrap();
            assert_eq!(refused_token(&server, &token), (4001, "wrong algorithm".into()), "{public}");
        }
    }
    let err = Server::try_start(&format!("[auth]\npublic_key_file = \"{}\"", key_file("rsa.key.pem")), &[]).err().unwrap();
    assert!(err.contains("auth.public_key_file"), "{err}");
}

#[test]
fn without_a_token_only_an_auth_request_is_answered_until_it_succeeds() {
    let server = hs_server("auth_timeout_ms = 500", "1");
    let mut c = Client::upgrade(server.url("/ws"));
    let r = c.request(json!({"type":"ping"}), 1);
    assert_eq!((r["type"].as_str(), r["code"].as_str()), (Some("error"), Some("unauthorized")), "{r}");
    let r = c.request(json!({"type":"subscribe","topic":"news"}), 2);
    assert_eq!(r["code"], "unauthorized");
    let r = c.request(json!({"type":"auth","token":token_for("alice")}), 3);
    assert_eq!(r["type"], "ack");
    assert_eq!(c.expect_welcome()["user"], "alice");
    c.subscribe("news");
    // Authenticated: the auth timeout no longer applies.
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(c.request(json!({"type":"ping"}), 4)["type"], "pong");
    // A second auth is refused; the connection goes on.
    assert_eq!(c.request(json!({"type":"auth","token":token_for("alice")}), 5)["code"], "bad_request");

    // No auth at all: 4001 at the timeout, and nothing before it.
    let started = Instant::now();
    let mut silent = Client::upgrade(server.url("/ws"));
    assert_eq!(refused(&mut silent), (4001, "auth timeout".into()));
    assert!(started.elapsed() >= Duration::from_millis(450), "{:?}", started.elapsed());

    // A bad token in the auth request closes too.
    let mut bad = Client::upgrade(server.url("/ws"));
    bad.send(json!({"type":"auth","token":hs256(json!({"sub":"a","exp":now_s() - 60.0})),"id":1}));
    assert_eq!(refused(&mut bad), (4001, "token expired".into()));
}

#[test]
fn anonymous_connections_when_allowed_and_when_auth_is_off() {
    let server = hs_server("allow_anonymous = true", "1");
    let mut anon = Client::connect(&server.url("/ws"));
    assert_eq!(anon.request(json!({"type":"ping"}), 1)["type"], "pong");
    // An anonymous connection may still authenticate.
    let r = anon.request(json!({"type":"auth","token":token_for("alice")}), 2);
    assert_eq!(r["type"], "ack");
    assert_eq!(anon.expect_welcome()["user"], "alice");

    let open = Server::start("", &["--shards", "1"]);
    let mut c = Client::upgrade(format!("{}?token=whatever", open.url("/ws")));
    assert_eq!(c.expect_welcome()["user"], Value::Null, "auth off: tokens are ignored");
    assert_eq!(c.request(json!({"type":"auth","token":"x"}), 1)["code"], "bad_request");
}

#[test]
fn refresh_moves_the_expiry_and_an_expired_token_closes_4002() {
    let server = hs_server("leeway_ms = 0", "2");
    let short = |user: &str| hs256(json!({"sub": user, "exp": now_s() + 1.5}));
    let (mut kept, _) = login(&server, &short("alice"));
    let (mut lapsed, _) = login(&server, &short("alice"));
    let r = kept.request(json!({"type":"refresh","token":token_for("bob")}), 1);
    assert_eq!(r["code"], "forbidden", "a token for another user changes nothing: {r}");
    let r = kept.request(json!({"type":"refresh","token":"garbage"}), 2);
    assert_eq!(r["code"], "unauthorized", "{r}");
    assert_eq!(kept.request(json!({"type":"refresh","token":token_for("alice")}), 3)["type"], "ack");
    let started = Instant::now();
    assert_eq!(lapsed.expect_close(), (4002, "token expired".into()));
    assert!(started.elapsed() < Duration::from_secs(3), "closed {:?} after expiry", started.elapsed());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(kept.request(json!({"type":"ping"}), 4)["type"], "pong", "the refreshed connection lives on");
    assert_eq!(server.metric("token_expiries_total"), 1);
}

#[test]
fn namespaces_allow_and_forbid_by_mode_and_claims() {
    let config = "allow_anonymous = true
[[namespaces]]
pattern = \"open:*\"
subscribe = \"anyone\"
publish = \"anyone\"
[[namespaces]]
pattern = \"users:*\"
subscribe = \"users\"
publish = \"users\"
[[namespaces]]
pattern = \"claim:*\"
subscribe = \"claim\"
publish = \"claim\"
[[namespaces]]
pattern = \"closed:*\"
subscribe = \"nobody\"
publish = \"nobody\"
[[namespaces]]
pattern = \"feed:*\"
subscribe = \"anyone\"
publish = \"users\"
";
    let server = hs_server(config, "1");
    let mut anon = Client::connect(&server.url("/ws"));
    let claims = json!({"sub":"alice","exp":now_s() + 60.0,"subscribe":["claim:a*"],"publish":["claim:a*"]});
    let (mut user, _) = login(&server, &hs256(claims));
    let mut id = 0;
    let mut outcome = |c: &mut Client, kind: &str, topic: &str| {
        id += 1;
        let r = c.request(json!({"type":kind,"topic":topic,"payload":1,"skip_self":true}), id);
        match r["type"].as_str() {
            Some("ack") => "ok".to_string(),
            _ => r["code"].as_str().unwrap().to_string(),
        }
    };
    for (topic, anon_can, user_can) in [
        ("open:1", "ok", "ok"),
        ("news", "ok", "ok"),
        ("users:1", "forbidden", "ok"),
        ("claim:a1", "forbidden", "ok"),
        ("claim:b1", "forbidden", "forbidden"),
        ("closed:1", "forbidden", "forbidden"),
        ("$user:alice", "invalid_topic", "invalid_topic"),
    ] {
        // Publishes go to a sibling topic in the same namespace, which nobody here subscribes to.
        let sibling = format!("{topic}-p");
        for (kind, topic) in [("subscribe", topic), ("publish", sibling.as_str())] {
            assert_eq!(outcome(&mut anon, kind, topic), anon_can, "anonymous {kind} {topic}");
            assert_eq!(outcome(&mut user, kind, topic), user_can, "alice {kind} {topic}");
        }
    }
    // A forbidden publish delivers nothing; the connection stays usable.
    assert_eq!(outcome(&mut anon, "subscribe", "feed:1"), "ok");
    assert_eq!(outcome(&mut user, "subscribe", "feed:1"), "ok");
    assert_eq!(outcome(&mut anon, "publish", "feed:1"), "forbidden");
    user.expect_silence(Duration::from_millis(200));
    assert_eq!(anon.request(json!({"type":"ping"}), 99)["type"], "pong");
    user.send(json!({"type":"publish","topic":"feed:1","payload":"hi"}));
    assert_eq!(anon.recv(), json!({"type":"message","topic":"feed:1","payload":"hi"}));
    assert!(server.metric("forbidden_total") >= 10);
}

/// Connects `user` until it has a connection on each of `shards` shards.
fn user_on_every_shard(server: &Server, user: &str, shards: usize) -> Vec<Client> {
    on_every_shard(shards, || login(server, &token_for(user)).0)
}

#[test]
fn direct_messages_reach_every_connection_of_the_user_across_shards() {
    let server = hs_server("allow_anonymous = true", "2");
    let mut alice = user_on_every_shard(&server, "alice", 2);
    let (mut bob, _) = login(&server, &token_for("bob"));
    let r = bob.request(json!({"type":"send","user":"alice","payload":{"text":"hi"}}), 1);
    assert_eq!(r["type"], "ack", "{r}");
    for a in &mut alice {
        assert_eq!(a.recv(), json!({"type":"direct","from":"bob","payload":{"text":"hi"}}));
    }
    bob.expect_silence(Duration::from_millis(100));
    // Nobody connected as "nobody-here": not an error.
    assert_eq!(bob.request(json!({"type":"send","user":"nobody-here","payload":1}), 2)["type"], "ack");
    let r = bob.request(json!({"type":"send","user":"","payload":1}), 3);
    assert_eq!(r["code"], "bad_request");
    // Anonymous senders are refused under direct_messages = "users".
    let mut anon = Client::connect(&server.url("/ws"));
    assert_eq!(anon.request(json!({"type":"send","user":"alice","payload":1}), 1)["code"], "forbidden");
    // A client cannot listen in on a user's topic.
    assert_eq!(anon.request(json!({"type":"subscribe","topic":"$user:alice"}), 2)["code"], "invalid_topic");
    for a in &mut alice {
        a.expect_silence(Duration::from_millis(100));
    }
    assert_eq!(gauge(&server, "users"), 2);
}

#[test]
fn direct_messages_cross_nodes_and_come_from_backends_through_redis() {
    let redis = Redis::start();
    let node = || {
        hs_server(
            &format!("[redis]\nurl = \"{}\"\nreconnect_min_ms = 20\nreconnect_max_ms = 200", redis.url()),
            "2",
        )
    };
    let (a, b) = (node(), node());
    let mut alice = user_on_every_shard(&b, "alice", 2);
    let (mut bob, _) = login(&a, &token_for("bob"));
    assert_eq!(bob.request(json!({"type":"send","user":"alice","payload":[1,2]}), 1)["type"], "ack");
    for c in &mut alice {
        assert_eq!(c.recv(), json!({"type":"direct","from":"bob","payload":[1,2]}));
    }
    // From a backend: any Redis client, on the user's documented channel.
    redis.publish("shardcast:$user:alice", br#"{"from":"backend"}"#);
    for c in &mut alice {
        assert_eq!(c.recv(), json!({"type":"direct","from":null,"payload":{"from":"backend"}}));
    }
    // Once alice is gone from node B, its channel is unsubscribed there.
    drop(alice);
    eventually(Duration::from_secs(10), "alice's channel unsubscribed", || redis.numsub("shardcast:$user:alice") == 0);
}

#[test]
fn per_user_and_per_ip_limits() {
    let server = hs_server("[limits]\nmax_connections_per_user = 2", "2");
    let (first, _) = login(&server, &token_for("alice"));
    let (_second, _) = login(&server, &token_for("alice"));
    assert_eq!(refused_token(&server, &token_for("alice")), (4008, "too many connections for this user".into()));
    let (_bob, _) = login(&server, &token_for("bob"));
    drop(first);
    eventually(Duration::from_secs(5), "alice's slot released", || {
        let mut c = Client::upgrade(format!("{}?token={}", server.url("/ws"), token_for("alice")));
        matches!(c.recv_message(), Message::Text(t) if t.contains("welcome"))
    });
    assert!(server.metric("user_limit_rejections_total") >= 1);

    let limited = Server::start("[limits]\nmax_connections_per_ip = 2", &["--shards", "2"]);
    let one = Client::connect(&limited.url("/ws"));
    let _two = Client::connect(&limited.url("/echo"));
    assert_eq!(refused_status(&limited.url("/ws"), None), 429);
    drop(one);
    eventually(Duration::from_secs(5), "the address's slot released", || refused_status(&limited.url("/ws"), None) == 101);
    assert!(limited.metric("ip_limit_rejections_total") >= 1);
}
