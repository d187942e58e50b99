//! `[server]`: the listener, shards, paths, connection and socket limits.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, ms, ranged, ConfigError};

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
    pub stream_path: String,
    pub sse_path: String,
    pub emulation_path: String,
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
    /// The fallback transports' paths (HTTP-streaming, SSE, the requests
    /// of both); `None` when disabled.
    pub stream_path: Option<String>,
    pub sse_path: Option<String>,
    pub emulation_path: Option<String>,
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

pub(super) fn validate(s: &RawServer) -> Result<ServerConfig, ConfigError> {
    let listen: SocketAddr = s
        .listen
        .parse()
        .map_err(|_| invalid("server.listen", format!("{:?}", s.listen), "an IP:PORT socket address such as \"127.0.0.1:8080\""))?;
    let shards = match s.shards {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(super::MAX_SHARDS),
        n => ranged("server.shards", n, 1, super::MAX_SHARDS as u64, "0 (one per online core) or 1..=256")?,
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
    let stream_path = check_path("server.stream_path", &s.stream_path, true)?;
    let sse_path = check_path("server.sse_path", &s.sse_path, true)?;
    let emulation_path = check_path("server.emulation_path", &s.emulation_path, true)?;
    let paths = [Some(&ws_path), echo_path.as_ref(), metrics_path.as_ref(), stream_path.as_ref(), sse_path.as_ref(), emulation_path.as_ref()];
    let set: Vec<&String> = paths.iter().flatten().copied().collect();
    if (1..set.len()).any(|i| set[..i].contains(&set[i])) {
        let expected = "ws_path, echo_path, metrics_path, stream_path, sse_path and emulation_path must differ";
        return Err(invalid("server.ws_path", format!("{ws_path:?}"), expected));
    }
    let server = ServerConfig {
        listen,
        shards,
        pin_cores: s.pin_cores,
        node_id,
        ws_path,
        echo_path,
        metrics_path,
        stream_path,
        sse_path,
        emulation_path,
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
    Ok(server)
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
    use crate::config::{Config, Overrides};

    #[test]
    fn empty_echo_path_disables_it() {
        let c = Config::from_toml("[server]\necho_path = \"\"", &Overrides::default()).unwrap();
        assert_eq!(c.server.echo_path, None);
    }
}
