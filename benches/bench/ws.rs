//! A minimal, fast WebSocket client for load generation: raw HTTP upgrade,
//! server frames parsed in place, client frames masked with a zero key
//! (valid per RFC 6455 and free to apply), no per-message allocation.
//! Optionally over TLS (`wss://`, tokio-rustls) and with permessage-deflate
//! (compressed server messages are inflated before they are counted).

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

pub const OP_TEXT: u8 = 1;
pub const OP_CLOSE: u8 = 8;
pub const OP_PING: u8 = 9;

/// Where to connect: `ws://IP:PORT/path` or `wss://IP:PORT/path`, and how.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub path: String,
    /// TLS client settings for `wss://` (the server's certificate trusted).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Offer permessage-deflate and inflate compressed messages.
    pub deflate: bool,
    /// A fixed receive buffer (SO_RCVBUF) instead of the kernel's
    /// autotuning: a client that reads slowly then holds what a slow link
    /// would, not megabytes of the host's TCP memory.
    pub recv_buffer: Option<u32>,
}

impl Target {
    /// Parses a URL; `wss://` needs `ca`, the PEM certificate to trust.
    pub fn parse(url: &str, ca: Option<&str>) -> Result<Target, String> {
        let (rest, tls) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
            (Some(rest), _) => (rest, None),
            (_, Some(rest)) => (rest, Some(shardcast::tls::client_config(Some(std::path::Path::new(ca.ok_or(format!("{url}: wss:// needs --ca FILE"))?)))?)),
            _ => return Err(format!("{url}: only ws:// and wss:// URLs")),
        };
        let (hostport, path) = rest.split_once('/').map_or((rest, "/"), |(h, p)| (h, p));
        let addr = hostport.parse().map_err(|_| format!("{url}: expected ws://IP:PORT/path"))?;
        let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
        Ok(Target { addr, path, tls, deflate: false, recv_buffer: None })
    }

    pub fn with_path(&self, path: &str) -> Target {
        Target { path: path.to_string(), ..self.clone() }
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "wss"
        } else {
            "ws"
        }
    }
}

/// A connection's byte stream: plain TCP or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Reads and writes, whichever the stream is.
trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<X: AsyncRead + AsyncWrite + Unpin> Io for X {}

impl Stream {
    fn io(self: Pin<&mut Self>) -> Pin<&mut dyn Io> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s),
            Stream::Tls(s) => Pin::new(s.as_mut()),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.io().poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.io().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_shutdown(cx)
    }
}

thread_local! {
    /// The generator thread's decompressor (the server compresses every
    /// message on its own, so one reset per message serves every connection).
    static INFLATER: RefCell<shardcast::ws::deflate::Decompressor> = RefCell::default();
    /// Payload bytes of compressed frames received, and what they inflated to.
    pub static DEFLATE_BYTES: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// Appends a final client frame masked with the zero key (valid, and free).
pub fn put_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    shardcast::ws::frame::put_client_frame(out, opcode, true, [0; 4], payload);
}

/// Parses a server frame header: (first byte: FIN, RSV1, opcode; header length, payload length).
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
    Some((buf[0], hl, len))
}

/// One connection.
pub struct Ws {
    pub stream: Stream,
    /// The code of the server's close frame, once one was read (0: none given).
    pub closed: Option<u16>,
    /// Bytes read from the socket since the upgrade's response.
    pub bytes_read: u64,
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
        if let Some(bytes) = target.recv_buffer {
            // Before connect: the window scale is agreed in the handshake.
            socket.set_recv_buffer_size(bytes)?;
        }
        if linger0 {
            // Close with RST: no TIME_WAIT, so a connect storm cannot exhaust ports.
            socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO))?;
        }
        let tcp = socket.connect(target.addr).await?;
        tcp.set_nodelay(true)?;
        let mut stream = match &target.tls {
            Some(config) => {
                let name = rustls::pki_types::ServerName::IpAddress(target.addr.ip().into());
                let tls = tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp).await?;
                Stream::Tls(Box::new(tls))
            }
            None => Stream::Plain(tcp),
        };
        let extensions = if target.deflate { "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" } else { "" };
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extensions}\r\n",
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
                return Ok(Ws { stream, closed: None, bytes_read: (end - start) as u64, buf, start, end });
            }
            if end == buf.len() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "handshake response too large"));
            }
        }
    }

    /// Writes bytes already framed, and flushes them (TLS buffers records).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    pub async fn send_text(&mut self, payload: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        put_frame(&mut out, OP_TEXT, payload);
        self.stream.write_all(&out).await?;
        self.stream.flush().await
    }

    /// Calls `on_frame(opcode, payload)` for every complete frame in one
    /// socket read (at least one frame); answers pings. Returns false on close.
    pub async fn read_frames(&mut self, mut on_frame: impl FnMut(u8, &[u8])) -> io::Result<bool> {
        let mut handled = 0;
        loop {
            while let Some((first, hl, len)) = parse_header(&self.buf[self.start..self.end]) {
                if self.end - self.start < hl + len {
                    break;
                }
                let payload_at = self.start + hl;
                self.start += hl + len;
                handled += 1;
                let payload = &self.buf[payload_at..payload_at + len];
                match first & 0x0f {
                    OP_PING => {
                        let mut pong = Vec::with_capacity(len + 6);
                        put_frame(&mut pong, 0xA, payload);
                        self.stream.write_all(&pong).await?;
                        self.stream.flush().await?;
                    }
                    OP_CLOSE => {
                        self.closed = Some(if len >= 2 { u16::from_be_bytes([payload[0], payload[1]]) } else { 0 });
                        return Ok(false);
                    }
                    op if first & 0x40 != 0 => {
                        // RSV1: a compressed message (the server sends unfragmented ones).
                        let mut inflated = Vec::new();
                        INFLATER.with(|d| d.borrow_mut().inflate(payload, 1 << 26, &mut inflated)).map_err(|e| io::Error::other(format!("{e:?}")))?;
                        DEFLATE_BYTES.with(|b| {
                            let (wire, out) = b.get();
                            b.set((wire + len as u64, out + inflated.len() as u64));
                        });
                        on_frame(op, &inflated);
                    }
                    op => on_frame(op, payload),
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
            self.bytes_read += n as u64;
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
        self.subscribe(topic).await
    }

    /// Subscribes with an id and waits for the ack.
    pub async fn subscribe(&mut self, topic: &str) -> io::Result<()> {
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
