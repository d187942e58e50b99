//! Where the shard and the node link (the Redis bridge, on the bridge
//! shard) meet: the whole interface between them, in both directions.
//!
//! - [`Remote`]: what the shard asks of the link. The bridge implements it
//!   (`bridge::remote`) and `runtime::shard` attaches it; the shard knows
//!   nothing else of the bridge.
//! - What the link asks of the shard, and nothing else (besides reading its
//!   `config` and `stats()`):
//!   - deliver a message from another node: [`Shard::deliver_remote`];
//!   - deliver a message Redis numbered, once the relay has room:
//!     [`Shard::relay_room`], [`Shard::deliver_numbered`];
//!   - acknowledge an interest round Redis confirmed: [`Shard::interest_acked`];
//!   - answer a history or presence query: [`Shard::answer_history`],
//!     [`Shard::answer_presence`];
//!   - announce a join that was held: [`Shard::announce`];
//!   - disconnect a user's connections on this node: [`Shard::disconnect_user_everywhere`];
//!   - read the node's presence to refresh the Redis copy: [`Shard::for_each_member`];
//!   - whether a topic keeps history: [`Shard::has_history`].
//!
//!   Those defined here exist for the link; the others belong to their
//!   owners (`interest`, `history`, `presence`, `admin`), which use them too.
//!
//! Runs on the bridge shard; nothing here blocks.

use std::rc::Rc;
use std::sync::Arc;

use super::Shard;
use crate::auth::HistoryPolicy;
use crate::bus::admin::RedisReport;
use crate::bus::FULL_CHANNEL_RETRY;
use crate::history::{Query, ReplyTo};
use crate::ids::{ConnId, InterestAck};
use crate::metrics::ShardStats;
use crate::presence::Member;
use crate::protocol::Outgoing;

/// What the shard asks of the link to the other nodes. Each call queues
/// work and returns at once; answers come back through the shard's methods
/// listed above ([`Shard::answer_history`], [`Shard::interest_acked`], ...).
pub trait Remote {
    /// A message (a publish, a direct message, a join or leave) published
    /// on this node, for the other nodes.
    fn publish(&self, msg: &Outgoing, stats: &ShardStats);
    /// A publish to a history topic: Redis numbers it and every node, this
    /// one included, gets it back numbered. `skip` is the publisher, when
    /// it asked not to receive its own message.
    fn number(&self, msg: &Outgoing, policy: HistoryPolicy, skip: Option<ConnId>, stats: &ShardStats);
    /// A history query (a subscribe's position, a recovery, a `history`
    /// request), answered with [`Shard::answer_history`]; at most `budget`
    /// bytes of payloads.
    fn query_history(&self, topic: &str, policy: HistoryPolicy, query: Query, budget: usize, to: ReplyTo);
    /// Whether the node has subscribers of `topic` now. With `ack`, the
    /// acknowledgement is held until Redis confirms the SUBSCRIBE; returns
    /// false when there is nothing to wait for.
    fn set_interest(&self, topic: &str, interested: bool, ack: Option<InterestAck>) -> bool;
    /// The node started or stopped holding subscribers of `topic`: the
    /// link reports `topic_occupied` / `topic_vacated` when the change is
    /// the cluster's first or last.
    fn occupancy(&self, topic: &str, occupied: bool);
    /// Requests for a fallback session of node `node` (an emulation POST's
    /// JSON), published on that node's channel.
    fn forward_emulation(&self, node: &str, body: &[u8], stats: &ShardStats);
    /// Writes (or removes) a member of `topic` in the Redis copy of
    /// presence; a join with `ack` may hand it back when nothing is to wait
    /// for.
    fn presence_write(&self, topic: &str, join: bool, member: &Member, ack: Option<InterestAck>) -> Option<InterestAck>;
    /// Holds the announcement of `conn`'s join to `topic` while the node's
    /// SUBSCRIBE of the topic is unconfirmed; hands it back when there is
    /// nothing to wait for.
    fn hold_join(&self, topic: &str, conn: ConnId, event: Arc<Outgoing>) -> Option<Arc<Outgoing>>;
    /// Drops `conn`'s held join to `topic`, if any (it left before the
    /// confirmation). Returns whether there was one.
    fn drop_held_join(&self, topic: &str, conn: ConnId) -> bool;
    /// A presence query across the nodes, answered with [`Shard::answer_presence`].
    fn query_presence(&self, topic: &str, stats: bool, max: usize, from: usize, conn: ConnId, id: u64);
    /// An admin disconnect of `user`, for the other nodes.
    fn disconnect_user(&self, user: &str, code: u16, reason: &str, stats: &ShardStats);
    /// This node's summary, for the other nodes' admin planes.
    fn announce_node(&self, summary: &[u8], stats: &ShardStats);
    /// The link's state, for `/api/info`.
    fn report(&self) -> RedisReport;
}

impl Shard {
    /// Attaches the link to the other nodes (on the bridge shard, once, at
    /// start).
    pub fn attach_remote(&self, remote: Rc<dyn Remote>) {
        if self.remote.set(remote).is_err() {
            panic!("shard {}: a second remote attached", self.index);
        }
    }

    /// The link to the other nodes, on the bridge shard.
    pub(super) fn remote(&self) -> Option<&dyn Remote> {
        self.remote.get().map(|r| &**r)
    }

    /// Delivers a message from another node: to this shard's subscribers
    /// and, as one message each, to every other interested shard, waiting
    /// (without blocking the shard) for room on their channels, so Redis is
    /// not read meanwhile.
    pub async fn deliver_remote(&self, msg: Arc<Outgoing>, skip: Option<ConnId>) {
        if let Err(mut pending) = self.fan_out_remote(msg, skip) {
            while !self.retry_publish(&mut pending) {
                glommio::timer::sleep(FULL_CHANNEL_RETRY).await;
            }
        }
    }

    /// Waits until the relay of numbered messages is shorter than `[bus]
    /// capacity` (Redis is not read meanwhile).
    pub async fn relay_room(&self) {
        let capacity = self.config.bus.capacity;
        while self.retry_relay() >= capacity {
            glommio::timer::sleep(FULL_CHANNEL_RETRY).await;
        }
    }

    /// Delivers a message Redis numbered, here and to every other
    /// interested shard, in order behind those before it.
    pub fn deliver_numbered(&self, msg: Arc<Outgoing>, skip: Option<ConnId>) {
        self.relay(msg, skip);
    }

    /// The node's presence, topic by topic, for the link to write to Redis.
    pub fn for_each_member(&self, mut each: impl FnMut(&str, &mut dyn Iterator<Item = &Member>)) {
        for (topic, members) in self.presence.borrow().iter() {
            let mut members = members;
            each(topic, &mut members);
        }
    }
}
