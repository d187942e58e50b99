//! The Redis bridge: fan-out across nodes. Lives on one shard per node
//! (`[redis] bridge_shard`); other shards reach it only through the bus.
//!
//! The bridge talks to Redis through links ([`link`]), each a publisher and
//! a subscriber connection to one server, driven by the bridge shard's
//! executor (no thread ever blocks on Redis). `[redis] mode` decides which
//! servers ([`topology`]):
//! - `single`: one link to `url`;
//! - `sentinel`: one link to the primary the Sentinels name, moved when
//!   they announce a new one;
//! - `cluster`: one link per primary of a Redis Cluster. Every command is
//!   routed by the slot of its topic's channel ([`cluster`]): messages are
//!   `SPUBLISH`ed to, and topics `SSUBSCRIBE`d on, the primary owning it
//!   (sharded pub/sub), and a topic's history and presence keys are
//!   hash-tagged into the same slot.
//!
//! The subscriber side subscribes exactly the topics with a local subscriber
//! somewhere on the node, and turns pushes into the same encode-once fan-out
//! as a local publish. Delivery across nodes is at most once: a command lost
//! with its connection is counted dropped, never sent twice.
//!
//! The publisher connections also carry history and presence
//! (`scripts.rs`): numbered publishes to history topics, history reads for
//! recovery and `history` requests, and this node's presence entries, which
//! are written in coalesced batches (one script call per changed topic per
//! write, pipelined with the publishes) and refreshed every third of
//! `[redis] presence_ttl_ms`. Every command is matched to its reply in
//! order; a read whose connection fails is answered "unavailable".
//!
//! Besides messages, the same connections carry the admin plane's traffic
//! between nodes: disconnect orders on a user's channel (only nodes with
//! that user's connections are subscribed to it), and each node's periodic
//! summary on the `$nodes` channel, handed to the admin thread.

pub mod cluster;
pub mod endpoint;
pub mod envelope;
mod fence;
mod inbound;
mod link;
mod refill;
mod reply;
pub mod resp;
pub mod scripts;
mod sequence;
mod topology;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use flatbuffers::FlatBufferBuilder;
use glommio::timer::sleep;

use crate::auth::HistoryPolicy;
use crate::config::{RedisConfig, RedisTopology};
use crate::history::{Query, ReplyTo};
use crate::ids::{ConnId, InterestAck};
use crate::metrics::ShardStats;
use crate::notify::Notify;
use crate::protocol::{Kind, Outgoing};
use crate::shard::Shard;
use cluster::SlotMap;
use link::Link;
use scripts::Script;

/// Bytes read from a Redis connection per read call.
const READ_CHUNK: usize = 64 * 1024;

/// Presence entries per write when the node refreshes a topic's entries.
const PRESENCE_CHUNK: usize = 1000;

/// Redirections (`MOVED`, `ASK`, `TRYAGAIN`) one command may follow before
/// it is given up (counted dropped, or answered "unavailable").
const MAX_REDIRECTS: u8 = 5;

/// The channel (after `[redis] channel_prefix`) on which nodes announce
/// themselves to each other's admin plane. `$`: no client topic can clash.
pub const NODES_CHANNEL: &str = "$nodes";

/// The bridge shard's Redis state. Touched only by the bridge shard.
pub struct Bridge {
    config: RedisConfig,
    node_id: String,
    /// The links to Redis: one in `single` and `sentinel` mode; in `cluster`
    /// mode one per primary of `map`, in the map's order.
    links: RefCell<Vec<Rc<Link>>>,
    /// Cluster mode: which primary owns each slot (`None` until first read).
    map: RefCell<Option<SlotMap>>,
    /// Cluster mode: commands for slots no known primary serves, waiting
    /// for the next slot map (at most `buffer_messages` droppable ones).
    unrouted: RefCell<VecDeque<Outbound>>,
    /// Cluster mode: slots whose owner changed while the old one may still
    /// pass on their commands (unanswered, or run and being forwarded), and
    /// the commands waiting until it has (per-publisher order across
    /// failovers and migrations: [`fence`]).
    fences: RefCell<fence::Fences>,
    /// Cluster mode: read the slot map now.
    refresh: Notify,
    /// Cluster mode: subscribe every wanted topic again once the map is read
    /// (Redis dropped subscriptions of slots that moved).
    resync: Cell<bool>,
    /// Topics with at least one subscriber on this node: what the node must
    /// be subscribed to. Bounded by the node's topics.
    wanted: RefCell<HashSet<Rc<str>, ahash::RandomState>>,
    /// This node's presence changes not yet written, per topic, in order.
    /// Bounded by the subscribes and unsubscribes between two writes.
    presence_ops: RefCell<HashMap<Arc<str>, Vec<PresenceOp>, ahash::RandomState>>,
    presence_ready: Notify,
    /// Every entry of the node is to be rewritten (after a reconnect).
    presence_refresh: Cell<bool>,
    /// Epochs offered to Redis for topics that have none.
    epochs: RefCell<crate::history::Epochs>,
    /// The last offset delivered per history topic, and gaps being refilled.
    refills: RefCell<refill::Refills>,
    /// The number of this node's next message per topic, for the receivers'
    /// loss count.
    numbering: RefCell<sequence::Numbering>,
    /// The last number heard per wanted topic and origin: gaps are counted
    /// missed (`redis_missed_total`).
    gaps: RefCell<sequence::Gaps>,
    /// Other nodes' announcements, to the admin thread (bounded; dropped when full).
    announcements: Option<tokio::sync::mpsc::Sender<Bytes>>,
    /// What waits for Redis to confirm a topic's SUBSCRIBE: released on
    /// confirmation or when the connection drops; bounded by the subscribes
    /// in flight (one per waiting connection).
    confirmations: RefCell<HashMap<Rc<str>, Unconfirmed, ahash::RandomState>>,
    builder: RefCell<FlatBufferBuilder<'static>>,
    /// The bridge's own tasks (presence, discovery), for [`Bridge::stop`].
    tasks: RefCell<Vec<glommio::task::JoinHandle<()>>>,
}

/// One command for a publisher connection and what its reply is for.
pub struct Outbound {
    packed: Vec<u8>,
    on_reply: OnReply,
    /// The cluster slot of the command's channel and keys (0 outside cluster mode).
    slot: u16,
    /// Redirections followed so far.
    redirects: u8,
    /// Written to a primary that lost its slot since: the slot's fence
    /// waits for its reply.
    fenced: bool,
}

impl Outbound {
    fn new(packed: Vec<u8>, on_reply: OnReply, slot: u16) -> Outbound {
        Outbound { packed, on_reply, slot, redirects: 0, fenced: false }
    }

    /// A connection set-up command (SCRIPT LOAD) already written: only
    /// errors matter.
    fn setup() -> Outbound {
        Outbound::new(Vec::new(), OnReply::Setup, 0)
    }

    /// A set-up command to write (ASKING before a redirected command).
    fn setup_command(packed: Vec<u8>) -> Outbound {
        Outbound::new(packed, OnReply::Setup, 0)
    }

    fn is_setup(&self) -> bool {
        matches!(self.on_reply, OnReply::Setup)
    }
}

/// What to do with a command's reply.
enum OnReply {
    /// A PUBLISH, a numbered publish or a presence write: counted.
    Count,
    /// SCRIPT LOAD on connect, ASKING before a redirected command: only errors matter.
    Setup,
    /// A history read for a connection.
    History { query: Query, to: ReplyTo },
    /// A presence read for a connection on shard `from`.
    Presence { stats: bool, from: usize, conn: ConnId, id: u64 },
    /// A presence write that subscribes wait for (never dropped: bounded
    /// by the waiting connections).
    Written(Vec<InterestAck>),
    /// The missing range of a history topic's stream, in `epoch` (at most
    /// one refill in flight per topic).
    Refill { topic: Arc<str>, epoch: Arc<str> },
    /// Drain marker `id` of `slot`, through the slot's old owner ([`fence`]).
    Drain { slot: u16, id: u64 },
}

impl OnReply {
    /// Whether the command may be dropped when the buffer is full.
    fn droppable(&self) -> bool {
        matches!(self, OnReply::Count)
    }
}

/// A presence change of one connection of this node.
#[derive(Debug, Clone)]
struct PresenceOp {
    join: bool,
    client: Arc<str>,
    user: Option<Arc<str>>,
    /// The subscribe waiting for this entry to be in Redis.
    ack: Option<InterestAck>,
}


/// What waits for Redis to confirm one topic's SUBSCRIBE.
#[derive(Debug, Default)]
struct Unconfirmed {
    /// Subscribers' interest rounds.
    acks: Vec<InterestAck>,
    /// Join announcements (join_leave topics), with the joining connection.
    joins: Vec<(ConnId, Arc<Outgoing>)>,
}

impl Unconfirmed {
    /// Acknowledges the rounds, then announces the joins.
    fn release(self, shard: &Shard) {
        for ack in self.acks {
            shard.interest_acked(ack);
        }
        for (conn, event) in self.joins {
            shard.announce(event, Some(conn));
        }
    }
}

impl Bridge {
    pub fn new(config: RedisConfig, node_id: String, announcements: Option<tokio::sync::mpsc::Sender<Bytes>>) -> Bridge {
        let links = match &config.topology {
            RedisTopology::Single(endpoint) => vec![Rc::new(Link::new(endpoint.clone()))],
            RedisTopology::Sentinel { primary, .. } => vec![Rc::new(Link::new(primary.clone()))],
            // Made from the slot map once it is read.
            RedisTopology::Cluster { .. } => Vec::new(),
        };
        Bridge {
            config,
            node_id,
            links: RefCell::new(links),
            map: RefCell::default(),
            unrouted: RefCell::default(),
            fences: RefCell::default(),
            refresh: Notify::default(),
            resync: Cell::new(false),
            wanted: RefCell::default(),
            presence_ops: RefCell::default(),
            presence_ready: Notify::default(),
            presence_refresh: Cell::new(false),
            epochs: RefCell::new(crate::history::Epochs::new("r")),
            refills: RefCell::default(),
            numbering: RefCell::default(),
            gaps: RefCell::default(),
            announcements,
            confirmations: RefCell::default(),
            builder: RefCell::new(FlatBufferBuilder::with_capacity(1024)),
            tasks: RefCell::default(),
        }
    }

    fn config(&self) -> &RedisConfig {
        &self.config
    }

    fn is_cluster(&self) -> bool {
        matches!(self.config.topology, RedisTopology::Cluster { .. })
    }

    fn channel(&self, topic: &str) -> String {
        format!("{}{}", self.config.channel_prefix, topic)
    }

    /// The cluster slot of `topic`'s channel (and of its keys); 0 outside
    /// cluster mode, where nothing is routed by slot.
    fn slot(&self, topic: &str) -> u16 {
        if !self.is_cluster() {
            return 0;
        }
        cluster::key_slot(self.channel(topic).as_bytes())
    }

    /// The link carrying `slot`'s channels; `None` in cluster mode until a
    /// primary is known for it.
    fn route(&self, slot: u16) -> Option<Rc<Link>> {
        let links = self.links.borrow();
        if !self.is_cluster() {
            return links.first().cloned();
        }
        let owner = self.map.borrow().as_ref()?.owner(slot)?;
        links.get(owner).cloned()
    }

    /// The link at `host:port`, if the bridge has one.
    fn link_at(&self, host: &str, port: u16) -> Option<Rc<Link>> {
        self.links.borrow().iter().find(|l| {
            let e = l.endpoint.borrow();
            e.host == host && e.port == port
        }).cloned()
    }

    /// The pub/sub commands of this mode: (subscribe, unsubscribe, publish).
    fn subscribe_commands(&self) -> (&'static str, &'static str) {
        if self.is_cluster() {
            ("SSUBSCRIBE", "SUNSUBSCRIBE")
        } else {
            ("SUBSCRIBE", "UNSUBSCRIBE")
        }
    }

    fn publish_command(&self) -> &'static str {
        if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// Channels `link` must be subscribed to: the wanted topics it carries,
    /// and the nodes' channel when the admin plane listens to it.
    fn channels_on(&self, link: &Link) -> Vec<Rc<str>> {
        let mut topics: Vec<Rc<str>> = self.wanted.borrow().iter().cloned().collect();
        if self.announcements.is_some() {
            topics.push(Rc::from(NODES_CHANNEL));
        }
        topics.retain(|t| self.route(self.slot(t)).is_some_and(|l| std::ptr::eq(&*l, link)));
        topics.extend(self.fences.borrow().markers_on(link));
        topics.into_iter().map(|t| Rc::from(self.channel(&t))).collect()
    }

    /// Records whether the node has local interest in `topic` now, and
    /// queues the SUBSCRIBE/UNSUBSCRIBE that follows. With `ack`, the
    /// acknowledgement is held until Redis confirms the SUBSCRIBE; returns
    /// false when there is nothing to wait for (no new SUBSCRIBE, or Redis is
    /// not connected: a subscriber is never kept waiting on Redis being down).
    pub fn set_interest(&self, topic: &str, interested: bool, ack: Option<InterestAck>) -> bool {
        let mut wanted = self.wanted.borrow_mut();
        let changed = if interested {
            !wanted.contains(topic) && wanted.insert(Rc::from(topic))
        } else {
            wanted.remove(topic)
        };
        drop(wanted);
        if changed {
            if interested {
                self.gaps.borrow_mut().want(topic);
            } else {
                self.refills.borrow_mut().forget(topic);
                self.gaps.borrow_mut().forget(topic);
            }
        }
        if interested && !changed {
            // A SUBSCRIBE for it may still be on its way: wait for the same
            // confirmation.
            if let (Some(ack), Some(waiting)) = (ack, self.confirmations.borrow_mut().get_mut(topic)) {
                waiting.acks.push(ack);
                return true;
            }
        }
        let Some(link) = self.route(self.slot(topic)).filter(|l| changed && l.subscriber_connected.get()) else {
            return false;
        };
        let topic: Rc<str> = Rc::from(topic);
        link.change(topic.clone(), interested);
        match ack {
            Some(ack) if interested => {
                self.confirmations.borrow_mut().entry(topic).or_default().acks.push(ack);
                true
            }
            _ => false,
        }
    }

    /// What Redis confirming `topic`'s SUBSCRIBE releases.
    fn confirmed(&self, topic: &str) -> Unconfirmed {
        self.confirmations.borrow_mut().remove(topic).unwrap_or_default()
    }

    /// Holds the announcement of a join to `topic` by connection `conn`
    /// while the node's SUBSCRIBE of the topic is unconfirmed: the other
    /// nodes must not hear of a member before what they publish reaches it.
    /// Hands the event back when there is nothing to wait for.
    pub fn hold_join(&self, topic: &str, conn: ConnId, event: Arc<Outgoing>) -> Option<Arc<Outgoing>> {
        match self.confirmations.borrow_mut().get_mut(topic) {
            Some(waiting) => {
                waiting.joins.push((conn, event));
                None
            }
            None => Some(event),
        }
    }

    /// Drops the held join of `conn` to `topic`, if any: the connection
    /// left before the confirmation (closed by the server, an admin
    /// `disconnect` say: it is not read while its subscribe waits), so
    /// neither its join nor its leave is announced. Returns whether there
    /// was one.
    pub fn drop_held_join(&self, topic: &str, conn: ConnId) -> bool {
        let mut confirmations = self.confirmations.borrow_mut();
        let Some(waiting) = confirmations.get_mut(topic) else { return false };
        let before = waiting.joins.len();
        waiting.joins.retain(|(c, _)| *c != conn);
        waiting.joins.len() != before
    }

    /// The subscriber connection of `link` is gone: everything waiting for
    /// a SUBSCRIBE on it is released.
    fn subscriber_lost(&self, shard: &Shard, link: &Link) {
        link.subscriber_connected.set(false);
        ShardStats::sub(&shard.stats().redis_connected, 1);
        let released: Vec<Unconfirmed> = {
            let mut confirmations = self.confirmations.borrow_mut();
            let lost: Vec<Rc<str>> = confirmations
                .keys()
                .filter(|t| self.route(self.slot(t)).is_none_or(|l| std::ptr::eq(&*l, link)))
                .cloned()
                .collect();
            lost.iter().filter_map(|t| confirmations.remove(t)).collect()
        };
        for waiting in released {
            waiting.release(shard);
        }
    }

    /// The publisher connection of `link` is gone.
    fn publisher_lost(&self, shard: &Shard, link: &Link) {
        ShardStats::set(&shard.stats().redis_pipeline_depth, 0);
        self.fail_unsent_reads(shard, link);
        if self.is_cluster() {
            self.refresh.raise();
        }
    }

    /// A connection attempt to `link` failed.
    fn unreachable(&self, _link: &Link) {
        if self.is_cluster() {
            // A primary that cannot be reached may have been replaced.
            self.refresh.raise();
        }
    }

    /// What the bridge waits for, for the log line of a failed attempt.
    fn waiting_for(&self) -> String {
        match &self.config.topology {
            RedisTopology::Single(e) => format!("redis at {}", e.address()),
            RedisTopology::Cluster { .. } => "this redis cluster primary (or the slot map naming its replacement)".into(),
            RedisTopology::Sentinel { master_name, .. } => format!("the primary the sentinels name {master_name:?}"),
        }
    }

    /// Every entry of the node is to be written again (a publisher
    /// connection came up: Redis may have lost them).
    fn refresh_presence(&self) {
        self.presence_refresh.set(true);
        self.presence_ready.raise();
    }

    /// Queues a message (a publish, or a direct message on a `$user:` topic)
    /// for the other nodes.
    pub fn enqueue(&self, msg: &Outgoing, stats: &ShardStats) {
        let mut builder = self.builder.borrow_mut();
        let envelope = match &msg.kind {
            Kind::Join { client, user } => envelope::encode_presence(&mut builder, &self.node_id, &msg.topic, true, client, user.as_deref()),
            Kind::Leave { client, user } => envelope::encode_presence(&mut builder, &self.node_id, &msg.topic, false, client, user.as_deref()),
            Kind::Message | Kind::Direct { .. } => {
                let numbers = envelope::Numbers { seq: self.numbering.borrow_mut().next(&msg.topic), skip: 0 };
                envelope::encode(&mut builder, &self.node_id, &msg.topic, &msg.payload, msg.payload_is_json, msg.sender(), numbers)
            }
        };
        let command = redis::cmd(self.publish_command()).arg(self.channel(&msg.topic)).arg(envelope).get_packed_command();
        drop(builder);
        self.push_command(command, self.slot(&msg.topic), stats);
    }

    /// Queues a message of a history topic for Redis to number, store and
    /// publish to every node, this one included ([`scripts::NUMBER`]).
    /// `skip` is the publishing connection that asked not to receive it.
    pub fn enqueue_numbered(&self, msg: &Outgoing, policy: HistoryPolicy, skip: Option<ConnId>, stats: &ShardStats) {
        let keys = self.keys(&msg.topic);
        let mut builder = self.builder.borrow_mut();
        // Numbered by Redis (offsets), not by this node.
        let numbers = envelope::Numbers { seq: 0, skip: skip.map_or(0, |c| c.0) };
        let envelope = envelope::encode(&mut builder, &self.node_id, &msg.topic, &msg.payload, msg.payload_is_json, None, numbers);
        let command = redis::cmd("EVALSHA")
            .arg(Script::Number.sha())
            .arg(2)
            .arg(keys.meta())
            .arg(keys.stream())
            .arg(self.channel(&msg.topic))
            .arg(envelope)
            .arg(policy.size)
            .arg(policy.ttl.as_millis() as u64)
            .arg(&*self.epochs.borrow_mut().fresh())
            .arg(self.publish_command())
            .get_packed_command();
        drop(builder);
        self.push_command(command, self.slot(&msg.topic), stats);
    }

    /// The Redis keys of `topic`'s history and presence, in its channel's slot.
    fn keys<'a>(&'a self, topic: &'a str) -> scripts::Keys<'a> {
        let slot = cluster::key_slot(self.channel(topic).as_bytes());
        scripts::Keys { prefix: &self.config.channel_prefix, topic, slot }
    }

    /// Sends a history read for connection `conn` on shard `from`; the
    /// answer comes back through that shard. While the publisher connection
    /// is down the read waits for the next connection attempt, and is
    /// answered "unavailable" if that fails.
    pub fn query_history(&self, topic: &str, policy: HistoryPolicy, query: Query, budget: usize, to: ReplyTo) {
        let (mode, after, count) = match &query {
            Query::Position => ("after", 0, 0),
            Query::Recover(since) => ("after", since.offset, policy.size),
            Query::Range { since: Some(since), limit } => ("after", since.offset, (*limit).min(policy.size)),
            Query::Range { since: None, limit } => ("latest", 0, (*limit).min(policy.size)),
        };
        let packed = self.read_command(topic, policy, mode, after, count, budget);
        self.push_read(Outbound::new(packed, OnReply::History { query, to }, self.slot(topic)));
    }

    /// Packs one [`scripts::READ`] of `topic`: `mode` `after` (the entries
    /// after offset `after`) or `latest`, at most `count` (0: the position
    /// only) and `budget` bytes of payloads.
    fn read_command(&self, topic: &str, policy: HistoryPolicy, mode: &str, after: u64, count: usize, budget: usize) -> Vec<u8> {
        let keys = self.keys(topic);
        redis::cmd("EVALSHA")
            .arg(Script::Read.sha())
            .arg(2)
            .arg(keys.meta())
            .arg(keys.stream())
            .arg(mode)
            .arg(format!("{}-0", after.saturating_add(1)))
            .arg(count)
            .arg(budget)
            .arg(policy.ttl.as_millis() as u64)
            .arg(&*self.epochs.borrow_mut().fresh())
            .get_packed_command()
    }

    /// Sends a presence read (every node's entries of `topic`) for
    /// connection `conn` on shard `from`, like [`Bridge::query_history`].
    pub fn query_presence(&self, topic: &str, stats: bool, max: usize, from: usize, conn: ConnId, id: u64) {
        let keys = self.keys(topic);
        let packed = redis::cmd("EVALSHA")
            .arg(Script::PresenceRead.sha())
            .arg(2)
            .arg(keys.presence())
            .arg(keys.presence_expiry())
            .arg(if stats { "stats" } else { "list" })
            .arg(max)
            .get_packed_command();
        self.push_read(Outbound::new(packed, OnReply::Presence { stats, from, conn, id }, self.slot(topic)));
    }

    /// Answers "unavailable" to every read not yet sent on `link` and
    /// releases the subscribes waiting for presence writes (the connection
    /// attempt failed or the connection was lost); publishes stay queued.
    fn fail_unsent_reads(&self, shard: &Shard, link: &Link) {
        let reads: Vec<OnReply> = {
            let mut outbound = link.outbound.borrow_mut();
            let (reads, publishes): (VecDeque<Outbound>, VecDeque<Outbound>) = outbound.drain(..).partition(|c| !c.on_reply.droppable());
            *outbound = publishes;
            reads.into_iter().map(|c| c.on_reply).collect()
        };
        for on_reply in reads {
            self.fail(shard, on_reply);
        }
        // Subscribes waiting for presence writes not yet sent go on; the
        // writes stay queued for the next connection.
        let acks: Vec<InterestAck> =
            self.presence_ops.borrow_mut().values_mut().flat_map(|ops| ops.iter_mut().filter_map(|op| op.ack.take())).collect();
        for ack in acks {
            shard.interest_acked(ack);
        }
    }

    /// Cluster mode, the slot map could not be read: reads waiting for a
    /// primary are answered "unavailable" (publishes stay, bounded).
    fn fail_unrouted_reads(&self, shard: &Shard) {
        let reads: Vec<OnReply> = {
            let mut unrouted = self.unrouted.borrow_mut();
            let (reads, publishes): (VecDeque<Outbound>, VecDeque<Outbound>) = unrouted.drain(..).partition(|c| !c.on_reply.droppable());
            *unrouted = publishes;
            reads.into_iter().map(|c| c.on_reply).collect()
        };
        for on_reply in reads {
            self.fail(shard, on_reply);
        }
    }

    /// Reads the offsets of `topic` between `after` and `before` (both
    /// excluded; `u64::MAX`: everything after) for a refill, in `epoch`.
    /// The reply carries at most `budget` bytes of payloads (what does not
    /// fit stays a gap).
    fn refill_read(&self, topic: &str, policy: HistoryPolicy, after: u64, before: u64, epoch: Arc<str>, budget: usize) {
        let missing = before.saturating_sub(after).saturating_sub(1);
        let count = usize::try_from(missing).unwrap_or(usize::MAX).min(policy.size);
        let packed = self.read_command(topic, policy, "after", after, count, budget);
        self.push_read(Outbound::new(packed, OnReply::Refill { topic: topic.into(), epoch }, self.slot(topic)));
    }

    /// Records a presence change of this node for the next coalesced write.
    /// `ack` is released when Redis confirms the write; it is handed back
    /// (nothing to wait for) while the publisher connection is down.
    pub fn presence_write(&self, topic: &str, join: bool, client: &Arc<str>, user: Option<&Arc<str>>, ack: Option<InterestAck>) -> Option<InterestAck> {
        let up = self.route(self.slot(topic)).is_some_and(|l| l.publisher_connected.get());
        let ack = match ack {
            Some(ack) if !up => return Some(ack),
            ack => ack,
        };
        let op = PresenceOp { join, client: client.clone(), user: user.cloned(), ack };
        self.presence_ops.borrow_mut().entry(topic.into()).or_default().push(op);
        self.presence_ready.raise();
        None
    }

    /// Packs one presence write of `topic` ([`scripts::PRESENCE_WRITE`]).
    fn presence_command<'a>(&self, topic: &str, ops: impl Iterator<Item = &'a PresenceOp>) -> Vec<u8> {
        let keys = self.keys(topic);
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(Script::PresenceWrite.sha())
            .arg(2)
            .arg(keys.presence())
            .arg(keys.presence_expiry())
            .arg(self.config.presence_ttl.as_millis() as u64);
        for op in ops {
            cmd.arg(if op.join { "+" } else { "-" }).arg(&*op.client).arg(op.user.as_deref().unwrap_or(""));
        }
        cmd.get_packed_command()
    }

    /// Queues an order for the other nodes to close `user`'s connections.
    pub fn enqueue_disconnect(&self, user: &str, code: u16, reason: &str, stats: &ShardStats) {
        let topic = crate::topic::user_topic(user);
        let mut builder = self.builder.borrow_mut();
        let envelope = envelope::encode_disconnect(&mut builder, &self.node_id, &topic, code, reason);
        let command = redis::cmd(self.publish_command()).arg(self.channel(&topic)).arg(envelope).get_packed_command();
        drop(builder);
        self.push_command(command, self.slot(&topic), stats);
    }

    /// Queues this node's summary for the other nodes' admin planes. Not
    /// while the publisher is down: a summary is stale by the time it could
    /// go out, and must not push messages out of the bounded buffer.
    pub fn enqueue_announcement(&self, summary: &[u8], stats: &ShardStats) {
        let slot = self.slot(NODES_CHANNEL);
        if !self.route(slot).is_some_and(|l| l.publisher_connected.get()) {
            return;
        }
        let command = redis::cmd(self.publish_command()).arg(self.channel(NODES_CHANNEL)).arg(summary).get_packed_command();
        self.push_command(command, slot, stats);
    }

    /// Whether the publisher and subscriber connections are up (all of
    /// them, in cluster mode).
    pub fn report(&self) -> crate::bus::admin::RedisReport {
        let links = self.links.borrow();
        let all = |up: fn(&Link) -> bool| !links.is_empty() && links.iter().all(|l| up(l));
        crate::bus::admin::RedisReport {
            subscriber_connected: all(|l| l.subscriber_connected.get()),
            publisher_connected: all(|l| l.publisher_connected.get()),
            channels: self.wanted.borrow().len() + 1,
        }
    }

    /// Queues a droppable command (a publish or an unawaited write) for the
    /// link carrying `slot`.
    fn push_command(&self, packed: Vec<u8>, slot: u16, stats: &ShardStats) {
        self.push(Outbound::new(packed, OnReply::Count, slot), stats);
    }

    /// Queues a command someone waits for (a read, or a presence write a
    /// subscribe waits for): never dropped for room.
    fn push_read(&self, command: Outbound) {
        // Stats only count dropped publishes, which a read never causes.
        let command = match self.fences.borrow_mut().hold(command, usize::MAX) {
            Ok(_) => return,
            Err(command) => command,
        };
        let mut outbound = match self.route(command.slot) {
            Some(link) => {
                link.outbound.borrow_mut().push_back(command);
                link.outbound_ready.raise();
                return;
            }
            None => self.unrouted.borrow_mut(),
        };
        outbound.push_back(command);
    }

    /// Queues `command` for its slot's link, or to wait for the slot map.
    fn push(&self, command: Outbound, stats: &ShardStats) {
        let max = self.config.buffer_messages;
        let held = self.fences.borrow_mut().hold(command, max);
        let command = match held {
            Ok(dropped) => {
                ShardStats::add(&stats.redis_dropped, dropped);
                return self.note_buffered(stats);
            }
            Err(command) => command,
        };
        match self.route(command.slot) {
            Some(link) => link.push(command, max, stats),
            None => {
                let mut unrouted = self.unrouted.borrow_mut();
                if command.on_reply.droppable() && unrouted.len() >= max {
                    if let Some(i) = unrouted.iter().position(|c| c.on_reply.droppable()) {
                        unrouted.remove(i);
                        ShardStats::add(&stats.redis_dropped, 1);
                    }
                }
                unrouted.push_back(command);
            }
        }
        self.note_buffered(stats);
    }

    /// Sets the gauge of commands waiting for a publisher connection.
    fn note_buffered(&self, stats: &ShardStats) {
        let buffered: usize =
            self.links.borrow().iter().map(|l| l.outbound.borrow().len()).sum::<usize>() + self.unrouted.borrow().len() + self.fences.borrow().held();
        ShardStats::set(&stats.redis_buffered, buffered as u64);
    }
}

/// Starts the bridge's tasks on the current (bridge) shard: the links'
/// connections, the topology's discovery, and the presence writer.
/// [`Bridge::stop`] ends them all.
pub fn spawn(shard: Rc<Shard>, bridge: Rc<Bridge>) {
    let links: Vec<Rc<Link>> = bridge.links.borrow().clone();
    for link in &links {
        bridge.spawn_link(&shard, link);
    }
    bridge.keep(glommio::spawn_local(presence_loop(shard.clone(), bridge.clone())).detach());
    match &bridge.config.topology {
        RedisTopology::Single(_) => {}
        RedisTopology::Cluster { .. } => bridge.keep(glommio::spawn_local(topology::cluster_loop(shard, bridge.clone())).detach()),
        RedisTopology::Sentinel { .. } => bridge.keep(glommio::spawn_local(topology::sentinel_watch(shard, bridge.clone())).detach()),
    }
}

impl Bridge {
    /// Starts `link`'s two connection tasks.
    fn spawn_link(self: &Rc<Self>, shard: &Rc<Shard>, link: &Rc<Link>) {
        for role in [link::Role::Publisher, link::Role::Subscriber] {
            link.tasks.borrow_mut().push(glommio::spawn_local(link::reconnecting(shard.clone(), self.clone(), link.clone(), role)).detach());
        }
    }

    fn keep(&self, task: glommio::task::JoinHandle<()>) {
        self.tasks.borrow_mut().push(task);
    }

    /// Ends every task of the bridge (the shard is stopping). Those of
    /// retired links have ended by themselves.
    pub fn stop(&self) {
        for link in self.links.borrow().iter() {
            link.tasks.borrow_mut().drain(..).for_each(|t| t.cancel());
        }
        for task in self.tasks.borrow_mut().drain(..) {
            task.cancel();
        }
    }
}


/// Writes this node's presence changes to Redis as they come (coalesced
/// per topic into one script call per write) and refreshes every entry of
/// the node every third of `presence_ttl_ms`, so that entries of a node
/// that died expire and those of a live one never do.
async fn presence_loop(shard: Rc<Shard>, bridge: Rc<Bridge>) {
    let period = bridge.config.presence_ttl / 3;
    let mut next_refresh = std::time::Instant::now() + period;
    loop {
        let wait = next_refresh.saturating_duration_since(std::time::Instant::now());
        futures_lite::future::or(bridge.presence_ready.wait(), sleep(wait)).await;
        if !bridge.links.borrow().iter().any(|l| l.publisher_connected.get()) {
            continue;
        }
        let stats = shard.stats();
        let ops = std::mem::take(&mut *bridge.presence_ops.borrow_mut());
        for (topic, ops) in &ops {
            let packed = bridge.presence_command(topic, ops.iter());
            let slot = bridge.slot(topic);
            let acks: Vec<InterestAck> = ops.iter().filter_map(|op| op.ack).collect();
            if acks.is_empty() {
                bridge.push_command(packed, slot, stats);
            } else {
                bridge.push_read(Outbound::new(packed, OnReply::Written(acks), slot));
            }
        }
        if bridge.presence_refresh.replace(false) || std::time::Instant::now() >= next_refresh {
            next_refresh = std::time::Instant::now() + period;
            let presence = shard.presence.borrow();
            for (topic, members) in presence.iter() {
                let ops: Vec<PresenceOp> = members.map(|m| PresenceOp { join: true, client: m.client.clone(), user: m.user.clone(), ack: None }).collect();
                for chunk in ops.chunks(PRESENCE_CHUNK) {
                    bridge.push_command(bridge.presence_command(topic, chunk.iter()), bridge.slot(topic), stats);
                }
            }
        }
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    fn bridge() -> Bridge {
        let config = crate::config::Config::from_toml("[redis]\nurl = \"redis://127.0.0.1:1\"", &Default::default()).unwrap();
        Bridge::new(config.redis.unwrap(), "node".into(), None)
    }

    #[test]
    fn acks_wait_for_the_subscribe_confirmation_only_while_connected() {
        let b = bridge();
        let ack = |shard, token| Some(InterestAck { shard, token });
        assert!(!b.set_interest("t", true, ack(0, 1)), "not connected: nothing to wait for");
        assert!(!b.set_interest("t", false, None));
        let link = b.links.borrow()[0].clone();
        link.subscriber_connected.set(true);
        assert!(b.set_interest("t", true, ack(0, 2)), "new SUBSCRIBE: wait for it");
        assert!(b.set_interest("t", true, ack(1, 3)), "same SUBSCRIBE still in flight: wait too");
        assert_eq!(link.changes.borrow().len(), 1, "one SUBSCRIBE");
        assert_eq!(b.confirmed("t").acks, vec![InterestAck { shard: 0, token: 2 }, InterestAck { shard: 1, token: 3 }]);
        assert!(!b.set_interest("t", true, ack(1, 4)), "confirmed: nothing to wait for");
        assert!(b.set_interest("u", true, ack(0, 5)));
        assert_eq!(b.confirmed("u").acks, vec![InterestAck { shard: 0, token: 5 }]);
    }
}
