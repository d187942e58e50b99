//! `[redis]`: how the bridge reaches Redis (one server, a Cluster, or a
//! Sentinel-watched primary), its credentials, TLS and bounds.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, ms, ranged, ConfigError};

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

pub(super) fn validate(r: &RawRedis, shards: usize) -> Result<Option<RedisConfig>, ConfigError> {
    let redis = match validate_topology(r)? {
        None => None,
        Some(topology) => {
        let bridge_shard = ranged("redis.bridge_shard", r.bridge_shard, 0, super::MAX_SHARDS as u64 - 1, "0..=255")?;
        if bridge_shard >= shards {
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
            (true, "") => Some(crate::tls::client_config(None).map_err(|e| invalid("redis.tls_ca_file", "\"\"", e))?),
            (true, file) => Some(
                crate::tls::client_config(Some(Path::new(file)))
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
    Ok(redis)
}

/// `[redis] mode` with its addresses; `None`: no Redis (single node).
fn validate_topology(r: &RawRedis) -> Result<Option<RedisTopology>, ConfigError> {
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

/// One Redis server (a standalone, a cluster node, a Sentinel or the
/// primary it names), as parsed from a URL or learned from discovery.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: i64,
}

/// Why a Redis URL was refused (never quoting it: it may hold a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadUrl(&'static str);

impl Endpoint {
    /// Parses `redis://[[user]:password@]host[:port][/db]`, or `rediss://`
    /// for TLS. The port defaults to 6379 (26379 for a Sentinel).
    pub fn parse(url: &str, default_port: u16) -> Result<Endpoint, BadUrl> {
        let parsed = url::Url::parse(url).map_err(|_| BadUrl("not a URL"))?;
        let tls = match parsed.scheme() {
            "redis" => false,
            "rediss" => true,
            _ => return Err(BadUrl("the scheme must be redis:// or rediss://")),
        };
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err(BadUrl("no host")),
        };
        let decode = |s: &str| -> Result<Option<String>, BadUrl> {
            if s.is_empty() {
                return Ok(None);
            }
            let decoded = percent_decode(s).ok_or(BadUrl("bad percent-encoding in the credentials"))?;
            Ok(Some(decoded))
        };
        let username = decode(parsed.username())?;
        let password = decode(parsed.password().unwrap_or(""))?;
        let db = match parsed.path().trim_start_matches('/') {
            "" => 0,
            db => db.parse::<i64>().ok().filter(|d| (0..=1_000_000).contains(d)).ok_or(BadUrl("the path must be a database number"))?,
        };
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(BadUrl("no query or fragment is understood"));
        }
        Ok(Endpoint { host, port: parsed.port().unwrap_or(default_port), tls, username, password, db })
    }

    /// The same credentials and TLS setting, at another address (a cluster
    /// node or primary found by discovery), database 0.
    pub fn at(&self, host: &str, port: u16) -> Endpoint {
        Endpoint { host: host.to_string(), port, db: 0, ..self.clone() }
    }

    /// `host:port`, the only part of an endpoint that may be logged.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Never shows the credentials.
impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}/{}", if self.tls { "rediss" } else { "redis" }, self.address(), self.db)
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::err;
    use crate::config::{Config, Overrides};

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
    fn urls_parse_with_credentials_tls_and_database() {
        let e = super::Endpoint::parse("rediss://app:p%40ss@redis.example:7000/3", 6379).unwrap();
        assert_eq!((e.host.as_str(), e.port, e.tls, e.db), ("redis.example", 7000, true, 3));
        assert_eq!((e.username.as_deref(), e.password.as_deref()), (Some("app"), Some("p@ss")));
        let e = super::Endpoint::parse("redis://:secret@127.0.0.1", 26379).unwrap();
        assert_eq!((e.port, e.username.as_deref(), e.password.as_deref(), e.tls), (26379, None, Some("secret"), false));
        assert_eq!(format!("{e:?}"), "redis://127.0.0.1:26379/0", "no password in logs");
        assert_eq!(super::Endpoint::parse("redis://[::1]:7001", 6379).unwrap().address(), "[::1]:7001");
        for bad in ["http://x", "redis://", "redis://x/abc", "redis://x:1?db=2", "x", "redis://x/-1"] {
            assert!(super::Endpoint::parse(bad, 6379).is_err(), "{bad}");
        }
    }
}
