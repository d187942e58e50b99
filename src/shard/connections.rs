//! The shard's connections: its table of peers, their auth and token
//! deadlines and their subscriptions' token expiries, and the heartbeat
//! sweep (pings, silent clients closed, closes that take too long
//! aborted). Touched only by this shard.

use std::rc::Rc;

use super::{Deadline, Shard};
use crate::clock::Stamp;
use crate::codes::close;
use crate::ids::ConnId;
use crate::metrics::ShardStats;
use crate::peer::Peer;

impl Shard {
    /// Registers a new connection with the shard.
    pub fn add_peer(&self, peer: Rc<Peer>) {
        self.peers.borrow_mut().insert(peer.id, peer);
        let stats = self.stats();
        ShardStats::add(&stats.connections, 1);
        ShardStats::add(&stats.connections_accepted, 1);
    }

    /// Forgets a closed connection, its subscriptions and its deadlines.
    pub fn remove_peer(&self, id: ConnId, topics: &[Rc<str>]) {
        for topic in topics {
            self.unsubscribe(topic, id);
        }
        self.deadlines.borrow_mut().clear(id);
        self.forget_hook_events(id);
        self.close_fallback(id);
        self.sub_deadlines.borrow_mut().clear_connection(id);
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

    /// Sets (or replaces) when connection `id`'s subscription to `topic`
    /// ends (its subscription token's expiry), or forgets it (`None`: the
    /// new token never expires).
    pub fn set_subscription_deadline(&self, id: ConnId, topic: Rc<str>, at: Option<Stamp>) {
        let Some(at) = at else { return self.sub_deadlines.borrow_mut().clear(id, &topic) };
        let earliest = self.next_deadline().is_none_or(|next| at < next);
        self.sub_deadlines.borrow_mut().set(id, topic, at);
        if earliest {
            self.deadline_earlier.raise();
        }
    }

    /// The earliest deadline of this shard's connections and subscriptions.
    pub fn next_deadline(&self) -> Option<Stamp> {
        let (own, subscriptions) = (self.deadlines.borrow().next(), self.sub_deadlines.borrow().next());
        match (own, subscriptions) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Waits until a deadline earlier than all others is set.
    pub async fn earlier_deadline(&self) {
        self.deadline_earlier.wait().await
    }

    /// Closes the connections whose deadline passed: 4001 for those that never
    /// authenticated, 4002 for expired tokens (what is queued for them is
    /// sent first); a hook deadline goes to its connection's task. Then ends
    /// the subscriptions whose subscription token expired: the connection
    /// is unsubscribed and told so (`unsubscribed`, "token expired"), and
    /// stays open.
    pub fn expire_due(&self, now: Stamp) {
        loop {
            let Some((id, topic)) = self.sub_deadlines.borrow_mut().pop_due(now) else { break };
            let Some(peer) = self.peers.borrow().get(&id).cloned() else { continue };
            if self.unsubscribe(&topic, id) {
                let reason = crate::auth::TokenError::Expired.reason();
                peer.push(peer.encoding().unsubscribed_frame(&topic, reason), self.queueing());
            }
        }
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
                Deadline::ConnectWait | Deadline::Connect | Deadline::Refresh => {
                    self.push_hook_event(id, super::hooks::HookEvent::Due(kind));
                }
            }
        }
    }

    /// One heartbeat pass: ping connections due for it, close silent ones,
    /// abort ones whose close handshake took too long.
    pub(super) fn sweep(&self, now: Stamp) {
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
            // A fallback session's client cannot send on its stream: its
            // end shows as the socket's.
            if let Some(timeout) = hb.timeout.filter(|_| !peer.transport.get().is_fallback()) {
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
