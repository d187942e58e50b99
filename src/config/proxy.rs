//! `[proxy]`: the backend's HTTP endpoints that decide connect, refresh,
//! subscribe, publish and RPC (`docs/admin.md`, "Backend hooks").

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, ms, ranged, ConfigError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    pub connect_url: String,
    pub refresh_url: String,
    pub subscribe_url: String,
    pub publish_url: String,
    pub rpc_url: String,
    pub connect_always: bool,
    pub connect_on_failure: String,
    pub connect_wait_ms: u64,
    pub timeout_ms: u64,
    pub max_inflight: u64,
    pub max_response_bytes: u64,
    pub max_info_bytes: u64,
    pub ca_file: String,
    pub headers: Vec<String>,
    pub static_headers: BTreeMap<String, String>,
}

/// What a connection gets when the connect hook fails (an answer that is
/// not `result`/`error`/`disconnect`, another status, a timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Close 1011 "backend unavailable".
    Reject,
    /// Welcome it as anonymous.
    Anonymous,
}

/// `[proxy]`, validated. Every URL is `http://` or `https://`.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub connect_url: Option<url::Url>,
    pub refresh_url: Option<url::Url>,
    pub subscribe_url: Option<url::Url>,
    pub publish_url: Option<url::Url>,
    pub rpc_url: Option<url::Url>,
    /// Call connect even for a connection whose token is valid.
    pub connect_always: bool,
    pub connect_on_failure: ConnectFailure,
    /// How long after the upgrade a `connect` request (with `data`) is
    /// waited for before connect is called without one.
    pub connect_wait: Duration,
    pub timeout: Duration,
    /// Calls in flight on this node; one more fails at once.
    pub max_inflight: usize,
    /// Longest backend answer read; a longer one is a failure.
    pub max_response_bytes: usize,
    /// Longest connect result `info` (JSON text); a longer one is a failure.
    pub max_info_bytes: usize,
    /// The TLS client for `https://` hooks (the CAs of `ca_file`, or the
    /// public roots); `None` when no hook URL is `https://`.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Upgrade-request headers copied to connect calls (lower-case names).
    pub headers: Vec<String>,
    /// Sent on every call.
    pub static_headers: Vec<(String, String)>,
}

impl ProxyConfig {
    /// Whether any hook is configured (the hooks thread runs only then).
    pub fn any(&self) -> bool {
        [&self.connect_url, &self.refresh_url, &self.subscribe_url, &self.publish_url, &self.rpc_url].iter().any(|u| u.is_some())
    }
}

/// An optional backend URL (a hook's, the webhooks'): `""` is off,
/// anything else must be http(s) with a host.
pub(super) fn hook_url(key: &'static str, value: &str) -> Result<Option<url::Url>, ConfigError> {
    if value.is_empty() {
        return Ok(None);
    }
    let expected = "\"\" (off) or an http:// or https:// URL such as \"http://127.0.0.1:3000/shardcast/hook\"";
    let url = url::Url::parse(value).map_err(|_| invalid(key, format!("{value:?}"), expected))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(key, format!("{value:?}"), expected));
    }
    Ok(Some(url))
}

/// An HTTP header name as RFC 9110 allows it, lower-case.
fn header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub(super) fn validate(p: &RawProxy) -> Result<ProxyConfig, ConfigError> {
    for (i, name) in p.headers.iter().enumerate() {
        if !header_name(name) {
            return Err(invalid(format!("proxy.headers[{i}]"), format!("{name:?}"), "a lower-case HTTP header name such as \"cookie\""));
        }
    }
    let mut static_headers = Vec::with_capacity(p.static_headers.len());
    for (name, value) in &p.static_headers {
        let key = format!("proxy.static_headers.{name}");
        if !header_name(&name.to_ascii_lowercase()) {
            return Err(invalid(key, format!("{name:?}"), "an HTTP header name"));
        }
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(invalid(key, "(hidden)", "a header value without control characters"));
        }
        static_headers.push((name.to_ascii_lowercase(), value.clone()));
    }
    let urls = [
        hook_url("proxy.connect_url", &p.connect_url)?,
        hook_url("proxy.refresh_url", &p.refresh_url)?,
        hook_url("proxy.subscribe_url", &p.subscribe_url)?,
        hook_url("proxy.publish_url", &p.publish_url)?,
        hook_url("proxy.rpc_url", &p.rpc_url)?,
    ];
    let ca_file = (!p.ca_file.is_empty()).then(|| std::path::Path::new(&p.ca_file));
    let tls = if ca_file.is_some() || urls.iter().flatten().any(|u| u.scheme() == "https") {
        let config = crate::tls::client_config(ca_file).map_err(|e| invalid("proxy.ca_file", format!("{:?}", p.ca_file), format!("\"\" (public roots) or a PEM file of CA certificates: {e}")))?;
        Some(config)
    } else {
        None
    };
    let [connect_url, refresh_url, subscribe_url, publish_url, rpc_url] = urls;
    Ok(ProxyConfig {
        connect_url,
        refresh_url,
        subscribe_url,
        publish_url,
        rpc_url,
        connect_always: p.connect_always,
        connect_on_failure: match p.connect_on_failure.as_str() {
            "reject" => ConnectFailure::Reject,
            "anonymous" => ConnectFailure::Anonymous,
            other => return Err(invalid("proxy.connect_on_failure", format!("{other:?}"), "\"reject\" or \"anonymous\"")),
        },
        connect_wait: ms(ranged::<u64>("proxy.connect_wait_ms", p.connect_wait_ms, 0, 10_000, "0..=10000 ms")?),
        timeout: ms(ranged::<u64>("proxy.timeout_ms", p.timeout_ms, 10, 600_000, "10..=600000 ms")?),
        max_inflight: ranged("proxy.max_inflight", p.max_inflight, 1, 1_000_000, "1..=1000000")?,
        max_response_bytes: ranged("proxy.max_response_bytes", p.max_response_bytes, 256, 16 << 20, "256..=16777216 bytes")?,
        max_info_bytes: ranged("proxy.max_info_bytes", p.max_info_bytes, 2, 65_536, "2..=65536 bytes")?,
        tls,
        headers: p.headers.clone(),
        static_headers,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::tests::err;
    use crate::config::{Config, ConnectFailure, Overrides};

    #[test]
    fn proxy_section_validates_and_names_the_key() {
        let c = Config::defaults().proxy;
        assert!(!c.any() && c.connect_url.is_none());
        assert_eq!((c.timeout.as_millis(), c.max_inflight, c.connect_on_failure), (3000, 1024, ConnectFailure::Reject));
        assert_eq!(c.headers, ["cookie", "authorization", "origin", "user-agent", "x-forwarded-for"]);
        let text = "[proxy]\nconnect_url = \"http://127.0.0.1:1/c\"\nconnect_on_failure = \"anonymous\"\n[proxy.static_headers]\nX-Api-Key = \"k\"\n";
        let c = Config::from_toml(text, &Overrides::default()).unwrap().proxy;
        assert!(c.any() && c.connect_on_failure == ConnectFailure::Anonymous);
        assert_eq!(c.static_headers, [("x-api-key".to_string(), "k".to_string())]);
        assert!(err("[proxy]\nconnect_url = \"ftp://x/\"").contains("proxy.connect_url"));
        assert!(err("[proxy]\nrpc_url = \"not a url\"").contains("proxy.rpc_url"));
        assert!(err("[proxy]\nheaders = [\"Cookie\"]").contains("proxy.headers[0]"));
        assert!(err("[proxy]\nconnect_on_failure = \"maybe\"").contains("proxy.connect_on_failure"));
        assert!(err("[proxy]\ntimeout_ms = 0").contains("proxy.timeout_ms"));
        assert!(err("[proxy]\nmax_inflight = 0").contains("proxy.max_inflight"));
        assert!(err("[proxy]\nca_file = \"/nonexistent.pem\"").contains("proxy.ca_file"));
        assert!(err("[proxy.static_headers]\n\"bad name\" = \"v\"").contains("proxy.static_headers.bad name"));
        assert!(err("[proxy.static_headers]\nx = 1").contains("proxy.static_headers.x"));
        let modes = "[[namespaces]]\npattern = \"p:*\"\nsubscribe = \"proxy\"\npublish = \"anyone\"\n";
        assert!(err(modes).contains("namespaces[0].subscribe"), "{}", err(modes));
        let ok = format!("{modes}[proxy]\nsubscribe_url = \"http://127.0.0.1:1/s\"\n");
        assert!(Config::from_toml(&ok, &Overrides::default()).is_ok());
        let publish = "[[namespaces]]\npattern = \"p:*\"\nsubscribe = \"anyone\"\npublish = \"proxy\"\n";
        assert!(err(publish).contains("namespaces[0].publish"));
    }
}
