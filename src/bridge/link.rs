//! One Redis server the bridge talks to (the standalone, the primary a
//! Sentinel names, or one Redis Cluster primary) and the two connections it
//! keeps to it, both driven by the bridge shard's executor:
//! - the publisher pipelines commands (publishes, numbered publishes,
//!   history and presence scripts), up to `batch_messages` per write and
//!   `pipeline_depth` writes ahead of the replies, from its own bounded queue;
//! - the subscriber (S)SUBSCRIBEs the node's topics whose channel this
//!   server carries, and hands every push to the bridge.
//!
//! Both reconnect with exponential backoff, and both are watched: one that
//! has owed the server a reply for `[redis] heartbeat_ms` is dropped and
//! made again ([`Owed`]), and an idle one is PINGed so that owing starts.
//! A link is reset (both
//! connections dropped and made again) when a Sentinel announces a new
//! primary, and retired when its primary leaves the cluster's slot map: the
//! subscriber goes at once, the publisher first reads the replies it is
//! owed (for at most [`RETIRE_GRACE`]), so that the slots' fences
//! (`fence.rs`) learn what the old primary did with them.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::AsyncWriteExt;
use glommio::timer::sleep;
use redis::Value;
use tracing::{debug, info, warn};

use super::endpoint::RedisStream;
use crate::config::Endpoint;
use super::resp::{BridgeError, RespReader};
use super::scripts::Script;
use super::{Bridge, Outbound, READ_CHUNK};
use crate::metrics::ShardStats;
use crate::notify::Notify;
use crate::shard::Shard;

/// Channels per SUBSCRIBE command when re-subscribing after a reconnect
/// (sharded SSUBSCRIBE takes one channel per command: channels of one
/// command must share a slot).
const SUBSCRIBE_CHUNK: usize = 1000;

/// How long the publisher connection of a retired link (its primary left
/// the slot map) waits for the replies still owed before it closes,
/// counting the rest lost: a demoted primary answers at once.
const RETIRE_GRACE: Duration = Duration::from_secs(1);

/// How long a slot counts as written lately on a link ([`Written`]): far
/// beyond how late a demoted primary's cluster bus forwards what it ran.
const LATELY: Duration = Duration::from_secs(1);

/// The cluster slots a publisher connection wrote commands of lately
/// (within one to two [`LATELY`]): a slot the server loses may still have
/// messages on their way through it (`fence.rs`). 4 KiB per link.
struct Written {
    now: Box<[u64; 256]>,
    before: Box<[u64; 256]>,
    since: Instant,
}

impl Written {
    fn new() -> Written {
        Written { now: Box::new([0; 256]), before: Box::new([0; 256]), since: Instant::now() }
    }

    /// Starts a new period when the current one is over (once per batch).
    fn rotate(&mut self) {
        let age = self.since.elapsed();
        if age >= LATELY {
            *self.before = if age >= 2 * LATELY { [0; 256] } else { *self.now };
            *self.now = [0; 256];
            self.since = Instant::now();
        }
    }

    fn note(&mut self, slot: u16) {
        let slot = usize::from(slot) % (256 * 64);
        self.now[slot / 64] |= 1 << (slot % 64);
    }

    /// The slots written lately, in order.
    fn lately(&self) -> Vec<u16> {
        let words: Vec<u64> = match self.since.elapsed() {
            age if age >= 2 * LATELY => return Vec::new(),
            age if age >= LATELY => self.now.to_vec(),
            _ => self.now.iter().zip(self.before.iter()).map(|(a, b)| a | b).collect(),
        };
        let mut slots = Vec::new();
        for (i, mut word) in words.into_iter().enumerate() {
            while word != 0 {
                let bit = word.trailing_zeros() as usize;
                word &= word - 1;
                slots.push((i * 64 + bit) as u16);
            }
        }
        slots
    }
}

/// The bridge's state for one Redis server. Touched only by the bridge shard.
pub struct Link {
    /// Where the server is. Sentinel mode: replaced before every connection
    /// attempt by what the Sentinels say.
    pub endpoint: RefCell<Endpoint>,
    /// Commands waiting for the publisher connection. At most
    /// `buffer_messages` droppable ones (the oldest is dropped beyond);
    /// reads come on top, at most one per waiting client connection.
    pub outbound: RefCell<VecDeque<Outbound>>,
    pub outbound_ready: Notify,
    /// Commands written on the publisher connection and not answered yet,
    /// in order (replies come in order). Bounded by `batch_messages` ×
    /// `pipeline_depth`; emptied (counted lost) when the connection fails.
    pub in_flight: RefCell<VecDeque<Outbound>>,
    /// Cluster mode: the slots the publisher wrote commands of lately.
    written: RefCell<Written>,
    /// (S)SUBSCRIBE (true) / (S)UNSUBSCRIBE (false) not yet sent. Kept only
    /// while connected (a reconnect subscribes everything anew), so bounded
    /// by the changes of one connection's lifetime between two writes.
    pub changes: RefCell<VecDeque<(Rc<str>, bool)>>,
    pub changed: Notify,
    pub publisher_connected: Cell<bool>,
    pub subscriber_connected: Cell<bool>,
    reset_publisher: Notify,
    reset_subscriber: Notify,
    /// Its primary left the slot map: the connection tasks end (the
    /// publisher once it has its replies, or after [`RETIRE_GRACE`]).
    retired: Cell<bool>,
    retiring: Notify,
    /// A failed connection attempt was logged as a warning since the link
    /// last connected: one warning per link, whichever connection fails
    /// first, the rest quietly (both connections fail together when the
    /// server is unreachable).
    warned: Cell<bool>,
    /// The two connection tasks, for a stop.
    pub tasks: RefCell<Vec<glommio::task::JoinHandle<()>>>,
}

impl Link {
    pub fn new(endpoint: Endpoint) -> Link {
        Link {
            endpoint: RefCell::new(endpoint),
            outbound: RefCell::default(),
            outbound_ready: Notify::default(),
            in_flight: RefCell::default(),
            written: RefCell::new(Written::new()),
            changes: RefCell::default(),
            changed: Notify::default(),
            publisher_connected: Cell::new(false),
            subscriber_connected: Cell::new(false),
            reset_publisher: Notify::default(),
            reset_subscriber: Notify::default(),
            retired: Cell::new(false),
            retiring: Notify::default(),
            warned: Cell::new(false),
            tasks: RefCell::default(),
        }
    }

    /// Drops both connections; they reconnect (to a new address, if any).
    pub fn reset(&self) {
        self.reset_publisher.raise();
        self.reset_subscriber.raise();
    }

    /// Ends both connection tasks for good, the publisher's once it has
    /// read the replies it is owed; returns what was still queued.
    pub fn retire(&self) -> VecDeque<Outbound> {
        self.retired.set(true);
        self.retiring.raise();
        self.reset_subscriber.raise();
        if self.publisher_connected.get() {
            self.outbound_ready.raise();
        } else {
            self.reset_publisher.raise();
        }
        self.changes.borrow_mut().clear();
        std::mem::take(&mut *self.outbound.borrow_mut())
    }

    pub fn is_retired(&self) -> bool {
        self.retired.get()
    }

    /// The slots the publisher wrote commands of lately (cluster mode).
    pub fn written_lately(&self) -> Vec<u16> {
        self.written.borrow().lately()
    }

    /// Queues a command. Beyond `max` queued, the oldest droppable one goes
    /// (counted); commands someone waits for are never dropped.
    pub fn push(&self, command: Outbound, max: usize, stats: &ShardStats) {
        let mut outbound = self.outbound.borrow_mut();
        if command.on_reply.droppable() && outbound.len() >= max {
            if let Some(i) = outbound.iter().position(|c| c.on_reply.droppable()) {
                outbound.remove(i);
                ShardStats::add(&stats.redis_dropped, 1);
            }
        }
        outbound.push_back(command);
        drop(outbound);
        self.outbound_ready.raise();
    }

    /// Queues a subscription change for the connected subscriber.
    pub fn change(&self, topic: Rc<str>, subscribe: bool) {
        if self.subscriber_connected.get() {
            self.changes.borrow_mut().push_back((topic, subscribe));
            self.changed.raise();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Publisher,
    Subscriber,
}

/// Keeps one connection of `link` up, with exponential backoff between attempts.
pub async fn reconnecting(shard: Rc<Shard>, bridge: Rc<Bridge>, link: Rc<Link>, role: Role) {
    let cfg = bridge.config();
    let mut backoff = cfg.reconnect_min;
    let reset = match role {
        Role::Publisher => &link.reset_publisher,
        Role::Subscriber => &link.reset_subscriber,
    };
    while !link.is_retired() {
        reset.clear();
        match bridge.open(&link).await {
            Ok(stream) => {
                let server = link.endpoint.borrow().address();
                info!(role = ?role, server, "redis connected");
                ShardStats::add(&shard.stats().redis_connects, 1);
                backoff = cfg.reconnect_min;
                link.warned.set(false);
                let result = match role {
                    Role::Publisher => run_publisher(&shard, &bridge, &link, stream, reset).await,
                    Role::Subscriber => run_subscriber(&shard, &bridge, &link, stream, reset).await,
                };
                match role {
                    Role::Publisher => bridge.publisher_lost(&shard, &link),
                    Role::Subscriber => bridge.subscriber_lost(&shard, &link),
                }
                ShardStats::add(&shard.stats().redis_reconnects, 1);
                let err = result.expect_err("connection loops only end in error");
                if link.is_retired() {
                    info!(role = ?role, server, "redis link closed: the server left the cluster's slot map");
                    return;
                }
                warn!(role = ?role, server, "redis connection lost: {err}; reconnecting");
                if matches!(err, BridgeError::Reset) {
                    // A new primary was announced: no reason to wait.
                    continue;
                }
            }
            Err(err) => {
                if role == Role::Publisher {
                    bridge.fail_unsent_reads(&shard, &link);
                }
                bridge.unreachable(&link);
                // Log the link's first failure as a warning and the rest
                // quietly, but always name an authentication problem.
                let server = link.endpoint.borrow().address();
                let server = if link.endpoint.borrow().host.is_empty() { "(not known yet)".to_string() } else { server };
                if !link.warned.replace(true) || matches!(err, BridgeError::Refused(_)) {
                    warn!(role = ?role, server, waiting_for = %bridge.waiting_for(), retry_in_ms = backoff.as_millis() as u64, "redis unavailable: {err}; local fan-out continues, retrying");
                } else {
                    debug!(role = ?role, server, "redis still unavailable: {err}");
                }
            }
        }
        futures_lite::future::or(sleep(backoff), reset.wait()).await;
        backoff = (backoff * 2).min(cfg.reconnect_max);
    }
}

/// Writes pipelined command batches and hands Redis' replies to the bridge.
/// When the connection fails, what was sent and not answered is counted lost
/// (publishes) or answered "unavailable" (reads), and so are the reads not
/// yet sent: their clients must not wait for a reconnect. Unsent publishes
/// stay queued for the next connection.
async fn run_publisher(shard: &Shard, bridge: &Bridge, link: &Link, mut stream: RedisStream, reset: &Notify) -> Result<(), BridgeError> {
    let owed = Owed::default();
    link.publisher_connected.set(true);
    let retired = async {
        link.retiring.wait().await;
        sleep(RETIRE_GRACE).await;
        Err(BridgeError::Reset)
    };
    let result = futures_lite::future::or(
        futures_lite::future::or(publisher_loop(shard, bridge, link, &mut stream, &owed), reset_of(reset)),
        futures_lite::future::or(owed.watch(bridge.config().heartbeat), retired),
    )
    .await;
    link.publisher_connected.set(false);
    let unanswered = std::mem::take(&mut *link.in_flight.borrow_mut());
    for command in unanswered {
        bridge.lost(shard, command);
    }
    result
}

async fn publisher_loop(shard: &Shard, bridge: &Bridge, link: &Link, stream: &mut RedisStream, owed: &Owed) -> Result<(), BridgeError> {
    let cfg = bridge.config();
    let stats = shard.stats();
    let limits = &shard.config.limits;
    let mut reader = RespReader::new(READ_CHUNK, limits.max_message_bytes * 4 + limits.max_presence_clients * 512);
    // Sizes of the batches written and not yet fully answered.
    let mut batches: VecDeque<usize> = VecDeque::new();
    // The scripts first: every EVALSHA after them on this connection finds them.
    let mut packed = Vec::new();
    for script in Script::ALL {
        redis::cmd("SCRIPT").arg("LOAD").arg(script.text()).write_packed_command(&mut packed);
        link.in_flight.borrow_mut().push_back(Outbound::setup());
    }
    batches.push_back(Script::ALL.len());
    owed.start();
    stream.write_all(&packed).await?;
    // Redis may have lost this node's presence while we were away.
    bridge.refresh_presence();
    // Cluster mode keeps each command until its reply: a redirection sends it again.
    let keep = bridge.is_cluster();
    loop {
        // Retired: what was queued went to the new owners; only drain
        // markers come after. Done once every reply is in and no drain
        // marker is to go through it any more.
        if link.is_retired() && batches.is_empty() && link.outbound.borrow().is_empty() && !bridge.drains_through(link) {
            return Err(BridgeError::Reset);
        }
        let has_outbound = !link.outbound.borrow().is_empty();
        if has_outbound && batches.len() < cfg.pipeline_depth {
            packed.clear();
            let n = {
                let mut outbound = link.outbound.borrow_mut();
                let mut in_flight = link.in_flight.borrow_mut();
                let mut written = link.written.borrow_mut();
                if keep {
                    written.rotate();
                }
                let n = outbound.len().min(cfg.batch_messages);
                for mut command in outbound.drain(..n) {
                    packed.extend_from_slice(&command.packed);
                    if keep {
                        written.note(command.slot);
                    } else {
                        command.packed = Vec::new();
                    }
                    in_flight.push_back(command);
                }
                n
            };
            bridge.note_buffered(stats);
            batches.push_back(n);
            ShardStats::set(&stats.redis_pipeline_depth, batches.len() as u64);
            owed.start();
            stream.write_all(&packed).await?;
            continue;
        }
        if batches.is_empty() {
            owed.clear();
            let Some(limit) = cfg.heartbeat else {
                link.outbound_ready.wait().await;
                continue;
            };
            // Idle: PING once a third of the heartbeat has passed quietly.
            let idle = futures_lite::future::or(
                async {
                    link.outbound_ready.wait().await;
                    false
                },
                async {
                    sleep(limit / 3).await;
                    true
                },
            );
            if idle.await {
                link.in_flight.borrow_mut().push_back(Outbound::setup());
                batches.push_back(1);
                owed.start();
                stream.write_all(PING).await?;
            }
            continue;
        }
        let replies = reader.read_values(stream).await?;
        owed.progress();
        for reply in replies {
            let command = link.in_flight.borrow_mut().pop_front().ok_or(BridgeError::Protocol("reply without a request"))?;
            bridge.on_command_reply(shard, command, reply);
            let head = batches.front_mut().ok_or(BridgeError::Protocol("reply without a request"))?;
            *head -= 1;
            if *head == 0 {
                batches.pop_front();
                ShardStats::set(&stats.redis_pipeline_depth, batches.len() as u64);
            }
        }
    }
}

/// Keeps the subscriptions on this server in line with the node's interest
/// and hands pushes to the bridge.
async fn run_subscriber(shard: &Shard, bridge: &Bridge, link: &Link, stream: RedisStream, reset: &Notify) -> Result<(), BridgeError> {
    link.subscriber_connected.set(true);
    ShardStats::add(&shard.stats().redis_connected, 1);
    let owed = Owed::default();
    futures_lite::future::or(
        futures_lite::future::or(subscriber_loop(shard, bridge, link, stream, &owed), reset_of(reset)),
        owed.watch(bridge.config().heartbeat),
    )
    .await
}

/// `PING`, packed. Its reply is `+PONG`, or `[pong, ""]` on a subscribed connection.
const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

/// Since when a connection has owed the server a reply: written by the
/// connection's loop (a write starts owing, a reply is progress), read by
/// its watchdog. Both run on the bridge shard, in one task.
#[derive(Default)]
struct Owed(Cell<Option<Instant>>);

impl Owed {
    /// A request went out: owing starts now, unless it already had.
    fn start(&self) {
        if self.0.get().is_none() {
            self.0.set(Some(Instant::now()));
        }
    }

    /// A reply came: the clock starts again for what is still owed.
    fn progress(&self) {
        if self.0.get().is_some() {
            self.0.set(Some(Instant::now()));
        }
    }

    /// Nothing is owed.
    fn clear(&self) {
        self.0.set(None);
    }

    /// Ends with [`BridgeError::Unresponsive`] once a reply has been owed
    /// for `limit`; never without a limit.
    async fn watch(&self, limit: Option<Duration>) -> Result<(), BridgeError> {
        let Some(limit) = limit else { return std::future::pending().await };
        loop {
            sleep(limit / 4).await;
            if self.0.get().is_some_and(|since| since.elapsed() >= limit) {
                return Err(BridgeError::Unresponsive(limit));
            }
        }
    }
}

/// Ends with [`BridgeError::Reset`] once `reset` is raised.
async fn reset_of(reset: &Notify) -> Result<(), BridgeError> {
    reset.wait().await;
    Err(BridgeError::Reset)
}

async fn subscriber_loop(shard: &Shard, bridge: &Bridge, link: &Link, mut stream: RedisStream, owed: &Owed) -> Result<(), BridgeError> {
    let quiet = bridge.config().heartbeat.map(|limit| limit / 3);
    let mut reader = RespReader::new(READ_CHUNK, shard.config.limits.max_message_bytes);
    // Everything wanted now, then changes as they come. Snapshot and start
    // queueing changes in one step (no await between), so a change made while
    // the snapshot is being written is queued, not lost.
    link.changes.borrow_mut().clear();
    let wanted = bridge.channels_on(link);
    let (subscribe, unsubscribe) = bridge.subscribe_commands();
    let chunk = if bridge.is_cluster() { 1 } else { SUBSCRIBE_CHUNK };
    let mut packed = Vec::new();
    for channels in wanted.chunks(chunk) {
        packed.clear();
        let mut cmd = redis::cmd(subscribe);
        for channel in channels {
            cmd.arg(&**channel);
        }
        cmd.write_packed_command(&mut packed);
        owed.start();
        stream.write_all(&packed).await?;
    }
    loop {
        let changes: Vec<(Rc<str>, bool)> = link.changes.borrow_mut().drain(..).collect();
        if !changes.is_empty() {
            packed.clear();
            for (topic, on) in changes {
                redis::cmd(if on { subscribe } else { unsubscribe }).arg(bridge.channel(&topic)).write_packed_command(&mut packed);
            }
            owed.start();
            stream.write_all(&packed).await?;
        }
        // Pushes, a subscription change to write, or a quiet spell to PING
        // in (reading is cancel-safe: nothing is lost when another wins).
        let woke = futures_lite::future::or(
            async { Woke::Read(reader.read_values(&mut stream).await) },
            futures_lite::future::or(
                async {
                    link.changed.wait().await;
                    Woke::Changed
                },
                async {
                    match quiet {
                        Some(quiet) => sleep(quiet).await,
                        None => std::future::pending().await,
                    }
                    Woke::Quiet
                },
            ),
        )
        .await;
        let pushes = match woke {
            Woke::Read(pushes) => pushes?,
            Woke::Changed => continue,
            Woke::Quiet => {
                owed.start();
                stream.write_all(PING).await?;
                continue;
            }
        };
        // Anything the server says shows it alive, confirmations and pongs included.
        owed.clear();
        for push in pushes {
            bridge.on_push(shard, link, push).await;
        }
    }
}

/// What woke the subscriber loop.
enum Woke {
    Read(Result<Vec<Value>, BridgeError>),
    Changed,
    Quiet,
}

/// Sends one command and returns its reply. For discovery on a connection
/// of its own: `CLUSTER SLOTS`, a Sentinel's `get-master-addr-by-name`, `ROLE`.
pub async fn ask(stream: &mut RedisStream, command: &redis::Cmd) -> Result<Value, BridgeError> {
    stream.write_all(&command.get_packed_command()).await?;
    let mut reader = RespReader::new(READ_CHUNK, 1 << 20);
    let mut replies = reader.read_values(stream).await?;
    Ok(replies.swap_remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_written_lately_are_remembered_for_one_to_two_periods() {
        let mut w = Written::new();
        w.note(0);
        w.note(16383);
        w.note(700);
        assert_eq!(w.lately(), vec![0, 700, 16383]);
        w.since -= LATELY;
        w.rotate();
        w.note(5);
        assert_eq!(w.lately(), vec![0, 5, 700, 16383], "the period before still counts");
        w.since -= LATELY;
        assert_eq!(w.lately(), vec![5], "only the last period's");
        w.since -= LATELY;
        assert_eq!(w.lately(), Vec::<u16>::new());
    }
}
