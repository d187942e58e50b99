//! One shard: the state a single pinned executor owns, and its tasks.
//!
//! - [`Shard`] (this file): the state and its owners' small accessors;
//! - `interest`: subscriptions and the interest rounds behind them;
//! - `fanout`: a publish delivered here and handed to the other shards;
//! - `connections`: the table of peers, deadlines, the heartbeat sweep;
//! - `history`, `presence`: this shard as a topic's offset authority and
//!   presence owner, and as the asker of others;
//! - `admin`: calls from the admin plane; `hooks`: the backend's answers
//!   on their way to a connection; `webhooks`: the events the backend
//!   hears of; `fallback`: the HTTP-streaming and SSE sessions and the
//!   requests POSTed for them; `shutdown`: quiesce and drain;
//! - [`tasks`]: the loops every shard runs (bus, flush, sweeper, deadlines).
//!
//! Everything in [`Shard`] is `!Send` and touched only by its own executor.
//! Other shards reach it only through its [`crate::bus::Inbox`].

mod admin;
mod connections;
pub mod deadline;
mod fanout;
mod history;
mod fallback;
pub use fallback::NotTaken;
pub mod hooks;
mod webhooks;
mod interest;
mod presence;
mod remote;
pub mod shutdown;
pub mod tasks;

pub use deadline::{Deadline, Deadlines, SubscriptionDeadlines};
pub use fanout::PendingPublish;
pub use interest::{Join, Then};
pub use remote::Remote;
use interest::PendingInterest;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use bytes::Bytes;

use crate::auth::Admission;
use crate::clock::Stamp;
use crate::bus::{ControlMsg, InterestMap, Mailbox};
use crate::config::Config;
use crate::peer::{Cork, Peer, Queueing};
use crate::readiness::Readiness;
use crate::ids::{ConnId, InterestAck};
use crate::metrics::ShardStats;
use crate::notify::Notify;
use crate::protocol::Builder;
use crate::ws::deflate::{Compressor, Decompressor};
use crate::topic::Registry;

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
    /// Subscription-token expiries of this shard's subscriptions; an entry
    /// is dropped with its subscription ([`Shard::unsubscribe`]).
    sub_deadlines: RefCell<SubscriptionDeadlines>,
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
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pending_interest: RefCell<HashMap<u64, PendingInterest>>,
    /// API publishes waiting for their turn ([`admin::api_publish_loop`]).
    api_queue: RefCell<admin::ApiQueue>,
    api_ready: Notify,
    /// The shard's epoll set of client sockets, drained by the bus loop.
    pub readiness: Rc<Readiness>,
    /// The link to the other nodes (the Redis bridge), on the bridge shard
    /// only; attached once at start ([`remote`]).
    remote: std::cell::OnceCell<Rc<dyn Remote>>,
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
    /// The way to the backend hooks' thread, when `[proxy]` sets a URL.
    hooks: std::cell::OnceCell<crate::bus::hooks::HookSender>,
    /// Hook answers and deadlines waiting for their connection's task.
    hook_events: RefCell<hooks::HookEvents>,
    /// The node's fallback sessions by id (shared by every shard).
    pub sessions: Arc<crate::bus::sessions::Sessions>,
    /// This shard's fallback sessions.
    fallbacks: RefCell<fallback::Sessions>,
    /// A message's frame re-framed once for all fallback sessions here.
    reframer: RefCell<crate::fallback::framing::Reframer>,
    /// The webhooks' queue, when `[webhooks] url` is set.
    webhooks: std::cell::OnceCell<crate::bus::webhooks::WebhookQueue>,
    /// On the shard that reports occupancy (`webhooks`), the node's
    /// occupied topics; empty elsewhere and without topic webhooks.
    occupied: RefCell<std::collections::HashSet<Rc<str>, ahash::RandomState>>,
}

/// What every shard of the node shares (besides the bus): counts and
/// tables touched off the delivery path.
#[derive(Debug, Clone)]
pub struct NodeShared {
    /// Open connections, every shard's.
    pub connections: Arc<AtomicUsize>,
    pub admission: Arc<Admission>,
    pub sessions: Arc<crate::bus::sessions::Sessions>,
}

impl Shard {
    pub fn new(index: usize, config: Arc<Config>, mailboxes: Vec<Mailbox>, all_stats: Arc<[ShardStats]>, node: NodeShared, readiness: Rc<Readiness>) -> Shard {
        let NodeShared { connections: node_connections, admission, sessions } = node;
        let scratch = vec![0; config.server.read_buffer_bytes];
        let write_scratch = Vec::with_capacity(config.server.write_buffer_bytes);
        let bridge_shard = config.redis.as_ref().map(|r| r.bridge_shard);
        let history_budget = config.limits.history_memory_bytes / config.server.shards.max(1);
        let shards = mailboxes.len();
        let compressor = Compressor::new(config.compression.level);
        let tls = config.tls.as_ref().map(|t| crate::tls::server_config(t.certificates.clone(), t.min_version, t.tickets.clone()));
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
            sub_deadlines: RefCell::default(),
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
            readiness,
            remote: std::cell::OnceCell::new(),
            bridge_shard,
            next_conn: Cell::new(0),
            next_token: Cell::new(0),
            shutting_down: Cell::new(false),
            drain_started: Cell::new(None),
            blocked_publishes: Cell::new(0),
            drained: Default::default(),
            hooks: std::cell::OnceCell::new(),
            hook_events: RefCell::default(),
            sessions,
            fallbacks: RefCell::default(),
            reframer: RefCell::default(),
            webhooks: std::cell::OnceCell::new(),
            occupied: RefCell::default(),
        }
    }

    /// How this shard queues frames to its connections.
    pub fn queueing(&self) -> Queueing<'_> {
        Queueing { limits: &self.config.queue, stats: self.stats(), cork: &self.cork, reframer: &self.reframer }
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
            ControlMsg::Hook(reply) => self.on_hook_reply(reply),
            ControlMsg::History(msg) => self.on_history(msg),
            ControlMsg::Presence(msg) => self.on_presence(msg),
            ControlMsg::Emulation { conn, requests } => self.on_emulation(conn, requests),
            ControlMsg::ForwardEmulation { node, body } => match self.remote() {
                Some(link) => link.forward_emulation(&node, &body, self.stats()),
                None => ShardStats::add(&self.stats().emulation_dropped, 1),
            },
            ControlMsg::Drained { step, .. } => self.on_drained(step),
            ControlMsg::Shutdown => unreachable!("handled by the bus loop"),
        }
    }

    /// What this shard lends to build a message's wire forms.
    pub fn form_builder(&self) -> Builder<'_> {
        Builder { stats: self.stats(), compressor: &self.compressor, min_bytes: self.config.compression.min_bytes }
    }

    /// The `/metrics` page: every shard's counters, the node's user gauges,
    /// its backend hooks and webhooks.
    pub fn metrics_page(&self) -> String {
        let mut node: Vec<Box<dyn prometheus_client::collector::Collector>> = vec![Box::new(self.admission.gauges())];
        if let Some(hooks) = self.hooks.get() {
            node.push(Box::new(hooks.stats.clone()));
        }
        if let Some(queue) = self.webhooks.get() {
            node.push(Box::new(queue.stats().clone()));
        }
        crate::metrics::render(&self.all_stats, node)
    }

}
