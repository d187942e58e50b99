//! `[bus]`: the channels between shards.

use serde::{Deserialize, Serialize};

use super::{ranged, ConfigError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBus {
    pub capacity: u64,
}

#[derive(Debug, Clone)]
pub struct BusConfig {
    pub capacity: usize,
}

pub(super) fn validate(b: &RawBus) -> Result<BusConfig, ConfigError> {
    Ok(BusConfig { capacity: ranged("bus.capacity", b.capacity, 1, 10_000_000, "1..=10000000 messages")? })
}
