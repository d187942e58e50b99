//! [`Remote`] for the bridge: what the shard asks of the link to the other
//! nodes (`shard::remote` lists the whole interface). Each call queues work
//! for Redis and returns at once; answers come back through the shard's
//! methods named there.

use std::rc::Rc;
use std::sync::Arc;

use super::link::Link;
use super::scripts::Script;
use super::presence::PresenceOp;
use super::{envelope, Bridge, OnReply, Outbound, NODES_CHANNEL};
use crate::auth::HistoryPolicy;
use crate::bus::admin::RedisReport;
use crate::history::{Query, ReplyTo};
use crate::presence::Member;
use crate::ids::{ConnId, InterestAck};
use crate::metrics::ShardStats;
use crate::protocol::{Kind, Outgoing};
use crate::shard::Remote;

impl Remote for Bridge {
    fn publish(&self, msg: &Outgoing, stats: &ShardStats) {
        let mut builder = self.builder.borrow_mut();
        let envelope = match &msg.kind {
            Kind::Join { client, user } => envelope::encode_presence(&mut builder, &self.node_id, &msg.topic, true, client, user.as_deref()),
            Kind::Leave { client, user } => envelope::encode_presence(&mut builder, &self.node_id, &msg.topic, false, client, user.as_deref()),
            Kind::Message | Kind::Direct { .. } => {
                let numbers = envelope::Numbers { seq: self.numbering.borrow_mut().next(&msg.topic), skip: 0 };
                envelope::encode(&mut builder, &self.node_id, &msg.topic, &msg.payload, msg.payload_is_json, msg.sender(), numbers)
            }
        };
        let command = redis::cmd(self.publish_command()).arg(self.channel(&msg.topic)).arg(envelope).get_packed_command();
        drop(builder);
        self.push_command(command, self.slot(&msg.topic), stats);
    }

    fn number(&self, msg: &Outgoing, policy: HistoryPolicy, skip: Option<ConnId>, stats: &ShardStats) {
        let keys = self.keys(&msg.topic);
        let mut builder = self.builder.borrow_mut();
        // Numbered by Redis (offsets), not by this node.
        let numbers = envelope::Numbers { seq: 0, skip: skip.map_or(0, |c| c.0) };
        let envelope = envelope::encode(&mut builder, &self.node_id, &msg.topic, &msg.payload, msg.payload_is_json, None, numbers);
        let command = redis::cmd("EVALSHA")
            .arg(Script::Number.sha())
            .arg(2)
            .arg(keys.meta())
            .arg(keys.stream())
            .arg(self.channel(&msg.topic))
            .arg(envelope)
            .arg(policy.size)
            .arg(policy.ttl.as_millis() as u64)
            .arg(&*self.epochs.borrow_mut().fresh())
            .arg(self.publish_command())
            .get_packed_command();
        drop(builder);
        self.push_command(command, self.slot(&msg.topic), stats);
    }

    fn query_history(&self, topic: &str, policy: HistoryPolicy, query: Query, budget: usize, to: ReplyTo) {
        let (mode, after, count) = match &query {
            Query::Position => ("after", 0, 0),
            Query::Recover(since) => ("after", since.offset, policy.size),
            Query::Range { since: Some(since), limit } => ("after", since.offset, (*limit).min(policy.size)),
            Query::Range { since: None, limit } => ("latest", 0, (*limit).min(policy.size)),
        };
        let packed = self.read_command(topic, policy, mode, after, count, budget);
        self.push_read(Outbound::new(packed, OnReply::History { query, to }, self.slot(topic)));
    }

    fn set_interest(&self, topic: &str, interested: bool, ack: Option<InterestAck>) -> bool {
        let mut wanted = self.wanted.borrow_mut();
        let changed = if interested {
            !wanted.contains(topic) && wanted.insert(Rc::from(topic))
        } else {
            wanted.remove(topic)
        };
        drop(wanted);
        if changed {
            if interested {
                self.gaps.borrow_mut().want(topic);
            } else {
                self.refills.borrow_mut().forget(topic);
                self.gaps.borrow_mut().forget(topic);
            }
        }
        if interested && !changed {
            // A SUBSCRIBE for it may still be on its way: wait for the same
            // confirmation.
            if let (Some(ack), Some(waiting)) = (ack, self.confirmations.borrow_mut().get_mut(topic)) {
                waiting.acks.push(ack);
                return true;
            }
        }
        let Some(link) = self.route(self.slot(topic)).filter(|l| changed && l.subscriber_connected.get()) else {
            return false;
        };
        let topic: Rc<str> = Rc::from(topic);
        link.change(topic.clone(), interested);
        match ack {
            Some(ack) if interested => {
                self.confirmations.borrow_mut().entry(topic).or_default().acks.push(ack);
                true
            }
            _ => false,
        }
    }

    fn occupancy(&self, topic: &str, occupied: bool) {
        self.occupancy_changed(topic, occupied);
    }

    fn presence_write(&self, topic: &str, join: bool, member: &Member, ack: Option<InterestAck>) -> Option<InterestAck> {
        let up = self.route(self.slot(topic)).is_some_and(|l| l.publisher_connected.get());
        let ack = match ack {
            Some(ack) if !up => return Some(ack),
            ack => ack,
        };
        let op = PresenceOp { join, member: member.clone(), ack };
        self.presence_ops.borrow_mut().entry(topic.into()).or_default().push(op);
        self.presence_ready.raise();
        None
    }

    fn hold_join(&self, topic: &str, conn: ConnId, event: Arc<Outgoing>) -> Option<Arc<Outgoing>> {
        match self.confirmations.borrow_mut().get_mut(topic) {
            Some(waiting) => {
                waiting.joins.push((conn, event));
                None
            }
            None => Some(event),
        }
    }

    fn drop_held_join(&self, topic: &str, conn: ConnId) -> bool {
        let mut confirmations = self.confirmations.borrow_mut();
        let Some(waiting) = confirmations.get_mut(topic) else { return false };
        let before = waiting.joins.len();
        waiting.joins.retain(|(c, _)| *c != conn);
        waiting.joins.len() != before
    }

    fn query_presence(&self, topic: &str, stats: bool, max: usize, from: usize, conn: ConnId, id: u64) {
        let keys = self.keys(topic);
        let packed = redis::cmd("EVALSHA")
            .arg(Script::PresenceRead.sha())
            .arg(2)
            .arg(keys.presence())
            .arg(keys.presence_expiry())
            .arg(if stats { "stats" } else { "list" })
            .arg(max)
            .get_packed_command();
        self.push_read(Outbound::new(packed, OnReply::Presence { stats, from, conn, id }, self.slot(topic)));
    }

    fn disconnect_user(&self, user: &str, code: u16, reason: &str, stats: &ShardStats) {
        let topic = crate::topic::user_topic(user);
        let mut builder = self.builder.borrow_mut();
        let envelope = envelope::encode_disconnect(&mut builder, &self.node_id, &topic, code, reason);
        let command = redis::cmd(self.publish_command()).arg(self.channel(&topic)).arg(envelope).get_packed_command();
        drop(builder);
        self.push_command(command, self.slot(&topic), stats);
    }

    fn forward_emulation(&self, node: &str, body: &[u8], stats: &ShardStats) {
        self.forward_to_node(node, body, stats);
    }

    fn announce_node(&self, summary: &[u8], stats: &ShardStats) {
        let slot = self.slot(NODES_CHANNEL);
        if !self.route(slot).is_some_and(|l| l.publisher_connected.get()) {
            return;
        }
        let command = redis::cmd(self.publish_command()).arg(self.channel(NODES_CHANNEL)).arg(summary).get_packed_command();
        self.push_command(command, slot, stats);
    }

    fn report(&self) -> RedisReport {
        let links = self.links.borrow();
        let all = |up: fn(&Link) -> bool| !links.is_empty() && links.iter().all(|l| up(l));
        crate::bus::admin::RedisReport {
            subscriber_connected: all(|l| l.subscriber_connected.get()),
            publisher_connected: all(|l| l.publisher_connected.get()),
            // The topics, this node's own channel and, when the admin
            // plane listens, the nodes' one.
            channels: self.wanted.borrow().len() + 1 + usize::from(self.announcements.is_some()),
        }
    }
}
