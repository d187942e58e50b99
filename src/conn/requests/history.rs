//! `history`: a range of a topic's messages, asked of the topic's offset
//! authority (its home shard, or Redis through the bridge), which answers
//! the connection; it waits meanwhile. At most the namespace's
//! `history_size`.

use crate::history::Query;
use crate::protocol::position::Since;

use super::Conn;

impl Conn {
    pub(super) fn on_history(&mut self, id: Option<u64>, topic: &str, since: Option<Since>, limit: Option<u64>) {
        let Some((id, options)) = self.topic_request(id, topic, "history") else { return };
        let Some(policy) = options.history else {
            return self.not_available(id, "this topic's namespace keeps no history (history_size = 0)");
        };
        let limit = limit.map_or(policy.size, |l| usize::try_from(l).unwrap_or(usize::MAX).min(policy.size));
        self.peer.set_awaiting(true);
        self.shard.ask_history(topic, Query::Range { since, limit }, self.peer.id, Some(id));
    }
}
