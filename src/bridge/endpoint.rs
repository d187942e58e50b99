//! Talking to a Redis server (an [`Endpoint`], as configured): the
//! connection, plain or TLS (`rediss://`, with rustls), authenticated
//! (`AUTH [user] password`, Redis 6 ACLs included) with its database
//! selected, as one stream type the bridge reads and writes on the bridge
//! shard's executor.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use redis::Value;
use rustls::pki_types::ServerName;

use crate::config::Endpoint;
use crate::tls::MaybeTls;

use super::resp::{BridgeError, RespReader};

/// Time allowed for the TCP connect (and the TLS handshake) to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl Endpoint {
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

/// A connection to Redis, plain or TLS.
pub type RedisStream = MaybeTls<TcpStream, futures_rustls::client::TlsStream<TcpStream>>;
