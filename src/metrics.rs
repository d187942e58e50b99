//! Counters, gauges and latency histograms, and their Prometheus page.
//!
//! Each shard owns one [`ShardStats`] and is its only writer: relaxed loads
//! and stores, no read-modify-write, no contention, so the hot path pays a
//! plain memory increment. Any thread may read them: the admin plane's
//! `/metrics` and `/api/info`, and the public port's `metrics_path`.
//!
//! The page is encoded by `prometheus-client` (OpenMetrics text, Prometheus
//! naming: counters end in `_total`, units are base units in the name) from
//! a [`Collector`] that reads the atomics at scrape time, so the crate's own
//! metric types, which use atomic read-modify-writes, stay off the hot path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};


/// The content type of [`render`]'s page.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The latency histograms' buckets: upper bounds of 2^(i+3) µs, from 8 µs
/// to 2^24 µs (16.8 s), then +Inf. Powers of two make a bucket one
/// `leading_zeros` away (an observation is on the write path of every frame:
/// a binary search over 1-2.5-5 bounds cost ~5 ns a frame, this ~1).
const LATENCY_BUCKETS: usize = 22;

/// Upper bound of latency bucket `i`, in microseconds.
fn latency_bound_us(i: usize) -> u64 {
    1 << (i + 3)
}

/// A latency histogram with one writer (the owning shard) and any number of
/// readers. Buckets are not cumulative; the encoder makes them so.
#[derive(Debug, Default)]
pub struct Histogram {
    /// One per bound, plus one for "above the last bound".
    buckets: [AtomicU64; LATENCY_BUCKETS + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation of `us` microseconds (no `Duration` round
    /// trip: this is on every frame's write path). Only the owning shard may
    /// call this.
    pub fn observe_micros(&self, us: u64) {
        // The smallest i with us <= 2^(i+3): ceil(log2(us)) - 3.
        let log2_ceil = 64 - us.saturating_sub(1).leading_zeros() as usize;
        let bucket = log2_ceil.saturating_sub(3).min(LATENCY_BUCKETS);
        ShardStats::add(&self.buckets[bucket], 1);
        ShardStats::add(&self.sum_us, us);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Per-bucket `(upper bound in seconds, count)` pairs (not cumulative),
    /// the sum in seconds, and the count.
    fn snapshot(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let mut count = 0;
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (i, bucket) in self.buckets.iter().enumerate() {
            let n = bucket.load(Ordering::Relaxed);
            count += n;
            let bound = if i < LATENCY_BUCKETS { latency_bound_us(i) as f64 / 1e6 } else { f64::INFINITY };
            buckets.push((bound, n));
        }
        (buckets, self.sum_us.load(Ordering::Relaxed) as f64 / 1e6, count)
    }
}

macro_rules! stats {
    ($($name:ident: $kind:ident $(($unit:ident))?, $help:literal;)*) => {
        /// Per-shard counters, gauges and histograms; written only by the owning shard.
        #[derive(Debug, Default)]
        pub struct ShardStats {
            $(#[doc = $help] pub $name: AtomicU64,)*
            /// Publish received (read from its socket, the API or Redis) ->
            /// its frame queued to this shard's subscribers.
            pub fanout_delay: Histogram,
            /// Frame queued to a client -> written to its socket.
            pub write_delay: Histogram,
        }

        /// Every counter and gauge: (name, type, unit, help, value of one shard).
        const SERIES: &[(&str, MetricType, Option<Unit>, &str, fn(&ShardStats) -> u64)] = &[
            $((stringify!($name), MetricType::$kind, stats!(@unit $($unit)?), $help, |s| s.$name.load(Ordering::Relaxed)),)*
        ];
    };
    (@unit) => { None };
    (@unit $unit:ident) => { Some(Unit::$unit) };
}

// Counters are named without `_total`: the encoder adds it.
stats! {
    connections: Gauge, "Open client connections, every transport (WebSocket, HTTP-streaming, SSE).";
    stream_sessions: Gauge, "Open HTTP-streaming sessions (part of connections).";
    sse_sessions: Gauge, "Open SSE sessions (part of connections).";
    emulation_requests: Counter, "Requests POSTed to emulation_path for a fallback session that were run.";
    emulation_dropped: Counter, "Requests forwarded over Redis for a session of this node that was gone or full.";
    connections_accepted: Counter, "WebSocket connections accepted since start.";
    handshakes_rejected: Counter, "HTTP requests answered without an upgrade (4xx/5xx).";
    publishes: Counter, "Publish requests accepted from clients on this shard.";
    api_publishes: Counter, "Messages accepted from the admin API (publish, broadcast: one per topic; send) on this shard.";
    deliveries: Counter, "Message frames queued to subscribers on this shard.";
    frames_written: Counter, "Message frames completely written to client sockets on this shard.";
    socket_writes: Counter, "Writes to plain client sockets (sendmsg calls; frames_written / socket_writes is the frames per send).";
    cork_flushes: Counter, "Times the flush task sent the queues of the connections corked during a batch of work.";
    encodings_json: Counter, "Messages encoded as JSON frames on this shard (at most once per message per node).";
    encodings_flatbuffers: Counter, "Messages encoded as FlatBuffers frames on this shard (at most once per message per node).";
    compressions: Counter, "Messages compressed (permessage-deflate) on this shard: once per message and form per node, or per echo.";
    compression_input: Counter(Bytes), "Bytes given to the compressor.";
    compression_output: Counter(Bytes), "Bytes the compressor produced (output / input is the compression ratio).";
    inflations: Counter, "Compressed client messages inflated.";
    bus_received: Counter, "Publishes received from other shards.";
    bus_full_waits: Counter, "Times a publisher waited for a full cross-shard channel.";
    dropped_frames: Counter, "Frames dropped from client queues by the drop_oldest policy.";
    slow_consumer_disconnects: Counter, "Clients closed with 1013 because their queue overflowed.";
    rate_limited: Counter, "Publishes refused with rate_limited.";
    request_errors: Counter, "Error replies sent for bad requests.";
    protocol_errors: Counter, "Connections closed for WebSocket protocol violations (1002/1007/1009).";
    heartbeat_timeouts: Counter, "Connections closed for sending nothing within heartbeat.timeout_ms.";
    auth_failures: Counter, "Connections closed with 4001: a bad token, or no auth request in time.";
    token_expiries: Counter, "Connections closed with 4002: token expired without a refresh.";
    user_limit_rejections: Counter, "Connections closed with 4008: over limits.max_connections_per_user.";
    ip_limit_rejections: Counter, "Handshakes answered 429: over limits.max_connections_per_ip.";
    forbidden: Counter, "Requests refused with forbidden (namespace rules, direct_messages, refresh for another user).";
    direct_messages: Counter, "Direct messages (send requests) accepted from clients on this shard.";
    server_disconnects: Counter, "Connections closed by the admin API's disconnect (from this node or another).";
    accept_errors: Counter, "accept() failures (EMFILE, ENFILE, ...).";
    redis_connected: Gauge, "Redis subscriber connections of the bridge that are up (one per Redis Cluster primary; bridge shard only).";
    redis_connects: Counter, "Successful Redis (re)connections of the bridge (publisher and subscriber).";
    redis_reconnects: Counter, "Redis connections of the bridge that were lost (each is followed by reconnect attempts).";
    redis_published: Counter, "Messages PUBLISHed to Redis (acknowledged by Redis).";
    redis_received: Counter, "Messages received from Redis and fanned out on this node.";
    redis_dropped: Counter, "Messages lost through Redis as this node knows: its own it dropped (buffer overflow, exact) or sent on a connection that failed before Redis answered (an upper bound), and other nodes' it missed (redis_missed_total).";
    redis_missed: Counter, "Messages of other nodes on topics this node subscribes that never arrived: gaps in the origin's per-topic sequence, counted exactly when its next message arrives (also in redis_dropped_total).";
    redis_bad_messages: Counter, "Messages from Redis refused (bad envelope, bad JSON, bad topic, too big).";
    redis_pipeline_depth: Gauge, "PUBLISH batches written to Redis and not yet answered (at most redis.pipeline_depth).";
    redis_redirects: Counter, "Commands a Redis Cluster primary redirected (MOVED, ASK) or asked to retry (TRYAGAIN, CLUSTERDOWN), each sent again.";
    redis_topology_changes: Counter, "Redis Cluster slot maps read that differed from the one in use (failover, resharding), and Sentinel primary switches followed.";
    redis_buffered: Gauge, "Messages waiting for the Redis publisher connection (at most redis.buffer_messages).";
    history_appended: Counter, "Messages given an offset and stored in a history ring on this shard (the home shard of their topic).";
    history_bytes: Gauge(Bytes), "Bytes held by this shard's history rings (at most its share of limits.history_memory_bytes).";
    history_topics: Gauge, "Topics with a history ring on this shard.";
    history_evictions: Counter, "History rings evicted to stay within limits.history_memory_bytes (their topics get a new epoch).";
    history_expirations: Counter, "History rings dropped because history_ttl_ms passed since their last publish.";
    history_relay_waits: Counter, "Numbered history messages that waited for room on a shard's channel.";
    recoveries: Counter, "Subscribes with recover answered recovered:true.";
    recoveries_failed: Counter, "Subscribes with recover answered recovered:false (epoch changed, history trimmed or expired, reply too big).";
    history_requests: Counter, "history requests answered.";
    history_refilled: Counter, "Numbered messages the bridge read back from Redis to fill a gap in a history topic's stream (missed while its subscription was down).";
    history_duplicates_dropped: Counter, "Numbered messages from Redis dropped because their offset was already delivered.";
    presence_requests: Counter, "presence and presence_stats requests answered.";
    presence_bad_entries: Counter, "Presence entries read from Redis that were not valid and were skipped.";
}

impl ShardStats {
    /// Adds to a counter. Only the owning shard may call this (a plain load
    /// and store: no atomic read-modify-write on the hot path).
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Ordering::Relaxed).saturating_sub(n), Ordering::Relaxed);
    }

    pub fn set(gauge: &AtomicU64, n: u64) {
        gauge.store(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// One series summed over every shard (e.g. `|s| &s.connections`).
    pub fn total(all: &[ShardStats], series: fn(&ShardStats) -> &AtomicU64) -> u64 {
        all.iter().map(|s| ShardStats::get(series(s))).sum()
    }
}

/// The shards' metrics as a `prometheus-client` collector: every shard's
/// series labelled `shard`.
#[derive(Debug)]
pub struct ShardMetrics {
    pub stats: Arc<[ShardStats]>,
}

impl Collector for ShardMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, kind, unit, help, value) in SERIES {
            let mut metric = encoder.encode_descriptor(name, help, unit.as_ref(), *kind)?;
            for (i, shard) in self.stats.iter().enumerate() {
                let labels = [("shard", i.to_string())];
                let mut family = metric.encode_family(&labels)?;
                match kind {
                    MetricType::Counter => family.encode_counter::<NoLabelSet, _, u64>(&value(shard), None)?,
                    _ => family.encode_gauge(&value(shard))?,
                }
            }
        }
        type Field = fn(&ShardStats) -> &Histogram;
        let histograms: [(&str, &str, Field); 2] = [
            ("fanout_delay", "Time from a publish being received (from its socket, the API or Redis) to its frame being queued to the shard's subscribers.", |s| &s.fanout_delay),
            ("write_delay", "Time from a frame being queued to a client to its last byte being written to the socket.", |s| &s.write_delay),
        ];
        for (name, help, histogram) in histograms {
            let mut metric = encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
            for (i, shard) in self.stats.iter().enumerate() {
                let labels = [("shard", i.to_string())];
                let (buckets, sum, count) = histogram(shard).snapshot();
                metric.encode_family(&labels)?.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }
        Ok(())
    }
}

/// The backend hooks, in the order of `bus::hooks::Hook` (its `name`).
pub const HOOK_NAMES: [&str; 5] = ["connect", "refresh", "subscribe", "publish", "rpc"];

/// How a hook call ended: its answer's kind, or why it failed (the `result`
/// label of `shardcast_proxy_requests_total`).
pub const HOOK_RESULTS: [&str; 8] = ["ok", "error", "disconnect", "timeout", "bad_status", "bad_body", "unreachable", "overloaded"];

/// The node's backend hook calls (`[proxy]`): counts per hook and result,
/// durations per hook, calls in flight. Written by the hooks thread (and a
/// shard refusing a call over `max_inflight`), so the counters take atomic
/// adds: one per call, far off any hot path.
#[derive(Debug, Default)]
pub struct HookStats {
    requests: [[AtomicU64; HOOK_RESULTS.len()]; HOOK_NAMES.len()],
    /// Written by the hooks thread only.
    durations: [Histogram; HOOK_NAMES.len()],
    pub inflight: AtomicU64,
}

impl HookStats {
    /// Counts one call of hook `hook` that ended as `HOOK_RESULTS[result]`.
    pub fn count(&self, hook: usize, result: usize) {
        self.requests[hook][result].fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long one answered (or failed) call of `hook` took. The
    /// hooks thread only.
    pub fn observe(&self, hook: usize, took: std::time::Duration) {
        self.durations[hook].observe_micros(took.as_micros().min(u128::from(u64::MAX)) as u64);
    }

    pub fn requests(&self, hook: usize, result: usize) -> u64 {
        self.requests[hook][result].load(Ordering::Relaxed)
    }
}

impl Collector for HookStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let help = "Backend hook calls ([proxy]) by hook and how they ended: ok, error, disconnect (the backend's answers), timeout, bad_status, bad_body, unreachable, overloaded (over proxy.max_inflight, never sent).";
        let mut metric = encoder.encode_descriptor("proxy_requests", help, None, MetricType::Counter)?;
        for (hook, name) in HOOK_NAMES.iter().enumerate() {
            for (result, label) in HOOK_RESULTS.iter().enumerate() {
                let labels = [("hook", *name), ("result", *label)];
                metric.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&self.requests(hook, result), None)?;
            }
        }
        let help = "Time from a hook call being sent to the backend to its answer (or failure), by hook.";
        let mut metric = encoder.encode_descriptor("proxy_duration", help, Some(&Unit::Seconds), MetricType::Histogram)?;
        for (hook, name) in HOOK_NAMES.iter().enumerate() {
            let (buckets, sum, count) = self.durations[hook].snapshot();
            metric.encode_family(&[("hook", *name)])?.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        let help = "Backend hook calls in flight on this node (at most proxy.max_inflight).";
        encoder.encode_descriptor("proxy_inflight", help, None, MetricType::Gauge)?.encode_gauge(&self.inflight.load(Ordering::Relaxed))?;
        Ok(())
    }
}

/// How a webhook event ended, the `result` label of
/// `shardcast_webhook_events_total`: `sent` (in a batch answered 2xx),
/// `failed` (its batch was refused with a 4xx or still failing after
/// `webhooks.max_retry_ms`), `dropped` (pushed out of a full queue).
pub const WEBHOOK_RESULTS: [&str; 3] = ["sent", "failed", "dropped"];
pub const WEBHOOK_SENT: usize = 0;
pub const WEBHOOK_FAILED: usize = 1;
pub const WEBHOOK_DROPPED: usize = 2;

/// The webhooks' counters: written by the shards (depth, drops) and the
/// hooks thread (the rest), read by `/metrics`.
#[derive(Debug, Default)]
pub struct WebhookStats {
    events: [AtomicU64; WEBHOOK_RESULTS.len()],
    depth: AtomicU64,
    /// POSTs that were retried (a 5xx, a timeout, no connection).
    retries: AtomicU64,
}

impl WebhookStats {
    pub fn count(&self, result: usize, n: u64) {
        self.events[result].fetch_add(n, Ordering::Relaxed);
    }

    pub fn dropped(&self, n: u64) {
        self.count(WEBHOOK_DROPPED, n);
    }

    pub fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_depth(&self, depth: usize) {
        self.depth.store(depth as u64, Ordering::Relaxed);
    }

    pub fn events(&self, result: usize) -> u64 {
        self.events[result].load(Ordering::Relaxed)
    }

    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::Relaxed)
    }
}

impl Collector for WebhookStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let help = "Webhook events by how they ended: sent (2xx), failed (a 4xx, or still failing after webhooks.max_retry_ms), dropped (pushed out of a full queue, webhooks.queue_size).";
        let mut metric = encoder.encode_descriptor("webhook_events", help, None, MetricType::Counter)?;
        for (result, label) in WEBHOOK_RESULTS.iter().enumerate() {
            metric.encode_family(&[("result", *label)])?.encode_counter::<NoLabelSet, _, u64>(&self.events(result), None)?;
        }
        let help = "Webhook POSTs retried after a 5xx, a timeout or a failed connection.";
        let mut metric = encoder.encode_descriptor("webhook_retries", help, None, MetricType::Counter)?;
        metric.encode_counter::<NoLabelSet, _, u64>(&self.retries.load(Ordering::Relaxed), None)?;
        let help = "Webhook events waiting to be sent (at most webhooks.queue_size).";
        encoder.encode_descriptor("webhook_queue_depth", help, None, MetricType::Gauge)?.encode_gauge(&self.depth())?;
        Ok(())
    }
}

/// The node's whole metrics page (OpenMetrics text, [`CONTENT_TYPE`]): the
/// shards' series and the node-wide ones the `node` collectors encode (the
/// user gauges, the backend hooks).
pub fn render(stats: &Arc<[ShardStats]>, node: Vec<Box<dyn Collector>>) -> String {
    let mut registry = Registry::with_prefix("shardcast");
    registry.register_collector(Box::new(ShardMetrics { stats: stats.clone() }));
    for collector in node {
        registry.register_collector(collector);
    }
    let mut page = String::new();
    prometheus_client::encoding::text::encode(&mut page, &registry).expect("writing to a String cannot fail");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_follows_prometheus_naming() {
        let stats: Arc<[ShardStats]> = (0..2).map(|_| ShardStats::default()).collect();
        ShardStats::add(&stats[1].publishes, 3);
        ShardStats::add(&stats[0].connections, 2);
        stats[1].write_delay.observe_micros(30);
        stats[1].write_delay.observe_micros(20_000_000);
        let hooks = Arc::new(HookStats::default());
        hooks.count(3, 1);
        hooks.observe(3, std::time::Duration::from_millis(2));
        let page = render(&stats, vec![Box::new(ShardMetrics { stats: Arc::from(Vec::new()) }), Box::new(hooks)]);
        assert!(page.contains("shardcast_proxy_requests_total{hook=\"publish\",result=\"error\"} 1\n"), "{page}");
        assert!(page.contains("shardcast_proxy_duration_seconds_count{hook=\"publish\"} 1\n"), "{page}");
        assert!(page.contains("shardcast_publishes_total{shard=\"1\"} 3\n"), "{page}");
        assert!(page.contains("shardcast_connections{shard=\"0\"} 2\n"), "{page}");
        assert!(page.contains("shardcast_compression_input_bytes_total{shard=\"0\"} 0\n"), "{page}");
        assert!(page.contains("shardcast_write_delay_seconds_bucket{le=\"0.000016\",shard=\"1\"} 0\n"), "{page}");
        assert!(page.contains("shardcast_write_delay_seconds_bucket{le=\"0.000032\",shard=\"1\"} 1\n"), "{page}");
        assert!(page.contains("shardcast_write_delay_seconds_bucket{le=\"+Inf\",shard=\"1\"} 2\n"), "{page}");
        assert!(page.contains("shardcast_write_delay_seconds_count{shard=\"1\"} 2\n"), "{page}");
        assert!(page.ends_with("# EOF\n"));
    }

    #[test]
    fn histogram_buckets_by_upper_bound() {
        let h = Histogram::default();
        for us in [0, 8, 9, 16, 17, 1 << 24, (1 << 24) + 1] {
            h.observe_micros(us);
        }
        let (buckets, sum, count) = h.snapshot();
        assert_eq!(count, 7);
        assert_eq!(buckets[0], (8e-6, 2), "le is inclusive: 0 and 8 µs");
        assert_eq!(buckets[1], (16e-6, 2), "9 and 16 µs");
        assert_eq!(buckets[2].1, 1, "17 µs");
        assert_eq!(buckets[LATENCY_BUCKETS - 1], (16.777216, 1));
        assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, 1));
        let want = (8 + 9 + 16 + 17 + (1 << 24) + (1 << 24) + 1) as f64 / 1e6;
        assert!((sum - want).abs() < 1e-9);
    }
}
