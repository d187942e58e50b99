//! What the admin plane (its own thread, outside the shards) asks a shard,
//! and what the shard answers. Calls ride the shard's control channel like
//! every other cross-shard message; answers go back on a oneshot channel the
//! admin thread awaits with a deadline. A shard never waits for the admin
//! thread, and the admin thread never touches shard state.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::sync::OwnedSemaphorePermit;

use crate::protocol::Outgoing;

/// Where a shard sends its answer, and the call's place among `[admin]
/// max_pending`: it is released when the shard has answered (or dropped the
/// call), not when the admin thread stops waiting, so calls queued on a slow
/// shard stay bounded. An answer to a request that timed out goes nowhere.
#[derive(Debug)]
pub struct Reply<T> {
    tx: oneshot::Sender<T>,
    _permit: OwnedSemaphorePermit,
}

impl<T> Reply<T> {
    pub fn new(tx: oneshot::Sender<T>, permit: OwnedSemaphorePermit) -> Reply<T> {
        Reply { tx, _permit: permit }
    }

    pub fn send(self, answer: T) {
        let _ = self.tx.send(answer);
    }
}

/// One admin request to one shard.
#[derive(Debug)]
pub enum AdminCall {
    /// This shard's counts, for `/api/info` and `/readyz`. With `node_topics`,
    /// also the node's distinct topics as this shard's interest map sees them.
    Report { node_topics: bool, reply: Reply<ShardReport> },
    /// Local topics starting with `prefix`, the first `limit` by name.
    Topics { prefix: String, limit: usize, reply: Reply<TopicList> },
    /// Fan these messages out exactly as client publishes (local subscribers,
    /// other shards, Redis), in order, then answer.
    Publish { msgs: Vec<Arc<Outgoing>>, reply: Reply<()> },
    /// Close every connection of `user` on this shard with `code`/`reason`
    /// and answer how many. With `forward` (the bridge shard only), also
    /// tell the other nodes through Redis.
    Disconnect { user: Arc<str>, code: u16, reason: Arc<str>, forward: bool, reply: Option<Reply<usize>> },
    /// Publish this node's summary (JSON) to the other nodes (bridge shard only).
    Announce(Bytes),
}

/// A shard's answer to [`AdminCall::Report`].
#[derive(Debug, Clone, Default)]
pub struct ShardReport {
    pub shard: usize,
    pub connections: usize,
    /// Client subscriptions (a user's internal direct-message topic is not one).
    pub subscriptions: usize,
    /// Client topics with a subscriber on this shard.
    pub topics: usize,
    /// Distinct client topics with a subscriber anywhere on the node, when asked.
    pub node_topics: Option<usize>,
    /// False once the shard stopped accepting (shutting down).
    pub accepting: bool,
    /// The Redis bridge's state, from the bridge shard.
    pub redis: Option<RedisReport>,
}

/// The Redis bridge's connections, from the bridge shard.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisReport {
    pub subscriber_connected: bool,
    pub publisher_connected: bool,
    /// Channels the subscriber connection is (or will be) subscribed to.
    pub channels: usize,
}

/// A shard's answer to [`AdminCall::Topics`]: `(topic, local subscribers)`
/// sorted by topic, and whether more matched than were returned.
#[derive(Debug, Clone, Default)]
pub struct TopicList {
    pub topics: Vec<(String, usize)>,
    pub more: bool,
}
