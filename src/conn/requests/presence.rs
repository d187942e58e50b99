//! `presence` and `presence_stats`: asked of the topic's presence owner
//! (another shard, or Redis through the bridge), which answers the
//! connection; it waits meanwhile.

use super::Conn;

impl Conn {
    pub(super) fn on_presence(&mut self, id: Option<u64>, topic: &str, stats: bool) {
        let kind = if stats { "presence_stats" } else { "presence" };
        let Some((id, options)) = self.topic_request(id, topic, kind) else { return };
        if !options.presence {
            return self.not_available(id, "presence is not enabled for this topic's namespace (presence = true)");
        }
        self.shard.ask_presence(topic, stats, self.peer.id, id);
    }
}
