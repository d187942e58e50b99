//! `publish`, and the publish rate limit that publishes and direct
//! messages share (a token bucket per connection, `[limits] publish_rate`
//! and `publish_burst`; repeated abuse closes 1008). The shard fans the
//! message out; a part that waits for room on another shard's channel
//! stops this connection's input until it is handed over (`Blocked`).

use std::time::Instant;

use crate::auth::{Access, Action};
use crate::codes::{close, ErrorCode};
use crate::metrics::ShardStats;
use crate::protocol::{Payload, RequestError};

use super::Conn;

impl Conn {
    pub(super) fn on_publish(&mut self, id: Option<u64>, topic: &str, payload: Payload<'_>, skip_self: bool) {
        if !self.topic_allowed(id, topic, Action::Publish) || !self.take_publish_token(id) {
            return;
        }
        if self.shard.config.namespaces.access(topic, Action::Publish) == Access::Proxy {
            return self.call_publish(id, topic, payload, skip_self);
        }
        let published = self.shard.publish(&self.peer, topic, payload, skip_self);
        self.accepted(id, published);
    }

    /// Takes one token of the connection's publish rate (publishes and direct
    /// messages share it); answers `rate_limited`, or closes 1008 after
    /// repeated abuse, when there is none.
    pub(super) fn take_publish_token(&mut self, id: Option<u64>) -> bool {
        let limits = &self.shard.config.limits;
        let now = Instant::now();
        if self.bucket.take(now, limits.publish_rate, limits.publish_burst) {
            return true;
        }
        ShardStats::add(&self.shard.stats().rate_limited, 1);
        if self.limited.strike(now, limits.rate_limit_disconnect) {
            self.fail(close::POLICY, "rate limit exceeded repeatedly");
        } else {
            let message = format!("more than {} publishes per second", limits.publish_rate);
            self.reply_error(RequestError { id, code: ErrorCode::RateLimited, message });
        }
        false
    }
}
