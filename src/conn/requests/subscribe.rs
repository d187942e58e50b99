//! `subscribe` and `unsubscribe`: the connection's topics. The shard
//! registers the subscription and acks it once it is effective everywhere
//! (and, on a history topic, once its position is known); this side checks
//! the request and keeps the connection's list of topics (bounded by
//! `[limits] max_topics_per_connection`).

use crate::auth::{Access, Action};
use crate::codes::ErrorCode;
use crate::history::wait::Request as WaitRequest;
use crate::presence::Member;
use crate::protocol::position::Since;
use crate::protocol::{Payload, RequestError};
use crate::shard::Then;

use super::Conn;

impl Conn {
    pub(super) fn on_subscribe(&mut self, id: Option<u64>, topic: &str, recover: Option<Since>, data: Option<Payload<'_>>) {
        if !self.topic_allowed(id, topic, Action::Subscribe) {
            return;
        }
        let shard = self.shard.clone();
        if shard.config.namespaces.access(topic, Action::Subscribe) == Access::Proxy {
            // The local checks first: the backend is asked only about a
            // subscribe that could go through.
            if self.subscribe_refused(id, topic, recover.is_some()) {
                return;
            }
            return self.call_subscribe(id, topic, recover, data);
        }
        self.subscribe_now(id, topic, recover, None);
    }

    /// Topics the connect hook's result (or a token's `channels`) names:
    /// subscribed without a permission check, each like a subscribe without
    /// an id; invalid names and ones over the connection's limit are skipped.
    pub(in crate::conn) fn subscribe_server_side(&mut self, topics: &[String]) {
        for topic in topics {
            if let Err(why) = crate::topic::validate(topic, self.shard.config.limits.max_topic_len) {
                tracing::debug!(conn = %self.peer.id, topic, "server-side subscription skipped: {why}");
                continue;
            }
            if self.is_subscribed(topic) {
                continue;
            }
            if self.topics.len() >= self.shard.config.limits.max_topics_per_connection {
                tracing::debug!(conn = %self.peer.id, "server-side subscriptions beyond max_topics_per_connection skipped");
                return;
            }
            self.subscribe_now(None, topic, None, None);
        }
    }

    /// Whether a subscribe must be refused before anything else (recovery
    /// not enabled, too many topics); answers the error.
    fn subscribe_refused(&mut self, id: Option<u64>, topic: &str, recover: bool) -> bool {
        let shard = self.shard.clone();
        let limits = &shard.config.limits;
        if recover && !shard.config.namespaces.options(topic).recover {
            let message = "recovery is not enabled for this topic's namespace (recover = true)".into();
            self.reply_error(RequestError { id, code: ErrorCode::NotAvailable, message });
            return true;
        }
        let subscribed = self.is_subscribed(topic);
        if !subscribed && self.topics.len() >= limits.max_topics_per_connection {
            // Forget subscriptions the shard undid (history unavailable).
            let registry = shard.registry.borrow();
            let me = self.peer.id;
            self.topics.retain(|t| registry.get(t).is_some_and(|e| e.subscribers.contains_key(&me)));
        }
        if !subscribed && self.topics.len() >= limits.max_topics_per_connection {
            self.reply_error(RequestError {
                id,
                code: ErrorCode::TooManySubscriptions,
                message: format!("at most {} topics per connection", limits.max_topics_per_connection),
            });
            return true;
        }
        false
    }

    /// Subscribes, permission settled: `ack_data` (the subscribe hook's
    /// JSON) goes in the ack of a topic without history.
    pub(in crate::conn) fn subscribe_now(&mut self, id: Option<u64>, topic: &str, recover: Option<Since>, ack_data: Option<&str>) {
        if self.subscribe_refused(id, topic, recover.is_some()) {
            return;
        }
        let shard = self.shard.clone();
        let options = shard.config.namespaces.options(topic);
        let subscribed = self.is_subscribed(topic);
        // Acked now, or by the shard once the other shards confirmed the
        // interest (and, on a history topic, once its position is known);
        // without an id there is no ack.
        let then = match options.history {
            Some(_) => Then::Position(WaitRequest { id, recover }),
            None => Then::Frame(id.map(|id| match ack_data {
                Some(data) => self.peer.encoding().ack_data_frame(id, data),
                None => self.peer.encoding().ack_frame(id),
            })),
        };
        let member = (options.presence || options.join_leave).then(|| Member {
            client: shard.client_id(self.peer.id).into(),
            user: self.identity().map(|i| i.user.clone()),
        });
        let name = shard.subscribe(&self.peer, topic, options, then, member);
        if !subscribed {
            // Most connections hold one or a few topics: grow one at a time.
            self.topics.reserve_exact(1);
            self.topics.push(name);
        }
    }

    pub(super) fn on_unsubscribe(&mut self, id: Option<u64>, topic: &str) {
        if let Err(why) = crate::topic::validate(topic, self.shard.config.limits.max_topic_len) {
            return self.reply_error(RequestError { id, code: ErrorCode::InvalidTopic, message: why.into() });
        }
        if self.shard.unsubscribe(topic, self.peer.id) {
            if let Some(i) = self.topics.iter().position(|t| **t == *topic) {
                self.topics.swap_remove(i);
            }
        }
        if let Some(id) = id {
            self.send(self.peer.encoding().ack_frame(id));
        }
    }

    fn is_subscribed(&self, topic: &str) -> bool {
        self.shard.registry.borrow().get(topic).is_some_and(|e| e.subscribers.contains_key(&self.peer.id))
    }
}
