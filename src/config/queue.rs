//! `[queue]`: each client's bounded outbound queue and what happens when it
//! overflows.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, ms, ranged, ConfigError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    pub max_messages: u64,
    pub max_bytes: u64,
    pub overflow: String,
    pub close_timeout_ms: u64,
}

/// What a full client queue does ([`QueueConfig::overflow`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Drop everything queued, send close 1013 "slow consumer", close.
    Disconnect,
    /// Drop the oldest queued frames until the new one fits.
    DropOldest,
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub max_messages: usize,
    pub max_bytes: usize,
    pub overflow: Overflow,
    pub close_timeout: Duration,
}

pub(super) fn validate(q: &RawQueue) -> Result<QueueConfig, ConfigError> {
    let overflow = match q.overflow.as_str() {
        "disconnect" => Overflow::Disconnect,
        "drop_oldest" => Overflow::DropOldest,
        other => return Err(invalid("queue.overflow", format!("{other:?}"), "\"disconnect\" or \"drop_oldest\"")),
    };
    let queue = QueueConfig {
        max_messages: ranged("queue.max_messages", q.max_messages, 1, 10_000_000, "1..=10000000")?,
        max_bytes: ranged("queue.max_bytes", q.max_bytes, 1024, 1 << 32, "1024..=4294967296 bytes")?,
        overflow,
        close_timeout: ms(ranged::<u64>("queue.close_timeout_ms", q.close_timeout_ms, 1, 600_000, "1..=600000 ms")?),
    };
    Ok(queue)
}
