//! [`Peer`]: the part of a connection that the rest of its shard may touch
//! (its outbound queue, its waker, its liveness clocks); the connection task
//! (`conn`) owns everything else. [`Cork`] sends what the shard queued to
//! its peers after each batch of work, [`send`] writes a queue to a socket.
//! Never blocks, never reads: the shard fans out through these.

mod cork;
pub mod send;

pub use cork::Cork;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::Waker;
use std::time::Instant;

use bytes::Bytes;

use crate::clock::Stamp;
use crate::codes::close;
use crate::config::{Overflow, QueueConfig};
use crate::ids::ConnId;
use crate::metrics::ShardStats;
use crate::fallback::framing::Reframer;
use crate::fallback::Transport;
use crate::protocol::{Encoding, Wire};
use crate::ws::frame;

/// A client's bounded outbound queue of complete, shared frames.
///
/// Bounds: `queue.max_messages` frames and `queue.max_bytes` bytes *waiting
/// behind the head* (the frame being written): an empty queue accepts one
/// frame of any size the server allows (up to `max_message_bytes` plus a
/// header), so a client's worst case is `max_bytes` + one message. The head
/// is never dropped half-sent, so the stream stays well-framed whatever the
/// policy drops.
#[derive(Debug, Default)]
pub struct Outbox {
    frames: VecDeque<Queued>,
    /// Bytes of the frames behind the head (what `queue.max_bytes` bounds).
    /// Kept as a count so that the bound is checked without touching the
    /// queue's buffer: one cache line less per delivery.
    waiting: usize,
    /// Bytes of the head frame already written to the socket.
    head_written: usize,
    /// When a close frame was queued: nothing more is accepted after it.
    closing: Option<Stamp>,
}

/// A frame in an [`Outbox`], with when it was queued (the write-delay histogram).
#[derive(Debug)]
struct Queued {
    frame: Bytes,
    at: Stamp,
}

impl Outbox {
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The queued bytes not yet written, as slices for a vectored write.
    pub fn slices(&self, max: usize) -> impl Iterator<Item = &[u8]> {
        self.frames.iter().take(max).enumerate().map(|(i, q)| if i == 0 { &q.frame[self.head_written..] } else { &q.frame[..] })
    }

    /// The unwritten part of the head frame.
    pub fn head(&self) -> Option<Bytes> {
        self.frames.front().map(|q| q.frame.slice(self.head_written..))
    }

    /// Records that `n` bytes were written; `written` gets the queueing time
    /// of each frame completed by them.
    pub fn consume(&mut self, mut n: usize, mut written: impl FnMut(Stamp)) {
        while n > 0 {
            let head = self.frames.front().expect("wrote more than was queued");
            let left = head.frame.len() - self.head_written;
            if n < left {
                self.head_written += n;
                return;
            }
            n -= left;
            self.head_written = 0;
            let done = self.frames.pop_front().expect("head exists");
            written(done.at);
            if let Some(next) = self.frames.front() {
                // The next frame becomes the head: no longer waiting.
                self.waiting -= next.frame.len();
            }
        }
        if self.frames.is_empty() && self.frames.capacity() > 8 {
            // An idle connection keeps no queue memory.
            self.frames = VecDeque::new();
        }
    }

    /// Drops every frame except a partly written head.
    fn clear_unsent(&mut self) -> usize {
        let keep = usize::from(self.head_written > 0);
        let mut dropped = 0;
        while self.frames.len() > keep {
            let q = self.frames.pop_back().expect("len > keep");
            if !self.frames.is_empty() {
                self.waiting -= q.frame.len();
            }
            dropped += 1;
        }
        dropped
    }

    /// Bytes queued behind the head frame.
    fn waiting_bytes(&self) -> usize {
        self.waiting
    }

    /// Removes the frame at `i`, keeping `waiting` right.
    fn remove(&mut self, i: usize) {
        let removed = self.frames.remove(i).expect("index in the queue");
        match (i, self.frames.front()) {
            (0, Some(next)) => self.waiting -= next.frame.len(),
            (0, None) => {}
            _ => self.waiting -= removed.frame.len(),
        }
    }

    /// Whether `len` more bytes may be queued under `limits`.
    fn fits(&self, len: usize, limits: &QueueConfig) -> bool {
        self.frames.is_empty() || (self.frames.len() < limits.max_messages && self.waiting_bytes() + len <= limits.max_bytes)
    }

    fn enqueue(&mut self, frame: Bytes, at: Stamp) {
        if !self.frames.is_empty() {
            self.waiting += frame.len();
        }
        self.frames.push_back(Queued { frame, at });
    }
}

/// What [`Peer::push`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued after dropping older frames (`drop_oldest`), or dropped because
    /// it cannot fit even in an empty queue.
    Dropped,
    /// The queue overflowed under `disconnect`: the client is being closed.
    SlowConsumer,
    /// The connection is closing; the frame was discarded.
    Closed,
}

/// The connection must stop now, without flushing (close timeout, drain deadline).
const ABORTED: u8 = 1;
/// See [`Peer::awaiting`].
const AWAITING: u8 = 2;
/// Listed in the shard's [`Cork`].
const CORKED: u8 = 4;
/// See [`Peer::take_hook_mark`].
const HOOK_EVENT: u8 = 8;
/// See [`Peer::mark_welcomed`].
const WELCOMED: u8 = 16;


/// Where a shard queues frames: the bounds and overflow policy, its
/// counters, and the cork that sends what was queued.
#[derive(Clone, Copy)]
pub struct Queueing<'a> {
    pub limits: &'a QueueConfig,
    pub stats: &'a ShardStats,
    pub cork: &'a Cork,
    /// The shard's re-framing for fallback sessions (once per message).
    pub reframer: &'a RefCell<Reframer>,
}

/// The shared half of a connection, held by the connection task, the shard's
/// connection table and every topic it subscribes to. Touched only by its own
/// shard (it is `!Send`: `RefCell`/`Cell`); other shards reach it only through
/// a `PublishMsg` that this shard fans out.
pub struct Peer {
    pub id: ConnId,
    outbox: RefCell<Outbox>,
    /// Waker of the connection task; woken when work arrives for it that the
    /// shard's flush cannot do (TLS writes, a full socket, closing).
    waker: Cell<Option<Waker>>,
    /// The plain TCP socket the shard's flush may send on directly; -1 for
    /// TLS, and once the connection task has ended (the descriptor may then
    /// be another connection's).
    fd: Cell<RawFd>,

    /// Last time the client sent anything (heartbeat timeout).
    pub last_seen: Cell<Stamp>,
    /// Last time the server pinged it.
    pub last_ping: Cell<Stamp>,
    /// [`ABORTED`], [`AWAITING`], [`CORKED`], [`HOOK_EVENT`], [`WELCOMED`]: one byte, so that
    /// `Peer` stays in its allocation size class.
    flags: Cell<u8>,
    /// How its messages are sent: the negotiated subprotocol's encoding and
    /// permessage-deflate mode. Set once, at the upgrade.
    pub wire: Cell<Wire>,
    /// How frames reach the client: WebSocket, or a fallback transport
    /// whose frames are re-framed as they are queued. Set once, after the
    /// response head is queued.
    pub transport: Cell<Transport>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("id", &self.id).field("outbox", &self.outbox).finish_non_exhaustive()
    }
}

impl Peer {
    pub fn new(id: ConnId, now: Instant) -> Peer {
        Peer {
            id,
            outbox: RefCell::new(Outbox::default()),
            waker: Cell::new(None),
            fd: Cell::new(-1),
            last_seen: Cell::new(Stamp::from(now)),
            last_ping: Cell::new(Stamp::from(now)),
            flags: Cell::new(0),
            wire: Cell::new(Wire::default()),
            transport: Cell::new(Transport::WebSocket),
        }
    }

    /// The encoding of its requests and replies.
    pub fn encoding(&self) -> Encoding {
        self.wire.get().encoding
    }

    pub fn outbox(&self) -> std::cell::RefMut<'_, Outbox> {
        self.outbox.borrow_mut()
    }

    pub fn set_waker(&self, waker: &Waker) {
        let old = self.waker.take();
        match old {
            Some(w) if w.will_wake(waker) => self.waker.set(Some(w)),
            _ => self.waker.set(Some(waker.clone())),
        }
    }

    pub fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake_by_ref();
            self.waker.set(Some(w));
        }
    }

    /// Lets the shard's flush send on `fd` directly (plain TCP only).
    pub fn send_directly_on(&self, fd: RawFd) {
        self.fd.set(fd);
    }

    /// The connection task has ended: nothing may be sent on its descriptor.
    pub fn detach(&self) {
        self.fd.set(-1);
    }

    /// The socket the shard's flush may send on, if any.
    pub fn direct_fd(&self) -> Option<RawFd> {
        Some(self.fd.get()).filter(|fd| *fd >= 0)
    }

    /// Queues a frame under the queue bounds and overflow policy.
    pub fn push(self: &Rc<Self>, frame: Bytes, q: Queueing<'_>) -> Pushed {
        self.push_at(frame, Stamp::now(), q)
    }

    /// [`Peer::push`] with the clock already read: delivery to many
    /// subscribers reads it once per message, not once per subscriber.
    ///
    /// The first frame into an empty queue lists the connection in the
    /// shard's cork (sent after the current batch of work), or wakes its task
    /// when only the task can send (TLS).
    pub fn push_at(self: &Rc<Self>, frame: Bytes, now: Stamp, q: Queueing<'_>) -> Pushed {
        let Queueing { limits, stats, cork, reframer } = q;
        let mut out = self.outbox.borrow_mut();
        if out.closing.is_some() {
            return Pushed::Closed;
        }
        let frame = match self.transport.get() {
            Transport::WebSocket => frame,
            fallback => match reframer.borrow_mut().reframe(fallback, frame) {
                Some(frame) => frame,
                // No form on this transport (a pong).
                None => return Pushed::Queued,
            },
        };
        let mut result = Pushed::Queued;
        if !out.fits(frame.len(), limits) {
            match limits.overflow {
                Overflow::Disconnect => {
                    let dropped = out.clear_unsent();
                    ShardStats::add(&stats.dropped_frames, dropped as u64 + 1);
                    ShardStats::add(&stats.slow_consumer_disconnects, 1);
                    let close = self.reframe(frame::close(close::TRY_AGAIN_LATER, "slow consumer"));
                    out.enqueue(close.expect("a close frame has a form on every transport"), now);
                    out.closing = Some(now);
                    drop(out);
                    self.wake();
                    return Pushed::SlowConsumer;
                }
                Overflow::DropOldest => {
                    let keep = usize::from(out.head_written > 0);
                    let mut dropped = 0;
                    while !out.fits(frame.len(), limits) && out.frames.len() > keep {
                        out.remove(keep);
                        dropped += 1;
                    }
                    if !out.fits(frame.len(), limits) {
                        // Larger than may wait behind a half-written head: drop the new frame.
                        ShardStats::add(&stats.dropped_frames, dropped + 1);
                        return Pushed::Dropped;
                    }
                    ShardStats::add(&stats.dropped_frames, dropped);
                    result = if dropped > 0 { Pushed::Dropped } else { Pushed::Queued };
                }
            }
        }
        let was_empty = out.frames.is_empty();
        out.enqueue(frame, now);
        drop(out);
        if was_empty {
            if self.direct_fd().is_some() {
                cork.add(self);
            } else {
                self.wake();
            }
        }
        result
    }

    /// Queues a close frame after what is queued (`keep_queue`) or instead of
    /// it, and stops accepting frames. Does nothing if already closing.
    pub fn close(&self, code: u16, reason: &str, keep_queue: bool) {
        let mut out = self.outbox.borrow_mut();
        if out.closing.is_some() {
            return;
        }
        if !keep_queue {
            out.clear_unsent();
        }
        let now = Stamp::now();
        let close = self.reframe(frame::close(code, reason));
        out.enqueue(close.expect("a close frame has a form on every transport"), now);
        out.closing = Some(now);
        drop(out);
        self.wake();
    }

    /// `frame` as this connection's transport carries it (`None`: it has no
    /// form there, e.g. a pong on a fallback stream). For its own frames
    /// (a close); what is fanned out goes through the shard's [`Reframer`].
    fn reframe(&self, frame: Bytes) -> Option<Bytes> {
        match self.transport.get() {
            Transport::WebSocket => Some(frame),
            fallback => crate::fallback::framing::reframe(fallback, &frame),
        }
    }

    /// When the close frame was queued, if it was.
    pub fn closing_since(&self) -> Option<Stamp> {
        self.outbox.borrow().closing
    }

    fn flag(&self, flag: u8) -> bool {
        self.flags.get() & flag != 0
    }

    /// Sets or clears `flag`; returns whether it was set.
    fn set_flag(&self, flag: u8, on: bool) -> bool {
        let old = self.flags.get();
        self.flags.set(if on { old | flag } else { old & !flag });
        old & flag != 0
    }

    pub fn abort(&self) {
        self.set_flag(ABORTED, true);
        self.wake();
    }

    pub fn is_aborted(&self) -> bool {
        self.flag(ABORTED)
    }

    /// A request of this connection waits for another shard's answer (a
    /// subscribe's interest confirmation or history position, a presence or
    /// history query); its input is not read meanwhile, so each connection
    /// has at most one such request in flight.
    pub fn awaiting(&self) -> bool {
        self.flag(AWAITING)
    }

    pub fn set_awaiting(&self, on: bool) {
        self.set_flag(AWAITING, on);
    }

    /// The shard holds a backend hook event for this connection (an answer,
    /// or a hook deadline that passed): one flag test per wake-up instead of
    /// a table lookup. Set by the shard, taken (and cleared) by the task.
    pub fn mark_hook_event(&self) {
        self.set_flag(HOOK_EVENT, true);
    }

    pub fn take_hook_mark(&self) -> bool {
        self.set_flag(HOOK_EVENT, false)
    }

    /// Marks the connection welcomed; returns whether it already was (an
    /// anonymous connection authenticating later is welcomed again).
    pub fn mark_welcomed(&self) -> bool {
        self.set_flag(WELCOMED, true)
    }

    pub fn welcomed(&self) -> bool {
        self.flag(WELCOMED)
    }

    /// Marks the connection listed in the shard's [`Cork`] (`true`) or taken
    /// off it; returns whether it was listed.
    pub fn set_corked(&self, on: bool) -> bool {
        self.set_flag(CORKED, on)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(max_messages: usize, max_bytes: usize, overflow: Overflow) -> QueueConfig {
        QueueConfig { max_messages, max_bytes, overflow, close_timeout: Duration::from_secs(1) }
    }

    fn push(p: &Rc<Peer>, frame: Bytes, limits: &QueueConfig, stats: &ShardStats) -> Pushed {
        p.push(frame, Queueing { limits, stats, cork: &Cork::default(), reframer: &RefCell::default() })
    }

    fn frame(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    #[test]
    fn disconnect_policy_keeps_the_half_written_head_and_closes() {
        let stats = ShardStats::default();
        let p = Rc::new(Peer::new(ConnId::new(0, 1), Instant::now()));
        let q = limits(3, 1 << 20, Overflow::Disconnect);
        for _ in 0..3 {
            assert_eq!(push(&p, frame(10), &q, &stats), Pushed::Queued);
        }
        p.outbox().consume(4, |_| {});
        assert_eq!(push(&p, frame(10), &q, &stats), Pushed::SlowConsumer);
        let out = p.outbox();
        let sent: Vec<usize> = out.slices(10).map(|s| s.len()).collect();
        assert_eq!(sent, vec![6, 2 + 2 + "slow consumer".len()]);
        drop(out);
        assert_eq!(push(&p, frame(1), &q, &stats), Pushed::Closed);
        assert_eq!(stats.slow_consumer_disconnects.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn drop_oldest_policy_bounds_bytes() {
        let stats = ShardStats::default();
        let p = Rc::new(Peer::new(ConnId::new(0, 1), Instant::now()));
        let q = limits(100, 1024, Overflow::DropOldest);
        for _ in 0..50 {
            push(&p, frame(100), &q, &stats);
        }
        let out = p.outbox();
        assert_eq!(out.frames.len(), 11, "the head and 10 waiting behind it");
        assert!(out.waiting_bytes() <= 1024);
        drop(out);
        assert_eq!(push(&p, frame(2000), &q, &stats), Pushed::Dropped, "too big to wait behind others");
    }

    /// `waiting` must always equal the bytes behind the head.
    fn check_waiting(p: &Peer) {
        let out = p.outbox();
        let behind: usize = out.frames.iter().skip(1).map(|q| q.frame.len()).sum();
        assert_eq!(out.waiting, behind);
    }

    #[test]
    fn the_waiting_count_follows_every_change() {
        let stats = ShardStats::default();
        for overflow in [Overflow::Disconnect, Overflow::DropOldest] {
            let p = Rc::new(Peer::new(ConnId::new(0, 1), Instant::now()));
            let q = limits(5, 100, overflow);
            for i in 0..12 {
                push(&p, frame(7 + i), &q, &stats);
                check_waiting(&p);
                if i % 3 == 0 {
                    p.outbox().consume(5, |_| {});
                    check_waiting(&p);
                }
            }
            let left: usize = p.outbox().slices(100).map(<[u8]>::len).sum();
            p.outbox().consume(left, |_| {});
            check_waiting(&p);
            assert!(p.outbox().is_empty() || overflow == Overflow::Disconnect);
        }
    }

    #[test]
    fn an_empty_queue_takes_one_frame_of_any_size() {
        let stats = ShardStats::default();
        for overflow in [Overflow::Disconnect, Overflow::DropOldest] {
            let p = Rc::new(Peer::new(ConnId::new(0, 1), Instant::now()));
            let q = limits(4, 1024, overflow);
            assert_eq!(push(&p, frame(1 << 20), &q, &stats), Pushed::Queued, "{overflow:?}: 1 MiB into an empty queue");
            assert_eq!(push(&p, frame(1000), &q, &stats), Pushed::Queued, "max_bytes counts what waits behind the head");
            assert_ne!(push(&p, frame(100), &q, &stats), Pushed::Queued, "{overflow:?}: 1100 bytes would wait");
        }
    }

    #[test]
    fn consume_walks_frames_and_frees_memory() {
        let stats = ShardStats::default();
        let p = Rc::new(Peer::new(ConnId::new(0, 1), Instant::now()));
        let q = limits(100, 1 << 20, Overflow::Disconnect);
        for _ in 0..20 {
            push(&p, frame(5), &q, &stats);
        }
        p.outbox().consume(12, |_| {});
        assert_eq!(p.outbox().head().unwrap().len(), 3);
        p.outbox().consume(88, |_| {});
        assert!(p.outbox().is_empty());
        assert_eq!(p.outbox().frames.capacity(), 0);
    }
}
