//! The tasks every shard runs on its executor.

use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::AsyncReadExt;
use glommio::net::{TcpListener, UnixStream};
use glommio::{spawn_local, timer::sleep};
use tracing::{debug, warn};

use super::Shard;
use crate::bus::{ControlMsg, Inbox, Mailbox};
use crate::config::Config;
use crate::peer::Cork;
use crate::metrics::ShardStats;

/// How many cross-shard publishes the bus loop delivers before yielding to
/// the shard's connections.
const BUS_BATCH: usize = 1024;

/// Pause before retrying a publish whose destination shard's channel is full
/// (a client's publish, or the API's).
pub const BUS_RETRY: Duration = Duration::from_micros(200);

/// Connections the flush task sends to between checks for other work.
const FLUSH_CHUNK: usize = 512;

/// How often a shard logs that accept() keeps failing (e.g. EMFILE).
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Pause after an accept() failure, so a descriptor shortage does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Everything a shard needs, built on the main thread and moved to its own.
pub struct ShardInit {
    pub index: usize,
    pub config: Arc<Config>,
    pub listener: socket2::Socket,
    pub inbox: Inbox,
    pub mailboxes: Vec<Mailbox>,
    pub stats: Arc<[ShardStats]>,
    pub node_connections: Arc<AtomicUsize>,
    pub admission: Arc<crate::auth::Admission>,
    /// Where the bridge shard hands other nodes' announcements to the admin thread.
    pub announcements: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
}

/// The shard's whole life, run inside its pinned executor. `ready` is called
/// once it accepts connections.
pub async fn run(init: ShardInit, ready: impl FnOnce()) {
    let ShardInit { index, config, listener, mut inbox, mailboxes, stats, node_connections, admission, announcements } = init;
    let shard = Rc::new(Shard::new(index, config, mailboxes, stats, node_connections, admission, announcements));
    // SAFETY: the fd is a bound, listening TCP socket whose ownership moves here.
    let listener = unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) };
    let accept = spawn_local(accept_loop(shard.clone(), listener)).detach();
    let sweeper = spawn_local(sweep_loop(shard.clone())).detach();
    let deadlines = spawn_local(deadline_loop(shard.clone())).detach();
    let api = spawn_local(super::admin::api_publish_loop(shard.clone())).detach();
    let flush = spawn_local(flush_loop(shard.clone())).detach();
    if let Some(bridge) = &shard.bridge {
        crate::bridge::spawn(shard.clone(), bridge.clone());
    }
    let bell = inbox.take_bell_rx().expect("a new inbox has its bell");
    // SAFETY: the fd is one end of a socketpair whose ownership moves here.
    let mut bell = unsafe { UnixStream::from_raw_fd(bell.into_raw_fd()) };
    ready();
    bus_loop(&shard, &inbox, &mut bell).await;
    accept.cancel();
    let deadline = Instant::now() + shard.config.shutdown.drain_timeout;
    super::shutdown::quiesce(&shard, &inbox, deadline).await;
    super::shutdown::drain(&shard, deadline).await;
    sweeper.cancel();
    deadlines.cancel();
    api.cancel();
    flush.cancel();
    if let Some(bridge) = &shard.bridge {
        bridge.stop();
    }
    debug!(shard = index, "shard stopped");
}

/// Sends what the shard's connections were given during each batch of work
/// (see [`crate::peer::Cork`]).
async fn flush_loop(shard: Rc<Shard>) {
    let mut batch = Vec::new();
    loop {
        shard.cork.ready.wait().await;
        shard.cork.take(&mut batch);
        for chunk in batch.chunks(FLUSH_CHUNK) {
            Cork::send(chunk, &mut shard.write_scratch.borrow_mut(), shard.stats());
            // A flush of many thousands of connections (a heartbeat round, a
            // huge topic) lets the reactor and other tasks run in between.
            glommio::yield_if_needed().await;
        }
        ShardStats::add(&shard.stats().cork_flushes, 1);
        batch.clear();
    }
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    let mut last_logged: Option<Instant> = None;
    let mut failures_since_log = 0u64;
    loop {
        match listener.accept().await {
            Ok(stream) => {
                spawn_local(crate::conn::serve(shard.clone(), stream)).detach();
            }
            Err(err) => {
                let err: std::io::Error = err.into();
                ShardStats::add(&shard.stats().accept_errors, 1);
                failures_since_log += 1;
                let now = Instant::now();
                if last_logged.is_none_or(|t| now.duration_since(t) >= ACCEPT_ERROR_LOG_INTERVAL) {
                    let hint = match err.raw_os_error() {
                        Some(libc::EMFILE) | Some(libc::ENFILE) => {
                            " (out of file descriptors: raise LimitNOFILE / ulimit -n, see tuning/README.md); new connections wait in the backlog"
                        }
                        _ => "",
                    };
                    warn!(shard = shard.index, failures = failures_since_log, "accept failed: {err}{hint}");
                    last_logged = Some(now);
                    failures_since_log = 0;
                }
                sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// What one pass over a shard's inbox did.
#[derive(Debug, Default)]
pub(super) struct Pumped {
    /// Control messages were handled.
    pub control: bool,
    /// Publishes delivered from the data channel.
    pub data: usize,
    /// History publishes numbered from the sequence channel.
    pub numbered: usize,
    /// Numbered messages still waiting in the relay for room elsewhere.
    pub relay_left: usize,
    /// A `Shutdown` was among the control messages.
    pub shutdown: bool,
}

impl Pumped {
    pub(super) fn worked(&self) -> bool {
        self.control || self.data > 0 || self.numbered > 0
    }
}

/// One pass over the inbox: every control message, a batch of publishes,
/// the relay, and a batch of history publishes to number (only while the
/// relay is short, see `bus`). Never waits.
pub(super) fn pump(shard: &Shard, inbox: &Inbox) -> Pumped {
    let mut done = Pumped::default();
    while let Ok(msg) = inbox.control.try_recv() {
        match msg {
            ControlMsg::Shutdown => done.shutdown = true,
            msg => shard.on_control(msg),
        }
        done.control = true;
    }
    while done.data < BUS_BATCH {
        let Ok(msg) = inbox.data.try_recv() else { break };
        shard.on_publish(msg);
        done.data += 1;
    }
    ShardStats::add(&shard.stats().bus_received, done.data as u64);
    done.relay_left = shard.retry_relay();
    let relay_limit = shard.config.bus.capacity;
    while done.numbered < BUS_BATCH && shard.relay_len() < relay_limit {
        let Ok(msg) = inbox.sequence.try_recv() else { break };
        shard.on_sequence(msg);
        done.numbered += 1;
    }
    if done.numbered > 0 {
        shard.release_deferred_queries();
    }
    done
}

/// Delivers cross-shard traffic; sleeps on the doorbell when there is none.
/// Returns when told to shut down.
async fn bus_loop(shard: &Shard, inbox: &Inbox, bell: &mut UnixStream) {
    let mut rings = [0u8; 64];
    loop {
        let done = pump(shard, inbox);
        if done.shutdown {
            return;
        }
        if done.worked() {
            // Let the connections just woken write before taking more.
            futures_lite::future::yield_now().await;
            continue;
        }
        if done.relay_left > 0 {
            // Waiting for room on another shard's channel, which its bus
            // loop (never blocked) is draining.
            sleep(BUS_RETRY).await;
            continue;
        }
        inbox.bell.arm();
        if !inbox.control.is_empty() || !inbox.data.is_empty() || !inbox.sequence.is_empty() {
            inbox.bell.disarm();
            continue;
        }
        if let Err(err) = bell.read(&mut rings).await {
            warn!(shard = shard.index, "doorbell failed: {err}; polling the bus instead");
            sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Heartbeats and close timeouts, checked a few times per shortest period.
async fn sweep_loop(shard: Rc<Shard>) {
    let cfg = &shard.config;
    let shortest = [cfg.heartbeat.interval, cfg.heartbeat.timeout, Some(cfg.queue.close_timeout)]
        .into_iter()
        .flatten()
        .min()
        .expect("close_timeout is always set");
    let tick = (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut next_expiry = Instant::now();
    loop {
        sleep(tick).await;
        shard.sweep(crate::clock::Stamp::now());
        if Instant::now() >= next_expiry {
            shard.expire_history();
            next_expiry = Instant::now() + crate::history::EXPIRY_SWEEP;
        }
    }
}

/// Closes connections at their auth timeout or token expiry. Sleeps until
/// the earliest deadline (or until an earlier one is set); with none, it
/// waits without a timer, so a server without auth never wakes for it.
async fn deadline_loop(shard: Rc<Shard>) {
    loop {
        let now = crate::clock::Stamp::now();
        match shard.next_deadline() {
            Some(at) if at <= now => shard.expire_due(now),
            Some(at) => futures_lite::future::or(sleep(at.since(now)), shard.earlier_deadline()).await,
            None => shard.earlier_deadline().await,
        }
    }
}

