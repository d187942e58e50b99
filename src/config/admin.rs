//! `[admin]`: the admin plane's listener, key and bounds.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, ms, ranged, ConfigError};

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

pub(super) fn validate(a: &RawAdmin) -> Result<Option<AdminConfig>, ConfigError> {
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

#[cfg(test)]
mod tests {
    use crate::config::tests::err;
    use crate::config::{Config, Overrides};
    use std::time::Duration;

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
}
