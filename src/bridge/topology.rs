//! Finding the Redis servers: the primary a Sentinel names (asked before
//! every connection attempt, followed on `+switch-master`), and a Redis
//! Cluster's slot map (read at start, on a redirection, a lost link or a
//! moved subscription, and every `[redis] topology_refresh_ms`), which
//! decides the links and where each topic is subscribed.

use std::rc::Rc;
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use glommio::timer::sleep;
use redis::Value;
use tracing::{debug, info, warn};

use super::cluster::SlotMap;
use super::endpoint::RedisStream;
use super::link::{ask, Link};
use super::resp::{BridgeError, RespReader};
use super::{Bridge, NODES_CHANNEL, READ_CHUNK};
use crate::config::RedisTopology;
use crate::metrics::ShardStats;
use crate::shard::Shard;

/// Time allowed for one discovery question (a Sentinel's answer, `ROLE`,
/// `CLUSTER SLOTS`), besides the connect's own limit.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Least time between a slot map read that found nothing new and the next
/// one, so that a burst of redirections or pushes makes one read. A read
/// that found a new map is followed at once by the next one asked for (a
/// failover shows itself in steps: the old primary's `sunsubscribe`, then
/// `MOVED` replies).
const REFRESH_SPACING: Duration = Duration::from_millis(100);

/// How often the slot map is read while a primary is unreachable or a slot
/// is served by none (a failover is probably under way).
const REFRESH_WHILE_DEGRADED: Duration = Duration::from_millis(500);

/// `fut`, or a time-out error after [`ASK_TIMEOUT`].
async fn within<T>(fut: impl std::future::Future<Output = Result<T, BridgeError>>) -> Result<T, BridgeError> {
    futures_lite::future::or(fut, async {
        sleep(ASK_TIMEOUT).await;
        Err(BridgeError::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer")))
    })
    .await
}

impl Bridge {
    /// Opens a connection to `link`'s server. In sentinel mode the primary
    /// is asked of the Sentinels first, and the server must say it is one.
    pub(super) async fn open(&self, link: &Link) -> Result<RedisStream, BridgeError> {
        let tls = self.config.tls.as_ref();
        if !matches!(self.config.topology, RedisTopology::Sentinel { .. }) {
            let endpoint = link.endpoint.borrow().clone();
            return endpoint.connect(tls).await;
        }
        let (host, port) = self.sentinel_primary().await?;
        let endpoint = link.endpoint.borrow().at(&host, port);
        *link.endpoint.borrow_mut() = endpoint.clone();
        let mut stream = endpoint.connect(tls).await?;
        let role = within(ask(&mut stream, &redis::cmd("ROLE"))).await?;
        let primary = match &role {
            Value::Array(parts) => matches!(parts.first(), Some(Value::BulkString(r)) if r.as_slice() == b"master"),
            // An ACL user without ROLE: trust the Sentinels.
            Value::ServerError(e) => {
                debug!(server = endpoint.address(), "redis refused ROLE ({}); taking the sentinels' word", e.code());
                true
            }
            _ => false,
        };
        if !primary {
            return Err(BridgeError::Discovery(format!("{} is not a primary (a failover not finished yet?)", endpoint.address())));
        }
        Ok(stream)
    }

    /// The primary's address, from the first Sentinel that knows it.
    async fn sentinel_primary(&self) -> Result<(String, u16), BridgeError> {
        let RedisTopology::Sentinel { sentinels, master_name, .. } = &self.config.topology else {
            return Err(BridgeError::Discovery("not in sentinel mode".into()));
        };
        let mut errors = Vec::new();
        for sentinel in sentinels {
            let answer = within(async {
                let mut stream = sentinel.connect(self.config.tls.as_ref()).await?;
                ask(&mut stream, redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(master_name)).await
            })
            .await;
            match answer.map(|v| parse_address(&v)) {
                Ok(Some(address)) => return Ok(address),
                Ok(None) => errors.push(format!("{} does not know it", sentinel.address())),
                Err(e) => errors.push(format!("{}: {e}", sentinel.address())),
            }
        }
        Err(BridgeError::Discovery(format!("no sentinel named the primary {master_name:?} ({})", errors.join("; "))))
    }

    /// Reads the slot map from the first node that answers: the known
    /// primaries first, then the seeds.
    async fn read_slot_map(&self) -> Result<SlotMap, BridgeError> {
        let RedisTopology::Cluster { seeds } = &self.config.topology else {
            return Err(BridgeError::Discovery("not in cluster mode".into()));
        };
        let mut candidates: Vec<_> = self.links.borrow().iter().map(|l| l.endpoint.borrow().clone()).collect();
        candidates.extend(seeds.iter().cloned());
        candidates.dedup();
        let mut errors = Vec::new();
        for node in candidates {
            let answer = within(async {
                let mut stream = node.connect(self.config.tls.as_ref()).await?;
                ask(&mut stream, redis::cmd("CLUSTER").arg("SLOTS")).await
            })
            .await;
            match answer {
                Ok(reply) => match SlotMap::parse(&reply, &node.host) {
                    Some(map) if !map.primaries.is_empty() => return Ok(map),
                    Some(_) => errors.push(format!("{}: no slot is assigned", node.address())),
                    None => errors.push(format!("{}: not a cluster node ({})", node.address(), describe(&reply))),
                },
                Err(e) => errors.push(format!("{}: {e}", node.address())),
            }
        }
        Err(BridgeError::Discovery(format!("no cluster node answered CLUSTER SLOTS ({})", errors.join("; "))))
    }

    /// Takes a new slot map into use: links for new primaries, retired links
    /// for primaries gone (what they had queued goes to the new owners),
    /// subscriptions moved to the slots' new owners (all of them again after
    /// Redis dropped some), and the commands waiting for a primary sent.
    /// Returns whether the map differs from the one in use.
    fn apply_map(self: &Rc<Self>, shard: &Rc<Shard>, map: SlotMap) -> bool {
        let stats = shard.stats();
        let resync = self.resync.replace(false);
        let old_map = self.map.borrow().clone();
        let old_links = self.links.borrow().clone();
        let changed = old_map.as_ref() != Some(&map);
        if changed {
            if old_map.is_some() {
                ShardStats::add(&stats.redis_topology_changes, 1);
            }
            let primaries: Vec<String> = map.primaries.iter().map(|(h, p)| format!("{h}:{p}")).collect();
            info!(primaries = %primaries.join(","), uncovered_slots = map.uncovered(), "redis cluster slot map in use");
            let RedisTopology::Cluster { seeds } = &self.config.topology else { return false };
            let mut fresh = Vec::new();
            let links: Vec<Rc<Link>> = map
                .primaries
                .iter()
                .map(|(host, port)| {
                    old_links.iter().find(|l| l.endpoint.borrow().host == *host && l.endpoint.borrow().port == *port).cloned().unwrap_or_else(|| {
                        let link = Rc::new(Link::new(seeds[0].at(host, *port)));
                        fresh.push(link.clone());
                        link
                    })
                })
                .collect();
            *self.links.borrow_mut() = links;
            *self.map.borrow_mut() = Some(map);
            for link in &fresh {
                self.spawn_link(shard, link);
            }
            // Slots that changed hands wait for what is still on its way
            // through their old owners (per-publisher order: `fence.rs`).
            let old_owner = |slot: u16| old_map.as_ref().and_then(|m| m.owner(slot)).and_then(|i| old_links.get(i)).cloned();
            self.fence_moved(&old_links, old_owner, stats);
            for link in old_links.iter().filter(|l| self.links.borrow().iter().all(|n| !Rc::ptr_eq(n, l))) {
                // An ASKING would precede another command on the new owner.
                for command in link.retire().into_iter().filter(|c| !c.is_setup()) {
                    self.push(command, stats);
                }
            }
        }
        let waiting = std::mem::take(&mut *self.unrouted.borrow_mut());
        for command in waiting {
            self.push(command, stats);
        }
        if !(changed || resync) {
            return false;
        }
        // Subscriptions whose slot changed hands, or all after Redis dropped some.
        let old_owner = |slot: u16| old_map.as_ref().and_then(|m| m.owner(slot)).and_then(|i| old_links.get(i)).cloned();
        let mut topics: Vec<Rc<str>> = self.wanted.borrow().iter().cloned().collect();
        if self.announcements.is_some() {
            topics.push(Rc::from(NODES_CHANNEL));
        }
        topics.push(Rc::from(self.own_channel()));
        for topic in topics {
            let slot = self.slot(&topic);
            let (old, new) = (old_owner(slot), self.route(slot));
            let moved = match (&old, &new) {
                (Some(o), Some(n)) => !Rc::ptr_eq(o, n),
                (None, None) => false,
                _ => true,
            };
            if !(moved || resync) {
                continue;
            }
            if let Some(new) = &new {
                new.change(topic.clone(), true);
            }
            if let Some(old) = old.filter(|o| moved && !o.is_retired()) {
                old.change(topic, false);
            }
        }
        changed
    }
}

/// Cluster mode: reads the slot map and keeps it current.
pub async fn cluster_loop(shard: Rc<Shard>, bridge: Rc<Bridge>) {
    let cfg = bridge.config().clone();
    let mut backoff = cfg.reconnect_min;
    let mut warned = false;
    loop {
        match bridge.read_slot_map().await {
            Ok(map) => {
                let uncovered = map.uncovered() > 0;
                let changed = bridge.apply_map(&shard, map);
                if warned {
                    info!("redis cluster: slot map read again");
                }
                backoff = cfg.reconnect_min;
                warned = false;
                let degraded = uncovered || bridge.links.borrow().iter().any(|l| !l.publisher_connected.get() || !l.subscriber_connected.get());
                let wait = if degraded { cfg.topology_refresh.min(REFRESH_WHILE_DEGRADED) } else { cfg.topology_refresh };
                if !changed {
                    sleep(REFRESH_SPACING.min(wait)).await;
                }
                futures_lite::future::or(bridge.refresh.wait(), sleep(wait)).await;
            }
            Err(err) => {
                bridge.fail_unrouted_reads(&shard);
                if !warned {
                    warn!(retry_in_ms = backoff.as_millis() as u64, "redis cluster unavailable: {err}; local fan-out continues, retrying");
                    warned = true;
                } else {
                    debug!("redis cluster still unavailable: {err}");
                }
                sleep(backoff).await;
                backoff = (backoff * 2).min(cfg.reconnect_max);
            }
        }
    }
}

/// Sentinel mode: listens for `+switch-master` on one Sentinel after
/// another, and moves the link to the new primary when it is ours.
pub async fn sentinel_watch(shard: Rc<Shard>, bridge: Rc<Bridge>) {
    let RedisTopology::Sentinel { sentinels, master_name, .. } = &bridge.config().topology else { return };
    let cfg = bridge.config().clone();
    let mut backoff = cfg.reconnect_min;
    for sentinel in sentinels.iter().cycle() {
        let watched = async {
            let mut stream = within(sentinel.connect(cfg.tls.as_ref())).await?;
            stream.write_all(&redis::cmd("SUBSCRIBE").arg("+switch-master").get_packed_command()).await?;
            // A switch missed while no Sentinel was watched.
            let named = bridge.sentinel_primary().await?;
            let link = bridge.links.borrow().first().cloned();
            if let Some(link) = link.filter(|l| l.publisher_connected.get() || l.subscriber_connected.get()) {
                let current = (link.endpoint.borrow().host.clone(), link.endpoint.borrow().port);
                if current != named {
                    info!(master_name, from = %format!("{}:{}", current.0, current.1), to = %format!("{}:{}", named.0, named.1), "redis sentinel names another primary; following it");
                    ShardStats::add(&shard.stats().redis_topology_changes, 1);
                    link.reset();
                }
            }
            backoff = cfg.reconnect_min;
            let mut reader = RespReader::new(READ_CHUNK, 64 * 1024);
            loop {
                for push in reader.read_values(&mut stream).await? {
                    let Some(text) = switch_message(&push) else { continue };
                    // "<name> <old-ip> <old-port> <new-ip> <new-port>"
                    let fields: Vec<&str> = text.split_whitespace().collect();
                    if fields.len() == 5 && fields[0] == master_name {
                        info!(master_name, from = %format!("{}:{}", fields[1], fields[2]), to = %format!("{}:{}", fields[3], fields[4]), "redis sentinel switched the primary; following it");
                        ShardStats::add(&shard.stats().redis_topology_changes, 1);
                        if let Some(link) = bridge.links.borrow().first() {
                            link.reset();
                        }
                    }
                }
            }
        };
        let result: Result<(), BridgeError> = watched.await;
        if let Err(err) = result {
            debug!(sentinel = sentinel.address(), "redis sentinel watch lost: {err}");
        }
        sleep(backoff).await;
        backoff = (backoff * 2).min(cfg.reconnect_max);
    }
}

/// The text of a `+switch-master` message push.
fn switch_message(push: &Value) -> Option<&str> {
    let Value::Array(parts) = push else { return None };
    match parts.as_slice() {
        [Value::BulkString(kind), Value::BulkString(channel), Value::BulkString(data)] if kind == b"message" && channel == b"+switch-master" => {
            std::str::from_utf8(data).ok()
        }
        _ => None,
    }
}

/// `[host, port]`, as Sentinel names a primary.
fn parse_address(reply: &Value) -> Option<(String, u16)> {
    let Value::Array(parts) = reply else { return None };
    let text = |v: &Value| match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok().map(str::to_string),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    match parts.as_slice() {
        [host, port] => Some((text(host).filter(|h| !h.is_empty())?, text(port)?.parse().ok().filter(|p| *p != 0)?)),
        _ => None,
    }
}

/// A short description of an unexpected reply, for logs.
fn describe(reply: &Value) -> String {
    match reply {
        Value::ServerError(e) => format!("{} {}", e.code(), e.details().unwrap_or("")),
        _ => "unexpected reply".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_answers_and_switch_messages_parse() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        assert_eq!(parse_address(&Value::Array(vec![bulk("10.0.0.2"), bulk("6380")])), Some(("10.0.0.2".into(), 6380)));
        assert_eq!(parse_address(&Value::Nil), None);
        assert_eq!(parse_address(&Value::Array(vec![bulk("h"), bulk("port")])), None);
        assert_eq!(parse_address(&Value::Array(vec![bulk(""), bulk("1")])), None);
        let push = Value::Array(vec![bulk("message"), bulk("+switch-master"), bulk("m 1.1.1.1 1 2.2.2.2 2")]);
        assert_eq!(switch_message(&push), Some("m 1.1.1.1 1 2.2.2.2 2"));
        assert_eq!(switch_message(&Value::Array(vec![bulk("subscribe"), bulk("+switch-master"), Value::Int(1)])), None);
    }
}
