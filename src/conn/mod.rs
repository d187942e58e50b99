//! One connection, from accept to close, as one task on its shard.
//!
//! Top to bottom: `upgrade` (TLS, the HTTP upgrade, admission; bounded in
//! size and time), then `Conn::poll_serve` loops: flush the outbox
//! (`flush`), read what the socket has into the shard's scratch buffer,
//! decode frames (`ws::reader`), act on each event: a request goes to
//! `requests`, one file per family. Only bytes of an incomplete frame (or
//! fragmented message) are copied into memory of the connection's own, and
//! freed as soon as the frame completes. At the end the shard forgets the
//! connection and its subscriptions.
//!
//! Owns the connection's private state ([`Conn`]); its shared half, what
//! the shard may touch, is its [`Peer`]. Never blocks the shard: a request
//! that must wait (a subscribe's interest round, a query to another shard,
//! a publish waiting for room on a channel) stops this connection's input
//! only.

mod accept;
mod fallback;
mod flush;
mod rate;
mod requests;
mod upgrade;

pub use accept::accept_loop;
/// The byte stream under a connection's frames. Only the plain one has the
/// direct `sendmsg` path (`peer::send`): under TLS every byte goes through
/// the record layer.
pub type Transport = crate::tls::MaybeTls<Socket, crate::tls::ServerStream<Socket>>;

use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, Future};
use glommio::timer::Timer;
use tracing::debug;

use crate::clock::Stamp;
use crate::codes::close;
use crate::metrics::ShardStats;
use crate::peer::Peer;
use crate::readiness::Socket;
use crate::shard::{PendingPublish, Shard};
use crate::ws::deflate::{InflateError, Mode};
use crate::ws::frame::{self, Opcode};
use crate::ws::handshake::Endpoint;
use crate::ws::reader::{self, Event, Limits, Reader};
use rate::{RateStrikes, TokenBucket};
use requests::session;

/// Reads handled per wake-up before the task yields to its neighbours.
const READ_BUDGET: usize = 16;


/// Serves one accepted TCP connection until it closes.
///
/// A hand-written future rather than an `async fn`: an idle connection's
/// memory is mostly this task, and an enum of "upgrading" (boxed, freed once
/// done) and "serving" (the [`Conn`]) is as small as it can be.
pub fn serve(shard: Rc<Shard>, stream: Socket) -> Serve {
    Serve::Upgrading(Box::pin(upgrade::upgrade(shard, stream)))
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
                    if conn.peer.welcomed() {
                        let client = conn.shard.client_id(conn.peer.id).into();
                        conn.shard.client_event(false, client, conn.identity().map(|i| &*i.user));
                    }
                    debug!(conn = %conn.peer.id, "closed");
                    *this = Serve::Done;
                    return Poll::Ready(());
                }
                Serve::Done => return Poll::Ready(()),
            }
        }
    }
}

/// Why the connection stops reading input.
enum Blocked {
    /// A publish waits for room on another shard's channel.
    Bus { pending: PendingPublish, retry: Option<Timer> },
    /// A request waits for the backend's answer (`requests::hooks`).
    Hook(requests::hooks::Pending),
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
        // A TLS client is told the stream ends here, not cut off.
        self.stream.close_notify_now();
        // The descriptor closes with `stream`, and may be reused at once.
        self.peer.detach();
        if matches!(self.blocked.as_deref(), Some(Blocked::Bus { .. })) {
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
            if self.peer.take_hook_mark() {
                self.on_hook_events();
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
                    self.stream.close_notify_now();
                    // SAFETY: shutdown(2) on the socket this task owns.
                    unsafe { libc::shutdown(self.stream.raw_fd(), libc::SHUT_WR) };
                    self.write_shut = true;
                }
                _ => {}
            }
            if !self.poll_unblocked(cx) {
                return Poll::Pending;
            }
            // A first request held back while the connect hook decided.
            if let Some((opcode, mut first)) = self.take_deferred_request() {
                self.on_message(opcode, &mut first);
                continue;
            }
            if budget == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            budget -= 1;
            // Requests POSTed for a fallback session, one at a time.
            if self.run_emulated() {
                continue;
            }
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
        let (pending, retry) = match self.blocked.as_deref_mut() {
            None => return !self.quiesced(),
            // Its answer wakes the task (`on_hook_events`).
            Some(Blocked::Hook(_)) => return false,
            Some(Blocked::Bus { pending, retry }) => (pending, retry),
        };
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
            *retry = Some(Timer::new(crate::bus::FULL_CHANNEL_RETRY));
        }
    }

    /// The server is shutting down and has not closed this connection yet:
    /// input waits (the close will wake the task), so that nothing is
    /// accepted that the shutdown could not deliver.
    fn quiesced(&self) -> bool {
        self.shard.shutting_down.get() && self.peer.closing_since().is_none()
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
            // A fallback session's socket carries no requests.
            if self.input_closed || self.peer.transport.get().is_fallback() {
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
}

/// Idle connections must stay small: what one costs, checked.
#[cfg(test)]
mod footprint;
