//! The shard's side of presence: telling a topic's owner who joined and
//! left, announcing joins and leaves (join_leave), and answering
//! `presence` / `presence_stats` requests.

use std::sync::Arc;

use super::Shard;
use crate::bus::ControlMsg;
use crate::ids::{ConnId, InterestAck};
use crate::metrics::ShardStats;
use crate::presence::{Found, Member, PresenceMsg};
use crate::codes::ErrorCode;
use crate::protocol::{Kind, Outgoing, Reply, RequestError};

impl Shard {
    /// The shard that keeps `topic`'s presence for the node: the bridge
    /// shard with Redis (it keeps the Redis copy), else the topic's home.
    pub fn presence_owner(&self, topic: &str) -> usize {
        self.bridge_shard.unwrap_or_else(|| crate::history::home_shard(topic, self.mailboxes.len()))
    }

    fn to_presence_owner(&self, topic: &str, msg: PresenceMsg) {
        self.post(self.presence_owner(topic), ControlMsg::Presence(msg));
    }

    /// Connection `conn` subscribed to a presence or join_leave topic;
    /// `ack` is released once the entry is in Redis (or at once without).
    pub(super) fn presence_join(&self, topic: &str, conn: ConnId, member: Member, ack: Option<InterestAck>) {
        let msg = PresenceMsg::Join { topic: topic.into(), conn, member, ack };
        self.to_presence_owner(topic, msg);
    }

    /// Connection `conn` left a presence or join_leave topic.
    pub(super) fn presence_leave(&self, topic: &str, conn: ConnId) {
        self.to_presence_owner(topic, PresenceMsg::Leave { topic: topic.into(), conn });
    }

    /// A `presence` (`stats` false) or `presence_stats` request with `id`
    /// of connection `conn` here; the connection waits for the answer.
    pub fn ask_presence(&self, topic: &str, stats: bool, conn: ConnId, id: u64) {
        if let Some(peer) = self.peers.borrow().get(&conn) {
            peer.set_awaiting(true);
        }
        self.to_presence_owner(topic, PresenceMsg::Query { topic: topic.into(), stats, from: self.index, conn, id });
    }

    /// Handles presence traffic: as the owner (joins, leaves, queries) or as
    /// the asking connection's shard (answers).
    pub(super) fn on_presence(&self, msg: PresenceMsg) {
        match msg {
            PresenceMsg::Join { topic, conn, member, ack } => {
                let joined = self.presence.borrow_mut().join(&topic, conn, member.clone());
                let ack = match self.remote() {
                    Some(bridge) if joined => bridge.presence_write(&topic, true, &member, ack),
                    _ => ack,
                };
                // Nothing to wait for (already present, no Redis, Redis down).
                if let Some(ack) = ack {
                    self.interest_acked(ack);
                }
                if !joined {
                    return;
                }
                self.member_event(true, &topic, &member.client, member.user.as_ref());
                let Member { client, user, .. } = member;
                if self.config.namespaces.options(&topic).join_leave {
                    // Everyone but the joining connection itself, once the
                    // node's SUBSCRIBE of the topic is confirmed.
                    let event = Outgoing::presence(&topic, Kind::Join { client, user });
                    let event = match self.remote() {
                        Some(bridge) => bridge.hold_join(&topic, conn, event),
                        None => Some(event),
                    };
                    if let Some(event) = event {
                        self.announce(event, Some(conn));
                    }
                }
            }
            PresenceMsg::Leave { topic, conn } => {
                let Some(member) = self.presence.borrow_mut().leave(&topic, conn) else { return };
                self.member_event(false, &topic, &member.client, member.user.as_ref());
                let mut unannounced = false;
                if let Some(bridge) = self.remote() {
                    bridge.presence_write(&topic, false, &member, None);
                    unannounced = bridge.drop_held_join(&topic, conn);
                }
                if self.config.namespaces.options(&topic).join_leave && !unannounced {
                    self.announce(Outgoing::presence(&topic, Kind::Leave { client: member.client, user: member.user }), None);
                }
            }
            PresenceMsg::Query { topic, stats, from, conn, id } => {
                let max = self.config.limits.max_presence_clients;
                match self.remote() {
                    Some(bridge) => bridge.query_presence(&topic, stats, max, from, conn, id),
                    None => {
                        let found = self.presence.borrow().find(&topic, stats, max);
                        self.answer_presence(from, conn, id, Some(found));
                    }
                }
            }
            PresenceMsg::Answer { conn, id, found } => self.on_presence_answer(conn, id, found),
        }
    }

    /// Delivers a join or leave on this node and, with Redis (the owner is
    /// then the bridge shard), passes it to the other nodes.
    pub(crate) fn announce(&self, event: Arc<Outgoing>, skip: Option<ConnId>) {
        if let Some(bridge) = self.remote() {
            bridge.publish(&event, self.stats());
        }
        self.relay(event, skip);
    }

    /// Sends a presence answer to the asking shard (or handles it here).
    pub fn answer_presence(&self, to: usize, conn: ConnId, id: u64, found: Option<Found>) {
        self.post(to, ControlMsg::Presence(PresenceMsg::Answer { conn, id, found }));
    }

    fn on_presence_answer(&self, conn: ConnId, id: u64, found: Option<Found>) {
        let Some(peer) = self.peers.borrow().get(&conn).cloned() else { return };
        let encoding = peer.encoding();
        let stats = self.stats();
        let error = |code, message: String| {
            ShardStats::add(&stats.request_errors, 1);
            encoding.error_frame(&RequestError { id: Some(id), code, message })
        };
        let frame = match found {
            Some(Found::Clients(clients)) => {
                ShardStats::add(&stats.presence_requests, 1);
                encoding.reply_frame(&Reply::Presence { id, clients: &clients })
            }
            Some(Found::Stats { clients, users }) => {
                ShardStats::add(&stats.presence_requests, 1);
                encoding.reply_frame(&Reply::PresenceStats { id, clients, users })
            }
            Some(Found::TooMany(n)) => error(
                ErrorCode::TooManyResults,
                format!("{n} clients, more than limits.max_presence_clients ({}); presence_stats still answers", self.config.limits.max_presence_clients),
            ),
            None => error(ErrorCode::NotAvailable, "presence is unavailable right now (redis is not reachable)".into()),
        };
        peer.push(frame, self.queueing());
        peer.set_awaiting(false);
        peer.wake();
    }
}

