//! Topic -> subscribers of this shard.

use std::collections::HashMap;
use std::rc::Rc;

use crate::auth::TopicOptions;
use crate::peer::Peer;
use crate::ids::ConnId;
use crate::protocol::Wire;

pub use super::subscribers::Subscribers;

#[derive(Debug)]
pub struct TopicEntry {
    /// The canonical name; connections keep clones of this `Rc` as their
    /// subscription list, so equal topics compare by pointer.
    pub name: Rc<str>,
    pub subscribers: Subscribers,
    /// While the other shards have not yet confirmed this shard's interest,
    /// the token of that confirmation round.
    pub pending_interest: Option<u64>,
    /// Subscribers taking a form other than plain JSON (FlatBuffers, or
    /// compressed). While 0, delivery sends one frame to all without looking
    /// at any connection's wire.
    pub other_wires: usize,
    /// The topic's namespace options, resolved when it got its first
    /// subscriber here (all off for the server's own `$` topics).
    pub options: TopicOptions,
}

/// What a subscribe changed.
#[derive(Debug)]
pub struct Subscribed {
    pub name: Rc<str>,
    /// The connection was not subscribed before.
    pub added: bool,
    /// The topic had no subscriber on this shard before.
    pub first: bool,
}

/// Topics with at least one subscriber on this shard. Touched only by the
/// owning shard; other shards reach these subscribers through
/// `PublishMsg`s. Bounded by connections x `max_topics_per_connection`;
/// a topic disappears with its last subscriber.
#[derive(Debug, Default)]
pub struct Registry {
    topics: HashMap<Rc<str>, TopicEntry, ahash::RandomState>,
    /// Client topics (not the server's own `$` topics) and their
    /// subscriptions, kept as counts for the admin plane's reports.
    client_topics: usize,
    client_subscriptions: usize,
}

fn is_client_topic(topic: &str) -> bool {
    !topic.starts_with(super::RESERVED_PREFIX)
}

impl Registry {
    /// Adds `peer` to `topic`; a new topic takes `options`.
    pub fn subscribe(&mut self, topic: &str, peer: &Rc<Peer>, options: TopicOptions) -> Subscribed {
        let other_wire = usize::from(peer.wire.get() != Wire::default());
        if let Some(entry) = self.topics.get_mut(topic) {
            let added = entry.subscribers.insert(peer.id, peer.clone());
            if added {
                entry.other_wires += other_wire;
                self.client_subscriptions += usize::from(is_client_topic(topic));
            }
            return Subscribed { name: entry.name.clone(), added, first: false };
        }
        let name: Rc<str> = topic.into();
        let mut subscribers = Subscribers::default();
        subscribers.insert(peer.id, peer.clone());
        let entry = TopicEntry { name: name.clone(), subscribers, pending_interest: None, other_wires: other_wire, options };
        let client = usize::from(is_client_topic(topic));
        self.client_topics += client;
        self.client_subscriptions += client;
        self.topics.insert(name.clone(), entry);
        Subscribed { name, added: true, first: true }
    }

    /// Removes `id` from `topic`. Returns `Some(last)` when it was subscribed,
    /// `last` telling whether the topic has no local subscriber left.
    pub fn unsubscribe(&mut self, topic: &str, id: ConnId) -> Option<bool> {
        let entry = self.topics.get_mut(topic)?;
        let peer = entry.subscribers.remove(&id)?;
        if peer.wire.get() != Wire::default() {
            entry.other_wires -= 1;
        }
        let last = entry.subscribers.is_empty();
        let client = usize::from(is_client_topic(topic));
        self.client_subscriptions -= client;
        if last {
            self.topics.remove(topic);
            self.client_topics -= client;
        }
        Some(last)
    }

    pub fn get(&self, topic: &str) -> Option<&TopicEntry> {
        self.topics.get(topic)
    }

    pub fn get_mut(&mut self, topic: &str) -> Option<&mut TopicEntry> {
        self.topics.get_mut(topic)
    }

    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// Client topics with a subscriber here (the server's `$` topics aside).
    pub fn client_topics(&self) -> usize {
        self.client_topics
    }

    /// Subscriptions to client topics here.
    pub fn client_subscriptions(&self) -> usize {
        self.client_subscriptions
    }

    /// Every topic with its local subscriber count, in no order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, usize)> {
        self.topics.iter().map(|(name, entry)| (&**name, entry.subscribers.len()))
    }
}
