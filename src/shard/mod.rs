//! One shard: the state a single pinned executor owns, and its tasks
//! (accept loop, bus loop, heartbeat sweeper, drain on shutdown).
//!
//! Everything in [`Shard`] is `!Send` and touched only by its own executor.
//! Other shards reach it only through its [`Inbox`].

mod admin;
pub mod deadline;
mod history;
mod presence;
mod shutdown;
pub mod tasks;

pub use deadline::{Deadline, Deadlines};
pub use tasks::run;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use bytes::Bytes;

use crate::auth::{Admission, TopicOptions};
use crate::presence::Member;
use crate::bridge::Bridge;
use crate::clock::Stamp;
use crate::bus::{ControlMsg, InterestMap, Mailbox, PublishMsg, ShardSet};
use crate::config::Config;
use crate::peer::{Cork, Peer, Queueing};
use crate::ids::{ConnId, InterestAck};
use crate::metrics::ShardStats;
use crate::notify::Notify;
use crate::codes::close;
use crate::protocol::{Builder, Encoding, Kind, Outgoing, Payload, Wire};
use crate::ws::deflate::{Compressor, Decompressor, Mode};
use crate::topic::{self, Registry};

/// A publish that could not yet be handed to every interested shard because
/// their data channels were full. Its connection is not read until it is.
#[derive(Debug)]
pub struct PendingPublish {
    msg: PublishMsg,
    remaining: ShardSet,
    /// The shard whose copy must carry `forward` (the bridge), if any.
    forward_to: Option<usize>,
}

/// Subscribers waiting for the other shards to confirm a topic's interest.
#[derive(Debug)]
struct PendingInterest {
    topic: Rc<str>,
    /// Shards that have not answered yet.
    remaining: usize,
    /// Connections to release, each with what to do then.
    waiters: Vec<(Rc<Peer>, Then)>,
}

/// What a subscribe does once it is effective (every shard, and Redis,
/// will deliver the topic's messages to it).
#[derive(Debug)]
pub enum Then {
    /// Queue this frame (the ack, or the welcome), if any.
    Frame(Option<Bytes>),
    /// A history topic: ask the topic's offset authority for its position
    /// (and, with `recover`, what was missed); the ack is built from the
    /// answer, and live messages are held until then ([`crate::history::wait`]).
    Position(crate::history::wait::Request),
}

/// Per-core state. Created on the shard's own thread; never leaves it.
pub struct Shard {
    pub index: usize,
    pub config: Arc<Config>,
    /// Topic -> local subscribers. This shard only.
    pub registry: RefCell<Registry>,
    /// Replica of topic -> interested shards, updated by `ControlMsg::Interest`.
    interest: RefCell<InterestMap>,
    /// Every open WebSocket connection of this shard (heartbeats, shutdown).
    pub peers: RefCell<HashMap<ConnId, Rc<Peer>, ahash::RandomState>>,
    /// Mailboxes of all shards, indexed by shard (this shard's own is unused).
    mailboxes: Vec<Mailbox>,
    /// Every shard's stats; this shard writes only `stats[index]`.
    pub all_stats: Arc<[ShardStats]>,
    /// Open WebSocket connections on the whole node (`server.max_connections`).
    pub node_connections: Arc<AtomicUsize>,
    /// Node-wide per-user and per-IP connection counts (shared by all shards;
    /// touched only at connect, authenticate and close).
    pub admission: Arc<Admission>,
    /// Auth timeouts and token expiries of this shard's connections.
    deadlines: RefCell<Deadlines>,
    /// Raised when a deadline earlier than all others is set, so that the
    /// deadline task (sleeping until the previous earliest) re-arms.
    deadline_earlier: Notify,
    /// Read scratch space shared by all connections of the shard: a connection
    /// borrows it only for the duration of one non-blocking read and the
    /// synchronous parsing that follows, so idle connections hold no buffer.
    pub scratch: RefCell<Vec<u8>>,
    /// Write staging space shared by all connections of the shard: small
    /// queued frames are copied here and sent in one syscall. Borrowed only
    /// within one non-blocking send. Its capacity is `write_buffer_bytes`.
    pub write_scratch: RefCell<Vec<u8>>,
    /// Connections with frames queued during the current batch of work,
    /// sent by the flush task after it (see [`Cork`]).
    pub cork: Cork,
    /// The heartbeat ping frame, encoded once.
    pub ping_frame: Bytes,
    /// permessage-deflate for every connection of the shard: messages are
    /// compressed and inflated one at a time, reset in between, so the
    /// connections share these instead of holding zlib state each.
    pub compressor: RefCell<Compressor>,
    pub decompressor: RefCell<Decompressor>,
    /// TLS termination for this shard's listener (`[tls]`); `None`: plain.
    pub tls: Option<futures_rustls::TlsAcceptor>,
    pending_interest: RefCell<HashMap<u64, PendingInterest>>,
    /// API publishes waiting for their turn ([`admin::api_publish_loop`]).
    api_queue: RefCell<admin::ApiQueue>,
    api_ready: Notify,
    /// The Redis bridge, on the bridge shard only.
    pub bridge: Option<Rc<Bridge>>,
    /// The bridge shard's index when Redis is configured.
    bridge_shard: Option<usize>,
    /// The history rings of the topics this shard is home to (single node;
    /// with Redis the history lives there). This shard only.
    history: RefCell<crate::history::History>,
    /// This shard's connections waiting for a history topic's position,
    /// with the live messages held for them meanwhile.
    holds: RefCell<crate::history::wait::Holds>,
    /// Numbered history messages (and join/leave events) not yet handed to
    /// every interested shard, oldest first. While it holds
    /// `[bus] capacity` entries the sequence channel is not read, so
    /// publishers wait instead of this growing.
    relay: RefCell<std::collections::VecDeque<PendingPublish>>,
    /// Publishes this shard handed to each shard's sequence channel, and
    /// those it numbered from each shard: a history query carries the
    /// former and is answered once the latter reaches it, so a client's
    /// own publishes are in what it asks for next (see `shard::history`).
    sequenced_to: Vec<Cell<u64>>,
    sequenced_from: Vec<Cell<u64>>,
    /// History queries waiting for the publishes sent before them.
    deferred_queries: RefCell<Vec<(u64, crate::history::HistoryMsg)>>,
    /// The node's presence for the topics this shard owns (the bridge
    /// refreshes the Redis copy from it).
    pub presence: RefCell<crate::presence::Presence>,
    next_conn: Cell<u64>,
    next_token: Cell<u64>,
    /// Set at SIGINT/SIGTERM: no connection is accepted, and no client
    /// input is read until its 1001 is queued ([`shutdown`]).
    pub shutting_down: Cell<bool>,
    /// When the drain closed every connection: the closes begun then are
    /// the drain's, bounded by its deadline, not by `close_timeout_ms`.
    drain_started: Cell<Option<Stamp>>,
    /// Connections whose accepted publish waits for room on another
    /// shard's channel (a shutdown finishes them before it closes anyone).
    blocked_publishes: Cell<usize>,
    /// How many shards said they passed each [`crate::bus::DrainStep`].
    drained: [Cell<usize>; 2],
}

impl Shard {
    pub fn new(
        index: usize,
        config: Arc<Config>,
        mailboxes: Vec<Mailbox>,
        all_stats: Arc<[ShardStats]>,
        node_connections: Arc<AtomicUsize>,
        admission: Arc<Admission>,
        announcements: Option<tokio::sync::mpsc::Sender<Bytes>>,
    ) -> Shard {
        let scratch = vec![0; config.server.read_buffer_bytes];
        let write_scratch = Vec::with_capacity(config.server.write_buffer_bytes);
        let bridge_shard = config.redis.as_ref().map(|r| r.bridge_shard);
        let history_budget = config.limits.history_memory_bytes / config.server.shards.max(1);
        let shards = mailboxes.len();
        let compressor = Compressor::new(config.compression.level);
        let tls = config.tls.as_ref().map(|t| crate::tls::server_config(t.certificates.clone(), t.min_version).into());
        let bridge = config
            .redis
            .as_ref()
            .filter(|r| r.bridge_shard == index)
            .map(|r| Rc::new(Bridge::new(r.clone(), config.server.node_id.clone(), announcements)));
        Shard {
            index,
            config,
            registry: RefCell::default(),
            interest: RefCell::default(),
            peers: RefCell::default(),
            mailboxes,
            all_stats,
            node_connections,
            admission,
            deadlines: RefCell::default(),
            deadline_earlier: Notify::default(),
            cork: Cork::default(),
            scratch: RefCell::new(scratch),
            write_scratch: RefCell::new(write_scratch),
            ping_frame: crate::ws::frame::build(crate::ws::frame::Opcode::Ping, &[]),
            compressor: RefCell::new(compressor),
            decompressor: RefCell::default(),
            tls,
            pending_interest: RefCell::default(),
            api_queue: RefCell::default(),
            api_ready: Notify::default(),
            history: RefCell::new(crate::history::History::new(index, history_budget)),
            holds: RefCell::default(),
            relay: RefCell::default(),
            sequenced_to: (0..shards).map(|_| Cell::new(0)).collect(),
            sequenced_from: (0..shards).map(|_| Cell::new(0)).collect(),
            deferred_queries: RefCell::default(),
            presence: RefCell::default(),
            bridge,
            bridge_shard,
            next_conn: Cell::new(0),
            next_token: Cell::new(0),
            shutting_down: Cell::new(false),
            drain_started: Cell::new(None),
            blocked_publishes: Cell::new(0),
            drained: Default::default(),
        }
    }

    /// How this shard queues frames to its connections.
    pub fn queueing(&self) -> Queueing<'_> {
        Queueing { limits: &self.config.queue, stats: self.stats(), cork: &self.cork }
    }

    pub fn stats(&self) -> &ShardStats {
        &self.all_stats[self.index]
    }

    /// A connection's client id as clients see it (welcome, presence,
    /// join/leave): unique across the nodes, `<node id>:<shard>-<seq>`.
    pub fn client_id(&self, conn: ConnId) -> String {
        format!("{}:{conn}", self.config.server.node_id)
    }

    pub fn next_conn_id(&self) -> ConnId {
        let seq = self.next_conn.get() + 1;
        self.next_conn.set(seq);
        ConnId::new(self.index, seq)
    }

    /// How many shards the node runs.
    pub fn shard_count(&self) -> usize {
        self.mailboxes.len()
    }

    /// A connection's accepted publish now waits for room on a channel
    /// (`true`), or no longer does.
    pub fn publish_blocked(&self, blocked: bool) {
        let n = self.blocked_publishes.get();
        self.blocked_publishes.set(if blocked { n + 1 } else { n.saturating_sub(1) });
    }

    pub fn blocked_publishes(&self) -> usize {
        self.blocked_publishes.get()
    }

    /// Wakes every connection task (to look at a state change of the shard).
    fn wake_all(&self) {
        for peer in self.peers.borrow().values() {
            peer.wake();
        }
    }

    fn others(&self) -> impl Iterator<Item = (usize, &Mailbox)> {
        self.mailboxes.iter().enumerate().filter(move |(i, _)| *i != self.index)
    }

    /// Subscribes `peer` to `topic` (validated; `options` are its
    /// namespace's) and does `then` (queue the request's ack, say) once the
    /// subscription is effective. When this is the topic's first subscriber
    /// here, that is only once every other shard has recorded this shard's
    /// interest and, when that made the node newly interested, once Redis
    /// confirmed the SUBSCRIBE: a publish anywhere after the ack is
    /// guaranteed to arrive, from this node or another. Meanwhile the
    /// connection is not read (`Peer::awaiting`). `member` is the
    /// connection as presence lists it (presence or join_leave topics).
    pub fn subscribe(&self, peer: &Rc<Peer>, topic: &str, options: TopicOptions, then: Then, member: Option<Member>) -> Rc<str> {
        let mut registry = self.registry.borrow_mut();
        let sub = registry.subscribe(topic, peer, options);
        let entry = registry.get_mut(topic).expect("just subscribed");
        if let Then::Position(request) = &then {
            // Held from now on: no live message can pass the answer.
            self.holds.borrow_mut().start(peer.id, sub.name.clone(), request.clone());
        }
        if sub.first {
            let token = self.next_token.get() + 1;
            let awaits_redis = self.node_interest_changed(topic, true, Some(InterestAck { shard: self.index, token }));
            let remaining = self.mailboxes.len() - 1 + usize::from(awaits_redis);
            if remaining > 0 {
                self.next_token.set(token);
                entry.pending_interest = Some(token);
                let shared: Arc<str> = topic.into();
                for (_, mailbox) in self.others() {
                    mailbox.control(ControlMsg::Interest { topic: shared.clone(), from: self.index, on: true, token: Some(token) });
                }
                self.pending_interest
                    .borrow_mut()
                    .insert(token, PendingInterest { topic: sub.name.clone(), remaining, waiters: Vec::new() });
            }
        }
        let mut pending = entry.pending_interest;
        let tracked = entry.options.presence || entry.options.join_leave;
        drop(registry);
        if let (true, true, Some(member)) = (sub.added, tracked, member) {
            // With Redis the ack also waits for the presence entry to be
            // written there: in the topic's round, or in one of its own.
            let ack = self.bridge_shard.is_some().then(|| {
                let mut rounds = self.pending_interest.borrow_mut();
                let token = match pending {
                    Some(token) => token,
                    None => {
                        let token = self.next_token.get() + 1;
                        self.next_token.set(token);
                        rounds.insert(token, PendingInterest { topic: sub.name.clone(), remaining: 0, waiters: Vec::new() });
                        pending = Some(token);
                        token
                    }
                };
                rounds.get_mut(&token).expect("tracked").remaining += 1;
                InterestAck { shard: self.index, token }
            });
            self.presence_join(&sub.name, peer.id, member, ack);
        }
        match pending {
            Some(token) => {
                let mut pending = self.pending_interest.borrow_mut();
                let wait = pending.get_mut(&token).expect("pending token is tracked");
                wait.waiters.push((peer.clone(), then));
                peer.set_awaiting(true);
            }
            None => {
                if self.subscribed(peer, &sub.name, then) {
                    peer.set_awaiting(true);
                }
            }
        }
        sub.name
    }

    /// Does what a subscribe does once effective. Returns true while the
    /// connection still waits (for its position).
    fn subscribed(&self, peer: &Rc<Peer>, topic: &Rc<str>, then: Then) -> bool {
        match then {
            Then::Frame(frame) => {
                if let Some(frame) = frame {
                    peer.push(frame, self.queueing());
                }
                false
            }
            Then::Position(request) => {
                let query = match request.recover {
                    Some(since) => crate::history::Query::Recover(since),
                    None => crate::history::Query::Position,
                };
                self.ask_history(topic, query, peer.id, None);
                // The answer may have come at once (this shard is the home).
                self.holds.borrow().holds(peer.id, topic)
            }
        }
    }

    /// Removes `id` from `topic`; tells the other shards when it was the last
    /// local subscriber. Returns whether it was subscribed.
    pub fn unsubscribe(&self, topic: &str, id: ConnId) -> bool {
        let mut registry = self.registry.borrow_mut();
        let options = registry.get(topic).map(|e| e.options).unwrap_or_default();
        let Some(last) = registry.unsubscribe(topic, id) else {
            return false;
        };
        drop(registry);
        self.holds.borrow_mut().cancel(id, topic);
        if options.presence || options.join_leave {
            self.presence_leave(topic, id);
        }
        if last {
            let elsewhere = !self.interest.borrow().shards(topic).is_empty();
            self.node_interest_changed(topic, elsewhere, None);
        }
        if last && self.mailboxes.len() > 1 {
            let shared: Arc<str> = topic.into();
            for (_, mailbox) in self.others() {
                mailbox.control(ControlMsg::Interest { topic: shared.clone(), from: self.index, on: false, token: None });
            }
        }
        true
    }

    /// Delivers a publish: to this shard's subscribers directly, and as one
    /// message to each other interested shard. Per-publisher order holds
    /// because a connection with a [`PendingPublish`] is not read until it
    /// completes, and each shard-to-shard channel is FIFO.
    ///
    /// A publish to a history topic instead travels to the shard that
    /// numbers it ([`Shard::sequence`]) and fans out from there; per-publisher
    /// order on the topic holds because every channel on the way is FIFO.
    pub fn publish(&self, origin: &Peer, topic: &str, payload: Payload<'_>, skip_self: bool) -> Result<(), Box<PendingPublish>> {
        ShardStats::add(&self.stats().publishes, 1);
        let skip = skip_self.then_some(origin.id);
        if self.has_history(topic) {
            let msg = Outgoing::remote(topic, Kind::Message, Bytes::copy_from_slice(payload.bytes), payload.json, origin.last_seen.get());
            return self.sequence(msg, skip);
        }
        let msg = Outgoing::new(topic, Kind::Message, payload, origin.encoding(), origin.last_seen.get(), self.stats());
        self.fan_out(msg, skip)
    }

    /// Fans out a message from the admin API: numbered first on a history topic.
    pub fn route(&self, msg: Arc<Outgoing>) -> Result<(), Box<PendingPublish>> {
        if msg.kind == Kind::Message && self.has_history(&msg.topic) {
            return self.sequence(msg, None);
        }
        self.fan_out(msg, None)
    }

    /// Delivers a direct message to every connection of `user` on this node
    /// and, through Redis, on every other: the same path as a publish, on the
    /// user's internal topic. `from` is the sender's verified user id.
    /// Ordering and backpressure are a publish's.
    pub fn send_direct(&self, origin: &Peer, from: Option<&Arc<str>>, user: &str, payload: Payload<'_>) -> Result<(), Box<PendingPublish>> {
        let kind = Kind::Direct { from: from.cloned() };
        let msg = Outgoing::new(&topic::user_topic(user), kind, payload, origin.encoding(), origin.last_seen.get(), self.stats());
        ShardStats::add(&self.stats().direct_messages, 1);
        self.fan_out(msg, None)
    }

    /// Queues `msg` here, hands it to the other interested shards, and
    /// passes it to the bridge for the other nodes.
    fn fan_out(&self, msg: Arc<Outgoing>, skip: Option<ConnId>) -> Result<(), Box<PendingPublish>> {
        self.deliver_local(&msg, skip);
        let mut remaining = self.interest.borrow().shards(&msg.topic);
        let mut forward_to = None;
        match (&self.bridge, self.bridge_shard) {
            (Some(bridge), _) => bridge.enqueue(&msg, self.stats()),
            (None, Some(bridge_shard)) => {
                remaining.insert(bridge_shard);
                forward_to = Some(bridge_shard);
            }
            (None, None) => {}
        }
        self.dispatch(PublishMsg::new(msg, skip), remaining, forward_to)
    }

    /// Fans out a message that came from another node (through the bridge):
    /// local subscribers and other interested shards, never back to Redis.
    pub fn fan_out_remote(&self, msg: Arc<Outgoing>, skip: Option<ConnId>) -> Result<(), Box<PendingPublish>> {
        self.deliver_local(&msg, skip);
        let remaining = self.interest.borrow().shards(&msg.topic);
        self.dispatch(PublishMsg::new(msg, skip), remaining, None)
    }

    /// Hands `msg` to the `remaining` shards; what could not be handed yet
    /// comes back boxed (the rare path) for the caller to retry.
    fn dispatch(&self, msg: PublishMsg, remaining: ShardSet, forward_to: Option<usize>) -> Result<(), Box<PendingPublish>> {
        if remaining.is_empty() {
            return Ok(());
        }
        let mut pending = PendingPublish { msg, remaining, forward_to };
        if self.retry_publish(&mut pending) {
            Ok(())
        } else {
            Err(Box::new(pending))
        }
    }

    /// Tries to hand a pending publish to the shards still missing it.
    /// Returns true when it is complete.
    pub fn retry_publish(&self, pending: &mut PendingPublish) -> bool {
        // ShardSet is Copy: iterate a snapshot while removing from the original.
        let targets = pending.remaining;
        for shard in targets.iter() {
            let msg = PublishMsg { forward: pending.forward_to == Some(shard), ..pending.msg.clone() };
            let handed = if msg.sequence.is_some() {
                // Numbering goes through the channel even to this shard, so
                // that its bound applies to every publisher alike.
                let handed = self.mailboxes[shard].try_sequence(msg).is_ok();
                if handed {
                    let sent = &self.sequenced_to[shard];
                    sent.set(sent.get() + 1);
                }
                handed
            } else {
                shard == self.index || self.mailboxes[shard].try_publish(msg).is_ok()
            };
            if handed {
                pending.remaining.remove(shard);
            }
        }
        if !pending.remaining.is_empty() {
            ShardStats::add(&self.stats().bus_full_waits, 1);
        }
        pending.remaining.is_empty()
    }

    /// Tells the bridge (on the bridge shard) whether the node has
    /// subscribers of `topic`. Returns true when the bridge took `ack` to
    /// release once Redis confirms the SUBSCRIBE.
    fn node_interest_changed(&self, topic: &str, interested: bool, ack: Option<InterestAck>) -> bool {
        match &self.bridge {
            Some(bridge) => bridge.set_interest(topic, interested, ack),
            None => false,
        }
    }

    /// A publish from another shard: deliver it here and, on the bridge
    /// shard, pass it on to Redis.
    fn on_publish(&self, publish: PublishMsg) {
        self.deliver_local(&publish.msg, publish.skip);
        if publish.forward {
            if let Some(bridge) = &self.bridge {
                bridge.enqueue(&publish.msg, self.stats());
            }
        }
    }

    /// Queues `msg` to every local subscriber of its topic except `skip`,
    /// each in its connection's encoding (every form built once per node).
    /// On a history topic, a subscriber still waiting for its position gets
    /// it held instead ([`crate::history::wait`]).
    pub fn deliver_local(&self, msg: &Arc<Outgoing>, skip: Option<ConnId>) {
        let registry = self.registry.borrow();
        let Some(entry) = registry.get(&msg.topic) else { return };
        let stats = self.stats();
        let now = Stamp::now();
        stats.fanout_delay.observe_micros(now.micros_since(msg.received));
        if entry.options.history.is_some() && !self.holds.borrow().is_empty() {
            return self.deliver_holding(entry, msg, skip, now);
        }
        let q = self.queueing();
        let mut delivered = 0;
        if entry.other_wires == 0 {
            // Every subscriber takes plain JSON: one frame for all.
            let frame = msg.plain(Encoding::Json, stats);
            for (id, peer) in &entry.subscribers {
                if Some(*id) != skip {
                    peer.push_at(frame.clone(), now, q);
                    delivered += 1;
                }
            }
            ShardStats::add(&stats.deliveries, delivered);
            return;
        }
        let builder = self.form_builder();
        let compress_once = self.config.compression.compress_once;
        // Most subscribers share a wire form: fetch it once per run of them.
        let mut current: Option<(Wire, Bytes)> = None;
        for (id, peer) in &entry.subscribers {
            if Some(*id) == skip {
                continue;
            }
            let wire = peer.wire.get();
            let frame = match &current {
                Some((w, frame)) if *w == wire => frame.clone(),
                // The naive way, kept to measure what compressing once saves.
                _ if !compress_once && wire.deflate != Mode::Off => {
                    let plain = msg.plain(wire.encoding, stats);
                    if builder.worth_compressing(plain) {
                        builder.compress(plain, wire.deflate)
                    } else {
                        plain.clone()
                    }
                }
                _ => {
                    let frame = msg.frame(wire, &builder);
                    current = Some((wire, frame.clone()));
                    frame
                }
            };
            peer.push_at(frame, now, q);
            delivered += 1;
        }
        ShardStats::add(&stats.deliveries, delivered);
    }

    /// Sends `msg` to shard `to`'s control channel, or, when that is this
    /// shard, handles it at once.
    fn post(&self, to: usize, msg: ControlMsg) {
        if to == self.index {
            self.on_control(msg);
        } else {
            self.mailboxes[to].control(msg);
        }
    }

    /// Applies one control message (from another shard, or [`Shard::post`]ed here).
    fn on_control(&self, msg: ControlMsg) {
        match msg {
            ControlMsg::Interest { topic, from, on, token } => {
                let mut interest = self.interest.borrow_mut();
                interest.set(&topic, from, on);
                let node_wide = !interest.shards(&topic).is_empty() || self.registry.borrow().get(&topic).is_some();
                drop(interest);
                let ack = token.map(|token| InterestAck { shard: from, token });
                // The bridge may hold the acknowledgement until Redis confirms.
                if !self.node_interest_changed(&topic, node_wide, ack) {
                    if let Some(ack) = ack {
                        self.interest_acked(ack);
                    }
                }
            }
            ControlMsg::InterestApplied { token } => self.interest_acked(InterestAck { shard: self.index, token }),
            ControlMsg::Admin(call) => self.on_admin(call),
            ControlMsg::History(msg) => self.on_history(msg),
            ControlMsg::Presence(msg) => self.on_presence(msg),
            ControlMsg::Drained { step, .. } => self.on_drained(step),
            ControlMsg::Shutdown => unreachable!("handled by the bus loop"),
        }
    }

    /// One acknowledgement of an interest round: sent to its shard, or, for
    /// this shard's own round, counted; the last one releases (and acks) the
    /// waiting subscribers.
    pub fn interest_acked(&self, ack: InterestAck) {
        if ack.shard != self.index {
            self.mailboxes[ack.shard].control(ControlMsg::InterestApplied { token: ack.token });
            return;
        }
        let token = ack.token;
        let mut pending = self.pending_interest.borrow_mut();
        let Some(wait) = pending.get_mut(&token) else { return };
        wait.remaining -= 1;
        if wait.remaining > 0 {
            return;
        }
        let wait = pending.remove(&token).expect("present");
        drop(pending);
        if let Some(entry) = self.registry.borrow_mut().get_mut(&wait.topic) {
            if entry.pending_interest == Some(token) {
                entry.pending_interest = None;
            }
        }
        for (peer, then) in wait.waiters {
            if !self.subscribed(&peer, &wait.topic, then) {
                peer.set_awaiting(false);
                peer.wake();
            }
        }
    }

    /// Registers a new connection with the shard.
    pub fn add_peer(&self, peer: Rc<Peer>) {
        self.peers.borrow_mut().insert(peer.id, peer);
        let stats = self.stats();
        ShardStats::add(&stats.connections, 1);
        ShardStats::add(&stats.connections_accepted, 1);
    }

    /// Forgets a closed connection, its subscriptions and its deadline.
    pub fn remove_peer(&self, id: ConnId, topics: &[Rc<str>]) {
        for topic in topics {
            self.unsubscribe(topic, id);
        }
        self.deadlines.borrow_mut().clear(id);
        self.peers.borrow_mut().remove(&id);
        ShardStats::sub(&self.stats().connections, 1);
        self.node_connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sets (or replaces) connection `id`'s deadline.
    pub fn set_deadline(&self, id: ConnId, at: Stamp, kind: Deadline) {
        if self.deadlines.borrow_mut().set(id, at, kind) {
            self.deadline_earlier.raise();
        }
    }

    /// Forgets connection `id`'s deadline (it authenticated, or its new token never expires).
    pub fn clear_deadline(&self, id: ConnId) {
        self.deadlines.borrow_mut().clear(id);
    }

    /// The earliest deadline of this shard's connections.
    pub fn next_deadline(&self) -> Option<Stamp> {
        self.deadlines.borrow().next()
    }

    /// Waits until a deadline earlier than all others is set.
    pub async fn earlier_deadline(&self) {
        self.deadline_earlier.wait().await
    }

    /// Closes the connections whose deadline passed: 4001 for those that never
    /// authenticated, 4002 for expired tokens. What is queued for them is
    /// sent first.
    pub fn expire_due(&self, now: Stamp) {
        loop {
            let Some((id, kind)) = self.deadlines.borrow_mut().pop_due(now) else { return };
            let Some(peer) = self.peers.borrow().get(&id).cloned() else { continue };
            let stats = self.stats();
            match kind {
                Deadline::Auth => {
                    ShardStats::add(&stats.auth_failures, 1);
                    peer.close(close::UNAUTHORIZED, "auth timeout", true);
                }
                Deadline::Expiry => {
                    ShardStats::add(&stats.token_expiries, 1);
                    peer.close(close::TOKEN_EXPIRED, "token expired", true);
                }
            }
        }
    }

    /// What this shard lends to build a message's wire forms.
    pub fn form_builder(&self) -> Builder<'_> {
        Builder { stats: self.stats(), compressor: &self.compressor, min_bytes: self.config.compression.min_bytes }
    }

    /// The `/metrics` page: every shard's counters and the node's user gauges.
    pub fn metrics_page(&self) -> String {
        crate::metrics::render(&self.all_stats, self.admission.gauges())
    }

    /// One heartbeat pass: ping connections due for it, close silent ones,
    /// abort ones whose close handshake took too long.
    fn sweep(&self, now: Stamp) {
        let hb = &self.config.heartbeat;
        let close_timeout = self.config.queue.close_timeout;
        let drain_started = self.drain_started.get();
        for peer in self.peers.borrow().values() {
            if let Some(since) = peer.closing_since() {
                // The drain's own closes end at its deadline, not here.
                let drains = drain_started.is_some_and(|start| since >= start);
                if !drains && now.since(since) >= close_timeout {
                    peer.abort();
                }
                continue;
            }
            if let Some(timeout) = hb.timeout {
                if now.since(peer.last_seen.get()) >= timeout {
                    ShardStats::add(&self.stats().heartbeat_timeouts, 1);
                    peer.close(crate::codes::close::POLICY, "heartbeat timeout", false);
                    continue;
                }
            }
            if let Some(interval) = hb.interval {
                if now.since(peer.last_ping.get()) >= interval {
                    peer.last_ping.set(now);
                    peer.push_at(self.ping_frame.clone(), now, self.queueing());
                }
            }
        }
    }
}
