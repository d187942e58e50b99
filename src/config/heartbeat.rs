//! `[heartbeat]`: server pings and the silence after which a client is closed.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{optional_ms, ranged, ConfigError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeartbeat {
    pub interval_ms: u64,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone)]
pub struct HeartbeatConfig {
    /// `None` = never ping.
    pub interval: Option<Duration>,
    /// `None` = never time out.
    pub timeout: Option<Duration>,
}

pub(super) fn validate(h: &RawHeartbeat) -> Result<HeartbeatConfig, ConfigError> {
    let heartbeat = HeartbeatConfig {
        interval: optional_ms(ranged::<u64>("heartbeat.interval_ms", h.interval_ms, 0, 86_400_000, "0 (off)..=86400000 ms")?),
        timeout: optional_ms(ranged::<u64>("heartbeat.timeout_ms", h.timeout_ms, 0, 86_400_000, "0 (off)..=86400000 ms")?),
    };
    Ok(heartbeat)
}
