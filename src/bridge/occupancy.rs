//! Which topics the cluster occupies, for the `topic_occupied` and
//! `topic_vacated` webhooks: each node marks the topics it holds
//! subscribers of in Redis ([`scripts::OCCUPANCY`]), and the node whose mark
//! is a topic's first or last reports it, so exactly one node sends each
//! event. A mark is a lease, renewed with the node's presence every third
//! of `[redis] presence_ttl_ms`: the marks of a node that died run out, and
//! the next node to mark the topic finds it unoccupied. Runs on the bridge
//! shard.

use std::sync::Arc;

use tracing::debug;

use super::scripts::{self, Script};
use super::{Bridge, OnReply, Outbound};
use crate::bus::webhooks::WebhookEvent;
use crate::config::WebhookKind;
use crate::shard::Shard;

impl Bridge {
    fn occupancy_command(&self, topic: &str, op: &str) -> Vec<u8> {
        redis::cmd("EVALSHA")
            .arg(Script::Occupancy.sha())
            .arg(1)
            .arg(self.keys(topic).occupied())
            .arg(op)
            .arg(&self.node_id)
            .arg(self.config.presence_ttl.as_millis() as u64)
            .get_packed_command()
    }

    /// The node started (`occupied`) or stopped holding subscribers of
    /// `topic`. With Redis unreachable the change is not reported (the
    /// lease renewal marks the topic again once it is back).
    pub(super) fn occupancy_changed(&self, topic: &str, occupied: bool) {
        self.occupancy_on.set(true);
        let slot = self.slot(topic);
        if !self.route(slot).is_some_and(|l| l.publisher_connected.get()) {
            debug!(topic, occupied, "occupancy change not reported: Redis is unreachable");
            return;
        }
        let packed = self.occupancy_command(topic, if occupied { "+" } else { "-" });
        self.push_read(Outbound::new(packed, OnReply::Occupancy { topic: topic.into(), occupied }, slot));
    }

    /// Renews this node's marks of the topics it holds.
    pub(super) fn renew_occupancy(&self, shard: &Shard) {
        if !self.occupancy_on.get() {
            return;
        }
        let topics: Vec<_> = self.wanted.borrow().iter().filter(|t| !crate::topic::is_internal(t)).cloned().collect();
        for topic in topics {
            self.push_command(self.occupancy_command(&topic, "renew"), self.slot(&topic), shard.stats());
        }
    }
}

/// The answer to a `+` or `-`: 1 when this node is to report the change.
pub(super) fn on_reply(shard: &Shard, topic: Arc<str>, occupied: bool, reply: &redis::Value) {
    if scripts::parse_int(reply) == Some(1) {
        let kind = if occupied { WebhookKind::TopicOccupied } else { WebhookKind::TopicVacated };
        shard.webhook(WebhookEvent::topic(kind, topic));
    }
}
