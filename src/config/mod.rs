//! Configuration: TOML text -> [`RawConfig`] (the file's shape) -> [`Config`]
//! (validated, typed).
//!
//! The defaults are `tuning/shardcast.toml` itself, embedded at build time, so
//! the documented defaults and the running ones cannot drift apart. A user file
//! is merged key by key onto them: a key the defaults do not have is an
//! unknown key, a value of another TOML type than the default's is a wrong
//! type, and both are reported with the full key name before anything runs.
//!
//! One file per section, each with its raw form, its validation and its
//! tests: `server`, `limits`, `queue`, `bus`, `admin`, `redis`, `auth`,
//! `tls`, `compression`, `namespaces`, `heartbeat`, `shutdown`, `log`,
//! `proxy`, `webhooks`. This file merges, and checks what spans sections.

pub mod admin;
pub mod auth;
pub mod bus;
pub mod compression;
pub mod heartbeat;
pub mod limits;
pub mod log;
pub mod namespaces;
pub mod proxy;
pub mod queue;
pub mod redis;
pub mod server;
pub mod shutdown;
pub mod tls;
pub mod webhooks;

pub use admin::{AdminConfig, RawAdmin};
pub use auth::{AuthConfig, RawAuth};
pub use bus::{BusConfig, RawBus};
pub use compression::{CompressionConfig, RawCompression};
pub use heartbeat::{HeartbeatConfig, RawHeartbeat};
pub use limits::{LimitsConfig, RawLimits};
pub use log::{LogConfig, LogFormat, RawLog};
pub use namespaces::RawNamespace;
pub use proxy::{ConnectFailure, ProxyConfig, RawProxy};
pub use queue::{Overflow, QueueConfig, RawQueue};
pub use redis::{Endpoint, RawRedis, RedisConfig, RedisTopology};
pub use server::{RawServer, ServerConfig};
pub use shutdown::{RawShutdown, ShutdownConfig};
pub use tls::{RawTls, TlsConfig};
pub use webhooks::{RawWebhooks, WebhookKind, WebhookKinds, WebhooksConfig};

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::namespace::Namespaces;

/// The default configuration, as shipped in `tuning/shardcast.toml`.
pub const DEFAULTS_TOML: &str = include_str!("../../tuning/shardcast.toml");

/// Hard upper bound on shards; [`crate::bus::ShardSet`] is sized for it.
pub const MAX_SHARDS: usize = 256;

/// A configuration problem, naming the key, the value and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config is not valid TOML: {0}")]
    Syntax(String),
    #[error("unknown config key `{key}`")]
    UnknownKey { key: String },
    #[error("config key `{key}` has the wrong type: expected {expected}, found {found}")]
    WrongType { key: String, expected: &'static str, found: &'static str },
    #[error("config key `{key}` has an invalid value {value}: {expected}")]
    Invalid { key: String, value: String, expected: String },
}

/// The file's shape. Every field is present after merging onto the defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[[namespaces]]` tables (first, so that TOML output keeps them valid).
    pub namespaces: Vec<RawNamespace>,
    pub server: RawServer,
    pub limits: RawLimits,
    pub queue: RawQueue,
    pub bus: RawBus,
    pub admin: RawAdmin,
    pub redis: RawRedis,
    pub auth: RawAuth,
    pub tls: RawTls,
    pub compression: RawCompression,
    pub heartbeat: RawHeartbeat,
    pub shutdown: RawShutdown,
    pub log: RawLog,
    pub proxy: RawProxy,
    pub webhooks: RawWebhooks,
}

/// The validated configuration every part of the server reads.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub limits: LimitsConfig,
    pub queue: QueueConfig,
    pub bus: BusConfig,
    /// `None` when `[admin] listen` is empty.
    pub admin: Option<AdminConfig>,
    /// `None` when `[redis] url` is empty (single node).
    pub redis: Option<RedisConfig>,
    pub auth: AuthConfig,
    /// `None` when `[tls]` sets no certificate (plain `ws://`).
    pub tls: Option<TlsConfig>,
    pub compression: CompressionConfig,
    /// Topic permissions, first match wins; empty = anyone may do anything.
    pub namespaces: Namespaces,
    pub heartbeat: HeartbeatConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    /// The backend hooks (all off by default).
    pub proxy: ProxyConfig,
    /// `None` when `[webhooks] url` is empty.
    pub webhooks: Option<WebhooksConfig>,
    /// The effective configuration in file form, for `--print-config`.
    pub raw: RawConfig,
}

/// Command-line overrides applied on top of the file, validated like it.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub shards: Option<u64>,
}

impl Config {
    /// The embedded defaults, validated.
    pub fn defaults() -> Config {
        Config::from_toml("", &Overrides::default()).expect("embedded defaults are valid")
    }

    /// Loads `path` (or only the defaults when `None`) and applies `overrides`.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|source| ConfigError::Read { path: p.display().to_string(), source })?,
            None => String::new(),
        };
        Config::from_toml(&text, overrides)
    }

    /// Parses a user TOML text merged onto the defaults.
    pub fn from_toml(text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut merged: toml::Table =
            toml::from_str(DEFAULTS_TOML).expect("embedded defaults are valid TOML");
        let user: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let admin_explicit = overrides.admin_listen.is_some() || user_sets(&user, "admin", "listen");
        merge(&mut merged, user, "")?;
        let server = merged.get_mut("server").and_then(|v| v.as_table_mut()).expect("defaults have [server]");
        if let Some(listen) = &overrides.listen {
            server.insert("listen".into(), toml::Value::String(listen.clone()));
        }
        if let Some(listen) = &overrides.admin_listen {
            let admin = merged.get_mut("admin").and_then(|v| v.as_table_mut()).expect("defaults have [admin]");
            admin.insert("listen".into(), toml::Value::String(listen.clone()));
        }
        let server = merged.get_mut("server").and_then(|v| v.as_table_mut()).expect("defaults have [server]");
        if let Some(shards) = overrides.shards {
            let shards = i64::try_from(shards).map_err(|_| invalid("server.shards", shards, "at most 256"))?;
            server.insert("shards".into(), toml::Value::Integer(shards));
        }
        let raw: RawConfig = toml::Value::Table(merged).try_into().map_err(|e: toml::de::Error| {
            // Types were checked against the defaults; what is left is a
            // range problem such as a negative number for an unsigned key.
            ConfigError::Syntax(e.to_string())
        })?;
        let mut config = validate(raw)?;
        if let Some(admin) = &mut config.admin {
            admin.listen_explicit = admin_explicit;
        }
        Ok(config)
    }
}

/// Whether the user's table sets `section.key`.
fn user_sets(user: &toml::Table, section: &str, key: &str) -> bool {
    user.get(section).and_then(toml::Value::as_table).is_some_and(|t| t.contains_key(key))
}

/// Merges `user` onto `base`, rejecting keys the defaults lack and values of
/// another TOML type than the default's.
fn merge(base: &mut toml::Table, user: toml::Table, prefix: &str) -> Result<(), ConfigError> {
    for (key, value) in user {
        let full = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        let Some(slot) = base.get_mut(&key) else {
            return Err(ConfigError::UnknownKey { key: full });
        };
        if FREE_TABLES.contains(&full.as_str()) {
            free_table(&full, &value)?;
            *slot = value;
            continue;
        }
        match (slot, value) {
            (toml::Value::Table(b), toml::Value::Table(u)) => merge(b, u, &full)?,
            (slot, value) if slot.same_type(&value) => {
                if let toml::Value::Array(items) = &value {
                    if full == "namespaces" {
                        namespaces::check_tables(items)?;
                    } else if let Some(bad) = items.iter().find(|v| !v.is_str()) {
                        return Err(ConfigError::WrongType {
                            key: full,
                            expected: "array of strings",
                            found: bad.type_str(),
                        });
                    }
                }
                *slot = value;
            }
            (slot, value) => {
                return Err(ConfigError::WrongType {
                    key: full,
                    expected: slot.type_str(),
                    found: value.type_str(),
                })
            }
        }
    }
    Ok(())
}

/// Tables whose keys are the user's own (header names), each value a string.
const FREE_TABLES: [&str; 1] = ["proxy.static_headers"];

fn free_table(key: &str, value: &toml::Value) -> Result<(), ConfigError> {
    let Some(table) = value.as_table() else {
        return Err(ConfigError::WrongType { key: key.into(), expected: "table", found: value.type_str() });
    };
    match table.iter().find(|(_, v)| !v.is_str()) {
        Some((name, v)) => Err(ConfigError::WrongType { key: format!("{key}.{name}"), expected: "string", found: v.type_str() }),
        None => Ok(()),
    }
}

/// A namespace whose mode is `proxy` needs that hook's URL.
fn check_proxy_modes(raw: &[RawNamespace], proxy: &ProxyConfig) -> Result<(), ConfigError> {
    for (i, ns) in raw.iter().enumerate() {
        for (key, mode, url, hook) in [("subscribe", &ns.subscribe, &proxy.subscribe_url, "proxy.subscribe_url"), ("publish", &ns.publish, &proxy.publish_url, "proxy.publish_url")] {
            if mode == "proxy" && url.is_none() {
                return Err(invalid(format!("namespaces[{i}].{key}"), "\"proxy\"", format!("another mode, or set {hook}")));
            }
        }
    }
    Ok(())
}

fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let server = server::validate(&raw.server)?;
    let admin = admin::validate(&raw.admin)?;
    if let Some(a) = admin.as_ref().filter(|a| a.max_pending < server.shards) {
        return Err(invalid("admin.max_pending", a.max_pending, format!("at least the number of shards ({}): /api/info takes one per shard", server.shards)));
    }
    let proxy = proxy::validate(&raw.proxy)?;
    check_proxy_modes(&raw.namespaces, &proxy)?;
    Ok(Config {
        limits: limits::validate(&raw.limits)?,
        queue: queue::validate(&raw.queue)?,
        bus: bus::validate(&raw.bus)?,
        admin,
        redis: redis::validate(&raw.redis, server.shards)?,
        auth: auth::validate(&raw.auth)?,
        tls: tls::validate(&raw.tls)?,
        compression: compression::validate(&raw.compression)?,
        namespaces: namespaces::validate(&raw.namespaces)?,
        heartbeat: heartbeat::validate(&raw.heartbeat)?,
        shutdown: shutdown::validate(&raw.shutdown)?,
        log: log::validate(&raw.log)?,
        proxy,
        webhooks: webhooks::validate(&raw.webhooks)?,
        server,
        raw,
    })
}

impl RawConfig {
    /// The configuration as TOML, as `--print-config` shows it.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serialises")
    }
}

fn invalid(key: impl Into<String>, value: impl fmt::Display, expected: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), value: value.to_string(), expected: expected.into() }
}

/// Checks a `u64` lies in `lo..=hi` and converts it.
fn ranged<T: TryFrom<u64>>(key: &'static str, v: u64, lo: u64, hi: u64, expected: &'static str) -> Result<T, ConfigError> {
    if v < lo || v > hi {
        return Err(invalid(key, v, expected));
    }
    T::try_from(v).map_err(|_| invalid(key, v, expected))
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn optional_ms(v: u64) -> Option<Duration> {
    (v > 0).then(|| ms(v))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The error a config text gets.
    pub(crate) fn err(text: &str) -> String {
        Config::from_toml(text, &Overrides::default()).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::defaults();
        assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.server.ws_path, "/ws");
        assert_eq!(c.server.echo_path.as_deref(), Some("/echo"));
        assert_eq!(c.server.max_connections, 100_000);
        assert_eq!(c.limits.max_message_bytes, 65_536);
        assert_eq!(c.limits.publish_rate, 1000);
        assert_eq!(c.limits.publish_burst, 2000);
        assert_eq!(c.queue.max_messages, 1024);
        assert_eq!(c.queue.max_bytes, 1_048_576);
        assert_eq!(c.queue.overflow, Overflow::Disconnect);
        assert_eq!(c.heartbeat.interval, Some(Duration::from_secs(25)));
        assert_eq!(c.heartbeat.timeout, Some(Duration::from_secs(60)));
        assert_eq!(c.shutdown.drain_timeout, Duration::from_secs(5));
        assert!(c.server.shards >= 1);
    }

    #[test]
    fn print_config_round_trips() {
        let c = Config::defaults();
        let again = Config::from_toml(&c.raw.to_toml(), &Overrides::default()).unwrap();
        assert_eq!(c.raw, again.raw);
    }

    #[test]
    fn unknown_key_is_named() {
        assert_eq!(err("[server]\nshardz = 2"), "unknown config key `server.shardz`");
        assert_eq!(err("[nope]\na = 1"), "unknown config key `nope`");
    }

    #[test]
    fn wrong_type_is_named() {
        assert_eq!(
            err("[server]\nshards = \"two\""),
            "config key `server.shards` has the wrong type: expected integer, found string"
        );
        assert!(err("[server]\nallowed_origins = [1]").contains("server.allowed_origins"));
    }

    #[test]
    fn invalid_values_are_named() {
        assert!(err("[queue]\noverflow = \"maybe\"").contains("queue.overflow"));
        assert!(err("[server]\nlisten = \"nowhere\"").contains("server.listen"));
        assert!(err("[server]\nshards = 999").contains("server.shards"));
        assert!(err("[queue]\nmax_messages = 0").contains("queue.max_messages"));
        assert!(err("[server]\nws_path = \"ws\"").contains("server.ws_path"));
        assert!(err("[log]\nlevel = \"loud\"").contains("log.level"));
        assert!(err("[limits]\nmax_message_bytes = -1").contains("max_message_bytes"));
        assert!(err("[server]\nshare_port = 1").contains("server.share_port"));
        for bad in ["-2", "60001"] {
            assert!(err(&format!("[server]\nreturn_memory_delay_ms = {bad}")).contains("server.return_memory_delay_ms"), "{bad}");
        }
        let c = Config::from_toml("[server]\nreturn_memory_delay_ms = -1", &Overrides::default()).unwrap();
        assert_eq!(c.server.return_memory_delay, None);
        assert_eq!(Config::defaults().server.return_memory_delay, Some(Duration::from_millis(100)));
    }

    #[test]
    fn overrides_apply_and_validate() {
        let o = Overrides { listen: Some("127.0.0.1:0".into()), shards: Some(3), ..Default::default() };
        let c = Config::from_toml("", &o).unwrap();
        assert_eq!(c.server.shards, 3);
        assert_eq!(c.server.listen.port(), 0);
        let bad = Overrides { listen: Some("x".into()), shards: None, ..Default::default() };
        assert!(Config::from_toml("", &bad).unwrap_err().to_string().contains("server.listen"));
    }

    #[test]
    fn tuning_profiles_load() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(Some(&path), &Overrides::default())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 1);
    }
}
