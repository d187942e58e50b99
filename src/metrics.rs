//! Counters. Each shard owns one [`ShardStats`] and is its only writer
//! (relaxed stores, no contention); `/metrics` reads all of them.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! stats {
    ($($name:ident: $kind:literal, $help:literal;)*) => {
        /// Per-shard counters and gauges; written only by the owning shard.
        #[derive(Debug, Default)]
        pub struct ShardStats {
            $(#[doc = $help] pub $name: AtomicU64,)*
        }

        impl ShardStats {
            /// Prometheus text exposition of every shard's stats.
            pub fn render(all: &[ShardStats]) -> String {
                let mut out = String::new();
                $(
                    let _ = writeln!(out, "# HELP shardcast_{} {}", stringify!($name), $help);
                    let _ = writeln!(out, "# TYPE shardcast_{} {}", stringify!($name), $kind);
                    for (i, s) in all.iter().enumerate() {
                        let _ = writeln!(out, "shardcast_{}{{shard=\"{i}\"}} {}", stringify!($name), s.$name.load(Ordering::Relaxed));
                    }
                )*
                out
            }
        }
    };
}

stats! {
    connections: "gauge", "Open WebSocket connections.";
    connections_total: "counter", "WebSocket connections accepted since start.";
    handshakes_rejected: "counter", "HTTP requests answered without an upgrade (4xx/5xx).";
    publishes: "counter", "Publish requests accepted from clients on this shard.";
    deliveries: "counter", "Message frames queued to subscribers on this shard.";
    encodings_json: "counter", "Messages encoded as JSON frames on this shard (at most once per message per node).";
    encodings_flatbuffers: "counter", "Messages encoded as FlatBuffers frames on this shard (at most once per message per node).";
    compressions: "counter", "Messages compressed (permessage-deflate) on this shard: once per message and form per node, or per echo.";
    compression_bytes_in: "counter", "Bytes given to the compressor.";
    compression_bytes_out: "counter", "Bytes the compressor produced (in / out is the compression ratio).";
    inflations: "counter", "Compressed client messages inflated.";
    bus_received: "counter", "Publishes received from other shards.";
    bus_full_waits: "counter", "Times a publisher waited for a full cross-shard channel.";
    dropped_frames: "counter", "Frames dropped from client queues by the drop_oldest policy.";
    slow_consumer_disconnects: "counter", "Clients closed with 1013 because their queue overflowed.";
    rate_limited: "counter", "Publishes refused with rate_limited.";
    request_errors: "counter", "Error replies sent for bad requests.";
    protocol_errors: "counter", "Connections closed for WebSocket protocol violations (1002/1007/1009).";
    heartbeat_timeouts: "counter", "Connections closed for sending nothing within heartbeat.timeout_ms.";
    auth_failures: "counter", "Connections closed with 4001: a bad token, or no auth request in time.";
    token_expiries: "counter", "Connections closed with 4002: token expired without a refresh.";
    user_limit_rejections: "counter", "Connections closed with 4008: over limits.max_connections_per_user.";
    ip_limit_rejections: "counter", "Handshakes answered 429: over limits.max_connections_per_ip.";
    forbidden: "counter", "Requests refused with forbidden (namespace rules, direct_messages, refresh for another user).";
    direct_messages: "counter", "Direct messages (send requests) accepted from clients on this shard.";
    accept_errors: "counter", "accept() failures (EMFILE, ENFILE, ...).";
    redis_connected: "gauge", "1 while the bridge's Redis connections are up (bridge shard only).";
    redis_connects: "counter", "Successful Redis (re)connections of the bridge.";
    redis_published: "counter", "Messages PUBLISHed to Redis (acknowledged by Redis).";
    redis_received: "counter", "Messages received from Redis and fanned out on this node.";
    redis_dropped: "counter", "Outbound messages dropped: buffer overflow, or lost with a failed connection.";
    redis_bad_messages: "counter", "Messages from Redis refused (bad envelope, bad JSON, bad topic, too big).";
}

impl ShardStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Ordering::Relaxed).saturating_sub(n), Ordering::Relaxed);
    }
}
