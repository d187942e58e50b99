//! The Redis bridge: fan-out across nodes. Lives on one shard per node
//! (`[redis] bridge_shard`); other shards reach it only through the bus.
//!
//! The bridge talks to Redis through links (`link`), each a publisher and
//! a subscriber connection to one server, driven by the bridge shard's
//! executor (no thread ever blocks on Redis). `[redis] mode` decides which
//! servers (`topology`):
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
//!
//! The bridge is a part of the bridge shard and meets it at one interface,
//! `shard::remote`: it implements [`crate::shard::Remote`] (`remote`: what
//! the shard asks of it) and calls only the shard methods listed there.
//! Rooms: `inbound` (what Redis pushes), `reply` (what command replies
//! do), `presence` (the Redis copy of presence), `sequence` and
//! `fence` (loss counting, order across a change of owner), `refill`
//! (history gaps), `link` and `topology` (connections and discovery).

pub mod cluster;
mod emulation;
pub mod endpoint;
pub mod envelope;
mod fence;
mod inbound;
mod link;
mod occupancy;
mod presence;
mod refill;
mod remote;
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

use crate::auth::HistoryPolicy;
use crate::config::{RedisConfig, RedisTopology};
use crate::history::{Query, ReplyTo};
use crate::ids::{ConnId, InterestAck};
use crate::metrics::ShardStats;
use crate::notify::Notify;
use crate::protocol::Outgoing;
use crate::shard::Shard;
use presence::PresenceOp;
use cluster::SlotMap;
use link::Link;
use scripts::Script;

/// Bytes read from a Redis connection per read call.
const READ_CHUNK: usize = 64 * 1024;

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
    /// The node reports its topics' occupancy (webhooks want it): the
    /// marks of `wanted` are renewed with the presence refresh.
    occupancy_on: Cell<bool>,
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
    /// This node's mark of `topic` set or removed ([`occupancy`]).
    Occupancy { topic: Arc<str>, occupied: bool },
}

impl OnReply {
    /// Whether the command may be dropped when the buffer is full.
    fn droppable(&self) -> bool {
        matches!(self, OnReply::Count)
    }
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
            occupancy_on: Cell::new(false),
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
        topics.push(Rc::from(self.own_channel()));
        topics.retain(|t| self.route(self.slot(t)).is_some_and(|l| std::ptr::eq(&*l, link)));
        topics.extend(self.fences.borrow().markers_on(link));
        topics.into_iter().map(|t| Rc::from(self.channel(&t))).collect()
    }

    /// What Redis confirming `topic`'s SUBSCRIBE releases.
    fn confirmed(&self, topic: &str) -> Unconfirmed {
        self.confirmations.borrow_mut().remove(topic).unwrap_or_default()
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

    /// The Redis keys of `topic`'s history and presence, in its channel's slot.
    fn keys<'a>(&'a self, topic: &'a str) -> scripts::Keys<'a> {
        let slot = cluster::key_slot(self.channel(topic).as_bytes());
        scripts::Keys { prefix: &self.config.channel_prefix, topic, slot }
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
    bridge.keep(glommio::spawn_local(presence::presence_loop(shard.clone(), bridge.clone())).detach());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::Remote;

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
