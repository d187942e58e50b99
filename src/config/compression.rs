//! `[compression]`: permessage-deflate.

use serde::{Deserialize, Serialize};

use super::{ranged, ConfigError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompression {
    pub enabled: bool,
    pub min_bytes: u64,
    pub level: u64,
    pub compress_once: bool,
}

/// `[compression]`: permessage-deflate.
#[derive(Debug, Clone)]
pub struct CompressionConfig {
    /// Negotiate permessage-deflate when a client offers it.
    pub enabled: bool,
    /// Messages below this many bytes go uncompressed.
    pub min_bytes: usize,
    /// zlib level 1..=9.
    pub level: u32,
    /// One compression per message per node (false: per subscriber, for benchmarks).
    pub compress_once: bool,
}

pub(super) fn validate(c: &RawCompression) -> Result<CompressionConfig, ConfigError> {
    let compression = CompressionConfig {
        enabled: c.enabled,
        min_bytes: ranged("compression.min_bytes", c.min_bytes, 0, 64 << 20, "0..=67108864 bytes")?,
        level: ranged("compression.level", c.level, 1, 9, "1..=9")?,
        compress_once: c.compress_once,
    };
    Ok(compression)
}
