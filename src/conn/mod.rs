//! One connection, from accept to close, as one task on its shard.
//!
//! The task reads the HTTP upgrade (bounded in size and time), then loops:
//! flush the outbox with vectored writes, read what the socket has into the
//! shard's scratch buffer, decode frames, act on them. Only bytes of an
//! incomplete frame (or fragmented message) are copied into memory of the
//! connection's own, and freed as soon as the frame completes.

mod session;
mod transport;

pub use transport::Transport;

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Future};
use glommio::net::TcpStream;
use glommio::timer::Timer;
use tracing::debug;

use crate::auth::{Access, Action, IpSlot, TopicOptions, MAX_USER_BYTES};
use crate::history::wait::Request as WaitRequest;
use crate::history::Query as HistoryQuery;
use crate::presence::Member;
use crate::clock::Stamp;
use crate::metrics::ShardStats;
use crate::peer::send::{flush_direct, wrote, Flushed, MAX_IOVECS};
use crate::peer::Peer;
use crate::codes::{close, ErrorCode};
use crate::protocol::{Command, Encoding, RequestError, Wire};
use crate::ws::deflate::{InflateError, Mode};
use crate::shard::{PendingPublish, Shard, Then};
use crate::ws::frame::{self, Opcode};
use crate::ws::reader::{self, Event, Limits, Reader};
use crate::ws::handshake::{self, Decision, Endpoint};


/// Reads handled per wake-up before the task yields to its neighbours.
const READ_BUDGET: usize = 16;


/// Serves one accepted TCP connection until it closes.
///
/// A hand-written future rather than an `async fn`: an idle connection's
/// memory is mostly this task, and an enum of "upgrading" (boxed, freed once
/// done) and "serving" (the [`Conn`]) is as small as it can be.
pub fn serve(shard: Rc<Shard>, stream: TcpStream) -> Serve {
    Serve::Upgrading(Box::pin(upgrade(shard, stream)))
}

// The size difference is the point: the upgrading state is boxed so the
// long-lived serving state sets the task's size.
#[allow(clippy::large_enum_variant)]
pub enum Serve {
    Upgrading(Pin<Box<dyn Future<Output = Option<Conn>>>>),
    Serving(Conn),
    Done,
}

impl Future for Serve {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match this {
                Serve::Upgrading(upgrading) => match upgrading.as_mut().poll(cx) {
                    Poll::Ready(Some(conn)) => *this = Serve::Serving(conn),
                    Poll::Ready(None) => {
                        *this = Serve::Done;
                        return Poll::Ready(());
                    }
                    Poll::Pending => return Poll::Pending,
                },
                Serve::Serving(conn) => {
                    if conn.poll_serve(cx).is_pending() {
                        return Poll::Pending;
                    }
                    if let Some(topic) = conn.user_topic() {
                        conn.shard.unsubscribe(topic, conn.peer.id);
                    }
                    conn.shard.remove_peer(conn.peer.id, &conn.topics);
                    debug!(conn = %conn.peer.id, "closed");
                    *this = Serve::Done;
                    return Poll::Ready(());
                }
                Serve::Done => return Poll::Ready(()),
            }
        }
    }
}

/// The handshake, under `handshake_timeout_ms`; the connection, registered
/// with its shard, once upgraded.
async fn upgrade(shard: Rc<Shard>, stream: TcpStream) -> Option<Conn> {
    // TCP_NODELAY comes from the listening socket (accepted sockets inherit it).
    let timeout = shard.config.server.handshake_timeout;
    // One deadline for the TLS handshake and the HTTP upgrade together.
    let upgraded = glommio::timer::timeout(timeout, async {
        let mut stream = match &shard.tls {
            // Garbage, plain HTTP or an unsupported version: this connection alone ends.
            Some(acceptor) => match acceptor.accept(stream).await {
                Ok(tls) => Transport::Tls(Box::new(tls)),
                Err(_) => return Ok(None),
            },
            None => Transport::Plain(stream),
        };
        Ok(handshake(&shard, &mut stream).await.map(|up| (up, stream)))
    })
    .await;
    let Ok(Some((Upgraded { endpoint, response, leftover, token, ip, wire }, stream))) = upgraded else { return None };
    let peer = Rc::new(Peer::new(shard.next_conn_id(), Instant::now()));
    peer.wire.set(wire);
    if let Transport::Plain(tcp) = &stream {
        peer.send_directly_on(tcp.as_raw_fd());
    }
    shard.add_peer(peer.clone());
    // The 101 goes out with whatever the session queues next (the welcome):
    // one send, one segment, one wake-up of the client for both.
    peer.push(response.into(), shard.queueing());
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
        close_received: false,
        input_closed: false,
        write_shut: false,
        blocked: None,
        session: None,
    };
    match endpoint {
        Endpoint::PubSub => conn.begin_session(token, ip),
        Endpoint::Echo => conn.hold_ip(ip),
    }
    Some(conn)
}

/// A request that was answered with 101 Switching Protocols.
struct Upgraded {
    endpoint: Endpoint,
    /// The 101 Switching Protocols response, to send first.
    response: Vec<u8>,
    /// Bytes read past the request: already WebSocket data.
    leftover: Vec<u8>,
    token: Option<String>,
    /// The connection's count against `max_connections_per_ip`, if limited.
    ip: Option<IpSlot>,
    /// The negotiated encoding and compression.
    wire: Wire,
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
        Decision::Upgrade { endpoint, response, consumed, token, subprotocol, deflate } => {
            let encoding = Encoding::of_subprotocol(subprotocol);
            // The peer's address is looked up only when per-IP limits need it.
            let ip = if shard.admission.limits_ips() { shard.admission.admit_ip(stream.peer_ip()?) } else { Ok(None) };
            let open = shard.node_connections.fetch_add(1, Ordering::Relaxed);
            if ip.is_err() {
                shard.node_connections.fetch_sub(1, Ordering::Relaxed);
                ShardStats::add(&shard.stats().ip_limit_rejections, 1);
                handshake::response(429, "Too Many Requests", "Retry-After: 1\r\n", "text/plain", b"too many connections from this address\n")
            } else if open >= server.max_connections {
                shard.node_connections.fetch_sub(1, Ordering::Relaxed);
                handshake::response(503, "Service Unavailable", "Retry-After: 1\r\n", "text/plain", b"server is at max_connections\n")
            } else {
                // The connection now counts against max_connections; its
                // task's end (`Shard::remove_peer`) gives the count back.
                let leftover = buf[consumed..filled].to_vec();
                let wire = Wire { encoding, deflate: deflate.map_or(Mode::Off, |a| a.mode()) };
                return Some(Upgraded { endpoint, response, leftover, token, ip: ip.unwrap_or_default(), wire });
            }
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
    ShardStats::add(&shard.stats().handshakes_rejected, u64::from(!reply.starts_with(b"HTTP/1.1 200")));
    let _ = stream.write_all(&reply).await;
    let _ = stream.close().await;
    None
}

/// Why the connection stops reading input.
enum Blocked {
    /// A publish waits for room on another shard's channel.
    Bus { pending: PendingPublish, retry: Option<Timer> },
}

/// A connection after the upgrade. Owned by its task.
pub struct Conn {
    shard: Rc<Shard>,
    peer: Rc<Peer>,
    stream: Transport,
    endpoint: Endpoint,
    /// Received bytes not yet decoded (an incomplete frame, or input left when
    /// the connection blocked). Empty, with no capacity, most of the time.
    partial: Vec<u8>,
    /// `partial` may hold complete frames to decode before reading more
    /// (the connection blocked while decoding, or the handshake read past
    /// the request).
    resume: bool,
    /// Frames -> messages: a fragmented message in progress (bounded by
    /// `max_message_bytes`).
    reader: Reader,
    /// Topics this connection is subscribed to (canonical names from the registry).
    topics: Vec<Rc<str>>,
    bucket: TokenBucket,
    limited: RateStrikes,
    /// The client sent its close frame.
    close_received: bool,
    /// Input is ignored from now on (protocol error, or close received).
    input_closed: bool,
    /// Our side of the TCP connection is shut down (after failing it).
    write_shut: bool,
    /// Boxed: rare, and large.
    blocked: Option<Box<Blocked>>,
    /// Identity and admission slots (see `session.rs`). `None`: anonymous,
    /// holding no per-IP slot.
    session: Option<Box<session::Session>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The descriptor closes with `stream`, and may be reused at once.
        self.peer.detach();
        if self.blocked.is_some() {
            self.shard.publish_blocked(false);
        }
    }
}

impl Conn {
    fn poll_serve(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.peer.set_waker(cx.waker());
        let mut budget = READ_BUDGET;
        loop {
            if self.peer.is_aborted() {
                return Poll::Ready(());
            }
            match self.poll_flush(cx) {
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                // Our close frame is out. If the client already sent its own,
                // we are done; otherwise keep reading for its close, until
                // close_timeout.
                Poll::Ready(Ok(())) if self.peer.closing_since().is_some() && self.close_received => {
                    return Poll::Ready(());
                }
                // We failed the connection (RFC 6455 §7.1.7): the client
                // must see TCP close now, but input is still drained until
                // its EOF (or close_timeout), so that late writes are not
                // answered with a reset that would destroy our close frame
                // before it is read.
                Poll::Ready(Ok(())) if self.peer.closing_since().is_some() && self.input_closed && !self.write_shut => {
                    // SAFETY: shutdown(2) on the socket this task owns.
                    unsafe { libc::shutdown(self.stream.raw_fd(), libc::SHUT_WR) };
                    self.write_shut = true;
                }
                _ => {}
            }
            if !self.poll_unblocked(cx) {
                return Poll::Pending;
            }
            if budget == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            budget -= 1;
            if self.resume {
                self.resume = false;
                let mut buf = std::mem::take(&mut self.partial);
                let used = self.process(&mut buf);
                self.keep_unprocessed(buf, used);
                continue;
            }
            let shard = self.shard.clone();
            let mut scratch = shard.scratch.borrow_mut();
            let n = match Pin::new(&mut self.stream).poll_read(cx, &mut scratch) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(n)) => n,
            };
            self.peer.last_seen.set(Stamp::now());
            if self.partial.is_empty() {
                let used = self.process(&mut scratch[..n]);
                if used < n {
                    self.partial = scratch[used..n].to_vec();
                }
            } else {
                let mut buf = std::mem::take(&mut self.partial);
                buf.extend_from_slice(&scratch[..n]);
                drop(scratch);
                let used = self.process(&mut buf);
                self.keep_unprocessed(buf, used);
            }
        }
    }

    /// Keeps `buf[used..]` for later, releasing the buffer when nothing is left.
    fn keep_unprocessed(&mut self, mut buf: Vec<u8>, used: usize) {
        if used < buf.len() {
            buf.drain(..used);
            self.partial = buf;
        } else {
            self.partial = Vec::new();
        }
    }

    /// Whether input may be read. Registers the waker otherwise.
    fn poll_unblocked(&mut self, cx: &mut Context<'_>) -> bool {
        if self.peer.awaiting() {
            return false;
        }
        let Some(Blocked::Bus { pending, retry }) = self.blocked.as_deref_mut() else { return !self.quiesced() };
        loop {
            if let Some(timer) = retry {
                if Pin::new(timer).poll(cx).is_pending() {
                    return false;
                }
            }
            if self.shard.retry_publish(pending) {
                self.blocked = None;
                self.shard.publish_blocked(false);
                return !self.quiesced();
            }
            *retry = Some(Timer::new(crate::shard::tasks::BUS_RETRY));
        }
    }

    /// The server is shutting down and has not closed this connection yet:
    /// input waits (the close will wake the task), so that nothing is
    /// accepted that the shutdown could not deliver.
    fn quiesced(&self) -> bool {
        self.shard.shutting_down.get() && self.peer.closing_since().is_none()
    }

    /// Writes as much of the outbox as the transport takes. Ready(Ok) when
    /// the outbox is empty (and, under TLS, its records are on the socket).
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream {
            Transport::Plain(_) => self.poll_flush_plain(cx),
            Transport::Tls(_) => self.poll_flush_tls(cx),
        }
    }

    /// TLS: the queued frames go through the record layer as one vectored
    /// write (rustls encrypts them into its bounded send buffer), then the
    /// records are flushed to the socket.
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let written = {
                let out = self.peer.outbox();
                if out.is_empty() {
                    None
                } else {
                    let mut batch = [io::IoSlice::new(&[]); MAX_IOVECS];
                    let mut n = 0;
                    for slice in out.slices(MAX_IOVECS) {
                        batch[n] = io::IoSlice::new(slice);
                        n += 1;
                    }
                    Some(Pin::new(&mut self.stream).poll_write_vectored(cx, &batch[..n]))
                }
            };
            match written {
                None => return Pin::new(&mut self.stream).poll_flush(cx),
                Some(Poll::Ready(Ok(0))) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Some(Poll::Ready(Ok(n))) => wrote(&mut self.peer.outbox(), n, self.shard.stats()),
                Some(Poll::Ready(Err(e))) => return Poll::Ready(Err(e)),
                Some(Poll::Pending) => return Poll::Pending,
            }
        }
    }

    /// Plain TCP: what [`flush_direct`] cannot send now waits for
    /// writability through the reactor.
    fn poll_flush_plain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shard = self.shard.clone();
        loop {
            let flushed = flush_direct(&mut self.peer.outbox(), self.stream.raw_fd(), &mut shard.write_scratch.borrow_mut(), shard.stats());
            match flushed? {
                Flushed::All => return Poll::Ready(Ok(())),
                Flushed::WouldBlock => {
                    // glommio's poll_write retries the send and registers the waker.
                    let head = self.peer.outbox().head().expect("outbox not empty");
                    match Pin::new(&mut self.stream).poll_write(cx, &head) {
                        Poll::Ready(Ok(n)) => wrote(&mut self.peer.outbox(), n, shard.stats()),
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
        }
    }

    /// Decodes and handles the frames in `buf`; returns how many bytes were
    /// used. Stops early at an incomplete frame or when the connection blocks.
    fn process(&mut self, buf: &mut [u8]) -> usize {
        let limits = Limits {
            max_message_bytes: self.shard.config.limits.max_message_bytes,
            deflate: self.peer.wire.get().deflate != Mode::Off,
        };
        let mut pos = 0;
        while pos < buf.len() {
            if self.input_closed {
                return buf.len();
            }
            if self.blocked.is_some() || self.peer.awaiting() {
                // Decode the rest once unblocked, before reading more.
                self.resume = true;
                break;
            }
            let (used, event) = match self.reader.next(&mut buf[pos..], limits) {
                Ok(Some(decoded)) => decoded,
                Ok(None) => break,
                Err(violation) => {
                    self.fail(violation.code, violation.reason);
                    return buf.len();
                }
            };
            pos += used;
            self.on_event(event);
        }
        pos
    }

    fn on_event(&mut self, event: Event<'_>) {
        match event {
            Event::Ping(payload) => self.send(frame::build(Opcode::Pong, &[payload])),
            Event::Pong | Event::Fragment => {}
            Event::Close(payload) => self.on_close(payload),
            Event::Message { opcode, compressed: true, mut data } => self.on_compressed(opcode, data.as_mut()),
            Event::Message { opcode, compressed: false, mut data } => self.on_message(opcode, data.as_mut()),
        }
    }

    fn on_close(&mut self, payload: &[u8]) {
        self.close_received = true;
        self.input_closed = true;
        match reader::close_code(payload) {
            // Echo the client's code, after anything already queued for it.
            Ok(code) => self.peer.close(code, "", true),
            Err(violation) => self.fail(violation.code, violation.reason),
        }
    }

    /// Closes the connection for a protocol violation; further input is ignored.
    fn fail(&mut self, code: u16, reason: &str) {
        ShardStats::add(&self.shard.stats().protocol_errors, 1);
        debug!(conn = %self.peer.id, code, reason, "protocol error");
        // Input is read and discarded from now on (a lingering close, see
        // poll_serve): the connection ends at the client's EOF, or at
        // close_timeout_ms.
        self.input_closed = true;
        self.reader.reset();
        // Replies already queued (e.g. the rate_limited errors before a 1008)
        // go out before the close frame.
        self.peer.close(code, reason, true);
    }

    fn send(&self, frame: bytes::Bytes) {
        self.peer.push(frame, self.shard.queueing());
    }

    /// A compressed message: inflated with the shard's decompressor, its
    /// output bounded by `max_message_bytes` (a deflate bomb stops there).
    fn on_compressed(&mut self, opcode: Opcode, deflated: &[u8]) {
        let max = self.shard.config.limits.max_message_bytes;
        let mut message = Vec::new();
        let inflated = self.shard.decompressor.borrow_mut().inflate(deflated, max, &mut message);
        ShardStats::add(&self.shard.stats().inflations, 1);
        match inflated {
            Ok(()) => self.on_message(opcode, &mut message),
            Err(InflateError::TooBig) => self.fail(close::TOO_BIG, "message too big"),
            Err(InflateError::Corrupt) => self.fail(close::INVALID_PAYLOAD, "invalid compressed data"),
        }
    }

    fn on_message(&mut self, opcode: Opcode, data: &mut [u8]) {
        if self.peer.closing_since().is_some() {
            // We sent our close (shutdown, slow consumer, heartbeat): only the
            // client's close frame matters now.
            return;
        }
        if opcode == Opcode::Text && simdutf8::basic::from_utf8(data).is_err() {
            return self.fail(close::INVALID_PAYLOAD, "text message is not valid UTF-8");
        }
        match self.endpoint {
            Endpoint::Echo => {
                // Echoes are compressed one by one, as they must be.
                let plain = frame::build(opcode, &[data]);
                let deflate = self.peer.wire.get().deflate;
                let builder = self.shard.form_builder();
                if deflate != Mode::Off && builder.worth_compressing(&plain) {
                    self.send(builder.compress(&plain, deflate));
                } else {
                    self.send(plain);
                }
            }
            Endpoint::PubSub => self.on_request(opcode, data),
        }
    }

    fn on_request(&mut self, opcode: Opcode, data: &[u8]) {
        let encoding = self.peer.encoding();
        // JSON is accepted in binary frames too; FlatBuffers never in text frames.
        if encoding == Encoding::FlatBuffers && opcode == Opcode::Text {
            let message = "a text frame on a shardcast.flatbuffers.v1 connection: send ClientFrames in binary frames".into();
            return self.reply_error(RequestError { id: None, code: ErrorCode::BadRequest, message });
        }
        let request = match encoding.parse_request(data) {
            Ok(r) => r,
            Err(e) => return self.reply_error(e),
        };
        let id = request.id;
        if self.awaiting_auth() && !matches!(request.command, Command::Auth { .. }) {
            let message = "authenticate first: send {\"type\":\"auth\",\"token\":…}".into();
            return self.reply_error(RequestError { id, code: ErrorCode::Unauthorized, message });
        }
        let shard = self.shard.clone();
        let limits = &shard.config.limits;
        match request.command {
            Command::Ping => self.send(encoding.pong_frame(id)),
            Command::Auth { token } => self.on_auth(id, &token),
            Command::Refresh { token } => self.on_refresh(id, &token),
            Command::Subscribe { topic, recover } => {
                if !self.topic_allowed(id, &topic, Action::Subscribe) {
                    return;
                }
                let options = shard.config.namespaces.options(&topic);
                if recover.is_some() && !options.recover {
                    let message = "recovery is not enabled for this topic's namespace (recover = true)".into();
                    return self.reply_error(RequestError { id, code: ErrorCode::NotAvailable, message });
                }
                let subscribed = self.is_subscribed(&topic);
                if !subscribed && self.topics.len() >= limits.max_topics_per_connection {
                    // Forget subscriptions the shard undid (history unavailable).
                    let registry = shard.registry.borrow();
                    let me = self.peer.id;
                    self.topics.retain(|t| registry.get(t).is_some_and(|e| e.subscribers.contains_key(&me)));
                }
                if !subscribed && self.topics.len() >= limits.max_topics_per_connection {
                    return self.reply_error(RequestError {
                        id,
                        code: ErrorCode::TooManySubscriptions,
                        message: format!("at most {} topics per connection", limits.max_topics_per_connection),
                    });
                }
                // Acked now, or by the shard once the other shards confirmed
                // the interest (and, on a history topic, once its position is
                // known); without an id there is no ack.
                let then = match options.history {
                    Some(_) => Then::Position(WaitRequest { id, recover }),
                    None => Then::Frame(id.map(|id| encoding.ack_frame(id))),
                };
                let member = (options.presence || options.join_leave).then(|| Member {
                    client: shard.client_id(self.peer.id).into(),
                    user: self.identity().map(|i| i.user.clone()),
                });
                let name = self.shard.subscribe(&self.peer, &topic, options, then, member);
                if !subscribed {
                    // Most connections hold one or a few topics: grow one at a time.
                    self.topics.reserve_exact(1);
                    self.topics.push(name);
                }
            }
            Command::Presence { topic } => self.on_presence_request(id, &topic, false),
            Command::PresenceStats { topic } => self.on_presence_request(id, &topic, true),
            Command::History { topic, since, limit } => {
                let Some((id, options)) = self.topic_request(id, &topic, "history") else { return };
                let Some(policy) = options.history else {
                    return self.not_available(id, "this topic's namespace keeps no history (history_size = 0)");
                };
                let limit = limit.map_or(policy.size, |l| usize::try_from(l).unwrap_or(usize::MAX).min(policy.size));
                self.peer.set_awaiting(true);
                shard.ask_history(&topic, HistoryQuery::Range { since, limit }, self.peer.id, Some(id));
            }
            Command::Unsubscribe { topic } => {
                if let Err(why) = crate::topic::validate(&topic, limits.max_topic_len) {
                    return self.reply_error(RequestError { id, code: ErrorCode::InvalidTopic, message: why.into() });
                }
                if self.shard.unsubscribe(&topic, self.peer.id) {
                    if let Some(i) = self.topics.iter().position(|t| **t == *topic) {
                        self.topics.swap_remove(i);
                    }
                }
                if let Some(id) = id {
                    self.send(encoding.ack_frame(id));
                }
            }
            Command::Publish { topic, payload, skip_self } => {
                if !self.topic_allowed(id, &topic, Action::Publish) || !self.take_publish_token(id) {
                    return;
                }
                let published = self.shard.publish(&self.peer, &topic, payload, skip_self);
                self.accepted(id, published);
            }
            Command::Send { user, payload } => {
                let policy = shard.config.auth.direct_messages;
                let allowed = match policy {
                    Access::Anyone => true,
                    Access::Users => self.identity().is_some(),
                    _ => false,
                };
                if !allowed {
                    let message = match policy {
                        Access::Users => "only authenticated connections may send direct messages",
                        _ => "direct messages are disabled ([auth] direct_messages = \"nobody\")",
                    };
                    return self.forbidden(id, message.into());
                }
                if !crate::auth::is_user_id(&user) {
                    let message = format!("field `user` must be a user id of 1 to {MAX_USER_BYTES} bytes");
                    return self.reply_error(RequestError { id, code: ErrorCode::BadRequest, message });
                }
                if !self.take_publish_token(id) {
                    return;
                }
                let from = self.identity().map(|i| i.user.clone());
                let sent = self.shard.send_direct(&self.peer, from.as_ref(), &user, payload);
                self.accepted(id, sent);
            }
        }
    }

    fn is_subscribed(&self, topic: &str) -> bool {
        self.shard.registry.borrow().get(topic).is_some_and(|e| e.subscribers.contains_key(&self.peer.id))
    }

    /// Checks a `presence` / `presence_stats` / `history` request: a valid
    /// topic the connection may subscribe to, and an id to answer under.
    /// Returns the id and the topic's options, or answers the error.
    fn topic_request(&mut self, id: Option<u64>, topic: &str, kind: &str) -> Option<(u64, TopicOptions)> {
        let Some(req) = id else {
            let message = format!("a {kind} request needs an `id` to answer under");
            self.reply_error(RequestError { id, code: ErrorCode::BadRequest, message });
            return None;
        };
        if !self.topic_allowed(id, topic, Action::Subscribe) {
            return None;
        }
        Some((req, self.shard.config.namespaces.options(topic)))
    }

    fn on_presence_request(&mut self, id: Option<u64>, topic: &str, stats: bool) {
        let kind = if stats { "presence_stats" } else { "presence" };
        let Some((id, options)) = self.topic_request(id, topic, kind) else { return };
        if !options.presence {
            return self.not_available(id, "presence is not enabled for this topic's namespace (presence = true)");
        }
        self.shard.ask_presence(topic, stats, self.peer.id, id);
    }

    fn not_available(&mut self, id: u64, message: &str) {
        self.reply_error(RequestError { id: Some(id), code: ErrorCode::NotAvailable, message: message.into() });
    }

    /// Whether `topic` is a valid client topic this connection may use for
    /// `action`; answers `invalid_topic` or `forbidden` otherwise.
    fn topic_allowed(&mut self, id: Option<u64>, topic: &str, action: Action) -> bool {
        if let Err(why) = crate::topic::validate(topic, self.shard.config.limits.max_topic_len) {
            self.reply_error(RequestError { id, code: ErrorCode::InvalidTopic, message: why.into() });
            return false;
        }
        if !self.shard.config.namespaces.allows(topic, action, self.identity()) {
            let verb = if action == Action::Subscribe { "subscribe to" } else { "publish to" };
            self.forbidden(id, format!("not allowed to {verb} this topic"));
            return false;
        }
        true
    }

    /// Takes one token of the connection's publish rate (publishes and direct
    /// messages share it); answers `rate_limited`, or closes 1008 after
    /// repeated abuse, when there is none.
    fn take_publish_token(&mut self, id: Option<u64>) -> bool {
        let limits = &self.shard.config.limits;
        let now = Instant::now();
        if self.bucket.take(now, limits.publish_rate, limits.publish_burst) {
            return true;
        }
        ShardStats::add(&self.shard.stats().rate_limited, 1);
        if self.limited.strike(now, limits.rate_limit_disconnect) {
            self.fail(close::POLICY, "rate limit exceeded repeatedly");
        } else {
            let message = format!("more than {} publishes per second", limits.publish_rate);
            self.reply_error(RequestError { id, code: ErrorCode::RateLimited, message });
        }
        false
    }

    /// Acks an accepted publish or direct message; stops reading while part
    /// of it waits for room on another shard's channel.
    fn accepted(&mut self, id: Option<u64>, result: Result<(), Box<PendingPublish>>) {
        if let Err(pending) = result {
            self.blocked = Some(Box::new(Blocked::Bus { pending: *pending, retry: None }));
            self.shard.publish_blocked(true);
        }
        if let Some(id) = id {
            self.send(self.peer.encoding().ack_frame(id));
        }
    }

    fn reply_error(&mut self, err: RequestError) {
        ShardStats::add(&self.shard.stats().request_errors, 1);
        self.send(self.peer.encoding().error_frame(&err));
    }
}

fn micros(now: Instant) -> u64 {
    Stamp::from(now).micros()
}

/// Publish rate limit: `rate` tokens per second, at most `burst` saved up
/// (the limits come from the shard's config, so they are not stored here).
struct TokenBucket {
    tokens: f32,
    last_us: u64,
}

impl TokenBucket {
    fn new(burst: u32) -> TokenBucket {
        TokenBucket { tokens: burst as f32, last_us: micros(Instant::now()) }
    }

    fn take(&mut self, now: Instant, rate: u32, burst: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let now_us = micros(now);
        let elapsed = now_us.saturating_sub(self.last_us) as f32 / 1e6;
        self.last_us = now_us;
        self.tokens = (self.tokens + elapsed * rate as f32).min(burst as f32);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Counts rate-limited publishes per one-second window.
#[derive(Default)]
struct RateStrikes {
    window_start_us: u64,
    count: u32,
}

impl RateStrikes {
    /// Records one refusal; true when the window's count exceeds `limit` (0 = never).
    fn strike(&mut self, now: Instant, limit: u32) -> bool {
        let now_us = micros(now);
        if self.count > 0 && now_us.saturating_sub(self.window_start_us) < 1_000_000 {
            self.count += 1;
        } else {
            self.window_start_us = now_us;
            self.count = 1;
        }
        limit > 0 && self.count > limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn token_bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(5);
        b.last_us = micros(t0);
        assert_eq!((0..10).filter(|_| b.take(t0, 10, 5)).count(), 5);
        assert!(b.take(t0 + Duration::from_millis(100), 10, 5));
        assert!(!b.take(t0 + Duration::from_millis(100), 10, 5));
        let mut unlimited = TokenBucket::new(1);
        assert!((0..1000).all(|_| unlimited.take(t0, 0, 1)));
    }

    #[test]
    fn strikes_reset_each_second() {
        let t0 = Instant::now();
        let mut s = RateStrikes::default();
        assert!(!(0..3).any(|_| s.strike(t0, 3)));
        assert!(s.strike(t0, 3));
        assert!(!s.strike(t0 + Duration::from_secs(2), 3));
        assert!(!(0..100).any(|_| s.strike(t0, 0)));
    }
}
/// Idle connections must stay small: these sizes are most of what one costs
/// (with glommio's poll source and the shard's maps; see benches/README.md).
#[cfg(test)]
mod footprint {
    #[test]
    fn idle_connection_structures_stay_small() {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().unwrap();
        ex.run(async {
            let l = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let s = glommio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let (m, _) = crate::bus::build(1, 4).unwrap();
            let cfg = std::sync::Arc::new(crate::config::Config::defaults());
            let stats: std::sync::Arc<[crate::metrics::ShardStats]> = vec![crate::metrics::ShardStats::default()].into();
            let shard = std::rc::Rc::new(crate::shard::Shard::new(0, cfg, m, stats, Default::default(), Default::default(), None));
            let task = super::serve(shard, s);
            assert!(std::mem::size_of_val(&task) <= 256, "connection task is {} bytes", std::mem::size_of_val(&task));
            // Rc<Peer> must fit mimalloc's 128-byte size class.
            assert!(std::mem::size_of::<super::Peer>() + 16 <= 128, "Peer is {} bytes", std::mem::size_of::<super::Peer>());
        });
    }
}
