//! What the admin plane knows over time: this node's per-second rates and
//! their last five minutes ([`History`]), and the other nodes' latest
//! announcements ([`Nodes`]).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::metrics::ShardStats;

/// Samples kept: five minutes at one per second.
pub const HISTORY_LEN: usize = 300;

/// Cumulative counters of one shard at one instant.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    messages_in: u64,
    messages_out: u64,
    deliveries: u64,
}

impl Totals {
    fn read(s: &ShardStats) -> Totals {
        let get = ShardStats::get;
        Totals {
            // Messages entering the node's fan-out: client publishes and
            // direct messages, API messages, messages from other nodes.
            messages_in: get(&s.publishes) + get(&s.direct_messages) + get(&s.api_publishes) + get(&s.redis_received),
            messages_out: get(&s.frames_written),
            deliveries: get(&s.deliveries),
        }
    }
}

/// Per-second rates over the last sampling interval.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Rates {
    pub messages_in_per_second: f64,
    pub messages_out_per_second: f64,
    pub deliveries_per_second: f64,
}

impl Rates {
    fn between(old: Totals, new: Totals, seconds: f64) -> Rates {
        let rate = |a: u64, b: u64| if seconds > 0.0 { b.saturating_sub(a) as f64 / seconds } else { 0.0 };
        Rates {
            messages_in_per_second: rate(old.messages_in, new.messages_in),
            messages_out_per_second: rate(old.messages_out, new.messages_out),
            deliveries_per_second: rate(old.deliveries, new.deliveries),
        }
    }
}

/// One point of the dashboard's chart.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Unix time, in milliseconds.
    pub t: u64,
    pub connections: u64,
    #[serde(flatten)]
    pub rates: Rates,
    pub dropped_frames: u64,
    pub slow_consumer_disconnects: u64,
}

/// The node's rates, sampled once a second from the shards' counters
/// (atomics: no shard is asked anything).
#[derive(Debug, Default)]
pub struct History {
    last: Option<(Instant, Vec<Totals>)>,
    /// The latest rates of each shard.
    pub shard_rates: Vec<Rates>,
    /// At most [`HISTORY_LEN`] samples, oldest first.
    pub samples: VecDeque<Sample>,
}

impl History {
    /// Takes one sample now.
    pub fn sample(&mut self, stats: &[ShardStats]) {
        let now = Instant::now();
        let totals: Vec<Totals> = stats.iter().map(Totals::read).collect();
        let sum = |t: &[Totals]| {
            t.iter().fold(Totals::default(), |a, b| Totals {
                messages_in: a.messages_in + b.messages_in,
                messages_out: a.messages_out + b.messages_out,
                deliveries: a.deliveries + b.deliveries,
            })
        };
        if let Some((then, old)) = &self.last {
            let seconds = now.duration_since(*then).as_secs_f64();
            self.shard_rates = old.iter().zip(&totals).map(|(o, n)| Rates::between(*o, *n, seconds)).collect();
            let get = |series| ShardStats::total(stats, series);
            self.samples.push_back(Sample {
                t: unix_ms(),
                connections: get(|s| &s.connections),
                rates: Rates::between(sum(old), sum(&totals), seconds),
                dropped_frames: get(|s| &s.dropped_frames),
                slow_consumer_disconnects: get(|s| &s.slow_consumer_disconnects),
            });
            if self.samples.len() > HISTORY_LEN {
                self.samples.pop_front();
            }
        }
        self.last = Some((now, totals));
    }

    /// The node's latest rates.
    pub fn rates(&self) -> Rates {
        self.samples.back().map(|s| s.rates).unwrap_or_default()
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// What a node announces to the others every `[admin] node_info_interval_ms`
/// (JSON on the Redis channel `<prefix>$nodes`). Untrusted on receipt:
/// parsed into this shape or ignored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeSummary {
    pub id: String,
    pub version: String,
    pub uptime_seconds: f64,
    pub shards: usize,
    pub connections: u64,
    pub users: u64,
    #[serde(flatten)]
    pub rates: Rates,
    pub dropped_frames: u64,
    pub slow_consumer_disconnects: u64,
    pub redis_connected: bool,
}

/// A node as `/api/info` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct KnownNode {
    #[serde(flatten)]
    pub summary: NodeSummary,
    /// How long ago its last announcement arrived.
    pub last_seen_ms: u64,
}

/// Other nodes, from their announcements. At most `max` nodes; a node not
/// heard from for three intervals drops out.
#[derive(Debug)]
pub struct Nodes {
    own_id: String,
    max: usize,
    ttl: Duration,
    nodes: HashMap<String, (NodeSummary, Instant)>,
    /// Announcements refused (not a summary, or over `max`).
    pub refused: u64,
}

impl Nodes {
    pub fn new(own_id: String, max: usize, interval: Duration) -> Nodes {
        Nodes { own_id, max, ttl: interval * 3, nodes: HashMap::new(), refused: 0 }
    }

    /// Records one announcement (bytes from Redis).
    pub fn heard(&mut self, bytes: &[u8], now: Instant) {
        let summary: NodeSummary = match serde_json::from_slice(bytes) {
            Ok(s) => s,
            Err(_) => {
                self.refused += 1;
                return;
            }
        };
        if summary.id == self.own_id {
            return;
        }
        if summary.id.is_empty() || summary.id.len() > 128 || summary.version.len() > 64 {
            self.refused += 1;
            return;
        }
        self.expire(now);
        if self.nodes.len() >= self.max && !self.nodes.contains_key(&summary.id) {
            self.refused += 1;
            return;
        }
        self.nodes.insert(summary.id.clone(), (summary, now));
    }

    fn expire(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.nodes.retain(|_, (_, seen)| now.duration_since(*seen) < ttl);
    }

    /// The live nodes, by id.
    pub fn live(&mut self, now: Instant) -> Vec<KnownNode> {
        self.expire(now);
        let mut nodes: Vec<KnownNode> = self
            .nodes
            .values()
            .map(|(summary, seen)| KnownNode { summary: summary.clone(), last_seen_ms: now.duration_since(*seen).as_millis() as u64 })
            .collect();
        nodes.sort_by(|a, b| a.summary.id.cmp(&b.summary.id));
        nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(id: &str) -> Vec<u8> {
        let s = NodeSummary {
            id: id.into(),
            version: "0.1.0".into(),
            uptime_seconds: 1.0,
            shards: 2,
            connections: 3,
            users: 0,
            rates: Rates::default(),
            dropped_frames: 0,
            slow_consumer_disconnects: 0,
            redis_connected: true,
        };
        serde_json::to_vec(&s).unwrap()
    }

    #[test]
    fn nodes_expire_after_three_intervals_and_are_bounded() {
        let mut nodes = Nodes::new("me".into(), 2, Duration::from_millis(100));
        let t0 = Instant::now();
        nodes.heard(&summary("me"), t0);
        nodes.heard(&summary("a"), t0);
        nodes.heard(b"{not json", t0);
        nodes.heard(&summary("b"), t0 + Duration::from_millis(200));
        nodes.heard(&summary("c"), t0 + Duration::from_millis(200));
        assert_eq!(nodes.refused, 2, "garbage, and a third node over max_nodes");
        let live: Vec<String> = nodes.live(t0 + Duration::from_millis(250)).into_iter().map(|n| n.summary.id).collect();
        assert_eq!(live, vec!["a", "b"]);
        let live: Vec<String> = nodes.live(t0 + Duration::from_millis(310)).into_iter().map(|n| n.summary.id).collect();
        assert_eq!(live, vec!["b"], "a was last heard 310 ms (over 3 x 100 ms) ago");
    }

    #[test]
    fn history_turns_counters_into_rates_and_keeps_five_minutes() {
        let stats: Vec<ShardStats> = (0..2).map(|_| ShardStats::default()).collect();
        let mut h = History::default();
        h.sample(&stats);
        assert!(h.samples.is_empty(), "a rate needs two samples");
        ShardStats::add(&stats[1].publishes, 1000);
        std::thread::sleep(Duration::from_millis(20));
        h.sample(&stats);
        assert!(h.rates().messages_in_per_second > 1000.0);
        assert_eq!(h.shard_rates[0].messages_in_per_second, 0.0);
        for _ in 0..HISTORY_LEN + 5 {
            h.sample(&stats);
        }
        assert_eq!(h.samples.len(), HISTORY_LEN);
    }
}
