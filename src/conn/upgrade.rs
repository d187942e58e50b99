//! From accepted socket to WebSocket: the TLS handshake (when `[tls]` is
//! set) and the HTTP upgrade, under one `handshake_timeout_ms`; refusals
//! answered here with their status (`ws::handshake` decides); admission
//! against `max_connections` and the per-IP limit; then the [`Conn`],
//! registered with its shard, its session begun. A request to a fallback
//! transport's path is read and answered by `fallback` instead.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures_lite::{AsyncReadExt, AsyncWriteExt};

use super::rate::{RateStrikes, TokenBucket};
use super::{Conn, Transport};
use crate::auth::IpSlot;
use crate::metrics::ShardStats;
use crate::peer::Peer;
use crate::readiness::Socket;
use crate::protocol::{Encoding, Wire};
use crate::shard::Shard;
use crate::ws::deflate::Mode;
use crate::ws::handshake::{self, Decision, Endpoint};
use crate::ws::reader::Reader;

/// The handshake, under `handshake_timeout_ms`; the connection, registered
/// with its shard, once upgraded.
pub(super) async fn upgrade(shard: Rc<Shard>, stream: Socket) -> Option<Conn> {
    // TCP_NODELAY comes from the listening socket (accepted sockets inherit it).
    let timeout = shard.config.server.handshake_timeout;
    // One deadline for the TLS handshake and the HTTP upgrade together.
    let upgraded = glommio::timer::timeout(timeout, async {
        let mut stream = match &shard.tls {
            // Garbage, plain HTTP or an unsupported version: this connection alone ends.
            Some(config) => match crate::tls::ServerStream::accept(config.clone(), stream).await {
                Ok(tls) => Transport::Tls(Box::new(tls)),
                Err(_) => return Ok(None),
            },
            None => Transport::Plain(stream),
        };
        Ok(handshake(&shard, &mut stream).await.map(|up| (up, stream)))
    })
    .await;
    let Ok(Some((Upgraded { endpoint, response, leftover, token, ip, wire, headers, fallback }, stream))) = upgraded else { return None };
    let peer = Rc::new(Peer::new(shard.next_conn_id(), Instant::now()));
    peer.wire.set(wire);
    if let Transport::Plain(tcp) = &stream {
        peer.send_directly_on(tcp.as_raw_fd());
    }
    shard.add_peer(peer.clone());
    // The 101 (or a fallback's 200 head) goes out with whatever the session
    // queues next (the welcome): one send, one segment, one wake-up of the
    // client for both.
    peer.push(response.into(), shard.queueing());
    if let Some((transport, _)) = &fallback {
        // From now on its frames are re-framed for the transport.
        peer.transport.set(*transport);
        shard.open_fallback(peer.id, *transport);
    }
    let bucket = TokenBucket::new(shard.config.limits.publish_burst);
    let mut conn = Conn {
        shard,
        peer,
        stream,
        endpoint,
        partial: leftover,
        resume: true,
        reader: Reader::default(),
        topics: Vec::new(),
        bucket,
        limited: RateStrikes::default(),
        // A fallback's client has no close frame to send.
        close_received: fallback.is_some(),
        input_closed: false,
        write_shut: false,
        blocked: None,
        session: None,
    };
    match endpoint {
        Endpoint::PubSub => conn.begin_session(token, ip, headers),
        Endpoint::Echo => conn.hold_ip(ip),
    }
    if let Some((_, connect)) = fallback {
        conn.fallback_connect(connect.unwrap_or_else(|| "{}".into()));
    }
    Some(conn)
}

/// A request that opened a connection: a WebSocket upgrade, or a
/// fallback transport's session.
pub(super) struct Upgraded {
    pub(super) endpoint: Endpoint,
    /// The 101 Switching Protocols response (a fallback's 200 head), to
    /// send first.
    pub(super) response: Vec<u8>,
    /// Bytes read past the request: already WebSocket data.
    pub(super) leftover: Vec<u8>,
    pub(super) token: Option<String>,
    /// The connection's count against `max_connections_per_ip`, if limited.
    pub(super) ip: Option<IpSlot>,
    /// The negotiated encoding and compression.
    pub(super) wire: Wire,
    /// The request headers the connect hook forwards (`[proxy] headers`),
    /// when a connect hook is configured.
    pub(super) headers: Vec<(String, String)>,
    /// A fallback session's transport, and its connect request.
    pub(super) fallback: Option<(crate::fallback::Transport, Option<String>)>,
}

/// Reads and answers the HTTP upgrade request. `None` when the connection
/// was refused.
async fn handshake(shard: &Shard, stream: &mut Transport) -> Option<Upgraded> {
    let server = &shard.config.server;
    let rules = handshake::Rules {
        ws_path: &server.ws_path,
        echo_path: server.echo_path.as_deref(),
        metrics_path: server.metrics_path.as_deref(),
        allowed_origins: &server.allowed_origins,
        compression: shard.config.compression.enabled,
        subprotocols: &Encoding::SUBPROTOCOLS,
        plain_paths: [server.stream_path.as_deref(), server.sse_path.as_deref(), server.emulation_path.as_deref()],
    };
    let mut buf = Vec::new();
    let mut filled = 0;
    let decision = loop {
        // Read straight into the request buffer, growing it up to the limit.
        if filled == buf.len() {
            buf.resize((buf.len() * 2).clamp(1024, server.max_handshake_bytes.max(1024)), 0);
        }
        let n = stream.read(&mut buf[filled..]).await.ok()?;
        if n == 0 {
            return None;
        }
        filled += n;
        match handshake::decide(&buf[..filled], &rules) {
            Decision::Incomplete if filled >= server.max_handshake_bytes => {
                break Decision::Refuse {
                    status: 431,
                    reason: "Request Header Fields Too Large",
                    body: "request too large\n",
                    extra_headers: "",
                }
            }
            Decision::Incomplete => continue,
            decided => break decided,
        }
    };
    let reply = match decision {
        Decision::Upgrade { endpoint, response, consumed, token, subprotocol, deflate } => match admit(shard, stream) {
            Ok(ip) => {
                // The connection now counts against max_connections; its
                // task's end (`Shard::remove_peer`) gives the count back.
                let leftover = buf[consumed..filled].to_vec();
                let encoding = Encoding::of_subprotocol(subprotocol);
                let wire = Wire { encoding, deflate: deflate.map_or(Mode::Off, |a| a.mode()) };
                let headers = forwarded(shard, &buf[..consumed]);
                return Some(Upgraded { endpoint, response, leftover, token, ip, wire, headers, fallback: None });
            }
            Err(refusal) => refusal?,
        },
        Decision::Plain(i) => {
            buf.truncate(filled);
            return super::fallback::handshake(shard, stream, buf, i).await;
        }
        Decision::Metrics => {
            let page = shard.metrics_page();
            handshake::response(200, "OK", "", crate::metrics::CONTENT_TYPE, page.as_bytes())
        }
        Decision::Refuse { status, reason, body, extra_headers } => {
            handshake::response(status, reason, extra_headers, "text/plain", body.as_bytes())
        }
        Decision::Incomplete => unreachable!("loop exits only with a decision"),
    };
    answer(shard, stream, &reply).await;
    None
}

/// Writes a whole answer that ends the connection.
pub(super) async fn answer(shard: &Shard, stream: &mut Transport, reply: &[u8]) {
    ShardStats::add(&shard.stats().handshakes_rejected, u64::from(!(reply.starts_with(b"HTTP/1.1 200") || reply.starts_with(b"HTTP/1.1 204"))));
    let _ = stream.write_all(reply).await;
    let _ = stream.close().await;
}

/// Counts a new connection against `max_connections` and the per-IP
/// limit. `Err(Some(answer))`: refused with that answer; `Err(None)`: the
/// peer's address could not be read.
pub(super) fn admit(shard: &Shard, stream: &Transport) -> Result<Option<IpSlot>, Option<Vec<u8>>> {
    // The peer's address is looked up only when per-IP limits need it.
    let ip = if shard.admission.limits_ips() { shard.admission.admit_ip(stream.peer_ip().ok_or(None)?) } else { Ok(None) };
    let open = shard.node_connections.fetch_add(1, Ordering::Relaxed);
    if ip.is_err() {
        shard.node_connections.fetch_sub(1, Ordering::Relaxed);
        ShardStats::add(&shard.stats().ip_limit_rejections, 1);
        return Err(Some(handshake::response(429, "Too Many Requests", "Retry-After: 1\r\n", "text/plain", b"too many connections from this address\n")));
    }
    if open >= shard.config.server.max_connections {
        shard.node_connections.fetch_sub(1, Ordering::Relaxed);
        return Err(Some(handshake::response(503, "Service Unavailable", "Retry-After: 1\r\n", "text/plain", b"server is at max_connections\n")));
    }
    Ok(ip.unwrap_or_default())
}

/// The request headers the connect hook forwards, when it is configured.
pub(super) fn forwarded(shard: &Shard, request: &[u8]) -> Vec<(String, String)> {
    let proxy = &shard.config.proxy;
    match proxy.connect_url {
        Some(_) => handshake::forwarded_headers(request, &proxy.headers),
        None => Vec::new(),
    }
}
