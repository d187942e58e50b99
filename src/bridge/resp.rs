//! RESP over a glommio socket: commands are packed by the redis crate,
//! replies parsed by its incremental [`redis::Parser`]; this file only moves
//! bytes, on the bridge shard's own executor.

use std::io::{self, Read};
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use redis::{ConnectionAddr, IntoConnectionInfo, Value};

/// Time allowed for the TCP connect to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("redis refused the connection setup: {0}")]
    Refused(String),
    #[error("redis protocol error: {0}")]
    Protocol(&'static str),
    #[error("redis closed the connection")]
    Closed,
    #[error("a reply from redis exceeded {0} bytes")]
    TooBig(usize),
}

/// Connects, authenticates and selects the database the URL names.
pub async fn connect(url: &str) -> Result<TcpStream, BridgeError> {
    let info = url.into_connection_info().map_err(|e| BridgeError::Refused(format!("bad URL: {}", e.category())))?;
    let ConnectionAddr::Tcp(host, port) = &info.addr else {
        return Err(BridgeError::Refused("only redis://host:port URLs are supported".into()));
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), *port))?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "redis host did not resolve"))?;
    let mut stream = TcpStream::connect_timeout(addr, CONNECT_TIMEOUT).await.map_err(io::Error::from)?;
    stream.set_nodelay(true).map_err(io::Error::from)?;
    let mut setup = Vec::new();
    let mut expected = 0;
    if let Some(password) = &info.redis.password {
        let mut auth = redis::cmd("AUTH");
        if let Some(user) = &info.redis.username {
            auth.arg(user);
        }
        auth.arg(password).write_packed_command(&mut setup);
        expected += 1;
    }
    if info.redis.db != 0 {
        redis::cmd("SELECT").arg(info.redis.db).write_packed_command(&mut setup);
        expected += 1;
    }
    if expected > 0 {
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
    }
    Ok(stream)
}

/// Feeds the parser from a byte slice, then reports "would block" so the
/// parser keeps its partial state for the next read.
struct Feed<'a>(&'a [u8]);

impl Read for Feed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

/// Reads RESP values in batches: one socket read, every complete value in it.
pub struct RespReader {
    parser: redis::Parser,
    buf: Vec<u8>,
    /// Bytes fed since the last complete value: bounds what an incomplete
    /// (possibly hostile) value can make the parser buffer.
    pending: usize,
    limit: usize,
}

impl RespReader {
    /// `max_value` is the largest payload accepted; a value much larger than
    /// it fails the connection instead of growing the buffer.
    pub fn new(chunk: usize, max_value: usize) -> RespReader {
        RespReader { parser: redis::Parser::new(), buf: vec![0; chunk], pending: 0, limit: max_value * 2 + 64 * 1024 }
    }

    /// Waits for at least one complete value and returns all that are complete.
    pub async fn read_values(&mut self, stream: &mut TcpStream) -> Result<Vec<Value>, BridgeError> {
        let mut values = Vec::new();
        while values.is_empty() {
            let n = stream.read(&mut self.buf).await?;
            if n == 0 {
                return Err(BridgeError::Closed);
            }
            self.pending += n;
            let mut feed = Feed(&self.buf[..n]);
            loop {
                match self.parser.parse_value(&mut feed) {
                    Ok(v) => {
                        self.pending = feed.0.len();
                        values.push(v);
                    }
                    Err(e) if e.is_io_error() => break,
                    Err(_) => return Err(BridgeError::Protocol("unparsable reply")),
                }
            }
            if self.pending > self.limit {
                return Err(BridgeError::TooBig(self.limit));
            }
        }
        Ok(values)
    }
}
