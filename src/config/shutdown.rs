//! `[shutdown]`: how long a graceful shutdown may take.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ms, ranged, ConfigError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    pub drain_timeout_ms: u64,
}

#[derive(Debug, Clone)]
pub struct ShutdownConfig {
    pub drain_timeout: Duration,
}

pub(super) fn validate(s: &RawShutdown) -> Result<ShutdownConfig, ConfigError> {
    Ok(ShutdownConfig { drain_timeout: ms(ranged::<u64>("shutdown.drain_timeout_ms", s.drain_timeout_ms, 0, 3_600_000, "0..=3600000 ms")?) })
}
