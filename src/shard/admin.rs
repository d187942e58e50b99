//! The shard's side of the admin plane: answering [`AdminCall`]s from the
//! admin thread, and disconnecting a user's connections.
//!
//! Reports and listings are answered at once from shard state. Publishes go
//! through a shard-local queue served by [`api_publish_loop`], so that a
//! publish waiting on a full cross-shard channel holds back the API
//! publishes behind it (their order is kept) but never the bus loop.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use glommio::timer::sleep;

use super::Shard;
use crate::bus::admin::{AdminCall, Reply, ShardReport, TopicList};
use crate::bus::ControlMsg;
use crate::metrics::ShardStats;
use crate::protocol::Outgoing;
use crate::topic::{self, RESERVED_PREFIX};

/// API publishes waiting for their turn on this shard. Bounded by
/// `[admin] max_pending`: each reply holds one of the admin plane's permits.
pub(super) type ApiQueue = VecDeque<(Vec<Arc<Outgoing>>, Reply<()>)>;

impl Shard {
    /// Handles one call from the admin thread.
    pub(super) fn on_admin(&self, call: AdminCall) {
        match call {
            AdminCall::Report { node_topics, reply } => reply.send(self.report(node_topics)),
            AdminCall::Topics { prefix, limit, reply } => reply.send(self.topic_list(&prefix, limit)),
            AdminCall::Publish { msgs, reply } => {
                self.api_queue.borrow_mut().push_back((msgs, reply));
                self.api_ready.raise();
            }
            AdminCall::Disconnect { user, code, reason, forward, reply } => {
                let closed = self.disconnect_user(&user, code, &reason);
                if forward {
                    if let Some(bridge) = self.remote() {
                        bridge.disconnect_user(&user, code, &reason, self.stats());
                    }
                }
                if let Some(reply) = reply {
                    reply.send(closed);
                }
            }
            AdminCall::Announce(summary) => {
                if let Some(bridge) = self.remote() {
                    bridge.announce_node(&summary, self.stats());
                }
            }
        }
    }

    fn report(&self, node_topics: bool) -> ShardReport {
        let registry = self.registry.borrow();
        let node_topics = node_topics.then(|| {
            // Topics of other shards, plus this shard's own that no other shard has.
            let interest = self.interest.borrow();
            let elsewhere = interest.topics().filter(|t| !t.starts_with(RESERVED_PREFIX)).count();
            let only_here = registry.iter().filter(|(t, _)| !t.starts_with(RESERVED_PREFIX) && interest.shards(t).is_empty()).count();
            elsewhere + only_here
        });
        ShardReport {
            shard: self.index,
            connections: self.peers.borrow().len(),
            subscriptions: registry.client_subscriptions(),
            topics: registry.client_topics(),
            node_topics,
            accepting: !self.shutting_down.get(),
            redis: self.remote().map(|b| b.report()),
        }
    }

    /// The first `limit` local topics starting with `prefix`, by name. The
    /// server's own `$` topics are listed only when the prefix asks for them.
    fn topic_list(&self, prefix: &str, limit: usize) -> TopicList {
        let registry = self.registry.borrow();
        let internal = prefix.starts_with(RESERVED_PREFIX);
        let mut topics: Vec<(&str, usize)> = registry
            .iter()
            .filter(|(name, _)| name.starts_with(prefix) && (internal || !name.starts_with(RESERVED_PREFIX)))
            .collect();
        let more = topics.len() > limit;
        if more {
            topics.select_nth_unstable_by(limit, |a, b| a.0.cmp(b.0));
            topics.truncate(limit);
        }
        topics.sort_unstable_by(|a, b| a.0.cmp(b.0));
        TopicList { topics: topics.into_iter().map(|(t, n)| (t.to_string(), n)).collect(), more }
    }

    /// Closes every connection of `user` on this shard, after what is queued
    /// for them. Returns how many (connections already closing aside).
    pub fn disconnect_user(&self, user: &str, code: u16, reason: &str) -> usize {
        let peers: Vec<_> = match self.registry.borrow().get(&topic::user_topic(user)) {
            Some(entry) => entry.subscribers.values().filter(|p| p.closing_since().is_none()).cloned().collect(),
            None => return 0,
        };
        for peer in &peers {
            peer.close(code, reason, true);
        }
        ShardStats::add(&self.stats().server_disconnects, peers.len() as u64);
        peers.len()
    }

    /// A disconnect order from another node (through the bridge): this
    /// shard's connections of `user`, and every other shard's.
    pub fn disconnect_user_everywhere(&self, user: &str, code: u16, reason: &str) {
        self.disconnect_user(user, code, reason);
        let (user, reason): (Arc<str>, Arc<str>) = (user.into(), reason.into());
        for (_, mailbox) in self.others() {
            let call = AdminCall::Disconnect { user: user.clone(), code, reason: reason.clone(), forward: false, reply: None };
            mailbox.control(ControlMsg::Admin(call));
        }
    }
}

/// Serves the shard's API publishes in order: each is fanned out exactly as
/// a client publish (waiting, like a client, while a shard's channel is
/// full), then answered.
pub async fn api_publish_loop(shard: Rc<Shard>) {
    loop {
        let next = shard.api_queue.borrow_mut().pop_front();
        let Some((msgs, reply)) = next else {
            shard.api_ready.wait().await;
            continue;
        };
        for msg in msgs {
            ShardStats::add(&shard.stats().api_publishes, 1);
            if let Err(mut pending) = shard.route(msg) {
                while !shard.retry_publish(&mut pending) {
                    sleep(crate::bus::FULL_CHANNEL_RETRY).await;
                }
            }
        }
        reply.send(());
    }
}
