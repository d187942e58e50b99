//! Requests for fallback sessions between nodes: a POST to
//! `emulation_path` for a session of another node is published on that
//! node's channel (`$node:<id>`, after `[redis] channel_prefix`), which
//! every node subscribes to for itself; what arrives there is handed to
//! the shard (`Shard::emulation_from_node`). Runs on the bridge shard.

use super::Bridge;
use crate::metrics::ShardStats;

/// The channel (after the prefix) on which node `node` hears requests for
/// its sessions. `$`: no client topic can clash.
pub fn node_channel(node: &str) -> String {
    format!("$node:{node}")
}

impl Bridge {
    /// This node's own channel.
    pub(super) fn own_channel(&self) -> String {
        node_channel(&self.node_id)
    }

    /// Publishes `body` (an emulation POST's JSON) for node `node`; lost,
    /// and counted, while Redis is unreachable (the client's POST was
    /// answered 204 and its next request shows the session's state).
    pub(super) fn forward_to_node(&self, node: &str, body: &[u8], stats: &ShardStats) {
        let topic = node_channel(node);
        let slot = self.slot(&topic);
        if !self.route(slot).is_some_and(|l| l.publisher_connected.get()) {
            ShardStats::add(&stats.emulation_dropped, 1);
            return;
        }
        let command = redis::cmd(self.publish_command()).arg(self.channel(&topic)).arg(body).get_packed_command();
        self.push_command(command, slot, stats);
    }
}
