//! Test helpers: start the real `shardcast` binary on an ephemeral port and
//! drive it with a real WebSocket client (tungstenite).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub const BIN: &str = env!("CARGO_BIN_EXE_shardcast");

/// A running server; killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: String,
    /// The admin listener (`host:port`), when it runs.
    pub admin: Option<String>,
    _config: Option<tempfile::NamedTempFile>,
    log: tempfile::NamedTempFile,
}

impl Server {
    /// Starts `shardcast --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
    /// [--config <toml>] <args>` (an `--admin-listen` in `args` wins).
    pub fn start(config: &str, args: &[&str]) -> Server {
        Server::try_start(config, args).unwrap_or_else(|e| panic!("server did not start: {e}"))
    }

    pub fn try_start(config: &str, args: &[&str]) -> Result<Server, String> {
        let file = (!config.is_empty()).then(|| {
            let mut f = tempfile::NamedTempFile::new().unwrap();
            f.write_all(config.as_bytes()).unwrap();
            f
        });
        let mut cmd = Command::new(BIN);
        cmd.args(["--listen", "127.0.0.1:0"]);
        // The admin plane prints a second line when it runs. Tests that set
        // [admin] in their config pass --admin-listen too.
        let chosen = args.windows(2).find(|w| w[0] == "--admin-listen").map(|w| w[1]);
        if chosen.is_none() {
            cmd.args(["--admin-listen", "127.0.0.1:0"]);
        }
        let expect_admin = chosen.is_none_or(|a| !a.is_empty());
        cmd.args(args);
        if let Some(f) = &file {
            cmd.arg("--config").arg(f.path());
        }
        let mut server = Server::spawn(cmd, expect_admin)?;
        server._config = file;
        Ok(server)
    }

    /// Runs `cmd` (the binary, or a shell that execs it) with its stderr
    /// logged, and reads its readiness line, and the admin line after it
    /// when `expect_admin`.
    pub fn spawn(mut cmd: Command, expect_admin: bool) -> Result<Server, String> {
        let log = tempfile::NamedTempFile::new().unwrap();
        cmd.stdout(Stdio::piped()).stderr(log.reopen().unwrap());
        let mut child = cmd.spawn().map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().unwrap();
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        let line = line.trim();
        let Some(addr) = line.strip_prefix("listening on ws://").or_else(|| line.strip_prefix("listening on wss://")) else {
            let _ = child.wait();
            let err = std::fs::read_to_string(log.path()).unwrap_or_default();
            return Err(format!("no readiness line; stdout {line:?}, stderr {err}"));
        };
        let addr = addr.to_string();
        let mut admin = None;
        if expect_admin {
            let mut next = String::new();
            stdout.read_line(&mut next).map_err(|e| e.to_string())?;
            admin = next.trim().strip_prefix("admin listening on http://").map(str::to_string);
        }
        Ok(Server { child, addr, admin, _config: None, log })
    }

    /// Everything the server logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.url("/ws"))
    }

    /// Connects until one client lands on each of `shards` shards.
    pub fn clients_on_every_shard(&self, shards: usize) -> Vec<Client> {
        on_every_shard(shards, || self.client())
    }

    /// Resident set size of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").trim().parse().unwrap()
    }

    /// The admin listener's address; panics when it does not run.
    pub fn admin(&self) -> &str {
        self.admin.as_deref().expect("the admin plane runs")
    }

    /// A metric summed over shards, from the admin listener's `/metrics`.
    pub fn metric(&self, name: &str) -> u64 {
        let page = http_get(self.admin(), "/metrics");
        page.lines()
            .filter(|l| l.starts_with(&format!("shardcast_{name}{{")))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    }

    /// A node-wide metric without labels, from `/metrics`.
    pub fn node_metric(&self, name: &str) -> u64 {
        let page = http_get(self.admin(), "/metrics");
        let prefix = format!("shardcast_{name} ");
        let line = page.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {prefix}in {page}"));
        line[prefix.len()..].parse::<f64>().unwrap() as u64
    }

    /// A metric with these labels (any others summed over), from `/metrics`.
    pub fn metric_labelled(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let page = http_get(self.admin(), "/metrics");
        page.lines()
            .filter(|l| l.starts_with(&format!("shardcast_{name}{{")))
            .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
            .sum()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Raw HTTP GET; returns the whole response.
pub fn http_get(addr: &str, path: &str) -> String {
    raw_request(addr, format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
}

/// Raw HTTP POST of a JSON body; returns the whole response.
pub fn http_post(addr: &str, path: &str, body: &Value) -> String {
    let body = body.to_string();
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    raw_request(addr, format!("{head}{body}").as_bytes())
}

/// Sends raw bytes and returns everything the server answers before closing.
pub fn raw_request(addr: &str, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The HTTP status of a WebSocket handshake refused by the server.
pub fn refused_status(url: &str, origin: Option<&str>) -> u16 {
    use tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", o.parse().unwrap());
    }
    match tungstenite::connect(req) {
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Ok(_) => 101,
        Err(e) => panic!("unexpected handshake error {e}"),
    }
}

/// A WebSocket client that knows protocol v1.
pub struct Client {
    pub ws: WebSocket<MaybeTlsStream<TcpStream>>,
    pub shard: usize,
    pub id: String,
}

impl Client {
    /// Connects; on `/ws` also reads the welcome frame.
    pub fn connect(url: &str) -> Client {
        let mut c = Client::upgrade(url);
        if url.ends_with("/ws") {
            c.expect_welcome();
        }
        c
    }

    /// Completes the WebSocket handshake only (no frame read).
    pub fn upgrade<R: tungstenite::client::IntoClientRequest>(request: R) -> Client {
        let (ws, _) = tungstenite::connect(request).unwrap_or_else(|e| panic!("connect: {e}"));
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        }
        Client { ws, shard: usize::MAX, id: String::new() }
    }

    /// Reads the welcome frame (it must be next) and returns it.
    pub fn expect_welcome(&mut self) -> Value {
        let w = self.recv();
        assert_eq!(w["type"], "welcome", "{w}");
        self.shard = w["shard"].as_u64().unwrap() as usize;
        self.id = w["client"].as_str().unwrap().to_string();
        w
    }

    pub fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).unwrap();
    }

    pub fn send_raw(&mut self, m: Message) {
        self.ws.send(m).unwrap();
    }

    /// Next data message (pings are answered by tungstenite and skipped).
    pub fn recv_message(&mut self) -> Message {
        loop {
            match self.ws.read() {
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
                Ok(m) => return m,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    pub fn recv(&mut self) -> Value {
        match self.recv_message() {
            Message::Text(t) => serde_json::from_str(&t).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Sends a request with an id and returns the reply.
    pub fn request(&mut self, mut v: Value, id: u64) -> Value {
        v["id"] = json!(id);
        self.send(v);
        let r = self.recv();
        assert_eq!(r["id"], json!(id), "reply to request {id}: {r}");
        r
    }

    pub fn subscribe(&mut self, topic: &str) {
        let r = self.request(json!({"type":"subscribe","topic":topic}), 1_000_000);
        assert_eq!(r["type"], "ack", "{r}");
    }

    pub fn publish(&mut self, topic: &str, payload: Value) {
        self.send(json!({"type":"publish","topic":topic,"payload":payload}));
    }

    /// Vanishes without a close frame: the TCP connection is shut down.
    pub fn abort(self) {
        if let MaybeTlsStream::Plain(s) = self.ws.get_ref() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Reads until the server's close frame; returns its code and reason.
    pub fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.ws.read() {
                Ok(Message::Close(Some(f))) => return (f.code.into(), f.reason.to_string()),
                Ok(Message::Close(None)) => return (CloseCode::Status.into(), String::new()),
                Ok(_) => continue,
                Err(e) => panic!("connection ended without a close frame: {e}"),
            }
        }
    }

    /// The next text frame, if one arrives within `wait`.
    pub fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        if let MaybeTlsStream::Plain(s) = self.ws.get_ref() {
            s.set_read_timeout(Some(wait)).unwrap();
        }
        let got = loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => break Some(serde_json::from_str(&t).unwrap()),
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Err(tungstenite::Error::Io(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break None,
                other => panic!("expected a text frame or nothing, got {other:?}"),
            }
        };
        if let MaybeTlsStream::Plain(s) = self.ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        }
        got
    }

    /// Asserts nothing arrives within `wait`.
    pub fn expect_silence(&mut self, wait: Duration) {
        if let MaybeTlsStream::Plain(s) = self.ws.get_ref() {
            s.set_read_timeout(Some(wait)).unwrap();
        }
        match self.ws.read() {
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Ok(Message::Ping(_)) => {}
            other => panic!("expected silence, got {other:?}"),
        }
        if let MaybeTlsStream::Plain(s) = self.ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        }
    }
}

/// Calls `connect` (which returns a welcomed client) until one client lands
/// on each of `shards` shards.
pub fn on_every_shard(shards: usize, mut connect: impl FnMut() -> Client) -> Vec<Client> {
    let mut found: Vec<Option<Client>> = (0..shards).map(|_| None).collect();
    for _ in 0..200 {
        let c = connect();
        let s = c.shard;
        if found[s].is_none() {
            found[s] = Some(c);
        }
        if found.iter().all(Option::is_some) {
            return found.into_iter().map(Option::unwrap).collect();
        }
    }
    panic!("the kernel never spread 200 connections over {shards} shards");
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A real `redis-server` on a loopback port, without persistence; killed when dropped.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    password: Option<String>,
    /// Its working directory: whatever it writes lands there, not in the
    /// repository (a replica's sync, a `SAVE`).
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_on(free_port(), None)
    }

    pub fn start_on(port: u16, password: Option<&str>) -> Redis {
        let mut r = Redis { child: None, port, password: password.map(str::to_string), dir: tempfile::tempdir().unwrap() };
        r.restart();
        r
    }

    /// (Re)starts the server on the same port.
    pub fn restart(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        self.child = Some(cmd.spawn().expect("redis-server is installed (tests/run.sh installs it)"));
        eventually(Duration::from_secs(10), "redis-server to accept connections", || {
            self.connection_opt().is_some()
        });
    }

    /// Sends `sig` (SIGSTOP pauses it with every connection left open; SIGCONT resumes).
    pub fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().expect("running").id();
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(pid as i32, sig) };
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    fn connection_opt(&self) -> Option<redis::Connection> {
        let mut c = redis::Client::open(self.url()).ok()?.get_connection().ok()?;
        redis::cmd("PING").query::<String>(&mut c).ok()?;
        Some(c)
    }

    pub fn connection(&self) -> redis::Connection {
        self.connection_opt().expect("redis is up")
    }

    /// Topic channels with at least one subscriber (`PUBSUB CHANNELS`),
    /// sorted, leaving out the nodes' own channels (`shardcast:$nodes`, the
    /// admin planes'; `shardcast:$node:<id>`, requests for a node's
    /// fallback sessions).
    pub fn channels(&self) -> Vec<String> {
        let mut v: Vec<String> = redis::cmd("PUBSUB").arg("CHANNELS").query(&mut self.connection()).unwrap();
        v.retain(|c| c != "shardcast:$nodes" && !c.starts_with("shardcast:$node:"));
        v.sort();
        v
    }

    /// Subscribers of one channel (`PUBSUB NUMSUB`).
    pub fn numsub(&self, channel: &str) -> u64 {
        let (_, n): (String, u64) = redis::cmd("PUBSUB").arg("NUMSUB").arg(channel).query(&mut self.connection()).unwrap();
        n
    }

    pub fn publish(&self, channel: &str, data: &[u8]) -> u64 {
        redis::cmd("PUBLISH").arg(channel).arg(data).query(&mut self.connection()).unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A raw WebSocket client: the upgrade and every frame written and read by
/// hand, for tests that must control each bit (reserved bits, odd lengths,
/// a byte per write).
pub struct RawWs {
    pub s: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Sends the upgrade for `path` with `extra` header lines; returns the
    /// client (positioned after the response head) and the head.
    pub fn open(addr: &str, path: &str, extra: &str) -> (RawWs, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = RawWs { s, buf: Vec::new() };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(raw.fill() > 0, "closed during the handshake");
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).into_owned();
        raw.buf.drain(..end);
        (raw, head)
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 65536];
        let n = self.s.read(&mut chunk).unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Sends one masked frame whose first byte (FIN, RSV, opcode) is `first`.
    pub fn send_first_byte(&mut self, first: u8, payload: &[u8]) {
        let mut out = Vec::new();
        shardcast::ws::frame::put_client_frame(&mut out, first & 0x0f, first & 0x80 != 0, [0x37, 0xfa, 0x21, 0x3d], payload);
        out[0] = first;
        self.s.write_all(&out).unwrap();
    }

    pub fn send(&mut self, opcode: u8, fin: bool, payload: &[u8]) {
        self.send_first_byte((u8::from(fin) << 7) | opcode, payload);
    }

    /// Sends one final frame a byte per write.
    pub fn send_dribbled(&mut self, opcode: u8, payload: &[u8]) {
        let mut out = Vec::new();
        shardcast::ws::frame::put_client_frame(&mut out, opcode, true, [0x37, 0xfa, 0x21, 0x3d], payload);
        for b in out {
            self.s.write_all(&[b]).unwrap();
            self.s.flush().unwrap();
        }
    }

    /// Next server frame: (first byte, payload); `None` once the server closed TCP.
    pub fn recv_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let (hl, len) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => (4, u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize),
                    127 if self.buf.len() >= 10 => (10, u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize),
                    126 | 127 => (usize::MAX, 0),
                    n => (2, n as usize),
                };
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are unmasked");
                if hl != usize::MAX && self.buf.len() >= hl + len {
                    let first = self.buf[0];
                    let payload = self.buf[hl..hl + len].to_vec();
                    self.buf.drain(..hl + len);
                    return Some((first, payload));
                }
            }
            if self.fill() == 0 {
                return None;
            }
        }
    }

    /// Next server frame: (opcode, payload).
    pub fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        self.recv_frame().map(|(first, payload)| (first & 0x0f, payload))
    }

    /// Reads frames until the close frame; returns its code.
    pub fn close_code(&mut self) -> u16 {
        loop {
            let (op, payload) = self.recv().expect("a close frame");
            if op == 0x8 {
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    }

    /// The next frame is a close with `code`, and then TCP closes.
    pub fn expect_close(&mut self, code: u16) {
        let (op, payload) = self.recv().expect("a close frame");
        assert_eq!(op, 0x8);
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code);
        assert!(self.recv().is_none(), "TCP closed after the close frame");
    }
}

/// A TCP proxy to a loopback port that holds back, by `delay`, every chunk
/// a client sends that contains `marker` (chunks after it on the same
/// connection wait behind it, so order is kept). Stops when dropped.
pub struct DelayProxy {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl DelayProxy {
    pub fn start(upstream: u16, marker: &'static [u8], delay: Duration) -> DelayProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                client.set_nonblocking(false).unwrap();
                let pump = |mut from: TcpStream, mut to: TcpStream, held: bool, stop: std::sync::Arc<AtomicBool>| {
                    std::thread::spawn(move || {
                        from.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                        let mut buf = [0u8; 64 * 1024];
                        while !stop.load(Ordering::Relaxed) {
                            let n = match from.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => n,
                                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
                                Err(_) => break,
                            };
                            if held && buf[..n].windows(marker.len()).any(|w| w == marker) {
                                std::thread::sleep(delay);
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                };
                pump(client.try_clone().unwrap(), server.try_clone().unwrap(), true, stopping.clone());
                pump(server, client, false, stopping.clone());
            }
        });
        DelayProxy { port, stop }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
