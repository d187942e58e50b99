//! A minimal, fast WebSocket client for load generation: raw HTTP upgrade,
//! server frames parsed in place, client frames masked with a zero key
//! (valid per RFC 6455 and free to apply), no per-message allocation.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

pub const OP_TEXT: u8 = 1;
pub const OP_CLOSE: u8 = 8;
pub const OP_PING: u8 = 9;

/// Where to connect: `ws://IP:PORT/path`.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url.strip_prefix("ws://").ok_or_else(|| format!("{url}: only ws:// URLs"))?;
        let (hostport, path) = rest.split_once('/').map_or((rest, "/"), |(h, p)| (h, p));
        let addr = hostport.parse().map_err(|_| format!("{url}: expected ws://IP:PORT/path"))?;
        let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
        Ok(Target { addr, path })
    }

    pub fn with_path(&self, path: &str) -> Target {
        Target { addr: self.addr, path: path.to_string() }
    }
}

/// Appends a final client frame masked with the zero key (valid, and free).
pub fn put_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    shardcast::ws::frame::put_client_frame(out, opcode, true, [0; 4], payload);
}

/// Parses a server frame header: (fin+opcode byte, header length, payload length).
fn parse_header(buf: &[u8]) -> Option<(u8, usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (hl, len) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
        127 if buf.len() >= 10 => (10, u64::from_be_bytes(buf[2..10].try_into().ok()?) as usize),
        126 | 127 => return None,
        n => (2, n as usize),
    };
    Some((buf[0] & 0x0f, hl, len))
}

/// One connection.
pub struct Ws {
    pub stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Ws {
    /// Connects (from `source`, when given), upgrades, and returns the client.
    pub async fn connect(target: &Target, source: Option<IpAddr>, linger0: bool) -> io::Result<Ws> {
        let socket = if target.addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        if linger0 {
            // Close with RST: no TIME_WAIT, so a connect storm cannot exhaust ports.
            socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO))?;
        }
        let mut stream = socket.connect(target.addr).await?;
        stream.set_nodelay(true)?;
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            target.path, target.addr
        );
        stream.write_all(req.as_bytes()).await?;
        let mut buf = vec![0u8; 16 * 1024];
        let mut end = 0;
        loop {
            let n = stream.read(&mut buf[end..]).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed during handshake"));
            }
            end += n;
            if let Some(pos) = buf[..end].windows(4).position(|w| w == b"\r\n\r\n") {
                if !buf.starts_with(b"HTTP/1.1 101") {
                    let head = String::from_utf8_lossy(&buf[..pos]).lines().next().unwrap_or("").to_string();
                    return Err(io::Error::new(io::ErrorKind::ConnectionRefused, head));
                }
                let start = pos + 4;
                return Ok(Ws { stream, buf, start, end });
            }
            if end == buf.len() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "handshake response too large"));
            }
        }
    }

    pub async fn send_text(&mut self, payload: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        put_frame(&mut out, OP_TEXT, payload);
        self.stream.write_all(&out).await
    }

    /// Calls `on_frame(opcode, payload)` for every complete frame in one
    /// socket read (at least one frame); answers pings. Returns false on close.
    pub async fn read_frames(&mut self, mut on_frame: impl FnMut(u8, &[u8])) -> io::Result<bool> {
        let mut handled = 0;
        loop {
            while let Some((op, hl, len)) = parse_header(&self.buf[self.start..self.end]) {
                if self.end - self.start < hl + len {
                    break;
                }
                let payload_at = self.start + hl;
                self.start += hl + len;
                handled += 1;
                match op {
                    OP_PING => {
                        let mut pong = Vec::with_capacity(len + 6);
                        put_frame(&mut pong, 0xA, &self.buf[payload_at..payload_at + len]);
                        self.stream.write_all(&pong).await?;
                    }
                    OP_CLOSE => return Ok(false),
                    _ => on_frame(op, &self.buf[payload_at..payload_at + len]),
                }
            }
            if handled > 0 {
                return Ok(true);
            }
            // Compact, grow if one frame is larger than the buffer, read more.
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let n = self.stream.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Ok(false);
            }
            self.end += n;
        }
    }

    /// Waits for the next text frame and returns it.
    pub async fn next_text(&mut self) -> io::Result<Vec<u8>> {
        let mut got = None;
        while got.is_none() {
            if !self.read_frames(|op, p| {
                if op == OP_TEXT && got.is_none() {
                    got = Some(p.to_vec());
                }
            })
            .await?
            {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
            }
        }
        Ok(got.unwrap())
    }

    /// Reads the welcome frame, subscribes with an id, waits for the ack.
    pub async fn welcome_and_subscribe(&mut self, topic: &str) -> io::Result<()> {
        self.next_text().await?;
        let req = format!(r#"{{"type":"subscribe","topic":"{topic}","id":1}}"#);
        self.send_text(req.as_bytes()).await?;
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
}

/// Finds `"key":` in `text` and parses the unsigned integer after it.
pub fn field(text: &[u8], key: &[u8]) -> Option<u64> {
    let pos = text.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = text[pos..].iter().take_while(|b| b.is_ascii_digit());
    let mut v: u64 = 0;
    let mut any = false;
    for d in digits {
        v = v.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
        any = true;
    }
    any.then_some(v)
}
