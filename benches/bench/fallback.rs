//! A minimal client of the fallback transports (`docs/protocol.md`,
//! "Fallback transports") for load generation: an HTTP-streaming
//! (`POST /stream`, NDJSON) or SSE (`GET /sse`) session on a plain tokio
//! `TcpStream`, its chunked response decoded as it comes and split into
//! frames (lines, or `data:` events), and `POST /emulation` for the
//! session's requests (one short connection each: the server answers and
//! closes). Parsing is minimal: a frame is handed on as the bytes of its
//! JSON, the callers look for the few fields they count.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The server's default paths (`[server] stream_path`, `sse_path`,
/// `emulation_path`).
pub const STREAM_PATH: &str = "/stream";
pub const SSE_PATH: &str = "/sse";
pub const EMULATION_PATH: &str = "/emulation";

/// How subscribers reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
pub enum Transport {
    /// The protocol's WebSocket (`/ws`).
    #[default]
    #[value(name = "websocket")]
    WebSocket,
    /// `POST /stream`: one JSON frame per line in a chunked response.
    #[value(name = "http_stream")]
    HttpStream,
    /// `GET /sse`: one `data:` event per frame.
    #[value(name = "sse")]
    Sse,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::HttpStream => "http_stream",
            Transport::Sse => "sse",
        }
    }
}

/// Opens a TCP connection to `addr` (from `source`, when given).
/// `linger0`: closing resets it (no TIME_WAIT on either side).
async fn tcp(addr: SocketAddr, source: Option<IpAddr>, linger0: bool) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    if linger0 {
        socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO))?;
    }
    let tcp = socket.connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Reads an HTTP response head from `stream` into `buf`; returns the
/// status and where the body starts in `buf`.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<(u16, usize)> {
    loop {
        if let Some(pos) = memchr::memmem::find(buf, b"\r\n\r\n") {
            let status = buf.get(9..12).and_then(|s| std::str::from_utf8(s).ok()?.parse().ok()).unwrap_or(0);
            return Ok((status, pos + 4));
        }
        if buf.len() > 64 * 1024 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "response head too large"));
        }
        let filled = buf.len();
        buf.resize(filled + 8192, 0);
        let n = stream.read(&mut buf[filled..]).await?;
        buf.truncate(filled + n);
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before the response head"));
        }
    }
}

/// `POST /emulation` of `body` (a JSON object) to `addr`; the status.
pub async fn emulate(addr: SocketAddr, source: Option<IpAddr>, body: &str) -> io::Result<u16> {
    let mut stream = tcp(addr, source, true).await?;
    let request =
        format!("POST {EMULATION_PATH} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::new();
    // The answers carry a short body at most, and the server closes after
    // it: the head is all that is needed.
    let (status, _) = read_head(&mut stream, &mut buf).await?;
    Ok(status)
}

/// One fallback session seen from its client.
pub struct Session {
    stream: TcpStream,
    sse: bool,
    pub addr: SocketAddr,
    pub source: Option<IpAddr>,
    /// The welcome's `session`.
    pub id: String,
    /// Bytes read, not yet de-chunked: `raw[raw_start..raw_end]`.
    raw: Vec<u8>,
    raw_start: usize,
    raw_end: usize,
    /// Data bytes of the current chunk not read yet, and of its ending CRLF.
    chunk_left: usize,
    crlf_left: usize,
    /// The body, de-chunked, not yet split into frames: `body[body_start..]`.
    body: Vec<u8>,
    body_start: usize,
    /// The last chunk (size 0) was read: the response is over.
    ended: bool,
    /// Bytes read from the socket after the response head.
    pub bytes_read: u64,
}

impl Session {
    /// Opens a session on `transport` (not WebSocket) and reads its
    /// welcome. `query` (e.g. `?token=…`, or empty) goes on the request's
    /// path.
    pub async fn open(addr: SocketAddr, source: Option<IpAddr>, transport: Transport, query: &str) -> io::Result<Session> {
        let mut stream = tcp(addr, source, false).await?;
        let request = match transport {
            Transport::HttpStream => {
                // The first line is the connect request: `{}`, anonymous
                // (a token comes in the query).
                let body = "{}\n";
                format!(
                    "POST {STREAM_PATH}{query} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            }
            Transport::Sse => format!("GET {SSE_PATH}{query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"),
            Transport::WebSocket => return Err(io::Error::other("a WebSocket is not a fallback session")),
        };
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::with_capacity(16 * 1024);
        let (status, body_at) = read_head(&mut stream, &mut raw).await?;
        if status != 200 {
            let line = String::from_utf8_lossy(&raw[..body_at]).lines().next().unwrap_or("").to_string();
            return Err(io::Error::new(io::ErrorKind::ConnectionRefused, line));
        }
        let raw_end = raw.len();
        raw.resize(raw.capacity().max(16 * 1024), 0);
        let mut s = Session {
            stream,
            sse: transport == Transport::Sse,
            addr,
            source,
            id: String::new(),
            raw,
            raw_start: body_at,
            raw_end,
            chunk_left: 0,
            crlf_left: 0,
            body: Vec::with_capacity(4096),
            body_start: 0,
            ended: false,
            bytes_read: (raw_end - body_at) as u64,
        };
        let welcome = s.next_text().await?;
        if !welcome.starts_with(br#"{"type":"welcome""#) {
            return Err(io::Error::other(format!("expected a welcome, got {}", String::from_utf8_lossy(&welcome))));
        }
        s.id = crate::scenarios::field_str(&welcome, br#""session":""#)
            .map(|id| String::from_utf8_lossy(id).into_owned())
            .ok_or_else(|| io::Error::other("the welcome has no session"))?;
        Ok(s)
    }

    /// POSTs `requests` (a JSON array) for this session; the status.
    pub async fn post(&self, requests: &str) -> io::Result<u16> {
        emulate(self.addr, self.source, &format!(r#"{{"session":"{}","requests":{requests}}}"#, self.id)).await
    }

    /// Subscribes to `topic` with one POST and waits for the ack down the stream.
    pub async fn subscribe(&mut self, topic: &str) -> io::Result<()> {
        let status = self.post(&format!(r#"[{{"type":"subscribe","topic":"{topic}","id":1}}]"#)).await?;
        if status != 204 {
            return Err(io::Error::other(format!("POST {EMULATION_PATH} answered {status}")));
        }
        loop {
            let reply = self.next_text().await?;
            if reply.starts_with(br#"{"type":"ack""#) {
                return Ok(());
            }
            if reply.starts_with(br#"{"type":"error""#) {
                return Err(io::Error::other(String::from_utf8_lossy(&reply).into_owned()));
            }
        }
    }

    /// Reads a chunk-size line at `raw_start`: `Some(size)` and advances
    /// past it, `None` when the line is not whole yet.
    fn chunk_size(&mut self) -> io::Result<Option<usize>> {
        let avail = &self.raw[self.raw_start..self.raw_end];
        // Hex digits, maybe `;extensions`, CRLF.
        let Some(eol) = memchr::memchr(b'\n', avail) else { return Ok(None) };
        let line = &avail[..eol];
        let hex = line.split(|&b| b == b';' || b == b'\r').next().unwrap_or(b"");
        let size = std::str::from_utf8(hex)
            .ok()
            .and_then(|h| usize::from_str_radix(h.trim(), 16).ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk size {:?}", String::from_utf8_lossy(line))))?;
        self.raw_start += eol + 1;
        if size == 0 {
            // The last chunk; its trailer is not read.
            self.ended = true;
        }
        Ok(Some(size))
    }

    /// The common case, without copying: while nothing is left over in the
    /// body and whole chunks are read, splits their data in place (the
    /// server writes one frame per chunk); a frame cut between chunks goes
    /// to the body. Returns the items taken (see [`split_items`]).
    fn whole_chunks(&mut self, on_frame: &mut impl FnMut(&[u8]), one: bool) -> io::Result<usize> {
        let mut items = 0;
        while self.body.is_empty() && self.chunk_left == 0 && self.crlf_left == 0 && !self.ended {
            let line_at = self.raw_start;
            let Some(size) = self.chunk_size()? else { break };
            if size == 0 {
                break;
            }
            if self.raw_end - self.raw_start < size + 2 {
                // Not whole yet: read it again once it is.
                self.raw_start = line_at;
                break;
            }
            let data = &self.raw[self.raw_start..self.raw_start + size];
            let (used, n, frames) = split_items(data, self.sse, on_frame, one);
            self.body.extend_from_slice(&data[used..]);
            self.raw_start += size + 2;
            items += n;
            if one && frames > 0 {
                break;
            }
        }
        Ok(items)
    }

    /// Moves the chunks' data of what was read into the body; false when
    /// nothing was moved.
    fn dechunk(&mut self) -> io::Result<bool> {
        let mut moved = false;
        while self.raw_start < self.raw_end && !self.ended {
            let avail = &self.raw[self.raw_start..self.raw_end];
            if self.chunk_left > 0 {
                let take = self.chunk_left.min(avail.len());
                self.body.extend_from_slice(&avail[..take]);
                self.chunk_left -= take;
                self.raw_start += take;
                moved = true;
            } else if self.crlf_left > 0 {
                let take = self.crlf_left.min(avail.len());
                self.crlf_left -= take;
                self.raw_start += take;
            } else {
                match self.chunk_size()? {
                    None => break,
                    Some(0) => {}
                    Some(size) => (self.chunk_left, self.crlf_left) = (size, 2),
                }
            }
        }
        Ok(moved)
    }

    /// Hands the whole frames of the body to `on_frame`; returns the items taken.
    fn split(&mut self, on_frame: &mut impl FnMut(&[u8]), one: bool) -> usize {
        let (used, items, _) = split_items(&self.body[self.body_start..], self.sse, on_frame, one);
        self.body_start += used;
        if self.body_start == self.body.len() {
            self.body.clear();
            self.body_start = 0;
        } else if self.body_start > 64 * 1024 {
            self.body.drain(..self.body_start);
            self.body_start = 0;
        }
        items
    }

    /// Calls `on_frame(json)` for every frame of what is buffered or one
    /// socket read brings (at least one item, a heartbeat counting).
    /// Returns false once the response is over (or the connection is).
    pub async fn read_frames(&mut self, on_frame: impl FnMut(&[u8])) -> io::Result<bool> {
        self.read(on_frame, false).await
    }

    async fn read(&mut self, mut on_frame: impl FnMut(&[u8]), one: bool) -> io::Result<bool> {
        loop {
            if self.split(&mut on_frame, one) > 0 {
                return Ok(true);
            }
            if self.whole_chunks(&mut on_frame, one)? > 0 {
                return Ok(true);
            }
            if self.dechunk()? {
                continue;
            }
            if self.ended {
                return Ok(false);
            }
            // Compact, grow when full, read more.
            if self.raw_start > 0 {
                self.raw.copy_within(self.raw_start..self.raw_end, 0);
                self.raw_end -= self.raw_start;
                self.raw_start = 0;
            }
            if self.raw_end == self.raw.len() {
                self.raw.resize(self.raw.len() * 2, 0);
            }
            let n = self.stream.read(&mut self.raw[self.raw_end..]).await?;
            if n == 0 {
                return Ok(false);
            }
            self.raw_end += n;
            self.bytes_read += n as u64;
        }
    }

    /// The next frame (the ones after it stay buffered).
    pub async fn next_text(&mut self) -> io::Result<Vec<u8>> {
        let mut got = None;
        while got.is_none() {
            if !self.read(|f| got = Some(f.to_vec()), true).await? {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the stream ended"));
            }
        }
        Ok(got.unwrap())
    }
}

/// Splits the whole items at the start of `body` (NDJSON lines, or SSE
/// events ended by an empty line) and hands each frame's JSON to
/// `on_frame` (heartbeats, comments and the padding are items without a
/// frame). `one`: stop after the first frame. Returns (bytes used, items,
/// frames).
fn split_items(body: &[u8], sse: bool, on_frame: &mut impl FnMut(&[u8]), one: bool) -> (usize, usize, usize) {
    let (mut at, mut items, mut frames) = (0, 0, 0);
    while !(one && frames > 0) {
        let rest = &body[at..];
        if sse {
            // An event ends with an empty line: the first "\n\n".
            let mut end = None;
            let mut from = 0;
            while let Some(nl) = memchr::memchr(b'\n', &rest[from..]) {
                let nl = from + nl;
                if rest.get(nl + 1) == Some(&b'\n') {
                    end = Some(nl);
                    break;
                }
                from = nl + 1;
            }
            let Some(end) = end else { break };
            let event = &rest[..end];
            at += end + 2;
            items += 1;
            // One `data:` line per event from this server (JSON has no raw
            // newlines); several are joined by newlines.
            let mut data: Option<Vec<u8>> = None;
            let mut single: Option<&[u8]> = None;
            for line in event.split(|&b| b == b'\n') {
                let Some(value) = line.strip_prefix(b"data:") else { continue };
                let value = value.strip_prefix(b" ").unwrap_or(value);
                match (&mut data, single) {
                    (None, None) => single = Some(value),
                    (None, Some(first)) => data = Some([first, b"\n", value].concat()),
                    (Some(joined), _) => {
                        joined.push(b'\n');
                        joined.extend_from_slice(value);
                    }
                }
            }
            match (data, single) {
                (Some(joined), _) => on_frame(&joined),
                (None, Some(value)) => on_frame(value),
                (None, None) => continue,
            }
            frames += 1;
        } else {
            let Some(end) = memchr::memchr(b'\n', rest) else { break };
            let line = &rest[..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            at += end + 1;
            items += 1;
            if !line.is_empty() {
                on_frame(line);
                frames += 1;
            }
        }
    }
    (at, items, frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(body: &[u8], sse: bool) -> (usize, usize, Vec<String>) {
        let mut got = Vec::new();
        let (used, items, n) = split_items(body, sse, &mut |f: &[u8]| got.push(String::from_utf8(f.to_vec()).unwrap()), false);
        assert_eq!(n, got.len());
        (used, items, got)
    }

    #[test]
    fn ndjson_lines_and_sse_events_split_heartbeats_skipped() {
        assert_eq!(frames(b"{\"a\":1}\n\n{\"b\":2}\n{\"c\"", false), (17, 3, vec![r#"{"a":1}"#.into(), r#"{"b":2}"#.into()]));
        let sse = b":   padding\n\ndata: {\"a\":1}\n\n: ping\n\ndata:{\"b\":2}\ndata: 3\n\ndata: {\"cut";
        assert_eq!(frames(sse, true), (sse.len() - 11, 4, vec![r#"{"a":1}"#.into(), "{\"b\":2}\n3".into()]));
    }

    /// A response cut into 5-byte chunks (as a proxy may re-chunk it),
    /// written a few at a time: frames span chunks and reads; and in one
    /// chunk holding every frame.
    #[tokio::test]
    async fn sessions_decode_frames_cut_across_chunks_and_reads() {
        for (transport, cut) in [(Transport::HttpStream, 5), (Transport::Sse, 5), (Transport::HttpStream, 4096), (Transport::Sse, 4096)] {
            let body = match transport {
                Transport::Sse => format!(
                    ":{}\n\ndata: {{\"type\":\"welcome\",\"session\":\"s1\"}}\n\ndata: {{\"n\":1}}\n\n: ping\n\ndata: {{\"n\":2}}\n\n",
                    " ".repeat(100)
                ),
                _ => "{\"type\":\"welcome\",\"session\":\"s1\"}\n{\"n\":1}\n\n{\"n\":2}\n".to_string(),
            };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let (mut c, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 4096];
                let _ = c.read(&mut request).await.unwrap();
                c.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").await.unwrap();
                for (i, piece) in body.as_bytes().chunks(cut).enumerate() {
                    c.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).await.unwrap();
                    c.write_all(piece).await.unwrap();
                    c.write_all(b"\r\n").await.unwrap();
                    if i % 3 == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                c.write_all(b"0\r\n\r\n").await.unwrap();
            });
            let mut s = Session::open(addr, None, transport, "").await.unwrap();
            assert_eq!(s.id, "s1");
            let mut got = Vec::new();
            while s.read_frames(|f| got.push(String::from_utf8(f.to_vec()).unwrap())).await.unwrap() {}
            assert_eq!(got, [r#"{"n":1}"#, r#"{"n":2}"#], "{transport:?} in chunks of {cut}");
        }
    }
}
