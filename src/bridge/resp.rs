//! RESP over a glommio socket: commands are packed by the redis crate; this
//! file frames replies and pushes and turns each into a [`redis::Value`],
//! on the bridge shard's own executor.
//!
//! Why framing here and not the crate's streaming [`redis::Parser`]: that
//! parser was 30% of the subscribing node's CPU in the node-to-node bench
//! (its combinator machinery per value, for values that are almost all
//! `[message, channel, data]` pushes and `:1` replies). The reader below
//! finds where each value ends (a scan of the RESP headers, no
//! allocation), builds the flat shapes that make the traffic (integers,
//! simple and bulk strings, arrays of those) directly, and hands every
//! other value (errors, nested arrays, RESP3 types) as one complete slice
//! to the crate's [`redis::parse_redis_value`].

use std::io;

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
    /// The server owed a reply this long (`[redis] heartbeat_ms`, or the
    /// connection set-up's bound): paused, wedged, or gone without a reset.
    #[error("redis did not answer for {} ms", .0.as_millis())]
    Unresponsive(std::time::Duration),
}

/// How far the value at the start of a buffer reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// The value is the first `n` bytes.
    Complete(usize),
    /// More bytes are needed: at least this many in all.
    Incomplete(usize),
    /// Not RESP.
    Invalid,
}

/// Nesting accepted in a value (Redis' replies nest a few levels).
const MAX_DEPTH: usize = 32;

/// The line starting at `at` (without its CRLF) and where the next begins.
fn line(b: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = b.get(at..)?;
    let end = memchr::memchr(b'\n', rest)?;
    if end == 0 || rest[end - 1] != b'\r' {
        return Some((&[], usize::MAX)); // a bare LF: refused by the caller
    }
    Some((&rest[..end - 1], at + end + 1))
}

/// A length or count header: a decimal, or -1.
fn number(digits: &[u8]) -> Option<i64> {
    std::str::from_utf8(digits).ok()?.parse::<i64>().ok().filter(|n| *n >= -1)
}

/// Where the value at `at` ends.
fn scan(b: &[u8], at: usize, depth: usize) -> Scan {
    let Some(&kind) = b.get(at) else { return Scan::Incomplete(at + 1) };
    let Some((head, next)) = line(b, at + 1) else { return Scan::Incomplete(b.len() + 1) };
    if next == usize::MAX {
        return Scan::Invalid;
    }
    match kind {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Scan::Complete(next),
        b'$' | b'!' | b'=' => match number(head) {
            Some(-1) => Scan::Complete(next),
            Some(len) => {
                let Some(end) = usize::try_from(len).ok().and_then(|l| next.checked_add(l)?.checked_add(2)) else { return Scan::Invalid };
                match b.get(end - 2..end) {
                    Some(b"\r\n") => Scan::Complete(end),
                    Some(_) => Scan::Invalid,
                    None => Scan::Incomplete(end),
                }
            }
            None => Scan::Invalid,
        },
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let Some(count) = number(head) else { return Scan::Invalid };
            if depth >= MAX_DEPTH {
                return Scan::Invalid;
            }
            // A map or attribute counts pairs. A hostile count may not
            // double; a huge one is otherwise harmless: each element takes
            // bytes, so the loop ends at the end of what was received.
            let per_entry = if matches!(kind, b'%' | b'|') { 2 } else { 1 };
            let Some(elements) = count.max(0).checked_mul(per_entry) else { return Scan::Invalid };
            let mut pos = next;
            for _ in 0..elements {
                match scan(b, pos, depth + 1) {
                    Scan::Complete(end) => pos = end,
                    other => return other,
                }
            }
            Scan::Complete(pos)
        }
        _ => Scan::Invalid,
    }
}

/// The flat values built without the crate: `:n`, `+s`, `$n`, `$-1`, and
/// `*n` of those. `None` for anything else (the crate parses it).
fn flat_value(frame: &[u8]) -> Option<Value> {
    let (head, next) = line(frame, 1)?;
    match frame[0] {
        b':' => Some(Value::Int(std::str::from_utf8(head).ok()?.parse().ok()?)),
        b'+' => Some(Value::SimpleString(String::from_utf8(head.to_vec()).ok()?)),
        b'$' => match number(head)? {
            -1 => Some(Value::Nil),
            len => Some(Value::BulkString(frame.get(next..next.checked_add(usize::try_from(len).ok()?)?)?.to_vec())),
        },
        b'*' => {
            let count = usize::try_from(number(head)?).ok()?;
            let mut items = Vec::with_capacity(count.min(64));
            let mut pos = next;
            for _ in 0..count {
                let Scan::Complete(end) = scan(frame, pos, MAX_DEPTH - 1) else { return None };
                let item = frame.get(pos..end)?;
                if !matches!(item.first(), Some(b':' | b'+' | b'$')) {
                    return None;
                }
                items.push(flat_value(item)?);
                pos = end;
            }
            Some(Value::Array(items))
        }
        _ => None,
    }
}

/// Reads RESP values in batches: one socket read, every complete value in it.
pub struct RespReader {
    buf: Vec<u8>,
    /// `buf[start..end]`: received, not yet returned.
    start: usize,
    end: usize,
    /// Bytes needed before the value at `start` can be complete.
    need: usize,
    chunk: usize,
    /// The largest value accepted: a larger (possibly hostile) one fails
    /// the connection instead of growing the buffer.
    limit: usize,
}

impl RespReader {
    /// `max_value` is the largest payload accepted; a value much larger than
    /// it fails the connection instead of growing the buffer.
    pub fn new(chunk: usize, max_value: usize) -> RespReader {
        RespReader { buf: vec![0; chunk], start: 0, end: 0, need: 0, chunk, limit: max_value * 2 + 64 * 1024 }
    }

    /// Waits for at least one complete value and returns all that are complete.
    pub async fn read_values(&mut self, stream: &mut (impl AsyncRead + Unpin)) -> Result<Vec<Value>, BridgeError> {
        loop {
            let values = self.take_values()?;
            if !values.is_empty() {
                return Ok(values);
            }
            self.make_room()?;
            let n = stream.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Err(BridgeError::Closed);
            }
            self.end += n;
        }
    }

    /// The same as [`read_values`](Self::read_values), from bytes in hand
    /// instead of a socket: buffers `bytes` and returns every value they
    /// complete (the tests and the fuzz target feed it).
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<Vec<Value>, BridgeError> {
        let mut values = Vec::new();
        while !bytes.is_empty() {
            self.make_room()?;
            let n = bytes.len().min(self.buf.len() - self.end);
            self.buf[self.end..self.end + n].copy_from_slice(&bytes[..n]);
            self.end += n;
            bytes = &bytes[n..];
            values.extend(self.take_values()?);
        }
        Ok(values)
    }

    /// Every complete value buffered.
    fn take_values(&mut self) -> Result<Vec<Value>, BridgeError> {
        let mut values = Vec::new();
        while self.end - self.start >= self.need.max(1) {
            let pending = &self.buf[self.start..self.end];
            match scan(pending, 0, 0) {
                Scan::Complete(len) => {
                    let frame = &pending[..len];
                    let value = match flat_value(frame) {
                        Some(v) => v,
                        None => redis::parse_redis_value(frame).map_err(|_| BridgeError::Protocol("unparsable reply"))?,
                    };
                    values.push(value);
                    self.start += len;
                    self.need = 0;
                }
                Scan::Incomplete(need) => {
                    if need > self.limit {
                        return Err(BridgeError::TooBig(self.limit));
                    }
                    self.need = need;
                }
                Scan::Invalid => return Err(BridgeError::Protocol("unparsable reply")),
            }
        }
        Ok(values)
    }

    /// Room for the next read: what is pending moves to the front, and the
    /// buffer grows (up to the limit) when a value needs more than it holds.
    fn make_room(&mut self) -> Result<(), BridgeError> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        let wanted = self.need.max(self.end + self.chunk).min(self.limit + self.chunk);
        if self.buf.len() < wanted {
            self.buf.resize(wanted, 0);
        } else if self.buf.len() > 4 * self.chunk && self.end + self.chunk <= self.chunk * 2 && self.need <= self.chunk {
            // A big value has gone: give the memory back.
            self.buf.truncate(self.chunk * 2);
            self.buf.shrink_to_fit();
        }
        if self.end == self.buf.len() {
            return Err(BridgeError::TooBig(self.limit));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` to a reader split at `cut`, returns every value.
    fn read_split(bytes: &[u8], cut: usize) -> Result<Vec<Value>, BridgeError> {
        let mut r = RespReader::new(8, 1 << 16);
        let mut out = r.feed(&bytes[..cut])?;
        out.extend(r.feed(&bytes[cut..])?);
        Ok(out)
    }

    #[test]
    fn values_split_anywhere_parse_like_the_crate_parses_them() {
        let stream: &[u8] = b"*3\r\n$7\r\nmessage\r\n$4\r\nchan\r\n$5\r\nhe\r\no\r\n:42\r\n+OK\r\n$-1\r\n-MOVED 3999 127.0.0.1:6381\r\n\
*2\r\n*2\r\n:1\r\n$1\r\nx\r\n*0\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n%1\r\n+k\r\n:2\r\n$0\r\n\r\n*-1\r\n";
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let moved = redis::parse_redis_value(b"-MOVED 3999 127.0.0.1:6381\r\n").unwrap();
        assert!(matches!(&moved, Value::ServerError(e) if e.code() == "MOVED"));
        let map = redis::parse_redis_value(b"%1\r\n+k\r\n:2\r\n").unwrap();
        let expected = vec![
            Value::Array(vec![bulk("message"), bulk("chan"), bulk("he\r\no")]),
            Value::Int(42),
            Value::SimpleString("OK".into()),
            Value::Nil,
            moved,
            Value::Array(vec![Value::Array(vec![Value::Int(1), bulk("x")]), Value::Array(vec![])]),
            Value::Array(vec![bulk("subscribe"), bulk("c"), Value::Int(1)]),
            map,
            bulk(""),
            Value::Nil,
        ];
        assert_eq!(expected.len(), 10);
        for cut in 0..=stream.len() {
            assert_eq!(read_split(stream, cut).unwrap(), expected, "split at {cut}");
        }
    }

    /// Found by the `resp` fuzz target: a map's count of pairs was doubled
    /// unchecked (a panic with overflow checks, a wrapped count without).
    #[test]
    fn a_map_count_that_overflows_when_doubled_fails_the_connection_not_the_process() {
        for hostile in [&b"%5000000000000000000\r\n0\r\n"[..], b"|9223372036854775807\r\n", b"*1\r\n%4611686018427387904\r\n"] {
            assert!(matches!(read_split(hostile, 1), Err(BridgeError::Protocol(_))), "{:?}", String::from_utf8_lossy(hostile));
        }
        // Huge but not overflowing: waits for bytes that can never fit, then refuses.
        let mut r = RespReader::new(4096, 1024);
        assert!(r.feed(b"*4611686018427387903\r\n").unwrap().is_empty());
        assert!(matches!(r.feed(&b"+\r\n".repeat(30_000)), Err(BridgeError::TooBig(_))));
    }

    #[test]
    fn garbage_and_oversized_values_fail_the_connection() {
        for bad in [&b"?x\r\n"[..], b"$3\r\nabcd\r\n", b"*1\nx", b"$-2\r\n", b":1\n"] {
            assert!(matches!(read_split(bad, 0), Err(BridgeError::Protocol(_))), "{bad:?}");
        }
        let mut deep = b"*1\r\n".repeat(MAX_DEPTH + 1);
        deep.extend_from_slice(b":1\r\n");
        assert!(read_split(&deep, 0).is_err(), "nesting is bounded");
        let big = format!("${}\r\n", 1 << 20);
        assert!(matches!(read_split(big.as_bytes(), 0), Err(BridgeError::TooBig(_))), "announced too big: refused before it arrives");
        let endless = b"+".repeat(200_000);
        assert!(matches!(read_split(&endless, 0), Err(BridgeError::TooBig(_))), "a line without an end is bounded too");
    }
}
