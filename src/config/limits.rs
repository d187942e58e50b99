//! `[limits]`: per-message, per-connection, per-user and per-IP bounds.

use serde::{Deserialize, Serialize};

use super::{ranged, ConfigError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_message_bytes: u64,
    pub max_topics_per_connection: u64,
    pub max_topic_len: u64,
    pub publish_rate: u64,
    pub publish_burst: u64,
    pub rate_limit_disconnect: u64,
    pub max_connections_per_user: u64,
    pub max_connections_per_ip: u64,
    pub max_presence_clients: u64,
    pub history_memory_bytes: u64,
    pub max_emulation_body_bytes: u64,
    pub max_emulation_pending: u64,
}

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub max_message_bytes: usize,
    pub max_topics_per_connection: usize,
    pub max_topic_len: usize,
    /// Tokens per second; 0 = unlimited.
    pub publish_rate: u32,
    pub publish_burst: u32,
    /// 0 = never close for rate limiting.
    pub rate_limit_disconnect: u32,
    /// Authenticated connections per user on this node; 0 = unlimited.
    pub max_connections_per_user: u32,
    /// WebSocket connections per client IP on this node; 0 = unlimited.
    pub max_connections_per_ip: u32,
    /// Entries one `presence` reply may list (`too_many_results` beyond).
    pub max_presence_clients: usize,
    /// Bytes all history rings of the node may hold (split evenly over the
    /// shards, each the home of its share of topics); the least recently
    /// published topics' rings are evicted beyond it.
    pub history_memory_bytes: usize,
    /// Longest body of a fallback transport's POST (the stream's connect
    /// request, an emulation batch).
    pub max_emulation_body_bytes: usize,
    /// Requests a fallback session holds that it has not run yet.
    pub max_emulation_pending: usize,
}

pub(super) fn validate(l: &RawLimits) -> Result<LimitsConfig, ConfigError> {
    let limits = LimitsConfig {
        max_message_bytes: ranged("limits.max_message_bytes", l.max_message_bytes, 128, 64 << 20, "128..=67108864 bytes")?,
        max_topics_per_connection: ranged("limits.max_topics_per_connection", l.max_topics_per_connection, 1, 1_000_000, "1..=1000000")?,
        max_topic_len: ranged("limits.max_topic_len", l.max_topic_len, 1, 65_536, "1..=65536 bytes")?,
        publish_rate: ranged("limits.publish_rate", l.publish_rate, 0, 100_000_000, "0 (unlimited)..=100000000 per second")?,
        publish_burst: ranged("limits.publish_burst", l.publish_burst, 1, 100_000_000, "1..=100000000")?,
        rate_limit_disconnect: ranged("limits.rate_limit_disconnect", l.rate_limit_disconnect, 0, 100_000_000, "0 (never)..=100000000")?,
        max_connections_per_user: ranged("limits.max_connections_per_user", l.max_connections_per_user, 0, 100_000_000, "0 (unlimited)..=100000000")?,
        max_connections_per_ip: ranged("limits.max_connections_per_ip", l.max_connections_per_ip, 0, 100_000_000, "0 (unlimited)..=100000000")?,
        max_presence_clients: ranged("limits.max_presence_clients", l.max_presence_clients, 1, 10_000_000, "1..=10000000")?,
        history_memory_bytes: ranged("limits.history_memory_bytes", l.history_memory_bytes, 1 << 20, 1 << 40, "1048576..=1099511627776 bytes")?,
        max_emulation_body_bytes: ranged("limits.max_emulation_body_bytes", l.max_emulation_body_bytes, 256, 64 << 20, "256..=67108864 bytes")?,
        max_emulation_pending: ranged("limits.max_emulation_pending", l.max_emulation_pending, 1, 1_000_000, "1..=1000000")?,
    };
    Ok(limits)
}
