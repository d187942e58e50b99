//! shardcast: a thread-per-core WebSocket pub/sub fan-out server.
//!
//! # Layout
//! - [`config`]: `tuning/shardcast.toml` -> validated [`config::Config`].
//! - [`auth`]: connection tokens (JWT) -> identity, namespace permissions,
//!   node-wide per-user / per-IP connection counts. No I/O.
//! - [`runtime`]: binds one `SO_REUSEPORT` listener per shard, starts one
//!   pinned glommio executor per shard, readiness line, signals.
//! - [`shard`]: per-core state ([`shard::Shard`]) and its tasks: accept loop,
//!   bus loop, heartbeat sweeper, drain.
//! - [`conn`]: one connection's task (handshake, read -> decode -> dispatch,
//!   vectored writer) and its shared half, [`conn::Peer`] (bounded outbox).
//! - [`ws`]: RFC 6455 frames, the HTTP upgrade, permessage-deflate.
//! - [`tls`]: rustls termination, certificates reloaded on SIGHUP.
//! - [`protocol`]: requests, the shared outgoing message and its wire forms,
//!   error and close codes; `json` and `flatbuf` are the two encodings.
//! - [`topic`]: topic names and the shard-local subscriber registry.
//! - [`history`]: offsets, bounded rings on each history topic's home shard,
//!   and the hold-and-merge that makes recovery loss-free.
//! - [`presence`]: who is subscribed to a topic, kept by one owner shard
//!   per topic (the bridge shard keeps the Redis copy across nodes).
//! - [`bus`]: cross-shard channels (crossbeam), doorbells, interest map.
//! - [`bridge`]: Redis pub/sub between nodes (bridge shard only), FlatBuffers envelopes.
//! - [`metrics`]: per-shard counters and latency histograms, the
//!   Prometheus page.
//! - [`admin`]: the admin plane (HTTP API, `/metrics`, health, dashboard)
//!   on its own thread; reaches the shards only through the [`bus`].
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
pub mod auth;
pub mod bridge;
pub mod bus;
pub mod clock;
pub mod codes;
pub mod config;
pub mod conn;
pub mod history;
pub mod ids;
pub mod metrics;
pub mod notify;
pub mod peer;
pub mod presence;
pub mod protocol;
pub mod runtime;
pub mod shard;
pub mod tls;
pub mod topic;
pub mod ws;
