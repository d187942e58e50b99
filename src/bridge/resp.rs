//! RESP over a glommio socket: commands are packed by the redis crate,
//! replies parsed by its incremental [`redis::Parser`]; this file only moves
//! bytes, on the bridge shard's own executor.

use std::io::{self, Read};

use futures_lite::{AsyncRead, AsyncReadExt};
use redis::Value;

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
    #[error("the connection was reset to follow a topology change")]
    Reset,
    #[error("{0}")]
    Discovery(String),
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
    pub async fn read_values(&mut self, stream: &mut (impl AsyncRead + Unpin)) -> Result<Vec<Value>, BridgeError> {
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
