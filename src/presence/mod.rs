//! Who is subscribed where: the node's presence table and its messages.
//!
//! Each presence topic has one owner shard on the node: the bridge shard
//! when Redis is configured (it keeps the Redis copy, `bridge::presence`),
//! otherwise the topic's home shard ([`crate::history::home_shard`]). A
//! subscriber's shard tells the owner with [`PresenceMsg::Join`] /
//! [`PresenceMsg::Leave`]; `presence` requests are answered by the owner (from
//! this table, or from Redis for every node).
//!
//! A [`Presence`] is touched only by its owner shard. Bounded by the node's
//! subscriptions (connections x `max_topics_per_connection`).

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use crate::ids::{ConnId, InterestAck};

/// A client in a presence reply.
pub use crate::protocol::PresenceEntry as Entry;

/// What a presence query found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Clients(Vec<Entry>),
    Stats { clients: u64, users: u64 },
    /// More clients than `[limits] max_presence_clients`: how many.
    TooMany(u64),
}

/// Presence traffic between a subscriber's shard and the topic's owner.
#[derive(Debug)]
pub enum PresenceMsg {
    /// `client` (its cluster-wide id, with its user) subscribed to `topic`.
    /// With `ack`, its subscribe is acked once the owner has the entry in
    /// Redis (acknowledged like an interest change), so that a `presence`
    /// asked anywhere after the ack lists it.
    Join { topic: Arc<str>, conn: ConnId, member: Member, ack: Option<InterestAck> },
    /// It unsubscribed or closed.
    Leave { topic: Arc<str>, conn: ConnId },
    /// A `presence` (`stats` false) or `presence_stats` request of
    /// connection `conn` on shard `from`, with the request's `id`.
    Query { topic: Arc<str>, stats: bool, from: usize, conn: ConnId, id: u64 },
    /// The answer, for `conn` on the receiving shard. `None`: unavailable
    /// (the Redis copy could not be read).
    Answer { conn: ConnId, id: u64, found: Option<Found> },
}

/// One subscriber in the table.
#[derive(Debug, Clone)]
pub struct Member {
    pub client: Arc<str>,
    pub user: Option<Arc<str>>,
    /// The connect hook's `info` (JSON text).
    pub info: Option<Arc<str>>,
}

impl Member {
    pub fn entry(&self) -> Entry {
        Entry { client: self.client.to_string(), user: self.user.as_deref().map(str::to_string), info: self.info.as_deref().map(str::to_string) }
    }
}

/// The node's presence for the topics this shard owns.
#[derive(Debug, Default)]
pub struct Presence {
    topics: HashMap<Rc<str>, HashMap<ConnId, Member, ahash::RandomState>, ahash::RandomState>,
}

impl Presence {
    /// Records a subscriber. Returns false if it was already present.
    pub fn join(&mut self, topic: &str, conn: ConnId, member: Member) -> bool {
        match self.topics.get_mut(topic) {
            Some(members) => members.insert(conn, member).is_none(),
            None => {
                let mut members = HashMap::default();
                members.insert(conn, member);
                self.topics.insert(topic.into(), members);
                true
            }
        }
    }

    /// Forgets a subscriber; returns it if it was present.
    pub fn leave(&mut self, topic: &str, conn: ConnId) -> Option<Member> {
        let members = self.topics.get_mut(topic)?;
        let gone = members.remove(&conn);
        if members.is_empty() {
            self.topics.remove(topic);
        }
        gone
    }

    /// The members of `topic` on this node.
    pub fn members(&self, topic: &str) -> impl Iterator<Item = &Member> {
        self.topics.get(topic).into_iter().flat_map(|m| m.values())
    }

    /// Every topic with its members (the Redis refresh).
    pub fn iter(&self) -> impl Iterator<Item = (&Rc<str>, impl Iterator<Item = &Member>)> {
        self.topics.iter().map(|(t, m)| (t, m.values()))
    }

    /// Answers a query from this node's table alone.
    pub fn find(&self, topic: &str, stats: bool, max: usize) -> Found {
        summarize(self.members(topic).map(Member::entry), stats, max)
    }

    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }
}

/// Turns a topic's entries into a reply: the list (at most `max`), or the
/// counts. Users are distinct authenticated users; anonymous connections
/// count as clients only.
pub fn summarize(entries: impl Iterator<Item = Entry>, stats: bool, max: usize) -> Found {
    if stats {
        let mut clients = 0;
        let mut users = HashSet::new();
        for entry in entries {
            clients += 1;
            if let Some(u) = entry.user {
                users.insert(u);
            }
        }
        return Found::Stats { clients, users: users.len() as u64 };
    }
    let mut list = Vec::new();
    let mut count = 0u64;
    for entry in entries {
        count += 1;
        if list.len() < max {
            list.push(entry);
        }
    }
    if count > max as u64 {
        Found::TooMany(count)
    } else {
        Found::Clients(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(client: &str, user: Option<&str>) -> Member {
        Member { client: client.into(), user: user.map(Arc::from), info: None }
    }

    #[test]
    fn joins_leaves_and_answers() {
        let mut p = Presence::default();
        assert!(p.join("t", ConnId::new(0, 1), member("n:0-1", Some("alice"))));
        assert!(!p.join("t", ConnId::new(0, 1), member("n:0-1", Some("alice"))));
        assert!(p.join("t", ConnId::new(1, 1), member("n:1-1", Some("alice"))));
        assert!(p.join("t", ConnId::new(1, 2), member("n:1-2", None)));
        assert_eq!(p.find("t", true, 10), Found::Stats { clients: 3, users: 1 });
        assert_eq!(p.find("t", false, 2), Found::TooMany(3));
        let Found::Clients(mut list) = p.find("t", false, 3) else { panic!() };
        list.sort();
        assert_eq!(list[2], Entry { client: "n:1-2".into(), user: None, info: None });
        assert!(p.leave("t", ConnId::new(0, 1)).is_some());
        assert!(p.leave("t", ConnId::new(0, 1)).is_none());
        p.leave("t", ConnId::new(1, 1));
        p.leave("t", ConnId::new(1, 2));
        assert_eq!(p.topic_count(), 0, "an empty topic is forgotten");
        assert_eq!(p.find("t", false, 3), Found::Clients(vec![]));
    }
}
