//! `[log]`: level and format.

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: String,
    pub format: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

pub(super) fn validate(l: &RawLog) -> Result<LogConfig, ConfigError> {
    let level = l.level.to_ascii_lowercase();
    if !["trace", "debug", "info", "warn", "error"].contains(&level.as_str()) {
        return Err(invalid("log.level", format!("{:?}", l.level), "one of trace, debug, info, warn, error"));
    }
    let format = match l.format.as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => return Err(invalid("log.format", format!("{other:?}"), "\"text\" or \"json\"")),
    };
    Ok(LogConfig { level, format })
}
