//! `subscribe` and `unsubscribe`: the connection's topics. The shard
//! registers the subscription and acks it once it is effective everywhere
//! (and, on a history topic, once its position is known); this side checks
//! the request and keeps the connection's list of topics (bounded by
//! `[limits] max_topics_per_connection`).
//!
//! A `token` namespace's subscribe carries a subscription token for its
//! topic and the connection's user; the shard ends the subscription when
//! the token expires (`Shard::set_subscription_deadline`), unless a
//! subscribe with a fresh token renewed it. Subscriptions the server makes
//! itself (a connection token's `channels`) go through
//! [`Conn::subscribe_server_side`].

use std::rc::Rc;

use tracing::debug;

use crate::auth::{Access, Action, TopicOptions};
use crate::clock::Stamp;
use crate::codes::ErrorCode;
use crate::history::wait::Request as WaitRequest;
use crate::presence::Member;
use crate::protocol::position::Since;
use crate::protocol::{Payload, RequestError};
use crate::shard::Then;

use super::Conn;

impl Conn {
    pub(super) fn on_subscribe(&mut self, id: Option<u64>, topic: &str, recover: Option<Since>, token: Option<&str>, data: Option<Payload<'_>>) {
        let shard = self.shard.clone();
        let limits = &shard.config.limits;
        let access = shard.config.namespaces.access(topic, Action::Subscribe);
        // `Some(expiry)` for a subscription granted by a token.
        let grant = if access == Access::Token {
            if let Err(why) = crate::topic::validate(topic, limits.max_topic_len) {
                return self.reply_error(RequestError { id, code: ErrorCode::InvalidTopic, message: why.into() });
            }
            match self.subscription_token(id, topic, token) {
                Some(expiry) => Some(expiry),
                None => return,
            }
        } else {
            if !self.topic_allowed(id, topic, Action::Subscribe) {
                return;
            }
            None
        };
        if access == Access::Proxy {
            // The local checks first: the backend is asked only about a
            // subscribe that could go through.
            if !self.subscribe_refused(id, topic, recover.is_some()) {
                self.call_subscribe(id, topic, recover, data);
            }
            return;
        }
        self.subscribe_now(id, topic, recover, grant, None);
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
            // Forget subscriptions the shard undid (history unavailable,
            // subscription token expired).
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

    /// Subscribes, permission settled (`grant`: a subscription token's
    /// expiry); `ack_data` (the subscribe hook's JSON) goes in the ack of a
    /// topic without history.
    pub(in crate::conn) fn subscribe_now(&mut self, id: Option<u64>, topic: &str, recover: Option<Since>, grant: Option<Option<Stamp>>, ack_data: Option<&str>) {
        if self.subscribe_refused(id, topic, recover.is_some()) {
            return;
        }
        let shard = self.shard.clone();
        let subscribed = self.is_subscribed(topic);
        let options = shard.config.namespaces.options(topic);
        // Acked now, or by the shard once the other shards confirmed the
        // interest (and, on a history topic, once its position is known);
        // without an id there is no ack.
        let then = match options.history {
            Some(_) => Then::Position(WaitRequest { id, recover, data: ack_data.map(std::rc::Rc::from) }),
            None => Then::Frame(id.map(|id| match ack_data {
                Some(data) => self.peer.encoding().ack_data_frame(id, data),
                None => self.peer.encoding().ack_frame(id),
            })),
        };
        let name = self.register(topic, options, then);
        if let Some(expiry) = grant {
            // A renewal replaces the expiry; a position the shard could not
            // get may have undone the subscription already.
            if self.is_subscribed(topic) {
                shard.set_subscription_deadline(self.peer.id, name.clone(), expiry);
            }
        }
        // The shard ends token subscriptions without telling this list, so
        // it may still name the topic.
        let listed = subscribed || (grant.is_some() && self.topics.contains(&name));
        if !listed {
            // Most connections hold one or a few topics: grow one at a time.
            self.topics.reserve_exact(1);
            self.topics.push(name);
        }
    }

    /// Checks a `token` namespace's subscribe: an authenticated connection,
    /// and a valid subscription token whose `sub` is its user and whose
    /// `channel` is `topic`. Returns when the subscription must end (`None`:
    /// never), or answers `forbidden` / `unauthorized`.
    fn subscription_token(&mut self, id: Option<u64>, topic: &str, token: Option<&str>) -> Option<Option<Stamp>> {
        let (Some(verifier), Some(user)) = (self.shard.config.auth.verifier.clone(), self.identity().map(|i| i.user.clone())) else {
            self.forbidden(id, "an anonymous connection cannot subscribe to this topic: it needs a subscription token for an authenticated user".into());
            return None;
        };
        let Some(token) = token else {
            self.forbidden(id, "this topic needs a subscription token: send subscribe with \"token\"".into());
            return None;
        };
        let granted = match verifier.verify_subscription(token) {
            Ok(granted) => granted,
            Err(e) => {
                let message = format!("subscription token refused: {}", e.reason());
                self.reply_error(RequestError { id, code: ErrorCode::Unauthorized, message });
                return None;
            }
        };
        if granted.user != user {
            self.forbidden(id, "the subscription token is for another user".into());
            return None;
        }
        if granted.channel.as_deref() != Some(topic) {
            self.forbidden(id, "the subscription token is for another channel".into());
            return None;
        }
        Some(granted.expires_at)
    }

    /// Subscribes the connection to `topics` on the server's word (a
    /// connection token's `channels` claim, a connect proxy's `channels`):
    /// no permission check and no ack; a topic name that is not valid is
    /// skipped (logged at debug), and no more than `[limits]
    /// max_topics_per_connection` topics are held. Messages then arrive as
    /// after a client subscribe (a history topic: live ones only, no
    /// recovery).
    ///
    /// The connection's input does not wait for these subscriptions: call
    /// it before queuing the welcome, which `authenticate` sends with
    /// `Shard::when_effective` over the connection's topics, so that a
    /// publish anywhere after the welcome reaches it.
    pub(in crate::conn) fn subscribe_server_side<T: AsRef<str>>(&mut self, topics: impl IntoIterator<Item = T>) {
        let shard = self.shard.clone();
        let limits = &shard.config.limits;
        for topic in topics {
            let topic = topic.as_ref();
            if let Err(why) = crate::topic::validate(topic, limits.max_topic_len) {
                debug!(conn = %self.peer.id, topic, why, "server-side subscription skipped");
                continue;
            }
            if self.is_subscribed(topic) {
                continue;
            }
            if self.topics.len() >= limits.max_topics_per_connection {
                debug!(conn = %self.peer.id, max = limits.max_topics_per_connection, "server-side subscriptions beyond max_topics_per_connection skipped");
                return;
            }
            let name = self.register(topic, shard.config.namespaces.options(topic), Then::Quiet);
            self.topics.reserve_exact(1);
            self.topics.push(name);
        }
    }

    /// Registers the subscription with the shard, which does `then` once it
    /// is effective; returns the topic's name as the registry holds it.
    fn register(&mut self, topic: &str, options: TopicOptions, then: Then) -> Rc<str> {
        let shard = &self.shard;
        let member = (options.presence || options.join_leave).then(|| Member {
            client: shard.client_id(self.peer.id).into(),
            user: self.identity().map(|i| i.user.clone()),
            info: self.identity().and_then(|i| i.info.clone()),
        });
        shard.subscribe(&self.peer, topic, options, then, member)
    }

    pub(super) fn on_unsubscribe(&mut self, id: Option<u64>, topic: &str) {
        if let Err(why) = crate::topic::validate(topic, self.shard.config.limits.max_topic_len) {
            return self.reply_error(RequestError { id, code: ErrorCode::InvalidTopic, message: why.into() });
        }
        self.shard.unsubscribe(topic, self.peer.id);
        // Listed even when the shard already ended it (token expired).
        if let Some(i) = self.topics.iter().position(|t| **t == *topic) {
            self.topics.swap_remove(i);
        }
        if let Some(id) = id {
            self.send(self.peer.encoding().ack_frame(id));
        }
    }

    pub(super) fn is_subscribed(&self, topic: &str) -> bool {
        self.shard.registry.borrow().get(topic).is_some_and(|e| e.subscribers.contains_key(&self.peer.id))
    }
}
