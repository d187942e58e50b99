//! The Redis bridge: fan-out across nodes. Lives on one shard per node
//! (`[redis] bridge_shard`); other shards reach it only through the bus.
//!
//! Two Redis connections, both driven by the bridge shard's executor (no
//! thread ever blocks on Redis):
//! - the publisher pipelines `PUBLISH prefix+topic envelope` commands, up to
//!   `batch_messages` per write and `pipeline_depth` writes ahead of Redis'
//!   replies, from a buffer bounded by `buffer_messages` (oldest dropped);
//! - the subscriber `SUBSCRIBE`s exactly the topics with a local subscriber
//!   somewhere on the node, and turns pushes into the same encode-once
//!   fan-out as a local publish.
//!
//! Both reconnect with exponential backoff; the subscriber re-subscribes
//! everything on reconnect. Delivery across nodes is at most once.
//!
//! The publisher connection also carries history and presence
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

pub mod envelope;
mod refill;
mod resp;
pub mod scripts;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use flatbuffers::FlatBufferBuilder;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use glommio::timer::sleep;
use redis::Value;
use tracing::{debug, info, warn};

use crate::auth::HistoryPolicy;
use crate::clock::Stamp;
use crate::config::RedisConfig;
use crate::conn::ConnId;
use crate::history::{Position, Query, ReplyTo};
use crate::metrics::ShardStats;
use crate::notify::Notify;
use crate::protocol::{Kind, Outgoing};
use crate::shard::Shard;
use resp::{BridgeError, RespReader};
use refill::Verdict;
use scripts::Script;

/// Bytes read from a Redis connection per read call.
const READ_CHUNK: usize = 64 * 1024;

/// Channels per SUBSCRIBE command when re-subscribing after a reconnect.
const SUBSCRIBE_CHUNK: usize = 1000;

/// Presence entries per write when the node refreshes a topic's entries.
const PRESENCE_CHUNK: usize = 1000;

/// The channel (after `[redis] channel_prefix`) on which nodes announce
/// themselves to each other's admin plane. `$`: no client topic can clash.
pub const NODES_CHANNEL: &str = "$nodes";

/// The bridge shard's Redis state. Touched only by the bridge shard.
pub struct Bridge {
    config: RedisConfig,
    node_id: String,
    /// Topics with at least one subscriber on this node: what the subscriber
    /// connection must be SUBSCRIBEd to. Bounded by the node's topics.
    wanted: RefCell<HashSet<Rc<str>, ahash::RandomState>>,
    /// SUBSCRIBE (true) / UNSUBSCRIBE (false) not yet sent. Kept only while
    /// connected (a reconnect re-subscribes `wanted`), so bounded by the
    /// changes of one connection's lifetime between two writes.
    changes: RefCell<VecDeque<(Rc<str>, bool)>>,
    changed: Notify,
    /// Commands waiting for the publisher connection. At most
    /// `buffer_messages` publishes (the oldest is dropped beyond); reads
    /// come on top, at most one per waiting client connection.
    outbound: RefCell<VecDeque<Outbound>>,
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
    outbound_ready: Notify,
    subscribed_connected: Cell<bool>,
    publisher_connected: Cell<bool>,
    /// Other nodes' announcements, to the admin thread (bounded; dropped when full).
    announcements: Option<tokio::sync::mpsc::Sender<Bytes>>,
    /// Interest acknowledgements held back until Redis confirms the topic's
    /// SUBSCRIBE, so that a subscribe ack means delivery from every node.
    /// Released on confirmation or when the connection drops; bounded by the
    /// subscribes in flight (one per waiting connection).
    confirmations: RefCell<HashMap<Rc<str>, Vec<InterestAck>, ahash::RandomState>>,
    builder: RefCell<FlatBufferBuilder<'static>>,
}

/// One command for the publisher connection and what its reply is for.
struct Outbound {
    packed: Vec<u8>,
    on_reply: OnReply,
}

/// What to do with a command's reply.
enum OnReply {
    /// A PUBLISH, a numbered publish or a presence write: counted.
    Count,
    /// SCRIPT LOAD on connect: only errors matter.
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

/// An interest acknowledgement the bridge owes once Redis confirms a SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterestAck {
    /// The shard waiting for it (the bridge shard itself included).
    pub shard: usize,
    pub token: u64,
}

impl Bridge {
    pub fn new(config: RedisConfig, node_id: String, announcements: Option<tokio::sync::mpsc::Sender<Bytes>>) -> Bridge {
        Bridge {
            config,
            node_id,
            wanted: RefCell::default(),
            changes: RefCell::default(),
            changed: Notify::default(),
            outbound: RefCell::default(),
            presence_ops: RefCell::default(),
            presence_ready: Notify::default(),
            presence_refresh: Cell::new(false),
            epochs: RefCell::new(crate::history::Epochs::new("r")),
            refills: RefCell::default(),
            outbound_ready: Notify::default(),
            subscribed_connected: Cell::new(false),
            publisher_connected: Cell::new(false),
            announcements,
            confirmations: RefCell::default(),
            builder: RefCell::new(FlatBufferBuilder::with_capacity(1024)),
        }
    }

    fn channel(&self, topic: &str) -> String {
        format!("{}{}", self.config.channel_prefix, topic)
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
        if !interested && changed {
            self.refills.borrow_mut().forget(topic);
        }
        if interested && !changed {
            // A SUBSCRIBE for it may still be on its way: wait for the same
            // confirmation.
            if let (Some(ack), Some(waiting)) = (ack, self.confirmations.borrow_mut().get_mut(topic)) {
                waiting.push(ack);
                return true;
            }
        }
        if !(changed && self.subscribed_connected.get()) {
            return false;
        }
        let topic: Rc<str> = Rc::from(topic);
        self.changes.borrow_mut().push_back((topic.clone(), interested));
        self.changed.raise();
        match ack {
            Some(ack) if interested => {
                self.confirmations.borrow_mut().entry(topic).or_default().push(ack);
                true
            }
            _ => false,
        }
    }

    /// Acknowledgements released by Redis confirming `topic`'s SUBSCRIBE.
    fn confirmed(&self, topic: &str) -> Vec<InterestAck> {
        self.confirmations.borrow_mut().remove(topic).unwrap_or_default()
    }

    /// Every held acknowledgement (the subscriber connection is gone).
    fn release_all(&self) -> Vec<InterestAck> {
        self.confirmations.borrow_mut().drain().flat_map(|(_, acks)| acks).collect()
    }

    /// Queues a message (a publish, or a direct message on a `$user:` topic)
    /// for the other nodes.
    pub fn enqueue(&self, msg: &Outgoing, stats: &ShardStats) {
        let mut builder = self.builder.borrow_mut();
        let envelope = match &msg.kind {
            Kind::Join { client, user } => envelope::encode_presence(&mut builder, &self.node_id, &msg.topic, true, client, user.as_deref()),
            Kind::Leave { client, user } => envelope::encode_presence(&mut builder, &self.node_id, &msg.topic, false, client, user.as_deref()),
            Kind::Message | Kind::Direct { .. } => {
                envelope::encode(&mut builder, &self.node_id, &msg.topic, &msg.payload, msg.payload_is_json, msg.sender(), 0)
            }
        };
        let command = redis::cmd("PUBLISH").arg(self.channel(&msg.topic)).arg(envelope).get_packed_command();
        drop(builder);
        self.push_command(command, stats);
    }

    /// Queues a message of a history topic for Redis to number, store and
    /// publish to every node, this one included ([`scripts::NUMBER`]).
    /// `skip` is the publishing connection that asked not to receive it.
    pub fn enqueue_numbered(&self, msg: &Outgoing, policy: HistoryPolicy, skip: Option<ConnId>, stats: &ShardStats) {
        let keys = scripts::Keys { prefix: &self.config.channel_prefix };
        let mut builder = self.builder.borrow_mut();
        let skip = skip.map_or(0, |c| c.0);
        let envelope = envelope::encode(&mut builder, &self.node_id, &msg.topic, &msg.payload, msg.payload_is_json, None, skip);
        let command = redis::cmd("EVALSHA")
            .arg(Script::Number.sha())
            .arg(2)
            .arg(keys.meta(&msg.topic))
            .arg(keys.stream(&msg.topic))
            .arg(self.channel(&msg.topic))
            .arg(envelope)
            .arg(policy.size)
            .arg(policy.ttl.as_millis() as u64)
            .arg(&*self.epochs.borrow_mut().fresh())
            .get_packed_command();
        drop(builder);
        self.push_command(command, stats);
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
        self.push_read(Outbound { packed, on_reply: OnReply::History { query, to } });
    }

    /// Packs one [`scripts::READ`] of `topic`: `mode` `after` (the entries
    /// after offset `after`) or `latest`, at most `count` (0: the position
    /// only) and `budget` bytes of payloads.
    fn read_command(&self, topic: &str, policy: HistoryPolicy, mode: &str, after: u64, count: usize, budget: usize) -> Vec<u8> {
        let keys = scripts::Keys { prefix: &self.config.channel_prefix };
        redis::cmd("EVALSHA")
            .arg(Script::Read.sha())
            .arg(2)
            .arg(keys.meta(topic))
            .arg(keys.stream(topic))
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
        let keys = scripts::Keys { prefix: &self.config.channel_prefix };
        let packed = redis::cmd("EVALSHA")
            .arg(Script::PresenceRead.sha())
            .arg(2)
            .arg(keys.presence(topic))
            .arg(keys.presence_expiry(topic))
            .arg(if stats { "stats" } else { "list" })
            .arg(max)
            .get_packed_command();
        self.push_read(Outbound { packed, on_reply: OnReply::Presence { stats, from, conn, id } });
    }

    /// Answers "unavailable" to every read not yet sent and releases the
    /// subscribes waiting for presence writes (the connection attempt failed
    /// or the connection was lost); publishes stay buffered.
    fn fail_unsent_reads(&self, shard: &Shard) {
        let reads: Vec<OnReply> = {
            let mut outbound = self.outbound.borrow_mut();
            let (reads, publishes): (VecDeque<Outbound>, VecDeque<Outbound>) = outbound.drain(..).partition(|c| !c.on_reply.droppable());
            *outbound = publishes;
            reads.into_iter().map(|c| c.on_reply).collect()
        };
        for on_reply in reads {
            fail(shard, on_reply);
        }
        // Subscribes waiting for presence writes not yet sent go on; the
        // writes stay queued for the next connection.
        let acks: Vec<InterestAck> =
            self.presence_ops.borrow_mut().values_mut().flat_map(|ops| ops.iter_mut().filter_map(|op| op.ack.take())).collect();
        for ack in acks {
            shard.interest_acked(ack);
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
        self.push_read(Outbound { packed, on_reply: OnReply::Refill { topic: topic.into(), epoch } });
    }

    /// Records a presence change of this node for the next coalesced write.
    /// `ack` is released when Redis confirms the write; it is handed back
    /// (nothing to wait for) while the publisher connection is down.
    pub fn presence_write(&self, topic: &str, join: bool, client: &Arc<str>, user: Option<&Arc<str>>, ack: Option<InterestAck>) -> Option<InterestAck> {
        let ack = match ack {
            Some(ack) if !self.publisher_connected.get() => return Some(ack),
            ack => ack,
        };
        let op = PresenceOp { join, client: client.clone(), user: user.cloned(), ack };
        self.presence_ops.borrow_mut().entry(topic.into()).or_default().push(op);
        self.presence_ready.raise();
        None
    }

    /// Packs one presence write of `topic` ([`scripts::PRESENCE_WRITE`]).
    fn presence_command<'a>(&self, topic: &str, ops: impl Iterator<Item = &'a PresenceOp>) -> Vec<u8> {
        let keys = scripts::Keys { prefix: &self.config.channel_prefix };
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(Script::PresenceWrite.sha())
            .arg(2)
            .arg(keys.presence(topic))
            .arg(keys.presence_expiry(topic))
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
        let command = redis::cmd("PUBLISH").arg(self.channel(&topic)).arg(envelope).get_packed_command();
        drop(builder);
        self.push_command(command, stats);
    }

    /// Queues this node's summary for the other nodes' admin planes. Not
    /// while the publisher is down: a summary is stale by the time it could
    /// go out, and must not push messages out of the bounded buffer.
    pub fn enqueue_announcement(&self, summary: &[u8], stats: &ShardStats) {
        if !self.publisher_connected.get() {
            return;
        }
        let command = redis::cmd("PUBLISH").arg(self.channel(NODES_CHANNEL)).arg(summary).get_packed_command();
        self.push_command(command, stats);
    }

    /// Whether the publisher and subscriber connections are up.
    pub fn report(&self) -> crate::bus::admin::RedisReport {
        crate::bus::admin::RedisReport {
            subscriber_connected: self.subscribed_connected.get(),
            publisher_connected: self.publisher_connected.get(),
            channels: self.wanted.borrow().len() + 1,
        }
    }

    fn push_command(&self, packed: Vec<u8>, stats: &ShardStats) {
        let mut outbound = self.outbound.borrow_mut();
        if outbound.len() >= self.config.buffer_messages {
            // The oldest publish goes; reads (bounded by the connections
            // waiting for them) are never dropped.
            if let Some(i) = outbound.iter().position(|c| c.on_reply.droppable()) {
                outbound.remove(i);
                ShardStats::add(&stats.redis_dropped, 1);
            }
        }
        outbound.push_back(Outbound { packed, on_reply: OnReply::Count });
        ShardStats::set(&stats.redis_buffered, outbound.len() as u64);
        drop(outbound);
        self.outbound_ready.raise();
    }

    /// Queues a command someone waits for (a read, or a presence write a
    /// subscribe waits for): never dropped for room.
    fn push_read(&self, command: Outbound) {
        self.outbound.borrow_mut().push_back(command);
        self.outbound_ready.raise();
    }

    /// A safe description of the server for logs (the URL may hold a password).
    fn server_name(&self) -> String {
        match redis::parse_redis_url(&self.config.url) {
            Some(u) => format!("{}:{}", u.host_str().unwrap_or("?"), u.port().unwrap_or(6379)),
            None => "redis".into(),
        }
    }
}

/// Starts the bridge's two connection tasks on the current (bridge) shard.
pub fn spawn(shard: Rc<Shard>, bridge: Rc<Bridge>) -> Vec<glommio::task::JoinHandle<()>> {
    vec![
        glommio::spawn_local(reconnecting(shard.clone(), bridge.clone(), Role::Publisher)).detach(),
        glommio::spawn_local(reconnecting(shard.clone(), bridge.clone(), Role::Subscriber)).detach(),
        glommio::spawn_local(presence_loop(shard, bridge)).detach(),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Publisher,
    Subscriber,
}

/// Keeps one connection up, with exponential backoff between attempts.
async fn reconnecting(shard: Rc<Shard>, bridge: Rc<Bridge>, role: Role) {
    let cfg = &bridge.config;
    let mut backoff = cfg.reconnect_min;
    let mut warned = false;
    loop {
        match resp::connect(&cfg.url).await {
            Ok(stream) => {
                info!(role = ?role, server = %bridge.server_name(), "redis connected");
                ShardStats::add(&shard.stats().redis_connects, 1);
                backoff = cfg.reconnect_min;
                warned = false;
                let result = match role {
                    Role::Publisher => {
                        bridge.publisher_connected.set(true);
                        let result = run_publisher(&shard, &bridge, stream).await;
                        bridge.publisher_connected.set(false);
                        ShardStats::set(&shard.stats().redis_pipeline_depth, 0);
                        result
                    }
                    Role::Subscriber => run_subscriber(&shard, &bridge, stream).await,
                };
                ShardStats::add(&shard.stats().redis_reconnects, 1);
                if role == Role::Subscriber {
                    bridge.subscribed_connected.set(false);
                    ShardStats::sub(&shard.stats().redis_connected, 1);
                    for ack in bridge.release_all() {
                        shard.interest_acked(ack);
                    }
                }
                let err = result.expect_err("connection loops only end in error");
                warn!(role = ?role, server = %bridge.server_name(), "redis connection lost: {err}; reconnecting");
            }
            Err(err) => {
                if role == Role::Publisher {
                    bridge.fail_unsent_reads(&shard);
                }
                // Log the first failure as a warning and the rest quietly,
                // but always name an authentication problem.
                if !warned || matches!(err, BridgeError::Refused(_)) {
                    warn!(role = ?role, server = %bridge.server_name(), retry_in_ms = backoff.as_millis() as u64, "redis unavailable: {err}; local fan-out continues, retrying");
                    warned = true;
                } else {
                    debug!(role = ?role, "redis still unavailable: {err}");
                }
            }
        }
        sleep(backoff).await;
        backoff = (backoff * 2).min(cfg.reconnect_max);
    }
}

/// Writes pipelined command batches and hands Redis' replies to whoever
/// waits for them. When the connection fails, what was sent and not
/// answered is counted lost (publishes) or answered "unavailable" (reads),
/// and so are the reads not yet sent: their clients must not wait for a
/// reconnect. Unsent publishes stay buffered for the next connection.
async fn run_publisher(shard: &Shard, bridge: &Bridge, mut stream: TcpStream) -> Result<(), BridgeError> {
    let mut in_flight = VecDeque::new();
    let result = publisher_loop(shard, bridge, &mut stream, &mut in_flight).await;
    for on_reply in in_flight {
        fail(shard, on_reply);
    }
    bridge.fail_unsent_reads(shard);
    result
}

/// A command whose reply will never come.
fn fail(shard: &Shard, on_reply: OnReply) {
    match on_reply {
        OnReply::Count => ShardStats::add(&shard.stats().redis_dropped, 1),
        OnReply::Setup => {}
        // The write is lost; the refresh after the reconnect rewrites it.
        OnReply::Written(acks) => acks.into_iter().for_each(|ack| shard.interest_acked(ack)),
        // The gap stays (the offsets show it); what was held goes out.
        OnReply::Refill { topic, .. } => deliver_refill(shard, &topic, Vec::new()),
        OnReply::History { to, .. } => shard.answer_history(to, None),
        OnReply::Presence { from, conn, id, .. } => shard.answer_presence(from, conn, id, None),
    }
}

async fn publisher_loop(shard: &Shard, bridge: &Bridge, stream: &mut TcpStream, in_flight: &mut VecDeque<OnReply>) -> Result<(), BridgeError> {
    let cfg = &bridge.config;
    let stats = shard.stats();
    let limits = &shard.config.limits;
    let mut reader = RespReader::new(READ_CHUNK, limits.max_message_bytes * 4 + limits.max_presence_clients * 512);
    // Sizes of the batches written and not yet fully answered.
    let mut batches: VecDeque<usize> = VecDeque::new();
    // The scripts first: every EVALSHA after them on this connection finds them.
    let mut packed = Vec::new();
    for script in Script::ALL {
        redis::cmd("SCRIPT").arg("LOAD").arg(script.text()).write_packed_command(&mut packed);
        in_flight.push_back(OnReply::Setup);
    }
    batches.push_back(Script::ALL.len());
    stream.write_all(&packed).await?;
    // Redis may have lost this node's presence while we were away.
    bridge.presence_refresh.set(true);
    bridge.presence_ready.raise();
    loop {
        let has_outbound = !bridge.outbound.borrow().is_empty();
        if has_outbound && batches.len() < cfg.pipeline_depth {
            packed.clear();
            let n = {
                let mut outbound = bridge.outbound.borrow_mut();
                let n = outbound.len().min(cfg.batch_messages);
                for command in outbound.drain(..n) {
                    packed.extend_from_slice(&command.packed);
                    in_flight.push_back(command.on_reply);
                }
                ShardStats::set(&stats.redis_buffered, outbound.len() as u64);
                n
            };
            batches.push_back(n);
            ShardStats::set(&stats.redis_pipeline_depth, batches.len() as u64);
            stream.write_all(&packed).await?;
            continue;
        }
        if batches.is_empty() {
            bridge.outbound_ready.wait().await;
            continue;
        }
        for reply in reader.read_values(stream).await? {
            let on_reply = in_flight.pop_front().ok_or(BridgeError::Protocol("reply without a request"))?;
            on_command_reply(shard, on_reply, reply);
            let head = batches.front_mut().ok_or(BridgeError::Protocol("reply without a request"))?;
            *head -= 1;
            if *head == 0 {
                batches.pop_front();
                ShardStats::set(&stats.redis_pipeline_depth, batches.len() as u64);
            }
        }
    }
}

/// Hands one reply of the publisher connection to whoever waits for it.
fn on_command_reply(shard: &Shard, on_reply: OnReply, reply: Value) {
    let stats = shard.stats();
    if let Value::ServerError(e) = &reply {
        warn!("redis refused a command: {e:?}");
        return fail(shard, on_reply);
    }
    match on_reply {
        OnReply::Count => ShardStats::add(&stats.redis_published, 1),
        OnReply::Setup => {}
        OnReply::Written(acks) => acks.into_iter().for_each(|ack| shard.interest_acked(ack)),
        OnReply::Refill { topic, epoch: wanted } => {
            let max = shard.config.limits.max_message_bytes;
            let filled: Vec<Arc<Outgoing>> = match scripts::parse_read(&reply, max) {
                // Another epoch since: the missing messages are gone.
                Some((_, epoch, _)) if *epoch != *wanted => Vec::new(),
                Some((_, epoch, publications)) => {
                    let epoch: Arc<str> = epoch.into();
                    ShardStats::add(&stats.history_refilled, publications.len() as u64);
                    publications
                        .into_iter()
                        .map(|p| {
                            let position = Some(Position { offset: p.offset, epoch: epoch.clone() });
                            Outgoing::positioned(&topic, Kind::Message, p.payload, p.json, position, Stamp::now())
                        })
                        .collect()
                }
                None => {
                    ShardStats::add(&stats.redis_bad_messages, 1);
                    Vec::new()
                }
            };
            deliver_refill(shard, &topic, filled);
        }
        OnReply::History { query, to } => {
            let read = scripts::parse_read(&reply, shard.config.limits.max_message_bytes);
            if read.is_none() {
                ShardStats::add(&stats.redis_bad_messages, 1);
            }
            let answer = read.map(|(top, epoch, publications)| {
                crate::history::answer(&query, Position { offset: top, epoch: epoch.into() }, publications.into_iter())
            });
            shard.answer_history(to, answer);
        }
        OnReply::Presence { stats: want_stats, from, conn, id } => {
            let found = scripts::parse_presence(&reply, want_stats).map(|(found, skipped)| {
                ShardStats::add(&stats.presence_bad_entries, skipped);
                found
            });
            if found.is_none() {
                ShardStats::add(&stats.redis_bad_messages, 1);
            }
            shard.answer_presence(from, conn, id, found);
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
        if !bridge.publisher_connected.get() {
            continue;
        }
        let stats = shard.stats();
        let ops = std::mem::take(&mut *bridge.presence_ops.borrow_mut());
        for (topic, ops) in &ops {
            let packed = bridge.presence_command(topic, ops.iter());
            let acks: Vec<InterestAck> = ops.iter().filter_map(|op| op.ack).collect();
            if acks.is_empty() {
                bridge.push_command(packed, stats);
            } else {
                bridge.push_read(Outbound { packed, on_reply: OnReply::Written(acks) });
            }
        }
        if bridge.presence_refresh.replace(false) || std::time::Instant::now() >= next_refresh {
            next_refresh = std::time::Instant::now() + period;
            let presence = shard.presence.borrow();
            for (topic, members) in presence.iter() {
                let ops: Vec<PresenceOp> = members.map(|m| PresenceOp { join: true, client: m.client.clone(), user: m.user.clone(), ack: None }).collect();
                for chunk in ops.chunks(PRESENCE_CHUNK) {
                    bridge.push_command(bridge.presence_command(topic, chunk.iter()), stats);
                }
            }
        }
    }
}

/// Keeps the SUBSCRIBE set in line with local interest and fans out pushes.
async fn run_subscriber(shard: &Shard, bridge: &Bridge, mut stream: TcpStream) -> Result<(), BridgeError> {
    let mut reader = RespReader::new(READ_CHUNK, shard.config.limits.max_message_bytes);
    // Everything wanted now, then changes as they come. Snapshot and start
    // queueing changes in one step (no await between), so a change made while
    // the snapshot is being written is queued, not lost.
    bridge.changes.borrow_mut().clear();
    bridge.subscribed_connected.set(true);
    ShardStats::add(&shard.stats().redis_connected, 1);
    let mut wanted: Vec<Rc<str>> = bridge.wanted.borrow().iter().cloned().collect();
    if bridge.announcements.is_some() {
        // This node's admin plane lists the others.
        wanted.push(Rc::from(NODES_CHANNEL));
    }
    for chunk in wanted.chunks(SUBSCRIBE_CHUNK) {
        let mut cmd = redis::cmd("SUBSCRIBE");
        for topic in chunk {
            cmd.arg(bridge.channel(topic));
        }
        stream.write_all(&cmd.get_packed_command()).await?;
    }
    loop {
        let changes: Vec<(Rc<str>, bool)> = bridge.changes.borrow_mut().drain(..).collect();
        if !changes.is_empty() {
            let mut packed = Vec::new();
            for (topic, on) in changes {
                redis::cmd(if on { "SUBSCRIBE" } else { "UNSUBSCRIBE" }).arg(bridge.channel(&topic)).write_packed_command(&mut packed);
            }
            stream.write_all(&packed).await?;
        }
        let pushes = futures_lite::future::or(async { Some(reader.read_values(&mut stream).await) }, async {
            bridge.changed.wait().await;
            None
        })
        .await;
        let Some(pushes) = pushes else { continue };
        for push in pushes? {
            on_push(shard, bridge, push).await;
        }
    }
}

/// Handles one value pushed by Redis on the subscriber connection.
async fn on_push(shard: &Shard, bridge: &Bridge, push: Value) {
    let stats = shard.stats();
    let Value::Array(parts) = push else {
        ShardStats::add(&stats.redis_bad_messages, 1);
        return;
    };
    if let [Value::BulkString(kind), Value::BulkString(channel), Value::Int(_)] = parts.as_slice() {
        // A subscribe/unsubscribe confirmation: [kind, channel, count].
        if kind.as_slice() == b"subscribe" {
            let topic = std::str::from_utf8(channel).ok().and_then(|c| c.strip_prefix(bridge.config.channel_prefix.as_str()));
            for ack in topic.map(|t| bridge.confirmed(t)).unwrap_or_default() {
                shard.interest_acked(ack);
            }
            if let Some(topic) = topic {
                catch_up(shard, bridge, topic);
            }
        }
        return;
    }
    let [Value::BulkString(kind), Value::BulkString(channel), Value::BulkString(data)] = parts.as_slice() else {
        ShardStats::add(&stats.redis_bad_messages, 1);
        return;
    };
    if kind.as_slice() != b"message" {
        return;
    }
    let limits = &shard.config.limits;
    let topic = std::str::from_utf8(channel).ok().and_then(|c| c.strip_prefix(bridge.config.channel_prefix.as_str()));
    if topic == Some(NODES_CHANNEL) {
        // Checked by the admin thread; a full queue there drops it (the
        // next announcement comes within an interval).
        if let Some(tx) = &bridge.announcements {
            let _ = tx.try_send(Bytes::copy_from_slice(data));
        }
        return;
    }
    // A user's direct messages, or a client topic.
    let recipient = topic.and_then(|t| t.strip_prefix(crate::topic::USER_PREFIX));
    let valid = match (topic, recipient) {
        (Some(_), Some(user)) => crate::auth::is_user_id(user),
        (Some(topic), None) => crate::topic::validate(topic, limits.max_topic_len).is_ok(),
        (None, _) => false,
    };
    let Some(topic) = topic.filter(|_| valid) else {
        ShardStats::add(&stats.redis_bad_messages, 1);
        return;
    };
    if data.starts_with(scripts::NUMBERED_MAGIC) {
        return on_numbered(shard, bridge, topic, data).await;
    }
    let decoded = envelope::decode(data);
    let is_message = matches!(decoded, Ok(envelope::Incoming::Node { .. } | envelope::Incoming::External { .. }));
    if is_message && recipient.is_none() && shard.has_history(topic) {
        // History topics carry only numbered messages (from NUMBER): a bare
        // PUBLISH would have no offset. Backends publish through the admin API.
        ShardStats::add(&stats.redis_bad_messages, 1);
        debug!(topic, "refused an unnumbered message on a history topic");
        return;
    }
    let (payload, sender, json) = match decoded {
        Ok(envelope::Incoming::Node { origin, .. } | envelope::Incoming::Presence { origin, .. }) if origin == bridge.node_id => return,
        Ok(envelope::Incoming::Node { payload, sender, json, .. }) => (payload, sender, json),
        Ok(envelope::Incoming::Presence { join, client, user, .. }) => {
            let (client, user) = (Arc::from(client), user.map(Arc::from));
            let kind = if join { Kind::Join { client, user } } else { Kind::Leave { client, user } };
            ShardStats::add(&stats.redis_received, 1);
            return fan_out_remote(shard, Outgoing::presence(topic, kind), None).await;
        }
        Ok(envelope::Incoming::Disconnect { origin, .. }) if origin == bridge.node_id => return,
        Ok(envelope::Incoming::Disconnect { code, reason, .. }) => {
            match recipient {
                Some(user) => shard.disconnect_user_everywhere(user, code, reason),
                None => ShardStats::add(&stats.redis_bad_messages, 1),
            }
            return;
        }
        Ok(envelope::Incoming::External { payload }) => (payload, None, true),
        Err(bad) => {
            ShardStats::add(&stats.redis_bad_messages, 1);
            debug!(topic, ?bad, "refused a message from redis");
            return;
        }
    };
    if payload.len() > limits.max_message_bytes || sender.is_some_and(|s| s.len() > crate::auth::MAX_USER_BYTES) {
        ShardStats::add(&stats.redis_bad_messages, 1);
        return;
    }
    ShardStats::add(&stats.redis_received, 1);
    let kind = match recipient {
        Some(_) => Kind::Direct { from: sender.map(Arc::from) },
        None => Kind::Message,
    };
    let msg = Outgoing::remote(topic, kind, Bytes::copy_from_slice(payload), json, Stamp::now());
    fan_out_remote(shard, msg, None).await;
}

/// A message numbered by Redis ([`scripts::NUMBER`]), from any node, this
/// one included: delivered with its offset and epoch.
async fn on_numbered(shard: &Shard, bridge: &Bridge, topic: &str, data: &[u8]) {
    let stats = shard.stats();
    let decoded = scripts::split_numbered(data).and_then(|(offset, epoch, env)| match envelope::decode(env) {
        Ok(envelope::Incoming::Node { origin, payload, json, skip, sender: None }) => Some((offset, epoch, origin, payload, json, skip)),
        _ => None,
    });
    let Some((offset, epoch, origin, payload, json, skip)) = decoded.filter(|d| d.3.len() <= shard.config.limits.max_message_bytes) else {
        ShardStats::add(&stats.redis_bad_messages, 1);
        return;
    };
    ShardStats::add(&stats.redis_received, 1);
    let skip = (origin == bridge.node_id && skip != 0).then_some(ConnId(skip));
    let position = Position { offset, epoch: epoch.into() };
    let msg = Outgoing::positioned(topic, Kind::Message, Bytes::copy_from_slice(payload), json, Some(position), Stamp::now());
    // Numbered messages (refills included) leave through the shard's relay,
    // in order; Redis is not read while the relay is long.
    let capacity = shard.config.bus.capacity;
    while shard.retry_relay() >= capacity {
        sleep(crate::shard::tasks::BUS_RETRY).await;
    }
    let verdict = bridge.refills.borrow_mut().arrive(topic, &msg, capacity);
    match verdict {
        Verdict::Deliver => shard.relay(msg, skip),
        Verdict::Duplicate => ShardStats::add(&stats.history_duplicates_dropped, 1),
        Verdict::Held => {}
        Verdict::Refill { after, before } => match shard.config.namespaces.options(topic).history {
            Some(policy) => {
                let epoch = msg.position.as_ref().map_or_else(|| Arc::from(""), |p| p.epoch.clone());
                bridge.refill_read(topic, policy, after, before, epoch, 2 * shard.config.limits.max_message_bytes);
            }
            None => deliver_refill(shard, topic, Vec::new()),
        },
        Verdict::GiveUp => {
            deliver_refill(shard, topic, Vec::new());
            if bridge.refills.borrow_mut().arrive(topic, &msg, capacity) == Verdict::Deliver {
                shard.relay(msg, skip);
            }
        }
    }
}

/// A history topic the node delivered before is subscribed again (the
/// subscriber connection came back): whatever was numbered while it was
/// away is read from the stream now, not when the topic's next message
/// shows the gap.
fn catch_up(shard: &Shard, bridge: &Bridge, topic: &str) {
    let Some(policy) = shard.config.namespaces.options(topic).history else { return };
    let Some((after, epoch)) = bridge.refills.borrow_mut().catch_up(topic) else { return };
    bridge.refill_read(topic, policy, after, u64::MAX, epoch, 2 * shard.config.limits.max_message_bytes);
}

/// Delivers a refill's messages and what was held behind it, in order.
fn deliver_refill(shard: &Shard, topic: &str, filled: Vec<Arc<Outgoing>>) {
    let Some(bridge) = &shard.bridge else { return };
    let mut batch = bridge.refills.borrow_mut().drain(topic, filled);
    while !batch.is_empty() {
        for msg in batch {
            shard.relay(msg, None);
        }
        batch = bridge.refills.borrow_mut().drain(topic, Vec::new());
    }
}

/// Fans out a message from Redis; backpressure: Redis is not read until
/// every shard took it.
async fn fan_out_remote(shard: &Shard, msg: Arc<Outgoing>, skip: Option<ConnId>) {
    if let Err(mut pending) = shard.fan_out_remote(msg, skip) {
        while !shard.retry_publish(&mut pending) {
            sleep(Duration::from_micros(200)).await;
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
        b.subscribed_connected.set(true);
        assert!(b.set_interest("t", true, ack(0, 2)), "new SUBSCRIBE: wait for it");
        assert!(b.set_interest("t", true, ack(1, 3)), "same SUBSCRIBE still in flight: wait too");
        assert_eq!(b.changes.borrow().len(), 1, "one SUBSCRIBE");
        assert_eq!(b.confirmed("t"), vec![InterestAck { shard: 0, token: 2 }, InterestAck { shard: 1, token: 3 }]);
        assert!(!b.set_interest("t", true, ack(1, 4)), "confirmed: nothing to wait for");
        assert!(b.set_interest("u", true, ack(0, 5)));
        assert_eq!(b.release_all(), vec![InterestAck { shard: 0, token: 5 }], "a lost connection releases everything");
    }
}
