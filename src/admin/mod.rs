//! The admin plane: an HTTP API for backends, `/metrics`, health checks and
//! a live dashboard, on its own listener (`[admin] listen`).
//!
//! It runs on its own thread, outside the shards: axum on a single-threaded
//! tokio runtime. It reaches the shards only through the bus
//! ([`crate::bus::admin::AdminCall`]: a request fans out to the shards and
//! gathers their answers with a deadline, [`shards::Shards`]) and reads the
//! shards' counters (atomics). It never takes a lock a shard could wait on,
//! and a shard never waits for it.
//!
//! - [`api`]: the handlers and the error shape.
//! - [`shards`]: calls to the shards, answers with a deadline, `max_pending`.
//! - [`cluster`]: per-second rates and their history; other nodes' summaries.
//!
//! Nodes see each other through Redis: every `[admin] node_info_interval_ms`
//! this node hands its summary to the bridge shard, which publishes it on
//! `<prefix>$nodes`; the bridge hands the others' summaries back here.

pub mod api;
pub mod cluster;
mod listener;
pub mod shards;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::auth::Admission;
use crate::bus::admin::AdminCall;
use crate::bus::Mailbox;
use crate::config::Config;
use crate::metrics::{HookStats, ShardStats, WebhookStats};
use cluster::{History, Nodes};
use shards::Shards;

/// The dashboard page, embedded at build time.
pub const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// Everything the handlers share. Lives on the admin thread; the mutexes
/// are only ever taken there (never by a shard), so they never contend.
#[derive(Debug)]
pub struct AdminState {
    pub node_id: String,
    pub api_key: Option<String>,
    pub max_message_bytes: usize,
    pub max_topic_len: usize,
    pub started: Instant,
    pub shards: Shards,
    pub stats: Arc<[ShardStats]>,
    pub admission: Arc<Admission>,
    /// The backend hooks' counters, when `[proxy]` sets a URL.
    pub hooks: Option<Arc<HookStats>>,
    /// The webhooks' counters, when `[webhooks] url` is set.
    pub webhooks: Option<Arc<WebhookStats>>,
    pub history: Mutex<History>,
    pub nodes: Mutex<Nodes>,
    /// Set by the main thread when SIGINT/SIGTERM starts the drain.
    pub draining: Arc<AtomicBool>,
}

/// The admin listener, bound before the shards start so that a taken port
/// is reported at once.
pub struct Bound {
    listener: std::net::TcpListener,
    pub addr: SocketAddr,
}

/// Binds `[admin] listen`. `Ok(None)` when the admin plane is off, or when
/// the *default* address is taken (logged: another node or program on this
/// host has it); an address the user chose that cannot be bound is an error.
pub fn bind(config: &Config) -> std::io::Result<Option<Bound>> {
    let Some(admin) = &config.admin else { return Ok(None) };
    match std::net::TcpListener::bind(admin.listen) {
        Ok(listener) => {
            listener.set_nonblocking(true)?;
            let addr = listener.local_addr()?;
            Ok(Some(Bound { listener, addr }))
        }
        Err(e) if !admin.listen_explicit => {
            warn!(
                addr = %admin.listen,
                "cannot listen on the default admin address: {e}; running without the admin plane (set [admin] listen to another address, or \"\")"
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// What the admin thread needs from the rest of the node.
pub struct Wiring {
    pub mailboxes: Vec<Mailbox>,
    pub stats: Arc<[ShardStats]>,
    pub admission: Arc<Admission>,
    pub hooks: Option<Arc<HookStats>>,
    pub webhooks: Option<Arc<WebhookStats>>,
    /// Other nodes' announcements, from the bridge shard.
    pub announcements: mpsc::Receiver<Bytes>,
    /// Raised when the node starts draining (`/readyz` turns 503 at once).
    pub draining: Arc<AtomicBool>,
}

/// Capacity of the bridge -> admin announcement queue.
pub fn announcement_queue(config: &Config) -> usize {
    config.admin.as_ref().map_or(1, |a| a.max_nodes.min(4096))
}

/// Starts the admin thread serving `bound`.
pub fn spawn(config: Arc<Config>, bound: Bound, wiring: Wiring) -> std::io::Result<()> {
    let admin = config.admin.clone().expect("bound only when configured");
    let bridge = config.redis.as_ref().map(|r| r.bridge_shard);
    let state = Arc::new(AdminState {
        node_id: config.server.node_id.clone(),
        api_key: admin.api_key.clone(),
        max_message_bytes: config.limits.max_message_bytes,
        max_topic_len: config.limits.max_topic_len,
        started: Instant::now(),
        shards: Shards::new(wiring.mailboxes, admin.shard_timeout, admin.max_pending, bridge),
        stats: wiring.stats,
        admission: wiring.admission,
        hooks: wiring.hooks,
        webhooks: wiring.webhooks,
        history: Mutex::default(),
        nodes: Mutex::new(Nodes::new(config.server.node_id.clone(), admin.max_nodes, admin.node_info_interval)),
        draining: wiring.draining,
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let listener = bound.listener;
    // The start waits until the thread is placed, so that once the node
    // says it is listening, its admin thread is on `[admin] cpu`.
    let (placed, is_placed) = std::sync::mpsc::sync_channel::<()>(1);
    std::thread::Builder::new().name("shardcast-admin".into()).spawn(move || {
        if let Some(cpu) = admin.cpu {
            crate::affinity::pin_current_thread(cpu, "admin");
        }
        let _ = placed.send(());
        runtime.block_on(async move {
            let listener = match TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => return warn!("admin listener failed: {e}"),
            };
            tokio::spawn(sample_every_second(state.clone()));
            tokio::spawn(hear_nodes(state.clone(), wiring.announcements));
            if bridge.is_some() {
                tokio::spawn(announce(state.clone(), admin.node_info_interval));
            }
            info!(addr = %bound.addr, "admin plane serving");
            listener::serve(listener, router(state, admin.max_body_bytes), admin.max_connections, admin.header_timeout).await;
        })
    })?;
    // An Err means the thread ended before it was placed (it panicked): the
    // node runs without its admin plane, as it would have anyway.
    let _ = is_placed.recv();
    Ok(())
}

/// Every route of the admin listener.
pub fn router(state: Arc<AdminState>, max_body_bytes: usize) -> Router {
    let api = Router::new()
        .route("/api/publish", post(api::publish))
        .route("/api/broadcast", post(api::broadcast))
        .route("/api/send", post(api::send))
        .route("/api/disconnect", post(api::disconnect))
        .route("/api/info", get(api::info))
        .route("/api/history", get(api::history))
        .route("/api/topics", get(api::topics))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), api::require_key));
    Router::new()
        .route("/", get(api::dashboard))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .merge(api)
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Samples the shards' counters once a second for the rates and the chart.
async fn sample_every_second(state: Arc<AdminState>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        state.history.lock().expect("admin state lock").sample(&state.stats);
    }
}

/// Records the other nodes' announcements.
async fn hear_nodes(state: Arc<AdminState>, mut announcements: mpsc::Receiver<Bytes>) {
    while let Some(bytes) = announcements.recv().await {
        state.nodes.lock().expect("admin state lock").heard(&bytes, Instant::now());
    }
}

/// Hands this node's summary to the bridge shard every interval.
async fn announce(state: Arc<AdminState>, interval: std::time::Duration) {
    let Some(bridge) = state.shards.bridge else { return };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(reports) = state.shards.gather(|_, reply| AdminCall::Report { node_topics: false, reply }).await else {
            continue;
        };
        let summary = api::summary(&state, &reports);
        match serde_json::to_vec(&summary) {
            Ok(json) => state.shards.call(bridge, AdminCall::Announce(Bytes::from(json))),
            Err(e) => warn!("cannot encode the node summary: {e}"),
        }
    }
}
