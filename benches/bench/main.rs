//! shardcast-bench: the load generator users run to measure shardcast (or
//! any server speaking protocol v1, docs/protocol.md) on their own hardware.
//!
//! Scenarios: `fanout`, `rooms`, `idle`, `connect`, `echo`, `compare`
//! (one scenario against shardcast and the tokio baseline, alternating), and
//! `auth` (what connection tokens cost: handshakes without a token, with
//! HS256 and with RS256, and fan-out with auth off and on, interleaved), and
//! `wire` (TLS vs plain, compress-once vs per-subscriber, interleaved), and
//! `handshakes`, `publish-proxy`, `webhooks` (what the backend hooks and
//! webhooks cost, against a backend in this process: `backend.rs`), and
//! `transports` (fan-out and idle memory over WebSocket, HTTP-streaming and
//! SSE, interleaved; `fanout` and `idle` take `--transport`).
//! Every run reports the server's CPU seconds and RSS (`--server-pid`, or
//! `--spawn "CMD"`), the generator's own CPU, and the efficiency figure
//! "per server CPU-second". The generator runs on one thread; see
//! benches/README.md for pinning server and generator to different cores.

mod admin;
mod auth;
mod backend;
mod bridge;
mod fallback;
mod history;
mod hooks;
mod proc;
mod progress;
mod report;
mod scenarios;
mod soak;
mod transports;
mod wire;
mod ws;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use progress::Progress;
use report::Report;
use ws::Target;

#[derive(Debug, Parser)]
#[command(name = "shardcast-bench", version, about = "Load generator for shardcast and protocol-v1 servers")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// S subscribers on T topics, P publishers, payload B, at rate R or --max.
    Fanout(FanoutArgs),
    /// C clients in rooms of K, each publishing r msg/s to its room.
    Rooms(RoomsArgs),
    /// Open N subscribed connections and hold them: server RSS per connection, idle CPU.
    Idle(IdleArgs),
    /// Handshakes per second: connect, handshake, subscribe, ack, close.
    Connect(ConnectArgs),
    /// Round trips on the echo endpoint.
    Echo(EchoArgs),
    /// Acknowledged publishes: C connections each publishing with an id,
    /// at most W awaiting their ack; ops are acks, latency publish to ack.
    Publish(PublishArgs),
    /// Run one scenario against shardcast and the baseline, alternating.
    Compare(CompareArgs),
    /// What auth costs: handshakes per server CPU-second with no token, an
    /// HS256 and an RS256 token; fan-out with auth off and on. Interleaved rounds.
    Auth(auth::AuthArgs),
    /// What TLS and permessage-deflate cost: fan-out, handshakes and idle
    /// memory plain vs TLS; compress-once vs per-subscriber. Interleaved rounds.
    Wire(wire::WireArgs),
    /// Backends publishing over the admin API (`POST /api/publish` on
    /// keep-alive connections, closed loop) to WebSocket subscribers.
    Api(ApiArgs),
    /// What the admin plane costs: API publishes vs WebSocket publishes per
    /// server CPU-second; fan-out with and without a polling dashboard.
    /// Interleaved rounds.
    Admin(admin::AdminArgs),
    /// Recovery: a subscriber that missed --messages messages of a history
    /// topic subscribes with `recover` and gets them in the ack, over and
    /// over on one connection (closed loop). Needs a history namespace
    /// matching --topic (the `history` comparison writes one).
    Recover(RecoverArgs),
    /// What history costs: fan-out to a plain vs a history topic, on one
    /// node and through Redis, and recovery, single node vs Redis.
    /// Interleaved rounds; starts its own redis-server.
    History(history::HistoryArgs),
    /// Node to node through Redis: one Redis vs a Redis Cluster of N
    /// primaries (sharded pub/sub), throughput and latency, with the CPU of
    /// both nodes and every redis-server. Interleaved rounds; starts its own
    /// redis-servers and nodes.
    Bridge(bridge::BridgeArgs),
    /// Two nodes through Redis for --duration under churn (connects,
    /// subscribes, publishes, resets), slow readers, oversized and malformed
    /// frames: what well-behaved clients were owed and got, their latency,
    /// every process's RSS and descriptors over time (CSV + SVG plot).
    /// Starts its own redis-server and nodes.
    Soak(soak::SoakArgs),
    /// Normal connect times on an idle node vs while N clients send their
    /// upgrade a byte a second; checks they are closed at handshake_timeout_ms.
    Slowloris(soak::SlowlorisArgs),
    /// What the connect hook costs: handshakes (connect, upgrade, welcome,
    /// close) per server CPU-second and their latency with no auth, a JWT
    /// and the connect hook (`[proxy] connect_url` on a backend in this
    /// process). Interleaved rounds.
    Handshakes(hooks::HandshakesArgs),
    /// What the publish hook costs: acknowledged publishes per server
    /// CPU-second and publish-to-ack latency to a `publish = "proxy"`
    /// namespace vs the same namespace with `publish = "anyone"`.
    /// Interleaved rounds.
    PublishProxy(hooks::PublishProxyArgs),
    /// What webhooks cost: fan-out deliveries per server CPU-second while
    /// connections churn (connect, subscribe to a presence topic, close),
    /// with `[webhooks]` posting the events to a backend in this process vs
    /// off. Interleaved rounds.
    Webhooks(hooks::WebhooksArgs),
    /// What the fallback transports cost: fan-out deliveries per server
    /// CPU-second to subscribers on WebSocket, HTTP-streaming and SSE
    /// (`--max` and at a fixed rate), and server RSS per idle session on
    /// each. Interleaved rounds.
    Transports(transports::TransportsArgs),
}

/// Options every scenario takes.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Server URL; the path is the scenario's (/ws, or /echo for echo).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Measured seconds (after warm-up).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Warm-up seconds, not measured.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Print one JSON object per run instead of a table.
    #[arg(long)]
    json: bool,
    /// Report this server process's CPU and RSS.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Start the server with this shell command, wait for its `listening on`
    /// line, measure it, stop it after (its address replaces --url's).
    #[arg(long, value_name = "CMD")]
    spawn: Option<String>,
    /// Draw the latency distribution to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Source addresses to spread connections over (127.0.0.2, 127.0.0.3, ...);
    /// 0 = let the kernel choose (idle: one address per 20,000 connections).
    /// Each address has ~28k ephemeral ports.
    #[arg(long, default_value_t = 0)]
    sources: usize,
    #[arg(long, hide = true, default_value_t = 0)]
    source_offset: usize,
    /// Also report the CPU seconds of this process (e.g. redis-server, another node); repeatable.
    #[arg(long, value_name = "PID")]
    also_pid: Vec<u32>,
    /// Connection token (JWT) sent as `?token=` on every /ws connection.
    #[arg(long, value_name = "JWT")]
    token: Option<String>,
    /// For wss:// URLs (or a spawned TLS server): the PEM certificate to trust.
    #[arg(long, value_name = "FILE")]
    ca: Option<String>,
    /// Offer permessage-deflate on every subscriber connection and inflate
    /// what arrives compressed (reports the compression ratio).
    #[arg(long)]
    deflate: bool,
    /// The server's admin listener (HOST:PORT), for `api` and
    /// `--poll-admin-hz`; a `--spawn`ed server's is found by itself.
    #[arg(long, value_name = "HOST:PORT")]
    admin: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    #[arg(long, default_value_t = 1)]
    topics: usize,
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Total publishes per second (all publishers).
    #[arg(long, conflicts_with = "max")]
    rate: Option<f64>,
    /// As fast as the server sustains, with at most --window messages per publisher in flight.
    #[arg(long)]
    max: bool,
    /// Messages per publisher in flight under --max (8: a publisher a few
    /// messages ahead, like a live feed; see `compare --windows` for a sweep).
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Connect publishers here instead of --url (e.g. another node, to measure
    /// cross-node delivery through Redis).
    #[arg(long, value_name = "URL")]
    publish_url: Option<String>,
    /// Meanwhile poll the admin plane as the dashboard does (`/api/info` and
    /// `/api/history`) this many times a second; 0 = not at all.
    #[arg(long, default_value_t = 0.0)]
    poll_admin_hz: f64,
    /// Topics are named PREFIX0, PREFIX1, ... (e.g. a prefix a history
    /// namespace matches).
    #[arg(long, default_value = "fanout-")]
    topic_prefix: String,
    /// Meanwhile, this many connections a second (open loop) connect, are
    /// welcomed, subscribe to a topic of their own (--churn-prefix N) and
    /// close: the connection and topic events webhooks report. 0 = none.
    #[arg(long, default_value_t = 0.0)]
    churn_rate: f64,
    /// The churning connections' topics are PREFIX0, PREFIX1, ...
    #[arg(long, default_value = "churn-")]
    churn_prefix: String,
    /// The subscribers' transport: `websocket`, or a fallback session
    /// (`http_stream`: `POST /stream`; `sse`: `GET /sse`) subscribed with
    /// one `POST /emulation`. Publishers stay on WebSocket.
    #[arg(long, value_enum, default_value = "websocket")]
    transport: fallback::Transport,
}

#[derive(Debug, Clone, Args)]
pub struct RecoverArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Messages missed and recovered per recovery.
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// The history topic.
    #[arg(long, default_value = "hist:recover")]
    topic: String,
}

#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Publishing connections, each with at most --window publishes awaiting their ack.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Publishes in flight (sent, not yet acknowledged) per connection.
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Topics: connection i publishes to PREFIX(i mod T).
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// Subscribers (subscriber j on PREFIX(j mod T)), checking that every
    /// acknowledged publish arrives, once and in its publisher's order.
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    /// Topics are named PREFIX0, PREFIX1, ... (e.g. a prefix a proxy namespace matches).
    #[arg(long, default_value = "pub-")]
    topic_prefix: String,
}

#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Keep-alive HTTP connections, each with one request in flight.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Payload size in bytes (a JSON string).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// WebSocket subscribers of the topic.
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    /// `[admin] api_key` of the server, if it has one.
    #[arg(long)]
    api_key: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct RoomsArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[arg(long, default_value_t = 2000)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    room_size: usize,
    /// Publishes per second per client.
    #[arg(long, default_value_t = 10.0)]
    msg_rate: f64,
    #[arg(long, default_value_t = 64)]
    payload: usize,
}

#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    #[arg(long, default_value_t = 100)]
    topics: usize,
    /// The connections' transport: `websocket`, or fallback sessions
    /// (`http_stream`, `sse`), each subscribed with one `POST /emulation`.
    #[arg(long, value_enum, default_value = "websocket")]
    transport: fallback::Transport,
    /// Internal: run as a child holding connections until stdin closes.
    #[arg(long, hide = true)]
    child: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Concurrent connectors.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Connect, upgrade, welcome, close: no subscribe. The latency is then
    /// from the TCP connect to the welcome read (the handshake itself).
    #[arg(long)]
    welcome_only: bool,
    /// Send `{"type":"connect"}` right after the upgrade, for a server with
    /// a connect hook (`[proxy] connect_url`): it calls the hook at once
    /// instead of waiting `connect_wait_ms` for a first request.
    #[arg(long)]
    connect_frame: bool,
    /// Connection tokens, one per line: connection i presents line
    /// i mod N as `?token=` (many users, not one; overrides --token).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// A welcome that names no user counts as a failed handshake.
    #[arg(long)]
    expect_user: bool,
}

#[derive(Debug, Clone, Args)]
pub struct EchoArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, default_value_t = 64)]
    payload: usize,
}

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// Rounds per server (alternating shardcast, baseline, shardcast, ...).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Command starting shardcast (default: the shardcast binary next to this one, port 0).
    #[arg(long, value_name = "CMD")]
    shardcast: Option<String>,
    /// Command starting the baseline (default: shardcast-baseline next to this one, port 0).
    #[arg(long, value_name = "CMD")]
    baseline: Option<String>,
    /// Command starting the Node.js `ws` peer. Default: `node
    /// benches/peers/ws/server.mjs --listen 127.0.0.1:0` when node is on the
    /// PATH and the peer's packages are installed (`bash benches/peers/install.sh`).
    #[arg(long, value_name = "CMD")]
    node: Option<String>,
    /// Leave the Node.js peer out.
    #[arg(long, conflicts_with = "node")]
    no_node: bool,
    /// Command starting the uWebSockets peer. Default: `benches/peers/uws/uws-peer
    /// --listen 127.0.0.1:0` when it was built (`bash benches/peers/uws/build.sh`).
    #[arg(long, value_name = "CMD")]
    uws: Option<String>,
    /// Leave the uWebSockets peer out.
    #[arg(long, conflicts_with = "uws")]
    no_uws: bool,
    /// `fanout` only: run it at each of these `--window`s (e.g. 1,8,64,256)
    /// and print the servers side by side per window.
    #[arg(long, value_delimiter = ',', value_name = "W,W,...")]
    windows: Vec<usize>,
    /// The scenario and its options, e.g. `--scenario fanout --subscribers 1000 --max`.
    #[arg(long)]
    scenario: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}

/// Connections per source address when `idle` picks the addresses itself.
const IDLE_PER_SOURCE: usize = 20_000;

/// Resolved options of one run.
pub struct Run {
    pub url: String,
    /// `--ca`, for children and other targets.
    pub ca: Option<String>,
    pub target: Target,
    pub duration: Duration,
    pub warmup: Duration,
    pub server_pid: Option<u32>,
    pub sources: usize,
    pub source_offset: usize,
    pub also_pids: Vec<u32>,
    /// The server's admin listener, when known.
    pub admin: Option<String>,
}

fn common(s: &Scenario) -> &CommonArgs {
    match s {
        Scenario::Fanout(a) => &a.common,
        Scenario::Rooms(a) => &a.common,
        Scenario::Idle(a) => &a.common,
        Scenario::Connect(a) => &a.common,
        Scenario::Echo(a) => &a.common,
        Scenario::Api(a) => &a.common,
        Scenario::Recover(a) => &a.common,
        Scenario::Publish(a) => &a.common,
        Scenario::Compare(_)
        | Scenario::Auth(_)
        | Scenario::Wire(_)
        | Scenario::Admin(_)
        | Scenario::History(_)
        | Scenario::Bridge(_)
        | Scenario::Soak(_)
        | Scenario::Slowloris(_)
        | Scenario::Handshakes(_)
        | Scenario::PublishProxy(_)
        | Scenario::Webhooks(_)
        | Scenario::Transports(_) => {
            unreachable!("compare, auth, wire, admin and history run other scenarios")
        }
    }
}

/// Connections one process may open, leaving room for its own files.
pub fn fd_budget() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (lim.rlim_cur as usize).saturating_sub(100).max(1)
}

/// Raises the soft open-file limit to the hard one.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: get/setrlimit on structs we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Starts a child process holding `count` idle connections.
pub fn spawn_idle_child(run: &Run, count: usize, topics: usize, transport: fallback::Transport, offset: usize) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.args(["idle", "--child", "--url", &run.url])
        .args(["--connections", &count.to_string(), "--topics", &topics.to_string(), "--transport", transport.name()])
        .args(["--sources", &run.sources.to_string(), "--source-offset", &offset.to_string()]);
    if let Some(ca) = &run.ca {
        cmd.args(["--ca", ca]);
    }
    if run.target.deflate {
        cmd.arg("--deflate");
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start an idle child: {e}"))
}

/// Waits for a child's `connected` line.
pub fn await_child_ready(child: &mut Child) -> Result<(), String> {
    let stdout = child.stdout.take().ok_or("child has no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).map_err(|e| e.to_string())?;
    if line.trim() == "connected" {
        Ok(())
    } else {
        Err(format!("idle child failed: {}", line.trim()))
    }
}

fn main() {
    raise_fd_limit();
    let cli = Cli::parse();
    let result = match cli.scenario {
        Scenario::Compare(c) => compare(c),
        Scenario::Auth(a) => auth::run(a),
        Scenario::Wire(a) => wire::run(a),
        Scenario::Admin(a) => admin::run(a),
        Scenario::History(a) => history::run(a),
        Scenario::Bridge(a) => bridge::run(a),
        Scenario::Soak(a) => soak::soak(a),
        Scenario::Slowloris(a) => soak::slowloris(a),
        Scenario::Handshakes(a) => hooks::handshakes(a),
        Scenario::PublishProxy(a) => hooks::publish_proxy(a),
        Scenario::Webhooks(a) => hooks::webhooks(a),
        Scenario::Transports(a) => transports::run(a),
        Scenario::Idle(a) if a.child => idle_child(&a),
        s => run_once(&s).map(|r| r.print(common(&s).json)),
    };
    if let Err(e) = result {
        eprintln!("shardcast-bench: {e}");
        std::process::exit(1);
    }
}

/// Runs one scenario (spawning the server if asked) and returns its report.
fn run_once(s: &Scenario) -> Result<Report, String> {
    let c = common(s);
    let spawned = c.spawn.as_deref().map(proc::Spawned::start).transpose()?;
    let path = match s {
        Scenario::Echo(_) => "/echo",
        _ => "/ws",
    };
    let mut target = Target::parse(&c.url, c.ca.as_deref())?;
    if let Some(sp) = &spawned {
        target = Target::parse(&format!("{}://{}{}", sp.scheme, sp.addr, path), c.ca.as_deref())?;
    } else if matches!(s, Scenario::Echo(_)) {
        target = target.with_path(path);
    }
    if let (Some(token), "/ws") = (&c.token, path) {
        target = target.with_path(&format!("{}?token={token}", target.path));
    }
    target.deflate = c.deflate;
    let run = Run {
        url: format!("{}://{}{}", target.scheme(), target.addr, target.path),
        ca: c.ca.clone(),
        target,
        duration: Duration::from_secs_f64(c.duration.max(0.1)),
        warmup: Duration::from_secs_f64(c.warmup.max(0.0)),
        server_pid: spawned.as_ref().map(proc::Spawned::pid).or(c.server_pid),
        sources: match s {
            // One source address has ~28k ephemeral ports: spread big idle
            // runs over 127.0.0.2, 127.0.0.3, ... unless told otherwise.
            Scenario::Idle(a) if c.sources == 0 && a.connections > IDLE_PER_SOURCE => a.connections.div_ceil(IDLE_PER_SOURCE),
            _ => c.sources,
        },
        source_offset: c.source_offset,
        also_pids: c.also_pid.clone(),
        admin: spawned.as_ref().and_then(|s| s.admin.clone()).or_else(|| c.admin.clone()),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let local = tokio::task::LocalSet::new();
    let (report, hist) = local.block_on(&rt, async {
        match s {
            Scenario::Fanout(a) => scenarios::fanout(&run, a, &Progress::new("deliveries")).await.map(|(r, h)| (r, Some(h))),
            Scenario::Rooms(a) => scenarios::rooms(&run, a, &Progress::new("deliveries")).await.map(|(r, h)| (r, Some(h))),
            Scenario::Idle(a) => scenarios::idle(&run, a, &Progress::new("connections")).await.map(|r| (r, None)),
            Scenario::Connect(a) => scenarios::connect(&run, a, &Progress::new("handshakes")).await.map(|(r, h)| (r, Some(h))),
            Scenario::Echo(a) => scenarios::echo(&run, a, &Progress::new("round trips")).await.map(|(r, h)| (r, Some(h))),
            Scenario::Api(a) => scenarios::api(&run, a, &Progress::new("publishes")).await.map(|(r, h)| (r, Some(h))),
            Scenario::Recover(a) => scenarios::recover(&run, a, &Progress::new("recoveries")).await.map(|(r, h)| (r, Some(h))),
            Scenario::Publish(a) => scenarios::publish(&run, a, &Progress::new("acked publishes")).await.map(|(r, h)| (r, Some(h))),
            Scenario::Compare(_)
        | Scenario::Auth(_)
        | Scenario::Wire(_)
        | Scenario::Admin(_)
        | Scenario::History(_)
        | Scenario::Bridge(_)
        | Scenario::Soak(_)
        | Scenario::Slowloris(_)
        | Scenario::Handshakes(_)
        | Scenario::PublishProxy(_)
        | Scenario::Webhooks(_)
        | Scenario::Transports(_) => unreachable!(),
        }
    })?;
    if let (Some(path), Some(h)) = (&c.plot, &hist) {
        report::plot(path, &format!("shardcast-bench {}: latency", report.scenario), h)?;
    }
    // The clients' tasks (and so their sockets) go first: a server stopped
    // while they are open waits its [shutdown] drain_timeout_ms (5 s) for
    // them to answer its closes, which nothing reads any more.
    drop(local);
    drop(spawned);
    Ok(report)
}

/// Child of `idle`: hold connections until stdin closes.
fn idle_child(a: &IdleArgs) -> Result<(), String> {
    let mut target = Target::parse(&a.common.url, a.common.ca.as_deref())?;
    target.deflate = a.common.deflate;
    let run = Run {
        url: a.common.url.clone(),
        ca: a.common.ca.clone(),
        target,
        duration: Duration::ZERO,
        warmup: Duration::ZERO,
        server_pid: None,
        sources: a.common.sources,
        source_offset: a.common.source_offset,
        also_pids: Vec::new(),
        admin: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let stop = std::rc::Rc::new(tokio::sync::Notify::new());
        if let Err(e) = scenarios::hold_idle(&run, a.connections, a.topics, a.transport, stop).await {
            println!("error {e}");
            return;
        }
        println!("connected");
        let _ = std::io::stdout().flush();
        // Hold until the parent closes our stdin.
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 16];
        while let Ok(n) = tokio::io::AsyncReadExt::read(&mut stdin, &mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    Ok(())
}

pub fn sibling(name: &str) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        return Err(format!("{} not found; build it with cargo build --release --bins", path.display()));
    }
    Ok(path.display().to_string())
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The Node.js peer's default command, when it can run here.
fn node_peer() -> Option<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/peers/ws");
    let installed = std::path::Path::new(dir).join("node_modules/ws/package.json").exists();
    let node = std::process::Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    (installed && node).then(|| format!("node {dir}/server.mjs --listen 127.0.0.1:0"))
}

/// The uWebSockets peer's default command, when it was built.
fn uws_peer() -> Option<String> {
    let exe = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/peers/uws/uws-peer");
    std::path::Path::new(exe).exists().then(|| format!("{exe} --listen 127.0.0.1:0"))
}

/// A comparison peer's command: given, found, or left out (`off`).
fn optional_peer(off: bool, given: Option<String>, found: fn() -> Option<String>, missing: &str) -> Option<String> {
    match (off, given) {
        (true, _) => None,
        (false, Some(cmd)) => Some(cmd),
        (false, None) => {
            let cmd = found();
            if cmd.is_none() {
                eprintln!("compare: {missing}");
            }
            cmd
        }
    }
}

/// `compare`: the same scenario against shardcast, the tokio baseline and
/// (when present) the Node.js `ws` and uWebSockets peers, alternating
/// rounds; prints medians and ratios. With `--windows`, once per fan-out
/// window, side by side.
fn compare(c: CompareArgs) -> Result<(), String> {
    let shardcast = match c.shardcast {
        Some(cmd) => cmd,
        None => format!("{} --listen 127.0.0.1:0 --config {}", sibling("shardcast")?, bench_config()?),
    };
    let baseline = match c.baseline {
        Some(cmd) => cmd,
        None => format!("{} --listen 127.0.0.1:0", sibling("shardcast-baseline")?),
    };
    let node = optional_peer(c.no_node, c.node, node_peer, "no Node.js peer (node missing, or run `bash benches/peers/install.sh`)");
    let uws = optional_peer(c.no_uws, c.uws, uws_peer, "no uWebSockets peer (build it: `bash benches/peers/uws/build.sh`)");
    if !c.windows.is_empty() && c.scenario != "fanout" {
        return Err("--windows applies to --scenario fanout".into());
    }
    let mut labels = vec!["shardcast", "baseline"];
    let mut servers = vec![shardcast, baseline];
    for (label, cmd) in [("node-ws", node), ("uws", uws)] {
        if let Some(cmd) = cmd {
            labels.push(label);
            servers.push(cmd);
        }
    }
    let ratios: Vec<(usize, usize)> = (1..labels.len()).map(|i| (0, i)).collect();
    let windows: Vec<Option<usize>> = if c.windows.is_empty() { vec![None] } else { c.windows.iter().map(|w| Some(*w)).collect() };
    let mut sweep = Vec::new();
    for window in windows {
        let mut argv = vec![c.scenario.clone()];
        argv.extend(c.rest.iter().cloned());
        if let Some(w) = window {
            argv.extend(["--window".to_string(), w.to_string()]);
        }
        let variants: Vec<Variant> = labels.iter().zip(&servers).map(|(l, cmd)| (*l, argv.clone(), cmd.clone())).collect();
        let (results, json) = interleave(c.rounds, &variants)?;
        if json {
            continue;
        }
        let metrics: [(&str, Metric); 8] = [
            ("ops/s", |r| Some(r.ops_per_second)),
            ("ops per server CPU-s", |r| r.ops_per_server_cpu_second),
            ("server CPU %", |r| r.server.as_ref().map(|s| s.cpu_percent)),
            ("generator CPU %", |r| Some(r.generator_cpu_seconds / r.seconds * 100.0)),
            ("p50 latency µs", |r| r.latency.as_ref().map(|l| l.p50_us)),
            ("p99 latency µs", |r| r.latency.as_ref().map(|l| l.p99_us)),
            ("server RSS after MiB", |r| r.server.as_ref().map(|s| s.rss_after_bytes as f64 / 1048576.0)),
            ("lost + out of order", |r| Some((r.lost + r.out_of_order) as f64)),
        ];
        println!("scenario {} {} — medians of {} rounds each, alternating", argv[0], argv[1..].join(" "), c.rounds);
        print_medians(&metrics, &labels, &results, &ratios);
        println!();
        if let Some(w) = window {
            sweep.push((w, results));
        }
    }
    if sweep.len() > 1 {
        print_sweep(&labels, &sweep);
    }
    Ok(())
}

/// The window sweep in one table: deliveries per server CPU-second and p99
/// per server and window, and shardcast's ratio to each other server.
fn print_sweep(labels: &[&str], sweep: &[(usize, Vec<Vec<Report>>)]) {
    let mut header = vec!["window".to_string()];
    header.extend(labels.iter().map(|l| format!("{l} per CPU-s")));
    header.extend(labels[1..].iter().map(|l| format!("shardcast/{l}")));
    header.extend(labels.iter().map(|l| format!("{l} p99 µs")));
    let rows: Vec<Vec<String>> = sweep
        .iter()
        .map(|(w, results)| {
            let per_cpu: Vec<f64> = results.iter().map(|r| median(r.iter().filter_map(|r| r.ops_per_server_cpu_second).collect())).collect();
            let p99: Vec<f64> = results.iter().map(|r| median(r.iter().filter_map(|r| r.latency.as_ref().map(|l| l.p99_us)).collect())).collect();
            let mut row = vec![w.to_string()];
            row.extend(per_cpu.iter().map(|v| format!("{v:.0}")));
            row.extend(per_cpu[1..].iter().map(|v| format!("{:.2}x", per_cpu[0] / v)));
            row.extend(p99.iter().map(|v| format!("{v:.0}")));
            row
        })
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    println!("window sweep — deliveries per server CPU-second, medians");
    report::print_table(&header, &rows);
}

/// Options of the interleaved comparisons (`auth`, `wire`).
#[derive(Debug, Clone, Args)]
pub struct RoundArgs {
    /// Rounds per variant (interleaved).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Warm-up seconds per run, not measured.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Prefix for the server command, e.g. `taskset -c 0 ` to pin it.
    #[arg(long, default_value = "")]
    pub server_prefix: String,
    /// Print one JSON object per run.
    #[arg(long)]
    pub json: bool,
}

impl RoundArgs {
    /// The options every run of the comparison gets.
    pub fn run_options(&self) -> Vec<String> {
        let mut v = vec!["--duration".to_string(), self.duration.to_string(), "--warmup".to_string(), self.warmup.to_string()];
        if self.json {
            v.push("--json".into());
        }
        v
    }
}

/// One measured setting of an interleaved comparison: a label, the scenario
/// argv (without the program name), and the command that starts its server.
pub type Variant = (&'static str, Vec<String>, String);

/// Runs every variant once per round, in turn (a, b, c, a, b, c, ...), so
/// slow drifts of a shared machine hit them all alike. Returns each
/// variant's reports, and whether `--json` was asked (then each report was
/// printed as a JSON line already).
pub fn interleave(rounds: usize, variants: &[Variant]) -> Result<(Vec<Vec<Report>>, bool), String> {
    let mut results: Vec<Vec<Report>> = variants.iter().map(|_| Vec::new()).collect();
    let mut json = false;
    for round in 0..rounds.max(1) {
        for (i, (label, args, cmd)) in variants.iter().enumerate() {
            let mut argv = vec!["shardcast-bench".to_string()];
            argv.extend(args.iter().cloned());
            argv.extend(["--spawn".to_string(), cmd.clone()]);
            let cli = Cli::try_parse_from(&argv).map_err(|e| e.to_string())?;
            json = common(&cli.scenario).json;
            let report = run_once(&cli.scenario)?;
            eprintln!(
                "round {} {label}: {:.0} {}/s, {} per server CPU-s",
                round + 1,
                report.ops_per_second,
                report.ops_kind,
                report.ops_per_server_cpu_second.map_or("-".into(), |v| format!("{v:.0}"))
            );
            if json {
                let mut v = serde_json::to_value(&report).expect("serialises");
                v["server_name"] = (*label).into();
                v["round"] = (round + 1).into();
                println!("{v}");
            }
            results[i].push(report);
        }
    }
    Ok((results, json))
}

pub type Metric = fn(&Report) -> Option<f64>;

/// Prints one row per metric: each variant's median and the `a/b` ratios asked for.
pub fn print_medians(metrics: &[(&str, Metric)], labels: &[&str], results: &[Vec<Report>], ratios: &[(usize, usize)]) {
    let rows: Vec<Vec<String>> = metrics
        .iter()
        .map(|(name, f)| {
            let medians: Vec<f64> = results.iter().map(|r| median(r.iter().filter_map(f).collect())).collect();
            let mut row = vec![name.to_string()];
            row.extend(medians.iter().map(|m| format!("{m:.1}")));
            row.extend(ratios.iter().map(|&(a, b)| {
                let (a, b) = (medians[a], medians[b]);
                if b != 0.0 && a.is_finite() && b.is_finite() { format!("{:.2}x", a / b) } else { "-".into() }
            }));
            row
        })
        .collect();
    let ratio_names: Vec<String> = ratios.iter().map(|&(a, b)| format!("{}/{}", labels[a], labels[b])).collect();
    let mut header: Vec<&str> = vec![""];
    header.extend(labels);
    header.extend(ratio_names.iter().map(String::as_str));
    report::print_table(&header, &rows);
}

/// The server config the benches use (rate limits off, roomy queues).
/// A server config written to a temporary file for a comparison's runs;
/// removed when dropped.
pub struct TempConfig(pub std::path::PathBuf);

impl TempConfig {
    pub fn write(name: &str, text: &str) -> Result<TempConfig, String> {
        let path = std::env::temp_dir().join(format!("shardcast-bench-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(TempConfig(path))
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn bench_config() -> Result<String, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/server.toml");
    if std::path::Path::new(path).exists() {
        Ok(path.to_string())
    } else {
        Err(format!("{path} not found; pass --shardcast \"CMD\""))
    }
}
