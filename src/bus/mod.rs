//! Cross-shard messaging: the only way shards talk to each other.
//!
//! Every shard owns one inbox with three crossbeam (lock-free) channels:
//! - `data`, bounded by `[bus] capacity`, carries publishes. A full data
//!   channel is backpressure: the publishing connection stops being read
//!   until there is room, so the pressure reaches the publisher through TCP.
//!   The bus loop always drains it and never waits while doing so.
//! - `sequence`, bounded by `[bus] capacity`, carries publishes to history
//!   topics on their way to the shard that assigns their offsets (the
//!   topic's home shard, or the bridge shard with Redis). That shard reads
//!   it only while its relay of numbered messages not yet handed on is
//!   short, so a slow destination pushes back on publishers, never on
//!   another shard's bus loop (no cycle of shards waiting on each other).
//! - `control` carries interest changes, their acknowledgements, admin-plane
//!   calls (bounded by `[admin] max_pending` and one call per API request
//!   per shard, each awaited by the admin thread), history and presence
//!   queries and their answers, presence changes, and shutdown.
//!   It is unbounded in type but bounded by construction: a connection has at
//!   most one unanswered request in flight (it is not read while it waits),
//!   and a subscribe or unsubscribe adds at most one presence change, so a
//!   shard's control backlog is at most a few messages per connection of the
//!   sending shards. Hook answers from the hooks thread are bounded the
//!   same way (one request call and one refresh call per connection, and
//!   `[proxy] max_inflight` in all). Control messages are never dropped.
//!
//! A shard with an empty inbox sleeps in its io_uring; a sender rings its
//! [`Doorbell`] (one byte on a socketpair) only when the shard said it is
//! about to sleep, so a busy shard costs no syscall per message.

pub mod admin;
pub mod hooks;
pub mod sessions;
pub mod webhooks;
pub mod interest;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};

pub use interest::{InterestMap, ShardSet};

use crate::ids::ConnId;
use crate::history::HistoryMsg;
use crate::presence::PresenceMsg;
use crate::protocol::Outgoing;

/// Pause before retrying a publish whose destination shard's channel is
/// full (a client's publish, the API's, the bridge's): that shard's bus loop,
/// never blocked, is draining it.
pub const FULL_CHANNEL_RETRY: std::time::Duration = std::time::Duration::from_micros(200);

/// A publish crossing to another shard: the message and its encoded forms
/// are shared (`Arc`), never copied. One such message goes to each
/// interested shard, never one per subscriber.
#[derive(Debug, Clone)]
pub struct PublishMsg {
    pub msg: Arc<Outgoing>,
    /// Set only on the copy sent to the Redis bridge shard: publish it to
    /// the other nodes as well as delivering it locally.
    pub forward: bool,
    /// The publishing connection, when it asked not to receive its own
    /// message (`skip_self`).
    pub skip: Option<ConnId>,
    /// A publish to a history topic, from shard `Some(from)`, for the shard
    /// that numbers it (it rides the `sequence` channel and carries no
    /// position yet).
    pub sequence: Option<usize>,
}

impl PublishMsg {
    pub fn new(msg: Arc<Outgoing>, skip: Option<ConnId>) -> PublishMsg {
        PublishMsg { msg, forward: false, skip, sequence: None }
    }
}

/// Control traffic between shards.
#[derive(Debug)]
pub enum ControlMsg {
    /// Shard `from` gained (`on`) or lost its first/last subscriber of `topic`.
    /// With a `token`, the receiver answers [`ControlMsg::InterestApplied`]
    /// once its interest map includes it.
    Interest { topic: Arc<str>, from: usize, on: bool, token: Option<u64> },
    /// The interest change with this token is applied on the sending shard.
    InterestApplied { token: u64 },
    /// A request from the admin plane (answered on its own reply channel).
    Admin(admin::AdminCall),
    /// A backend's answer to a connection's hook call, from the hooks thread.
    Hook(hooks::HookReply),
    /// History queries to the topic's offset authority, and their answers.
    History(HistoryMsg),
    /// Presence changes and queries to the topic's owner, and their answers.
    Presence(PresenceMsg),
    /// Requests for fallback session `conn` of this shard (POSTed to
    /// `emulation_path` on any shard or node), counted in its slot's
    /// pending requests.
    Emulation { conn: ConnId, requests: Vec<String> },
    /// Requests for a fallback session of node `node`, to the bridge shard,
    /// which forwards them over Redis (`body`: the emulation POST's JSON).
    ForwardEmulation { node: String, body: Vec<u8> },
    /// Stop accepting, close every client with 1001, drain, exit.
    Shutdown,
    /// Shard `from` passed `step` of its shutdown (see `shard::shutdown`).
    /// Sent to every other shard after the traffic the step covers was
    /// handed to their channels, so a shard that has heard it from every
    /// shard finds that traffic in its own channels.
    Drained { from: usize, step: DrainStep },
}

/// The steps of a shutdown that shards wait for each other on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainStep {
    /// No client input is read any more, and every publish accepted from a
    /// client is in a channel (none waits for room).
    InputStopped,
    /// Every history publish it was handed is numbered and relayed.
    Relayed,
}

impl DrainStep {
    pub const ALL: [DrainStep; 2] = [DrainStep::InputStopped, DrainStep::Relayed];

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Wakes a sleeping shard. Shared by every thread that sends to the shard.
#[derive(Debug)]
pub struct Doorbell {
    /// Set by the owning shard right before it sleeps; a sender that swaps it
    /// back to false owes the shard one ring.
    armed: AtomicBool,
    tx: UnixStream,
}

impl Doorbell {
    /// Creates the bell and the socket the owning shard waits on.
    pub fn new() -> std::io::Result<(Arc<Doorbell>, UnixStream)> {
        let (tx, rx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok((Arc::new(Doorbell { armed: AtomicBool::new(false), tx }), rx))
    }

    /// Marks the owning shard as about to sleep. It must check its channels
    /// once more after this and before sleeping.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Marks the owning shard awake (it found work after arming).
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }

    /// Wakes the shard if it is (about to be) asleep.
    pub fn ring(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            // A full socket buffer means a wake-up is already pending.
            let _ = (&self.tx).write(&[1]);
        }
    }
}

/// The sending side of one shard's inbox, held by every other shard.
#[derive(Debug, Clone)]
pub struct Mailbox {
    data: Sender<PublishMsg>,
    sequence: Sender<PublishMsg>,
    control: Sender<ControlMsg>,
    bell: Arc<Doorbell>,
}

/// The receiving side, owned by the shard itself.
#[derive(Debug)]
pub struct Inbox {
    pub data: Receiver<PublishMsg>,
    pub sequence: Receiver<PublishMsg>,
    pub control: Receiver<ControlMsg>,
    pub bell: Arc<Doorbell>,
    /// The socket the bell rings; the shard waits on it when idle. Taken
    /// once, by the shard's bus loop ([`Inbox::take_bell_rx`]).
    bell_rx: Option<UnixStream>,
}

impl Inbox {
    /// Hands over the socket the bell rings (the first call only).
    pub fn take_bell_rx(&mut self) -> Option<UnixStream> {
        self.bell_rx.take()
    }
}

impl Mailbox {
    /// Hands a publish to the shard; gives it back when the shard's data
    /// channel is full (the caller waits and retries).
    pub fn try_publish(&self, msg: PublishMsg) -> Result<(), PublishMsg> {
        match self.data.try_send(msg) {
            Ok(()) => {
                self.bell.ring();
                Ok(())
            }
            Err(TrySendError::Full(msg)) => Err(msg),
            // The shard is gone (shutting down): nobody there to deliver to.
            Err(TrySendError::Disconnected(_)) => Ok(()),
        }
    }

    /// Hands a publish to a history topic to the shard that numbers it;
    /// gives it back when that shard's sequence channel is full.
    pub fn try_sequence(&self, msg: PublishMsg) -> Result<(), PublishMsg> {
        match self.sequence.try_send(msg) {
            Ok(()) => {
                self.bell.ring();
                Ok(())
            }
            Err(TrySendError::Full(msg)) => Err(msg),
            Err(TrySendError::Disconnected(_)) => Ok(()),
        }
    }

    /// The shard's doorbell (rung by its readiness watcher too).
    pub fn doorbell(&self) -> Arc<Doorbell> {
        self.bell.clone()
    }

    pub fn control(&self, msg: ControlMsg) {
        // Disconnected only during shutdown, when the message no longer matters.
        let _ = self.control.send(msg);
        self.bell.ring();
    }
}

/// Builds the inboxes of `shards` shards and the mailboxes that reach them.
pub fn build(shards: usize, capacity: usize) -> std::io::Result<(Vec<Mailbox>, Vec<Inbox>)> {
    let mut mailboxes = Vec::with_capacity(shards);
    let mut inboxes = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (data_tx, data_rx) = crossbeam_channel::bounded(capacity);
        let (sequence_tx, sequence_rx) = crossbeam_channel::bounded(capacity);
        let (control_tx, control_rx) = crossbeam_channel::unbounded();
        let (bell, bell_rx) = Doorbell::new()?;
        mailboxes.push(Mailbox { data: data_tx, sequence: sequence_tx, control: control_tx, bell: bell.clone() });
        inboxes.push(Inbox { data: data_rx, sequence: sequence_rx, control: control_rx, bell, bell_rx: Some(bell_rx) });
    }
    Ok((mailboxes, inboxes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn bell_rings_only_when_armed() {
        let (bell, mut rx) = Doorbell::new().unwrap();
        bell.ring();
        let mut buf = [0u8; 8];
        assert!(rx.read(&mut buf).is_err(), "unarmed bell must not write");
        bell.arm();
        bell.ring();
        bell.ring();
        assert_eq!(rx.read(&mut buf).unwrap(), 1, "one ring per arming");
    }

    #[test]
    fn full_data_channel_hands_the_message_back() {
        let (mailboxes, inboxes) = build(1, 2).unwrap();
        let payload = crate::protocol::Payload { bytes: b"1", json: true };
        let stats = crate::metrics::ShardStats::default();
        let m = Outgoing::new("t", crate::protocol::Kind::Message, payload, crate::protocol::Encoding::Json, crate::clock::Stamp::now(), &stats);
        let msg = PublishMsg::new(m, None);
        assert!(mailboxes[0].try_publish(msg.clone()).is_ok());
        assert!(mailboxes[0].try_publish(msg.clone()).is_ok());
        assert!(mailboxes[0].try_publish(msg.clone()).is_err());
        inboxes[0].data.try_recv().unwrap();
        assert!(mailboxes[0].try_publish(msg).is_ok());
    }
}
