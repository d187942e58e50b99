//! The Redis copy of the node's presence: the writes the shard queues (a
//! join, a leave) batched per topic into one script call, and every entry
//! of the node written again every third of `[redis] presence_ttl_ms`, so
//! that a dead node's entries expire and a live one's never do. Runs on the
//! bridge shard.

use std::rc::Rc;

use glommio::timer::sleep;

use super::scripts::{self, Script};
use super::{Bridge, OnReply, Outbound};
use crate::ids::InterestAck;
use crate::presence::Member;
use crate::shard::Shard;

/// Presence entries per write when the node refreshes a topic's entries.
const PRESENCE_CHUNK: usize = 1000;

/// A presence change of one connection of this node.
#[derive(Debug, Clone)]
pub(super) struct PresenceOp {
    pub(super) join: bool,
    pub(super) member: Member,
    /// The subscribe waiting for this entry to be in Redis.
    pub(super) ack: Option<InterestAck>,
}

impl Bridge {
    /// Packs one presence write of `topic` ([`scripts::PRESENCE_WRITE`]).
    fn presence_command<'a>(&self, topic: &str, ops: impl Iterator<Item = &'a PresenceOp>) -> Vec<u8> {
        let keys = self.keys(topic);
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(Script::PresenceWrite.sha())
            .arg(2)
            .arg(keys.presence())
            .arg(keys.presence_expiry())
            .arg(self.config.presence_ttl.as_millis() as u64);
        for op in ops {
            let m = &op.member;
            cmd.arg(if op.join { "+" } else { "-" }).arg(&*m.client).arg(scripts::presence_value(m.user.as_deref(), m.info.as_deref()));
        }
        cmd.get_packed_command()
    }
}

/// Writes this node's presence changes to Redis as they come (coalesced
/// per topic into one script call per write) and refreshes every entry of
/// the node every third of `presence_ttl_ms`, so that entries of a node
/// that died expire and those of a live one never do.
pub(super) async fn presence_loop(shard: Rc<Shard>, bridge: Rc<Bridge>) {
    let period = bridge.config.presence_ttl / 3;
    let mut next_refresh = std::time::Instant::now() + period;
    loop {
        let wait = next_refresh.saturating_duration_since(std::time::Instant::now());
        futures_lite::future::or(bridge.presence_ready.wait(), sleep(wait)).await;
        if !bridge.links.borrow().iter().any(|l| l.publisher_connected.get()) {
            continue;
        }
        let stats = shard.stats();
        let ops = std::mem::take(&mut *bridge.presence_ops.borrow_mut());
        for (topic, ops) in &ops {
            let packed = bridge.presence_command(topic, ops.iter());
            let slot = bridge.slot(topic);
            let acks: Vec<InterestAck> = ops.iter().filter_map(|op| op.ack).collect();
            if acks.is_empty() {
                bridge.push_command(packed, slot, stats);
            } else {
                bridge.push_read(Outbound::new(packed, OnReply::Written(acks), slot));
            }
        }
        if bridge.presence_refresh.replace(false) || std::time::Instant::now() >= next_refresh {
            next_refresh = std::time::Instant::now() + period;
            shard.for_each_member(|topic, members| {
                let ops: Vec<PresenceOp> = members.map(|m| PresenceOp { join: true, member: m.clone(), ack: None }).collect();
                for chunk in ops.chunks(PRESENCE_CHUNK) {
                    bridge.push_command(bridge.presence_command(topic, chunk.iter()), bridge.slot(topic), stats);
                }
            });
            bridge.renew_occupancy(&shard);
        }
    }
}
