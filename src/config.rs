//! Configuration: TOML text -> [`RawConfig`] (the file's shape) -> [`Config`]
//! (validated, typed).
//!
//! The defaults are `tuning/shardcast.toml` itself, embedded at build time, so
//! the documented defaults and the running ones cannot drift apart. A user file
//! is merged key by key onto them: a key the defaults do not have is an
//! unknown key, a value of another TOML type than the default's is a wrong
//! type, and both are reported with the full key name before anything runs.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::namespace::{Access, HistoryPolicy, Namespace, Namespaces, TopicOptions};

/// The most messages a topic's history may keep (`history_size`).
const MAX_HISTORY_SIZE: u64 = 1_000_000;
/// The longest a topic's history may outlive its last publish: 30 days.
const MAX_HISTORY_TTL_MS: u64 = 30 * 86_400_000;
use crate::auth::token::{TokenPolicy, Verifier};
use crate::auth::Glob;
use crate::bridge::endpoint::Endpoint;
use crate::tls::{Certificates, MinVersion, TlsError};

/// The default configuration, as shipped in `tuning/shardcast.toml`.
pub const DEFAULTS_TOML: &str = include_str!("../tuning/shardcast.toml");

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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: String,
    pub shards: u64,
    pub pin_cores: bool,
    pub node_id: String,
    pub ws_path: String,
    pub echo_path: String,
    pub metrics_path: String,
    pub allowed_origins: Vec<String>,
    pub max_connections: u64,
    pub handshake_timeout_ms: u64,
    pub max_handshake_bytes: u64,
    pub backlog: u64,
    pub share_port: bool,
    pub return_memory_delay_ms: i64,
    pub send_buffer_bytes: u64,
    pub read_buffer_bytes: u64,
    pub write_buffer_bytes: u64,
}

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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub hmac_secret: String,
    pub public_key_file: String,
    pub audience: String,
    pub issuer: String,
    pub leeway_ms: u64,
    pub allow_anonymous: bool,
    pub require_exp: bool,
    pub auth_timeout_ms: u64,
    pub max_token_bytes: u64,
    pub direct_messages: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert_file: String,
    pub key_file: String,
    pub min_version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompression {
    pub enabled: bool,
    pub min_bytes: u64,
    pub level: u64,
    pub compress_once: bool,
}

/// One `[[namespaces]]` table. `pattern`, `subscribe` and `publish` are
/// required; the topic options default to off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNamespace {
    pub pattern: String,
    pub subscribe: String,
    pub publish: String,
    #[serde(default)]
    pub presence: bool,
    #[serde(default)]
    pub join_leave: bool,
    #[serde(default)]
    pub history_size: u64,
    #[serde(default)]
    pub history_ttl_ms: u64,
    #[serde(default)]
    pub recover: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    pub max_messages: u64,
    pub max_bytes: u64,
    pub overflow: String,
    pub close_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBus {
    pub capacity: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: String,
    pub api_key: String,
    pub max_body_bytes: u64,
    pub node_info_interval_ms: u64,
    pub shard_timeout_ms: u64,
    pub max_pending: u64,
    pub max_connections: u64,
    pub max_nodes: u64,
    pub header_timeout_ms: u64,
    pub cpu: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub mode: String,
    pub url: String,
    pub urls: Vec<String>,
    pub sentinels: Vec<String>,
    pub master_name: String,
    pub username: String,
    pub password: String,
    pub tls_ca_file: String,
    pub topology_refresh_ms: u64,
    pub channel_prefix: String,
    pub bridge_shard: u64,
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    pub buffer_messages: u64,
    pub batch_messages: u64,
    pub pipeline_depth: u64,
    pub presence_ttl_ms: u64,
    pub heartbeat_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeartbeat {
    pub interval_ms: u64,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    pub drain_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: String,
    pub format: String,
}

/// What a full client queue does ([`QueueConfig::overflow`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Drop everything queued, send close 1013 "slow consumer", close.
    Disconnect,
    /// Drop the oldest queued frames until the new one fits.
    DropOldest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
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
    /// The effective configuration in file form, for `--print-config`.
    pub raw: RawConfig,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Resolved shard count (never 0).
    pub shards: usize,
    pub pin_cores: bool,
    /// Resolved node id (never empty).
    pub node_id: String,
    pub ws_path: String,
    /// `None` when disabled.
    pub echo_path: Option<String>,
    /// `None` when disabled.
    pub metrics_path: Option<String>,
    /// Empty = any origin.
    pub allowed_origins: Vec<String>,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub max_handshake_bytes: usize,
    pub backlog: i32,
    /// Start even when another process listens on the port (both get
    /// connections, through SO_REUSEPORT). Off: refuse to start.
    pub share_port: bool,
    /// How long freed memory stays with the process before it is returned
    /// to the OS (mimalloc's purge delay); `None`: never.
    pub return_memory_delay: Option<Duration>,
    /// SO_SNDBUF of every client socket (set on the listeners, inherited on
    /// accept); 0 leaves the kernel's autotuning.
    pub send_buffer_bytes: usize,
    pub read_buffer_bytes: usize,
    pub write_buffer_bytes: usize,
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
}

/// `[tls]`, with the certificate and key loaded (and checked to match).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub certificates: Arc<Certificates>,
    pub min_version: MinVersion,
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

/// `[auth]`, with the key loaded.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `None` when neither `hmac_secret` nor `public_key_file` is set: auth
    /// is off and every connection is anonymous.
    pub verifier: Option<Arc<Verifier>>,
    /// With auth on, a connection with no token is anonymous (true) or must
    /// send an `auth` request within `auth_timeout` (false).
    pub allow_anonymous: bool,
    pub auth_timeout: Duration,
    /// Who may send direct messages: `Anyone`, `Users` or `Nobody`.
    pub direct_messages: Access,
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub max_messages: usize,
    pub max_bytes: usize,
    pub overflow: Overflow,
    pub close_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct BusConfig {
    pub capacity: usize,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// The address came from the user (config file or `--admin-listen`), not
    /// the defaults: failing to bind it stops the start.
    pub listen_explicit: bool,
    /// `None`: no key (the listener is then on loopback).
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    pub node_info_interval: Duration,
    pub shard_timeout: Duration,
    pub max_pending: usize,
    pub max_connections: usize,
    pub max_nodes: usize,
    /// Time a connection gets to send a request's headers (and, idle
    /// between requests, its next one) before it is closed.
    pub header_timeout: Duration,
    /// The CPU the admin thread is pinned to; `None`: not pinned.
    pub cpu: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Which Redis servers the bridge talks to, and how it finds them.
    pub topology: RedisTopology,
    /// For `rediss://` endpoints: trusts `[redis] tls_ca_file`, or the
    /// public web roots when it is empty.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Cluster: how often the slot map is read again when nothing forces it.
    pub topology_refresh: Duration,
    pub channel_prefix: String,
    pub bridge_shard: usize,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub buffer_messages: usize,
    pub batch_messages: usize,
    pub pipeline_depth: usize,
    /// How long a node's presence entries live in Redis without a refresh.
    pub presence_ttl: Duration,
    /// How long a connection may owe Redis a reply before it is declared
    /// dead and made again (idle connections are PINGed every third of it).
    /// `None`: never (0).
    pub heartbeat: Option<Duration>,
}

/// `[redis] mode` and the addresses that go with it.
#[derive(Debug, Clone)]
pub enum RedisTopology {
    /// One Redis server (`url`).
    Single(Endpoint),
    /// A Redis Cluster reached through seed nodes (`urls`); nodes found in
    /// the slot map are reached with the first seed's credentials and TLS.
    Cluster { seeds: Vec<Endpoint> },
    /// The primary Sentinel names `master_name`, reached with `username`,
    /// `password`, and TLS when the Sentinels' own URLs are `rediss://`.
    Sentinel { sentinels: Vec<Endpoint>, master_name: String, primary: Endpoint },
}

#[derive(Debug, Clone)]
pub struct HeartbeatConfig {
    /// `None` = never ping.
    pub interval: Option<Duration>,
    /// `None` = never time out.
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct ShutdownConfig {
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
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
        match (slot, value) {
            (toml::Value::Table(b), toml::Value::Table(u)) => merge(b, u, &full)?,
            (slot, value) if slot.same_type(&value) => {
                if let toml::Value::Array(items) = &value {
                    if full == "namespaces" {
                        check_namespace_tables(items)?;
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

/// `[[namespaces]]`: tables with exactly the known keys, each of its type.
fn check_namespace_tables(items: &[toml::Value]) -> Result<(), ConfigError> {
    const REQUIRED: [&str; 3] = ["pattern", "subscribe", "publish"];
    const FLAGS: [&str; 3] = ["presence", "join_leave", "recover"];
    const COUNTS: [&str; 2] = ["history_size", "history_ttl_ms"];
    for (i, item) in items.iter().enumerate() {
        let Some(table) = item.as_table() else {
            return Err(ConfigError::WrongType { key: format!("namespaces[{i}]"), expected: "table", found: item.type_str() });
        };
        for (key, value) in table {
            let full = format!("namespaces[{i}].{key}");
            let (expected, ok) = if REQUIRED.contains(&key.as_str()) {
                ("string", value.is_str())
            } else if FLAGS.contains(&key.as_str()) {
                ("boolean", value.is_bool())
            } else if COUNTS.contains(&key.as_str()) {
                ("integer", value.is_integer())
            } else {
                return Err(ConfigError::UnknownKey { key: full });
            };
            if !ok {
                return Err(ConfigError::WrongType { key: full, expected, found: value.type_str() });
            }
            if value.as_integer().is_some_and(|n| n < 0) {
                return Err(invalid(full, value, "a non-negative integer"));
            }
        }
        if let Some(missing) = REQUIRED.iter().find(|k| !table.contains_key(**k)) {
            return Err(invalid(format!("namespaces[{i}].{missing}"), "(missing)", "every namespace sets pattern, subscribe and publish"));
        }
    }
    Ok(())
}

/// `[redis] mode` with its addresses; `None`: no Redis (single node).
fn validate_redis_topology(r: &RawRedis) -> Result<Option<RedisTopology>, ConfigError> {
    const HIDDEN: &str = "(hidden: may contain a password)";
    let endpoint = |key: &str, url: &str, default_port: u16| {
        Endpoint::parse(url, default_port).map_err(|e| invalid(key, HIDDEN, format!("redis://[[user]:password@]host[:port][/db] or rediss://… ({e})")))
    };
    let unused = |key: &'static str, set: bool, mode: &str| if set { Err(invalid(key, "(set)", format!("unset in mode = {mode:?}"))) } else { Ok(()) };
    if r.mode != "sentinel" {
        unused("redis.master_name", !r.master_name.is_empty(), &r.mode)?;
        unused("redis.username", !r.username.is_empty(), &r.mode)?;
        unused("redis.password", !r.password.is_empty(), &r.mode)?;
    }
    match r.mode.as_str() {
        "single" => {
            unused("redis.urls", !r.urls.is_empty(), "single")?;
            unused("redis.sentinels", !r.sentinels.is_empty(), "single")?;
            if r.url.is_empty() {
                return Ok(None);
            }
            Ok(Some(RedisTopology::Single(endpoint("redis.url", &r.url, 6379)?)))
        }
        "cluster" => {
            unused("redis.url", !r.url.is_empty(), "cluster (seed nodes go in urls)")?;
            unused("redis.sentinels", !r.sentinels.is_empty(), "cluster")?;
            if r.urls.is_empty() || r.urls.len() > 64 {
                return Err(invalid("redis.urls", r.urls.len(), "1..=64 seed node URLs in mode = \"cluster\""));
            }
            let seeds = r.urls.iter().map(|u| endpoint("redis.urls", u, 6379)).collect::<Result<Vec<_>, _>>()?;
            if seeds.iter().any(|s| s.db != 0) {
                return Err(invalid("redis.urls", HIDDEN, "no database number: a Redis Cluster has only database 0"));
            }
            Ok(Some(RedisTopology::Cluster { seeds }))
        }
        "sentinel" => {
            unused("redis.url", !r.url.is_empty(), "sentinel (the primary is found by master_name)")?;
            unused("redis.urls", !r.urls.is_empty(), "sentinel")?;
            if r.sentinels.is_empty() || r.sentinels.len() > 64 {
                return Err(invalid("redis.sentinels", r.sentinels.len(), "1..=64 Sentinel URLs in mode = \"sentinel\""));
            }
            let sentinels = r.sentinels.iter().map(|u| endpoint("redis.sentinels", u, 26379)).collect::<Result<Vec<_>, _>>()?;
            if r.master_name.is_empty() || r.master_name.len() > 256 || r.master_name.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(invalid("redis.master_name", format!("{:?}", r.master_name), "the name the Sentinels monitor (1..=256 bytes, no spaces)"));
            }
            let primary = Endpoint {
                host: String::new(),
                port: 0,
                tls: sentinels[0].tls,
                username: Some(r.username.clone()).filter(|u| !u.is_empty()),
                password: Some(r.password.clone()).filter(|p| !p.is_empty()),
                db: 0,
            };
            Ok(Some(RedisTopology::Sentinel { sentinels, master_name: r.master_name.clone(), primary }))
        }
        other => Err(invalid("redis.mode", format!("{other:?}"), "\"single\", \"cluster\" or \"sentinel\"")),
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

fn check_path(key: &'static str, path: &str, may_be_empty: bool) -> Result<Option<String>, ConfigError> {
    if path.is_empty() && may_be_empty {
        return Ok(None);
    }
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'?' || b == b'#') {
        return Err(invalid(key, format!("{path:?}"), "an absolute URL path such as \"/ws\", without spaces, query or fragment"));
    }
    Ok(Some(path.to_string()))
}

fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let s = &raw.server;
    let listen: SocketAddr = s
        .listen
        .parse()
        .map_err(|_| invalid("server.listen", format!("{:?}", s.listen), "an IP:PORT socket address such as \"127.0.0.1:8080\""))?;
    let shards = match s.shards {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(MAX_SHARDS),
        n => ranged("server.shards", n, 1, MAX_SHARDS as u64, "0 (one per online core) or 1..=256")?,
    };
    let node_id = if s.node_id.is_empty() {
        format!("{}-{}", hostname(), std::process::id())
    } else if s.node_id.len() > 128 || s.node_id.chars().any(char::is_control) {
        return Err(invalid("server.node_id", format!("{:?}", s.node_id), "at most 128 bytes without control characters"));
    } else {
        s.node_id.clone()
    };
    let ws_path = check_path("server.ws_path", &s.ws_path, false)?.expect("non-empty");
    let echo_path = check_path("server.echo_path", &s.echo_path, true)?;
    let metrics_path = check_path("server.metrics_path", &s.metrics_path, true)?;
    if echo_path.as_deref() == Some(&ws_path) || metrics_path.as_deref() == Some(&ws_path) || (echo_path.is_some() && echo_path == metrics_path) {
        return Err(invalid("server.ws_path", format!("{ws_path:?}"), "ws_path, echo_path and metrics_path must differ"));
    }
    let server = ServerConfig {
        listen,
        shards,
        pin_cores: s.pin_cores,
        node_id,
        ws_path,
        echo_path,
        metrics_path,
        allowed_origins: s.allowed_origins.clone(),
        max_connections: ranged("server.max_connections", s.max_connections, 1, 100_000_000, "1..=100000000")?,
        handshake_timeout: ms(ranged::<u64>("server.handshake_timeout_ms", s.handshake_timeout_ms, 1, 3_600_000, "1..=3600000 ms")?),
        max_handshake_bytes: ranged("server.max_handshake_bytes", s.max_handshake_bytes, 256, 1 << 20, "256..=1048576 bytes")?,
        backlog: ranged("server.backlog", s.backlog, 1, 65_535, "1..=65535")?,
        share_port: s.share_port,
        return_memory_delay: match s.return_memory_delay_ms {
            -1 => None,
            delay => {
                let expected = "-1 (never) or 0..=60000 ms";
                let delay = u64::try_from(delay).map_err(|_| invalid("server.return_memory_delay_ms", delay, expected))?;
                Some(ms(ranged::<u64>("server.return_memory_delay_ms", delay, 0, 60_000, expected)?))
            }
        },
        send_buffer_bytes: match s.send_buffer_bytes {
            0 => 0,
            n => ranged("server.send_buffer_bytes", n, 4096, 64 << 20, "0 (the kernel's autotuning) or 4096..=67108864 bytes")?,
        },
        read_buffer_bytes: ranged("server.read_buffer_bytes", s.read_buffer_bytes, 4096, 16 << 20, "4096..=16777216 bytes")?,
        write_buffer_bytes: ranged("server.write_buffer_bytes", s.write_buffer_bytes, 4096, 16 << 20, "4096..=16777216 bytes")?,
    };
    let l = &raw.limits;
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
    };
    let q = &raw.queue;
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
    let bus = BusConfig { capacity: ranged("bus.capacity", raw.bus.capacity, 1, 10_000_000, "1..=10000000 messages")? };
    let admin = validate_admin(&raw.admin)?;
    if let Some(a) = admin.as_ref().filter(|a| a.max_pending < server.shards) {
        return Err(invalid("admin.max_pending", a.max_pending, format!("at least the number of shards ({}): /api/info takes one per shard", server.shards)));
    }
    let r = &raw.redis;
    let redis = match validate_redis_topology(r)? {
        None => None,
        Some(topology) => {
        let bridge_shard = ranged("redis.bridge_shard", r.bridge_shard, 0, MAX_SHARDS as u64 - 1, "0..=255")?;
        if bridge_shard >= server.shards {
            return Err(invalid("redis.bridge_shard", bridge_shard, "less than the number of shards"));
        }
        let reconnect_min = ms(ranged::<u64>("redis.reconnect_min_ms", r.reconnect_min_ms, 1, 3_600_000, "1..=3600000 ms")?);
        let reconnect_max = ms(ranged::<u64>("redis.reconnect_max_ms", r.reconnect_max_ms, 1, 3_600_000, "1..=3600000 ms")?);
        if reconnect_max < reconnect_min {
            return Err(invalid("redis.reconnect_max_ms", r.reconnect_max_ms, "at least redis.reconnect_min_ms"));
        }
        if r.channel_prefix.chars().any(char::is_control) || r.channel_prefix.len() > 256 {
            return Err(invalid("redis.channel_prefix", format!("{:?}", r.channel_prefix), "at most 256 bytes without control characters"));
        }
        let uses_tls = match &topology {
            RedisTopology::Single(e) => e.tls,
            RedisTopology::Cluster { seeds } => seeds.iter().any(|e| e.tls),
            RedisTopology::Sentinel { sentinels, .. } => sentinels.iter().any(|e| e.tls),
        };
        let tls = match (uses_tls, r.tls_ca_file.as_str()) {
            (false, "") => None,
            (false, _) => return Err(invalid("redis.tls_ca_file", &r.tls_ca_file, "set only with rediss:// URLs")),
            (true, "") => Some(crate::bridge::endpoint::tls_client_config(None).map_err(|e| invalid("redis.tls_ca_file", "\"\"", e))?),
            (true, file) => Some(
                crate::bridge::endpoint::tls_client_config(Some(Path::new(file)))
                    .map_err(|e| invalid("redis.tls_ca_file", file, format!("a readable PEM file of CA certificates ({e})")))?,
            ),
        };
        Some(RedisConfig {
            topology,
            tls,
            topology_refresh: ms(ranged::<u64>("redis.topology_refresh_ms", r.topology_refresh_ms, 100, 3_600_000, "100..=3600000 ms")?),
            channel_prefix: r.channel_prefix.clone(),
            bridge_shard,
            reconnect_min,
            reconnect_max,
            buffer_messages: ranged("redis.buffer_messages", r.buffer_messages, 1, 100_000_000, "1..=100000000")?,
            batch_messages: ranged("redis.batch_messages", r.batch_messages, 1, 100_000, "1..=100000")?,
            pipeline_depth: ranged("redis.pipeline_depth", r.pipeline_depth, 1, 1024, "1..=1024")?,
            presence_ttl: ms(ranged::<u64>("redis.presence_ttl_ms", r.presence_ttl_ms, 300, 86_400_000, "300..=86400000 ms")?),
            heartbeat: match r.heartbeat_ms {
                0 => None,
                n => Some(ms(ranged::<u64>("redis.heartbeat_ms", n, 300, 3_600_000, "0 (off) or 300..=3600000 ms")?)),
            },
        })
        }
    };
    let auth = validate_auth(&raw.auth)?;
    let tls = validate_tls(&raw.tls)?;
    let c = &raw.compression;
    let compression = CompressionConfig {
        enabled: c.enabled,
        min_bytes: ranged("compression.min_bytes", c.min_bytes, 0, 64 << 20, "0..=67108864 bytes")?,
        level: ranged("compression.level", c.level, 1, 9, "1..=9")?,
        compress_once: c.compress_once,
    };
    let namespaces = validate_namespaces(&raw.namespaces)?;
    let h = &raw.heartbeat;
    let heartbeat = HeartbeatConfig {
        interval: optional_ms(ranged::<u64>("heartbeat.interval_ms", h.interval_ms, 0, 86_400_000, "0 (off)..=86400000 ms")?),
        timeout: optional_ms(ranged::<u64>("heartbeat.timeout_ms", h.timeout_ms, 0, 86_400_000, "0 (off)..=86400000 ms")?),
    };
    let shutdown = ShutdownConfig {
        drain_timeout: ms(ranged::<u64>("shutdown.drain_timeout_ms", raw.shutdown.drain_timeout_ms, 0, 3_600_000, "0..=3600000 ms")?),
    };
    let level = raw.log.level.to_ascii_lowercase();
    if !["trace", "debug", "info", "warn", "error"].contains(&level.as_str()) {
        return Err(invalid("log.level", format!("{:?}", raw.log.level), "one of trace, debug, info, warn, error"));
    }
    let format = match raw.log.format.as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => return Err(invalid("log.format", format!("{other:?}"), "\"text\" or \"json\"")),
    };
    Ok(Config { server, limits, queue, bus, admin, redis, auth, tls, compression, namespaces, heartbeat, shutdown, log: LogConfig { level, format }, raw })
}

fn validate_admin(a: &RawAdmin) -> Result<Option<AdminConfig>, ConfigError> {
    if a.listen.is_empty() {
        return Ok(None);
    }
    let listen: SocketAddr = a
        .listen
        .parse()
        .map_err(|_| invalid("admin.listen", format!("{:?}", a.listen), "\"\" (off) or an IP:PORT socket address such as \"127.0.0.1:9090\""))?;
    if a.api_key.is_empty() && !listen.ip().is_loopback() {
        return Err(invalid(
            "admin.api_key",
            "\"\"",
            format!("a key is required when admin.listen ({listen}) is not a loopback address"),
        ));
    }
    if a.api_key.len() > 1024 || a.api_key.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(invalid("admin.api_key", "(hidden)", "at most 1024 printable ASCII characters without spaces"));
    }
    Ok(Some(AdminConfig {
        listen,
        listen_explicit: false,
        api_key: (!a.api_key.is_empty()).then(|| a.api_key.clone()),
        max_body_bytes: ranged("admin.max_body_bytes", a.max_body_bytes, 1024, 64 << 20, "1024..=67108864 bytes")?,
        node_info_interval: ms(ranged::<u64>("admin.node_info_interval_ms", a.node_info_interval_ms, 100, 3_600_000, "100..=3600000 ms")?),
        shard_timeout: ms(ranged::<u64>("admin.shard_timeout_ms", a.shard_timeout_ms, 10, 600_000, "10..=600000 ms")?),
        max_pending: ranged("admin.max_pending", a.max_pending, 1, 1_000_000, "1..=1000000")?,
        max_connections: ranged("admin.max_connections", a.max_connections, 1, 100_000, "1..=100000")?,
        max_nodes: ranged("admin.max_nodes", a.max_nodes, 1, 100_000, "1..=100000")?,
        header_timeout: ms(ranged::<u64>("admin.header_timeout_ms", a.header_timeout_ms, 100, 3_600_000, "100..=3600000 ms")?),
        cpu: match a.cpu {
            -1 => None,
            cpu => {
                let expected = "-1 (not pinned) or a CPU number below 1024";
                Some(ranged("admin.cpu", u64::try_from(cpu).map_err(|_| invalid("admin.cpu", cpu, expected))?, 0, libc::CPU_SETSIZE as u64 - 1, expected)?)
            }
        },
    }))
}

fn validate_auth(a: &RawAuth) -> Result<AuthConfig, ConfigError> {
    let public_key_pem = if a.public_key_file.is_empty() {
        None
    } else {
        let text = std::fs::read(&a.public_key_file)
            .map_err(|e| invalid("auth.public_key_file", format!("{:?}", a.public_key_file), format!("a readable PEM public key file ({e})")))?;
        Some(text)
    };
    let policy = TokenPolicy {
        hmac_secret: &a.hmac_secret,
        public_key_pem: public_key_pem.as_deref(),
        audience: &a.audience,
        issuer: &a.issuer,
        leeway_ms: ranged("auth.leeway_ms", a.leeway_ms, 0, 86_400_000, "0..=86400000 ms")?,
        require_exp: a.require_exp,
        max_token_bytes: ranged("auth.max_token_bytes", a.max_token_bytes, 16, 1 << 20, "16..=1048576 bytes")?,
    };
    let verifier = Verifier::new(&policy).map_err(|e| {
        invalid("auth.public_key_file", format!("{:?}", a.public_key_file), format!("an RSA, EC P-256/P-384 or Ed25519 public key in PEM; found {e}"))
    })?;
    let direct_messages = match Access::parse(&a.direct_messages) {
        Some(mode @ (Access::Anyone | Access::Users | Access::Nobody)) => mode,
        _ => return Err(invalid("auth.direct_messages", format!("{:?}", a.direct_messages), "\"users\", \"anyone\" or \"nobody\"")),
    };
    Ok(AuthConfig {
        verifier: verifier.map(Arc::new),
        allow_anonymous: a.allow_anonymous,
        auth_timeout: ms(ranged::<u64>("auth.auth_timeout_ms", a.auth_timeout_ms, 1, 3_600_000, "1..=3600000 ms")?),
        direct_messages,
    })
}

fn validate_tls(t: &RawTls) -> Result<Option<TlsConfig>, ConfigError> {
    let min_version = match t.min_version.as_str() {
        "1.2" => MinVersion::Tls12,
        "1.3" => MinVersion::Tls13,
        other => return Err(invalid("tls.min_version", format!("{other:?}"), "\"1.2\" or \"1.3\"")),
    };
    match (t.cert_file.is_empty(), t.key_file.is_empty()) {
        (true, true) => return Ok(None),
        (false, true) => return Err(invalid("tls.key_file", "\"\"", "a PEM private key file: tls.cert_file is set")),
        (true, false) => return Err(invalid("tls.cert_file", "\"\"", "a PEM certificate (chain) file: tls.key_file is set")),
        (false, false) => {}
    }
    let certificates = Certificates::load(Path::new(&t.cert_file), Path::new(&t.key_file)).map_err(|e| {
        let key = match e {
            TlsError::Certificate { .. } => "tls.cert_file",
            TlsError::Key { .. } | TlsError::Mismatch { .. } => "tls.key_file",
        };
        let value = if key == "tls.cert_file" { &t.cert_file } else { &t.key_file };
        invalid(key, format!("{value:?}"), e.to_string())
    })?;
    Ok(Some(TlsConfig { certificates: Arc::new(certificates), min_version }))
}

fn validate_namespaces(raw: &[RawNamespace]) -> Result<Namespaces, ConfigError> {
    const MODES: &str = "\"anyone\", \"users\", \"claim\" or \"nobody\"";
    let mut rules = Vec::with_capacity(raw.len());
    for (i, ns) in raw.iter().enumerate() {
        if ns.pattern.is_empty() || ns.pattern.chars().any(char::is_control) {
            return Err(invalid(format!("namespaces[{i}].pattern"), format!("{:?}", ns.pattern), "a non-empty topic glob such as \"chat:*\""));
        }
        let mode = |key: &str, value: &str| {
            Access::parse(value).ok_or_else(|| invalid(format!("namespaces[{i}].{key}"), format!("{value:?}"), MODES))
        };
        let key = |name: &str| format!("namespaces[{i}].{name}");
        let history = match (ns.history_size, ns.history_ttl_ms) {
            (0, _) => None,
            (_, 0) => return Err(invalid(key("history_ttl_ms"), 0, "1..=2592000000 ms: required when history_size > 0")),
            (size, ttl) => {
                if size > MAX_HISTORY_SIZE {
                    return Err(invalid(key("history_size"), size, format!("0 (no history)..={MAX_HISTORY_SIZE} messages")));
                }
                if ttl > MAX_HISTORY_TTL_MS {
                    return Err(invalid(key("history_ttl_ms"), ttl, format!("1..={MAX_HISTORY_TTL_MS} ms")));
                }
                Some(HistoryPolicy { size: size as usize, ttl: ms(ttl) })
            }
        };
        if ns.recover && history.is_none() {
            return Err(invalid(key("recover"), true, "false: recovery needs history (history_size > 0)"));
        }
        rules.push(Namespace {
            pattern: Glob::new(&ns.pattern),
            subscribe: mode("subscribe", &ns.subscribe)?,
            publish: mode("publish", &ns.publish)?,
            options: TopicOptions { presence: ns.presence, join_leave: ns.join_leave, history, recover: ns.recover },
        });
    }
    Ok(Namespaces::new(rules))
}

impl RawConfig {
    /// The configuration as TOML, as `--print-config` shows it.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serialises")
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it or truncates.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "shardcast".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
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
        assert_eq!(Config::defaults().server.return_memory_delay, Some(Duration::ZERO));
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
    fn admin_section_validates() {
        let c = Config::defaults().admin.unwrap();
        assert_eq!(c.listen, "127.0.0.1:9090".parse().unwrap());
        assert!(!c.listen_explicit && c.api_key.is_none());
        assert!(Config::from_toml("[admin]\nlisten = \"\"", &Overrides::default()).unwrap().admin.is_none());
        let explicit = Config::from_toml("[admin]\nlisten = \"127.0.0.1:0\"", &Overrides::default()).unwrap();
        assert!(explicit.admin.unwrap().listen_explicit);
        let o = Overrides { admin_listen: Some("[::1]:0".into()), ..Default::default() };
        assert!(Config::from_toml("", &o).unwrap().admin.unwrap().listen_explicit);
        let open = err("[admin]\nlisten = \"0.0.0.0:9090\"");
        assert!(open.contains("admin.api_key") && open.contains("loopback"), "{open}");
        assert!(Config::from_toml("[admin]\nlisten = \"0.0.0.0:9090\"\napi_key = \"k\"", &Overrides::default()).is_ok());
        assert!(err("[admin]\nlisten = \"nope\"").contains("admin.listen"));
        assert!(err("[admin]\napi_key = \"has space\"").contains("admin.api_key"));
        assert!(err("[admin]\nmax_body_bytes = 1").contains("admin.max_body_bytes"));
        assert!(err("[server]\nshards = 4\n[admin]\nmax_pending = 3").contains("admin.max_pending"));
        assert_eq!((c.header_timeout, c.cpu), (Duration::from_secs(10), None));
        assert!(err("[admin]\nheader_timeout_ms = 0").contains("admin.header_timeout_ms"));
        for bad in ["-2", "1024"] {
            assert!(err(&format!("[admin]\ncpu = {bad}")).contains("admin.cpu"), "{bad}");
        }
        assert_eq!(Config::from_toml("[admin]\ncpu = 1", &Overrides::default()).unwrap().admin.unwrap().cpu, Some(1));
    }

    #[test]
    fn redis_section_validates() {
        assert!(Config::defaults().redis.is_none());
        let c = Config::from_toml("[server]\nshards = 2\n[redis]\nurl = \"redis://:pw@127.0.0.1:6379/3\"\nbridge_shard = 1", &Overrides::default()).unwrap();
        assert_eq!(c.redis.unwrap().bridge_shard, 1);
        assert!(err("[server]\nshards = 2\n[redis]\nurl = \"redis://x:1\"\nbridge_shard = 2").contains("redis.bridge_shard"));
        assert!(err("[redis]\nurl = \"http://x\"").contains("redis.url"));
        assert!(err("[redis]\nurl = \"redis://x:1\"\nreconnect_min_ms = 10\nreconnect_max_ms = 5").contains("redis.reconnect_max_ms"));
    }

    #[test]
    fn redis_modes_validate_their_own_keys() {
        let ok = |text: &str| Config::from_toml(text, &Overrides::default()).unwrap().redis.unwrap();
        let c = ok("[redis]\nmode = \"cluster\"\nurls = [\"redis://a:7000\", \"redis://u:p@b\"]");
        assert!(matches!(&c.topology, RedisTopology::Cluster { seeds } if seeds.len() == 2 && seeds[1].port == 6379));
        assert!(c.tls.is_none());
        let c = ok("[redis]\nmode = \"sentinel\"\nsentinels = [\"rediss://s1\"]\nmaster_name = \"m\"\npassword = \"pw\"");
        match &c.topology {
            RedisTopology::Sentinel { sentinels, master_name, primary } => {
                assert_eq!((sentinels[0].port, master_name.as_str(), primary.password.as_deref(), primary.tls), (26379, "m", Some("pw"), true));
            }
            other => panic!("{other:?}"),
        }
        assert!(c.tls.is_some(), "rediss:// without a CA file trusts the public roots");
        for (text, key) in [
            ("[redis]\nmode = \"ring\"", "redis.mode"),
            ("[redis]\nmode = \"cluster\"", "redis.urls"),
            ("[redis]\nmode = \"cluster\"\nurls = [\"redis://a/2\"]", "redis.urls"),
            ("[redis]\nmode = \"cluster\"\nurls = [\"redis://a\"]\nurl = \"redis://b\"", "redis.url"),
            ("[redis]\nmode = \"sentinel\"\nsentinels = [\"redis://s\"]", "redis.master_name"),
            ("[redis]\nmode = \"sentinel\"\nmaster_name = \"m\"", "redis.sentinels"),
            ("[redis]\nurl = \"redis://a\"\nsentinels = [\"redis://s\"]", "redis.sentinels"),
            ("[redis]\nurl = \"redis://a\"\npassword = \"x\"", "redis.password"),
            ("[redis]\nurl = \"redis://a\"\ntls_ca_file = \"/ca.pem\"", "redis.tls_ca_file"),
            ("[redis]\nurl = \"rediss://a\"\ntls_ca_file = \"/nonexistent.pem\"", "redis.tls_ca_file"),
            ("[redis]\nurl = \"redis://a\"\ntopology_refresh_ms = 1", "redis.topology_refresh_ms"),
        ] {
            assert!(err(text).contains(key), "{text}: {}", err(text));
        }
        assert!(!err("[redis]\nurl = \"redis://:secret@a/x\"").contains("secret"), "a URL is never quoted back");
    }

    #[test]
    fn namespaces_load_in_order_and_round_trip() {
        let text = "[[namespaces]]\npattern = \"chat:*\"\nsubscribe = \"users\"\npublish = \"claim\"\n[[namespaces]]\npattern = \"*\"\nsubscribe = \"anyone\"\npublish = \"nobody\"\n";
        let c = Config::from_toml(text, &Overrides::default()).unwrap();
        assert_eq!(c.namespaces.access("chat:1", crate::auth::Action::Publish), Access::Claim);
        assert_eq!(c.namespaces.access("news", crate::auth::Action::Publish), Access::Nobody);
        let again = Config::from_toml(&c.raw.to_toml(), &Overrides::default()).unwrap();
        assert_eq!(c.raw, again.raw);
        assert!(Config::defaults().namespaces.is_empty());
    }

    #[test]
    fn bad_namespaces_are_named() {
        let ns = |body: &str| err(&format!("[[namespaces]]\n{body}"));
        assert!(ns("pattern = \"\"\nsubscribe = \"users\"\npublish = \"users\"").contains("namespaces[0].pattern"));
        assert!(ns("pattern = \"a\"\nsubscribe = \"everyone\"\npublish = \"users\"").contains("namespaces[0].subscribe"));
        assert!(ns("pattern = \"a\"\nsubscribe = \"users\"").contains("namespaces[0].publish"));
        assert!(ns("pattern = \"a\"\nsubscribe = \"users\"\npublish = \"users\"\nhistory = 1").contains("namespaces[0].history"));
        assert!(ns("pattern = 1\nsubscribe = \"users\"\npublish = \"users\"").contains("namespaces[0].pattern"));
    }

    #[test]
    fn topic_options_load_and_bad_ones_are_named() {
        let base = "[[namespaces]]\npattern = \"chat:*\"\nsubscribe = \"anyone\"\npublish = \"anyone\"\n";
        let c = Config::from_toml(
            &format!("{base}presence = true\njoin_leave = true\nhistory_size = 100\nhistory_ttl_ms = 60000\nrecover = true\n"),
            &Overrides::default(),
        )
        .unwrap();
        let o = c.namespaces.options("chat:1");
        assert!(o.presence && o.join_leave && o.recover);
        assert_eq!(o.history.map(|h| (h.size, h.ttl.as_millis())), Some((100, 60_000)));
        assert!(c.namespaces.any_history());
        assert_eq!(c.namespaces.options("news"), crate::auth::TopicOptions::default());
        let plain = Config::from_toml(base, &Overrides::default()).unwrap();
        assert!(!plain.namespaces.any_history(), "a namespace without the keys is plain");
        let bad = |body: &str| err(&format!("{base}{body}"));
        assert!(bad("history_size = 10").contains("namespaces[0].history_ttl_ms"), "ttl is required with history");
        assert!(bad("recover = true").contains("namespaces[0].recover"), "recover needs history");
        assert!(bad("presence = \"yes\"").contains("namespaces[0].presence"));
        assert!(bad("history_size = -1\nhistory_ttl_ms = 1").contains("namespaces[0].history_size"));
        assert!(bad("history_size = 2000000\nhistory_ttl_ms = 1").contains("namespaces[0].history_size"));
        assert!(bad("history_size = 1\nhistory_ttl_ms = 99999999999").contains("namespaces[0].history_ttl_ms"));
        assert!(bad("join_leave = 1").contains("namespaces[0].join_leave"));
        assert!(err("[limits]\nmax_presence_clients = 0").contains("limits.max_presence_clients"));
        assert!(err("[limits]\nhistory_memory_bytes = 1000").contains("limits.history_memory_bytes"));
        assert!(err("[redis]\nurl = \"redis://127.0.0.1:6379\"\npresence_ttl_ms = 10").contains("redis.presence_ttl_ms"));
        assert!(err("[redis]\nurl = \"redis://127.0.0.1:6379\"\nheartbeat_ms = 50").contains("redis.heartbeat_ms"));
    }

    #[test]
    fn auth_section_validates() {
        let c = Config::defaults();
        assert!(c.auth.verifier.is_none(), "auth is off by default");
        assert_eq!(c.auth.direct_messages, Access::Users);
        let on = Config::from_toml("[auth]\nhmac_secret = \"s\"", &Overrides::default()).unwrap();
        assert!(on.auth.verifier.is_some());
        assert!(err("[auth]\npublic_key_file = \"/nonexistent/key.pem\"").contains("auth.public_key_file"));
        let garbage = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(garbage.path(), "not a key").unwrap();
        assert!(err(&format!("[auth]\npublic_key_file = {:?}", garbage.path())).contains("auth.public_key_file"));
        assert!(err("[auth]\ndirect_messages = \"claim\"").contains("auth.direct_messages"));
        assert!(err("[auth]\nauth_timeout_ms = 0").contains("auth.auth_timeout_ms"));
        assert!(err("[limits]\nmax_connections_per_ip = -1").contains("max_connections_per_ip"));
    }

    #[test]
    fn empty_echo_path_disables_it() {
        let c = Config::from_toml("[server]\necho_path = \"\"", &Overrides::default()).unwrap();
        assert_eq!(c.server.echo_path, None);
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
