//! The tasks every shard runs on its executor, beside its connections:
//! the bus loop (cross-shard traffic), the flush (the cork), the heartbeat
//! sweeper, the deadline task and the API publish queue. [`start`] spawns
//! the background ones, [`serve_bus`] runs the bus until the shutdown
//! signal. What starts a shard with its connections and its bridge is
//! `runtime::shard`, above.

use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::AsyncReadExt;
use glommio::net::UnixStream;
use glommio::{spawn_local, timer::sleep};
use tracing::warn;

use super::Shard;
use crate::bus::{ControlMsg, Inbox, FULL_CHANNEL_RETRY};
use crate::metrics::ShardStats;
use crate::peer::Cork;

/// How many cross-shard publishes the bus loop delivers before yielding to
/// the shard's connections.
const BUS_BATCH: usize = 1024;

/// Connections the flush task sends to between checks for other work.
const FLUSH_CHUNK: usize = 512;

/// Sends what the shard's connections were given during each batch of work
/// (see [`crate::peer::Cork`]).
async fn flush_loop(shard: Rc<Shard>) {
    let mut batch = Vec::new();
    loop {
        shard.cork.ready.wait().await;
        shard.cork.take(&mut batch);
        let chunks = batch.len().div_ceil(FLUSH_CHUNK);
        for (i, chunk) in batch.chunks(FLUSH_CHUNK).enumerate() {
            Cork::send(chunk, &mut shard.write_scratch.borrow_mut(), shard.stats());
            if i + 1 < chunks {
                // A flush of many thousands of connections (a heartbeat
                // round, a huge topic) lets the connections whose sockets
                // became ready run in between: a publisher's next messages
                // then join the frames the rest of the batch is sent.
                shard.readiness.drain();
                futures_lite::future::yield_now().await;
            }
        }
        ShardStats::add(&shard.stats().cork_flushes, 1);
        batch.clear();
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
    /// Sockets that became ready (their tasks were woken).
    pub ready: usize,
}

impl Pumped {
    pub(super) fn worked(&self) -> bool {
        self.control || self.data > 0 || self.numbered > 0 || self.ready > 0
    }
}

/// One pass over the shard's events: the sockets that became ready (their
/// tasks are woken), every control message, a batch of publishes, the
/// relay, and a batch of history publishes to number (only while the relay
/// is short, see `bus`). Never waits.
pub(super) fn pump(shard: &Shard, inbox: &Inbox) -> Pumped {
    let mut done = Pumped { ready: shard.readiness.drain(), ..Pumped::default() };
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

/// The shard's background tasks ([`start`]); cancelled by [`Background::stop`].
pub struct Background {
    tasks: Vec<glommio::task::JoinHandle<()>>,
}

/// Spawns the shard's background tasks: flush, sweeper, deadlines, API publishes.
pub fn start(shard: &Rc<Shard>) -> Background {
    let tasks = vec![
        spawn_local(sweep_loop(shard.clone())).detach(),
        spawn_local(deadline_loop(shard.clone())).detach(),
        spawn_local(super::admin::api_publish_loop(shard.clone())).detach(),
        spawn_local(flush_loop(shard.clone())).detach(),
    ];
    Background { tasks }
}

impl Background {
    pub fn stop(self) {
        for task in self.tasks {
            task.cancel();
        }
    }
}

/// Delivers cross-shard traffic until told to shut down, sleeping on the
/// doorbell when there is none; then returns the inbox, which the shutdown
/// still reads (`shard::shutdown`).
pub async fn serve_bus(shard: &Shard, mut inbox: Inbox) -> Inbox {
    let bell = inbox.take_bell_rx().expect("a new inbox has its bell");
    // SAFETY: the fd is one end of a socketpair whose ownership moves here.
    let mut bell = unsafe { UnixStream::from_raw_fd(bell.into_raw_fd()) };
    bus_loop(shard, &inbox, &mut bell).await;
    inbox
}

/// Delivers cross-shard traffic and wakes the tasks of sockets that became
/// ready; sleeps on the doorbell when there is neither. Returns when told to
/// shut down.
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
            sleep(FULL_CHANNEL_RETRY).await;
            continue;
        }
        inbox.bell.arm();
        // A socket that becomes ready from now on rings the bell too (the
        // readiness watcher; one that already is rings it at once).
        shard.readiness.rearm();
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

/// Closes connections at their auth timeout or token expiry, and ends
/// subscriptions at their subscription token's expiry. Sleeps until
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

