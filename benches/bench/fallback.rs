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

    /// 0, 1, 2: the order of the reports' `transport` detail.
    pub fn index(self) -> f64 {
        match self {
            Transport::WebSocket => 0.0,
            Transport::HttpStream => 1.0,
            Transport::Sse => 2.0,
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
                // A chunk-size line: hex digits, maybe `;extensions`, CRLF.
                let Some(eol) = memchr::memchr(b'\n', avail) else { break };
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
                } else {
                    self.chunk_left = size;
                    self.crlf_left = 2;
                }
            }
        }
        Ok(moved)
    }

    /// Hands every whole frame of the body to `on_frame` (heartbeats and
    /// comments are skipped); returns how many items (frames, heartbeats,
    /// comments) were taken.
    /// `one`: stop after the first frame, leaving the rest buffered.
    fn split(&mut self, on_frame: &mut impl FnMut(&[u8]), one: bool) -> usize {
        let mut items = 0;
        let mut frames = 0;
        while !(one && frames > 0) {
            let rest = &self.body[self.body_start..];
            if self.sse {
                // An event ends with an empty line.
                let Some(end) = memchr::memmem::find(rest, b"\n\n") else { break };
                let event = &rest[..end];
                self.body_start += end + 2;
                items += 1;
                // One `data:` line per event from this server (JSON has no
                // raw newlines); several would be joined by newlines.
                let mut data: Option<Vec<u8>> = None;
                let mut single: Option<&[u8]> = None;
                for line in event.split(|&b| b == b'\n') {
                    let Some(value) = line.strip_prefix(b"data:") else { continue };
                    let value = value.strip_prefix(b" ").unwrap_or(value);
                    match (&mut data, single) {
                        (None, None) => single = Some(value),
                        (None, Some(first)) => {
                            let mut joined = first.to_vec();
                            joined.push(b'\n');
                            joined.extend_from_slice(value);
                            data = Some(joined);
                        }
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
                let frame = !line.is_empty();
                if frame {
                    on_frame(line);
                }
                self.body_start += end + 1;
                items += 1;
                frames += usize::from(frame);
            }
        }
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
            if !self.read(|f| got = Some(f.to_vec()), true).await?
            {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the stream ended"));
            }
        }
        Ok(got.unwrap())
    }
}
