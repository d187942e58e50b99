//! TLS: certificates generated here (rcgen), a rustls client, SIGHUP
//! rotation, bad input on the TLS port, messages of every size both ways,
//! session resumption across shards, and a fallback (SSE) session with its
//! POSTs over TLS.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tungstenite::{Message, WebSocket};

use crate::util::{eventually, Server};

/// A self-signed certificate for 127.0.0.1 and its key, as PEM files.
struct Cert {
    der: CertificateDer<'static>,
    dir: tempfile::TempDir,
}

impl Cert {
    fn new() -> Cert {
        let dir = tempfile::tempdir().unwrap();
        let c = Cert { der: CertificateDer::from(vec![]), dir };
        c.rotate()
    }

    /// A fresh certificate and key written over the same files.
    fn rotate(mut self) -> Cert {
        let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        std::fs::write(self.cert_path(), made.cert.pem()).unwrap();
        std::fs::write(self.key_path(), made.signing_key.serialize_pem()).unwrap();
        self.der = made.cert.der().clone();
        self
    }

    fn cert_path(&self) -> String {
        self.dir.path().join("cert.pem").display().to_string()
    }

    fn key_path(&self) -> String {
        self.dir.path().join("key.pem").display().to_string()
    }

    fn config(&self, extra: &str) -> String {
        format!("[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{extra}", self.cert_path(), self.key_path())
    }
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A client config trusting `trusted` only; `versions` limits it. It keeps
/// the sessions it is given (rustls' default store), so connections made
/// with one config resume when the server lets them.
fn client_config(trusted: &CertificateDer<'static>, versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A TLS connection trusting `trusted` only; `versions` limits the client.
fn tls_connect(addr: &str, trusted: &CertificateDer<'static>, versions: &[&'static rustls::SupportedProtocolVersion]) -> std::io::Result<Tls> {
    tls_connect_with(addr, client_config(trusted, versions))
}

fn tls_connect_with(addr: &str, config: Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    let conn = rustls::ClientConnection::new(config, ServerName::try_from("127.0.0.1").unwrap().to_owned()).unwrap();
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

const BOTH: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A WebSocket client over TLS; returns it and the certificate the server showed.
fn wss(server: &Server, trusted: &CertificateDer<'static>) -> (WebSocket<Tls>, CertificateDer<'static>) {
    let tls = tls_connect(&server.addr, trusted, BOTH).unwrap();
    let shown = tls.conn.peer_certificates().unwrap()[0].clone();
    let (mut ws, _) = tungstenite::client(format!("wss://{}/ws", server.addr), tls).unwrap();
    let welcome: serde_json::Value = match ws.read().unwrap() {
        Message::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(welcome["type"], "welcome");
    (ws, shown)
}

fn request(ws: &mut WebSocket<Tls>, v: serde_json::Value) -> serde_json::Value {
    ws.send(Message::text(v.to_string())).unwrap();
    loop {
        if let Message::Text(t) = ws.read().unwrap() {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

#[test]
fn a_tls_client_subscribes_and_receives_and_metrics_are_served_over_tls() {
    let cert = Cert::new();
    let server = Server::start(&cert.config("[server]\nmetrics_path = \"/metrics\"\n"), &["--shards", "2"]);
    let (mut sub, _) = wss(&server, &cert.der);
    let (mut publisher, _) = wss(&server, &cert.der);
    assert_eq!(request(&mut sub, json!({"type":"subscribe","topic":"secure","id":1}))["type"], "ack");
    publisher.send(Message::text(json!({"type":"publish","topic":"secure","payload":{"big":"x".repeat(50_000)}}).to_string())).unwrap();
    let m = loop {
        if let Message::Text(t) = sub.read().unwrap() {
            break serde_json::from_str::<serde_json::Value>(&t).unwrap();
        }
    };
    assert_eq!(m["payload"]["big"].as_str().unwrap().len(), 50_000);
    let mut https = tls_connect(&server.addr, &cert.der, BOTH).unwrap();
    https.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut page = String::new();
    let _ = https.read_to_string(&mut page);
    assert!(page.starts_with("HTTP/1.1 200") && page.contains("shardcast_connections"), "{}", &page[..page.len().min(200)]);
}

#[test]
fn sighup_rotates_the_certificate_for_new_connections_and_keeps_old_ones() {
    let first = Cert::new();
    let server = Server::start(&first.config(""), &["--shards", "1"]);
    let (mut old, shown) = wss(&server, &first.der);
    assert_eq!(shown, first.der);
    let old_der = first.der.clone();
    let second = first.rotate();
    server.signal(libc::SIGHUP);
    eventually(Duration::from_secs(5), "the new certificate to be served", || {
        tls_connect(&server.addr, &second.der, BOTH).map(|t| t.conn.peer_certificates().unwrap()[0] == second.der).unwrap_or(false)
    });
    let (_new, shown) = wss(&server, &second.der);
    assert_eq!(shown, second.der);
    assert_ne!(shown, old_der);
    assert_eq!(request(&mut old, json!({"type":"ping","id":7}))["type"], "pong", "the old connection lives on");
    // A broken file on the next SIGHUP: logged, and the current certificate stays.
    std::fs::write(second.key_path(), "not a key").unwrap();
    server.signal(libc::SIGHUP);
    eventually(Duration::from_secs(5), "the reload failure to be logged", || server.stderr().contains("still serving the previous certificate"));
    assert_eq!(wss(&server, &second.der).1, second.der);
}

#[test]
fn plain_http_garbage_and_old_tls_on_the_tls_port_are_refused_alone() {
    let cert = Cert::new();
    let server = Server::start(&cert.config("min_version = \"1.3\""), &["--shards", "1"]);
    let (mut good, _) = wss(&server, &cert.der);
    for junk in [&b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"[..], b"\x16\x03\x01\x00\x05hello", b"\x00\x00\x00\x00"] {
        let mut s = TcpStream::connect(&server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(junk).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(!String::from_utf8_lossy(&out).contains("HTTP/1.1 101"), "{junk:?}");
    }
    // min_version = "1.3": a TLS 1.2 client fails its handshake.
    assert!(tls_connect(&server.addr, &cert.der, &[&rustls::version::TLS12]).is_err());
    assert_eq!(request(&mut good, json!({"type":"ping","id":1}))["type"], "pong", "unaffected");
}

#[test]
fn bad_tls_config_exits_naming_the_key() {
    let cert = Cert::new();
    let only_cert = format!("[tls]\ncert_file = \"{}\"", cert.cert_path());
    assert!(Server::try_start(&only_cert, &[]).err().unwrap().contains("tls.key_file"));
    let other = Cert::new();
    let mismatched = format!("[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"", cert.cert_path(), other.key_path());
    let err = Server::try_start(&mismatched, &[]).err().unwrap();
    assert!(err.contains("tls.key_file") && err.contains("does not match"), "{err}");
    let missing = "[tls]\ncert_file = \"/nonexistent.pem\"\nkey_file = \"/nonexistent.key\"";
    assert!(Server::try_start(missing, &[]).err().unwrap().contains("tls.cert_file"));
}

#[test]
fn a_stalled_tls_handshake_is_closed_at_handshake_timeout_ms() {
    let cert = Cert::new();
    let server = Server::start(&cert.config("[server]\nhandshake_timeout_ms = 300"), &["--shards", "1"]);
    let started = std::time::Instant::now();
    // Half a ClientHello record header, then nothing.
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"\x16\x03").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(5), "closed after {waited:?}");
    // A TLS client that completes its handshake in time is served.
    let (mut ws, _) = wss(&server, &cert.der);
    assert_eq!(request(&mut ws, json!({"type":"ping","id":1}))["type"], "pong");
}

#[test]
fn tls_1_2_and_1_3_echo_every_size_and_close_cleanly() {
    // Messages from 1 byte to several TLS records, pipelined, both ways
    // through the server's record layer; then a close handshake.
    let cert = Cert::new();
    let server = Server::start(&cert.config(""), &["--shards", "1"]);
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let tls = tls_connect(&server.addr, &cert.der, &[version]).unwrap();
        let (mut ws, _) = tungstenite::client(format!("wss://{}/echo", server.addr), tls).unwrap();
        let sizes = [1, 125, 126, 16_000, 16_384, 16_385, 40_000, 65_000, 7, 0];
        for (i, &n) in sizes.iter().enumerate() {
            ws.send(Message::binary((0..n).map(|b| (b * 7 + i) as u8).collect::<Vec<u8>>())).unwrap();
        }
        for (i, &n) in sizes.iter().enumerate() {
            match ws.read().unwrap() {
                Message::Binary(got) => assert!(got.len() == n && got.iter().enumerate().all(|(b, &x)| x == (b * 7 + i) as u8), "{version:?}: message {i} ({n} bytes)"),
                other => panic!("{other:?}"),
            }
        }
        ws.close(None).unwrap();
        loop {
            match ws.read() {
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed) => break,
                Err(e) => panic!("{version:?}: {e}"),
            }
        }
    }
}

#[test]
fn returning_clients_resume_on_any_shard_unless_session_tickets_is_off() {
    let cert = Cert::new();
    for (tickets, resumed) in [("true", true), ("false", false)] {
        let server = Server::start(&cert.config(&format!("session_tickets = {tickets}")), &["--shards", "2"]);
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let config = client_config(&cert.der, &[version]);
            let mut kinds = Vec::new();
            let mut shards = std::collections::BTreeSet::new();
            // 16 connections: SO_REUSEPORT puts them all on one shard once in 30,000 runs.
            for _ in 0..16 {
                let tls = tls_connect_with(&server.addr, config.clone()).unwrap();
                let (mut ws, _) = tungstenite::client(format!("wss://{}/ws", server.addr), tls).unwrap();
                // The welcome (read after the tickets, which come first) names the shard.
                let welcome: serde_json::Value = match ws.read().unwrap() {
                    Message::Text(t) => serde_json::from_str(&t).unwrap(),
                    other => panic!("{other:?}"),
                };
                shards.insert(welcome["shard"].as_u64());
                kinds.push(ws.get_ref().conn.handshake_kind().unwrap());
                ws.close(None).unwrap();
                while ws.read().is_ok() {}
            }
            let expected = if resumed { rustls::HandshakeKind::Resumed } else { rustls::HandshakeKind::Full };
            assert_eq!(kinds[0], rustls::HandshakeKind::Full, "{version:?}");
            assert!(kinds[1..].iter().all(|k| *k == expected), "{version:?}, session_tickets = {tickets}: {kinds:?}");
            if resumed {
                assert_eq!(shards.len(), 2, "{version:?}: the connections should land on both shards");
            }
        }
    }
}

/// Reads from `tls` until what was read contains `needle` (or the deadline).
fn read_until(tls: &mut Tls, seen: &mut String, needle: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut buf = [0; 4096];
    while !seen.contains(needle) {
        assert!(std::time::Instant::now() < deadline, "no {needle:?} in {seen:?}");
        match tls.read(&mut buf) {
            Ok(0) => panic!("the stream ended before {needle:?}: {seen:?}"),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) => panic!("{e} before {needle:?}: {seen:?}"),
        }
    }
}

#[test]
fn an_sse_session_and_its_posts_work_over_tls() {
    let cert = Cert::new();
    let server = Server::start(&cert.config(""), &["--shards", "2"]);
    let mut sse = tls_connect(&server.addr, &cert.der, BOTH).unwrap();
    sse.write_all(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut seen = String::new();
    read_until(&mut sse, &mut seen, "\"type\":\"welcome\"");
    assert!(seen.starts_with("HTTP/1.1 200") && seen.contains("text/event-stream"), "{seen}");
    let session = seen.split("\"session\":\"").nth(1).and_then(|s| s.split('"').next()).unwrap().to_string();
    // Its requests come as POSTs on other TLS connections, to either shard.
    let post = |requests: serde_json::Value| {
        let body = json!({"session": session, "requests": requests}).to_string();
        let mut tls = tls_connect(&server.addr, &cert.der, BOTH).unwrap();
        write!(tls, "POST /emulation HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        let mut answer = String::new();
        let _ = tls.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    };
    post(json!([{"type":"subscribe","topic":"over-tls","id":1}]));
    read_until(&mut sse, &mut seen, "\"type\":\"ack\"");
    let (mut publisher, _) = wss(&server, &cert.der);
    let big = "y".repeat(40_000);
    publisher.send(Message::text(json!({"type":"publish","topic":"over-tls","payload":{"big": big}}).to_string())).unwrap();
    read_until(&mut sse, &mut seen, &format!("\"big\":\"{big}\""));
}
