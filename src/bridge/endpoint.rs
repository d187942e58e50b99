//! Where a Redis server is and how to talk to it: `redis://` or `rediss://`
//! (TLS, with rustls), credentials (`AUTH [user] password`, Redis 6 ACLs
//! included) and database; and the connection itself, plain or TLS, as one
//! stream type the bridge reads and writes on the bridge shard's executor.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use redis::Value;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use super::resp::{BridgeError, RespReader};

/// Time allowed for the TCP connect (and the TLS handshake) to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

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

    /// Connects (over TLS for `rediss://`, verified against `tls`),
    /// authenticates and selects the database.
    pub async fn connect(&self, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<RedisStream, BridgeError> {
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(self.host.as_str(), self.port))?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "redis host did not resolve"))?;
        let tcp = TcpStream::connect_timeout(addr, CONNECT_TIMEOUT).await.map_err(io::Error::from)?;
        tcp.set_nodelay(true).map_err(io::Error::from)?;
        let mut stream = if self.tls {
            let config = tls.ok_or(BridgeError::Refused("rediss:// without a TLS configuration".into()))?;
            let name = ServerName::try_from(self.host.clone()).map_err(|_| BridgeError::Refused("the host is not a valid TLS server name".into()))?;
            let handshake = futures_rustls::TlsConnector::from(config.clone()).connect(name, tcp);
            let timeout = async {
                glommio::timer::sleep(CONNECT_TIMEOUT).await;
                Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))
            };
            let tls = futures_lite::future::or(handshake, timeout).await.map_err(|e| BridgeError::Refused(format!("TLS: {e}")))?;
            RedisStream::Tls(Box::new(tls))
        } else {
            RedisStream::Plain(tcp)
        };
        let mut setup = Vec::new();
        let mut expected = 0;
        if let Some(password) = &self.password {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = &self.username {
                auth.arg(user);
            }
            auth.arg(password).write_packed_command(&mut setup);
            expected += 1;
        }
        if self.db != 0 {
            redis::cmd("SELECT").arg(self.db).write_packed_command(&mut setup);
            expected += 1;
        }
        if expected > 0 {
            // Bounded like the connect: a server that accepts but never
            // answers (paused, wedged) must not hold the attempt forever.
            let answered = async {
                stream.write_all(&setup).await?;
                let mut reader = RespReader::new(4096, 4096);
                let mut seen = 0;
                while seen < expected {
                    for reply in reader.read_values(&mut stream).await? {
                        if let Value::ServerError(e) = reply {
                            return Err(BridgeError::Refused(format!("{} {}", e.code(), e.details().unwrap_or(""))));
                        }
                        seen += 1;
                    }
                }
                Ok(())
            };
            let timeout = async {
                glommio::timer::sleep(CONNECT_TIMEOUT).await;
                Err(BridgeError::Unresponsive(CONNECT_TIMEOUT))
            };
            futures_lite::future::or(answered, timeout).await?;
        }
        Ok(stream)
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

/// The TLS client configuration for `rediss://`: the CAs in `ca_file`
/// (PEM), or the public web roots when it is `None`.
pub fn tls_client_config(ca_file: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("{}: no CERTIFICATE block", path.display()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A connection to Redis, plain or TLS.
pub enum RedisStream {
    Plain(TcpStream),
    Tls(Box<futures_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for RedisStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            RedisStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            RedisStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for RedisStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            RedisStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            RedisStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RedisStream::Plain(s) => Pin::new(s).poll_flush(cx),
            RedisStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RedisStream::Plain(s) => Pin::new(s).poll_close(cx),
            RedisStream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_credentials_tls_and_database() {
        let e = Endpoint::parse("rediss://app:p%40ss@redis.example:7000/3", 6379).unwrap();
        assert_eq!((e.host.as_str(), e.port, e.tls, e.db), ("redis.example", 7000, true, 3));
        assert_eq!((e.username.as_deref(), e.password.as_deref()), (Some("app"), Some("p@ss")));
        let e = Endpoint::parse("redis://:secret@127.0.0.1", 26379).unwrap();
        assert_eq!((e.port, e.username.as_deref(), e.password.as_deref(), e.tls), (26379, None, Some("secret"), false));
        assert_eq!(format!("{e:?}"), "redis://127.0.0.1:26379/0", "no password in logs");
        assert_eq!(Endpoint::parse("redis://[::1]:7001", 6379).unwrap().address(), "[::1]:7001");
        for bad in ["http://x", "redis://", "redis://x/abc", "redis://x:1?db=2", "x", "redis://x/-1"] {
            assert!(Endpoint::parse(bad, 6379).is_err(), "{bad}");
        }
    }
}
