//! shardcast: a thread-per-core WebSocket pub/sub fan-out server.
//!
//! # Layout
//! Bottom to top: a module uses only those above it in this list
//! (`docs/architecture.md`, "Layers"; checked by `tests/it/layers.rs`).
//! - [`affinity`], [`clock`], [`codes`], [`ids`], [`notify`]: pinning a
//!   thread to a CPU, time stamps, the close and error codes, connection
//!   ids and interest acks, a local wake-up.
//! - [`metrics`]: per-shard counters and latency histograms, the
//!   Prometheus page.
//! - [`ws`]: RFC 6455 frames, the HTTP upgrade, permessage-deflate.
//! - [`protocol`]: requests, replies, the shared outgoing message and its
//!   wire forms (JSON, FlatBuffers), positions in a topic's history.
//! - [`fallback`]: the HTTP-streaming and SSE transports' requests,
//!   framing and session ids.
//! - [`auth`]: tokens (JWT) -> identity, namespace permissions, node-wide
//!   per-user / per-IP counts. [`tls`]: rustls server and client sides, a
//!   stream plain or under TLS.
//! - [`history`]: offsets, bounded rings, the hold-and-merge that makes
//!   recovery loss-free. [`presence`]: who is subscribed to a topic.
//! - [`config`]: `tuning/shardcast.toml` -> validated [`config::Config`],
//!   one file per section.
//! - [`readiness`]: the shard's epoll set of client sockets,
//!   edge-triggered, and its sockets.
//! - [`peer`]: the shared half of a connection ([`peer::Peer`], its bounded
//!   outbox), the cork and the socket writes.
//! - [`topic`]: topic names and the shard-local subscriber registry.
//! - [`bus`]: cross-shard channels (crossbeam), doorbells, interest map.
//! - [`shard`]: per-core state ([`shard::Shard`]) and its tasks (bus loop,
//!   flush, sweeper, deadlines, shutdown); [`shard::Remote`] is what it asks
//!   of the node link.
//! - [`conn`]: accepting connections, one connection's task (upgrade, read
//!   -> decode -> dispatch, flush) and its requests, one file per family.
//! - [`bridge`]: Redis pub/sub between nodes (bridge shard only),
//!   FlatBuffers envelopes. [`admin`]: the admin plane (HTTP API,
//!   `/metrics`, health, dashboard) on its own thread; reaches the shards
//!   only through the [`bus`]. [`hooks`]: the calls to the application's
//!   backend (`[proxy]`), on a thread of their own, answered through the
//!   [`bus`].
//! - [`runtime`]: listeners, one pinned glommio executor per shard and each
//!   shard's life, the readiness line, signals.
//!
//! # Threading model
//! One OS thread per shard, each running one glommio `LocalExecutor` pinned
//! to one CPU. A connection lives and dies on the shard that accepted it; its
//! state is `Rc`/`RefCell`, so the compiler keeps it there. Shards share only
//! the crossbeam channels of the [`bus`], read-only configuration, and
//! relaxed atomic counters (stats, the node-wide connection count).
//!
//! # Message path
//! A publish is parsed on its connection's shard, its outgoing frame is built
//! once ([`protocol::json::message_frame`]), queued to the shard's local
//! subscribers, and sent as one [`bus::PublishMsg`] to each other shard that
//! has subscribers of the topic (per the replicated [`bus::InterestMap`]).
//! Each receiving shard queues the same `Bytes` to its own subscribers.
//! See `docs/architecture.md`.

pub mod admin;
pub mod affinity;
pub mod auth;
pub mod bridge;
pub mod bus;
pub mod clock;
pub mod codes;
pub mod config;
pub mod conn;
pub mod fallback;
pub mod history;
pub mod hooks;
pub mod ids;
pub mod metrics;
pub mod notify;
pub mod peer;
pub mod presence;
pub mod protocol;
pub mod readiness;
pub mod runtime;
pub mod shard;
pub mod tls;
pub mod topic;
pub mod ws;
