//! Graceful shutdown of one shard (SIGINT/SIGTERM): nothing a client was
//! told was accepted is dropped on the way, and every client gets what is
//! queued for it before its 1001.
//!
//! 1. **Quiesce.** The shard stops reading client input and finishes the
//!    publishes that wait for room on another shard's channel; then it
//!    tells every shard ([`DrainStep::InputStopped`]). Once it has heard
//!    that from every shard, every history publish any client made is in
//!    a sequence channel: it numbers and relays what its own holds, and
//!    says [`DrainStep::Relayed`]. Once it has heard that from every
//!    shard, every message for its subscribers is in its data channel (or
//!    was delivered): it delivers what the channel holds at that moment.
//!    The bus keeps working throughout (interest, history answers).
//! 2. **Drain.** Every connection is closed with 1001 behind what is
//!    queued for it; the shard waits for them to finish, and aborts the
//!    rest at the deadline. The drain owns these closes: the heartbeat
//!    sweeper does not apply `close_timeout_ms` to them.
//!
//! Both share one deadline, `[shutdown] drain_timeout_ms` after the signal.
//! Not covered: admin API publishes arriving after the signal (the node
//! reports not ready from then on), and, with Redis, history messages still
//! on their way back from Redis when the clients are closed (they are in
//! the history; a client recovers them on reconnect). Runs on the shard.

use std::time::{Duration, Instant};

use glommio::timer::sleep;
use tracing::{info, warn};

use super::tasks::{pump, Pumped};
use super::Shard;
use crate::bus::{ControlMsg, DrainStep, Inbox, FULL_CHANNEL_RETRY};
use crate::clock::Stamp;
use crate::codes::close;

/// How often the drain looks whether its connections are gone.
const DRAIN_POLL: Duration = Duration::from_millis(5);

/// The whole shutdown, once the bus loop has seen `Shutdown`: both steps
/// within `[shutdown] drain_timeout_ms`.
pub async fn shut_down(shard: &Shard, inbox: &Inbox) {
    let deadline = Instant::now() + shard.config.shutdown.drain_timeout;
    quiesce(shard, inbox, deadline).await;
    drain(shard, deadline).await;
}

/// Step 1: stops client input and delivers what is between shards.
async fn quiesce(shard: &Shard, inbox: &Inbox, deadline: Instant) {
    shard.shutting_down.set(true);
    // Connections stop reading (see `Conn::poll_unblocked`); those waiting
    // for room on a channel finish their publish first.
    shard.wake_all();
    let shards = shard.shard_count();
    let mut in_time = pump_until(shard, inbox, deadline, |_| shard.blocked_publishes() == 0).await;
    shard.announce_drained(DrainStep::InputStopped);

    // Every client's history publish is in a sequence channel once every
    // shard said so: number and relay what this shard's holds.
    in_time &= pump_until(shard, inbox, deadline, |_| shard.drained_heard(DrainStep::InputStopped) == shards).await;
    let mut owed = inbox.sequence.len();
    in_time &= pump_until(shard, inbox, deadline, |done| {
        owed = owed.saturating_sub(done.numbered);
        // What this pass numbered may wait in the relay for room elsewhere.
        owed == 0 && shard.relay_len() == 0
    })
    .await;
    shard.announce_drained(DrainStep::Relayed);

    // Every message for this shard's subscribers is then in its data
    // channel: deliver what it holds now (FIFO: what comes later is newer).
    in_time &= pump_until(shard, inbox, deadline, |_| shard.drained_heard(DrainStep::Relayed) == shards).await;
    let mut owed = inbox.data.len();
    in_time &= pump_until(shard, inbox, deadline, |done| {
        owed = owed.saturating_sub(done.data);
        owed == 0
    })
    .await;
    if !in_time {
        warn!(shard = shard.index, "drain timeout while delivering between shards");
    }
}

/// Keeps the bus working until `done` holds after a pass over the inbox.
/// Returns false when `deadline` came first.
async fn pump_until(shard: &Shard, inbox: &Inbox, deadline: Instant, mut done: impl FnMut(&Pumped) -> bool) -> bool {
    loop {
        let pumped = pump(shard, inbox);
        if done(&pumped) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        if pumped.worked() {
            futures_lite::future::yield_now().await;
        } else {
            sleep(FULL_CHANNEL_RETRY).await;
        }
    }
}

/// Step 2: every client gets what is queued for it, then close 1001; at
/// `deadline` the rest are cut.
async fn drain(shard: &Shard, deadline: Instant) {
    shard.drain_started.set(Some(Stamp::now()));
    let peers: Vec<_> = shard.peers.borrow().values().cloned().collect();
    info!(shard = shard.index, connections = peers.len(), "draining");
    for peer in &peers {
        peer.close(close::GOING_AWAY, "server shutting down", true);
    }
    drop(peers);
    while !shard.peers.borrow().is_empty() && Instant::now() < deadline {
        // The bus loop has ended: the connections' socket events come from here.
        shard.readiness.drain();
        sleep(DRAIN_POLL).await;
    }
    let left: Vec<_> = shard.peers.borrow().values().cloned().collect();
    if !left.is_empty() {
        warn!(shard = shard.index, connections = left.len(), "drain timeout; closing the rest");
        for peer in &left {
            peer.abort();
        }
        // Let the aborted tasks run once and release their sockets.
        for _ in 0..3 {
            futures_lite::future::yield_now().await;
        }
    }
}

impl Shard {
    /// Tells every shard, this one included, that this shard passed `step`.
    fn announce_drained(&self, step: DrainStep) {
        self.on_drained(step);
        for (_, mailbox) in self.others() {
            mailbox.control(ControlMsg::Drained { from: self.index, step });
        }
    }

    /// Counts a shard's `Drained` (it may come before this shard's own
    /// `Shutdown`).
    pub(super) fn on_drained(&self, step: DrainStep) {
        let heard = &self.drained[step.index()];
        heard.set(heard.get() + 1);
    }

    /// How many shards (this one included) passed `step`.
    fn drained_heard(&self, step: DrainStep) -> usize {
        self.drained[step.index()].get()
    }
}
