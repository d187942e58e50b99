//! Redis Cluster: key slots, the slot map, and the hash tags that put a
//! topic's history and presence keys in its channel's slot.
//!
//! In cluster mode every topic's channel is `SPUBLISH`ed to, and
//! `SSUBSCRIBE`d on, the primary that owns the channel's slot (sharded
//! pub/sub: the message does not travel the cluster bus to every node). The
//! bridge keeps one link per primary and routes by slot; this file holds
//! only the pure parts, tested against Redis' own `CLUSTER KEYSLOT`.

use std::sync::OnceLock;

use redis::Value;

/// Slots of a Redis Cluster.
pub const SLOTS: usize = 16384;

/// The slot of `key`: CRC16 (XMODEM) of the key, or of its hash tag (the
/// bytes between the first `{` and the next `}`, when not empty), mod 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match memchr::memchr(b'{', key) {
        Some(open) => match memchr::memchr(b'}', &key[open + 1..]) {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS as u16
}

/// A short hash tag for each slot: `slot_tag(s)` hashes to slot `s`. A key
/// `…{<slot_tag(key_slot(channel))>}…` lands in the channel's slot whatever
/// the topic's characters (a topic may hold braces of its own). The table
/// is the first such tag in counting order, so every node computes the same.
pub fn slot_tag(slot: u16) -> &'static str {
    static TAGS: OnceLock<Vec<Box<str>>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags: Vec<Option<Box<str>>> = vec![None; SLOTS];
        let mut missing = SLOTS;
        let mut n: u64 = 0;
        while missing > 0 {
            let tag = format!("{n:x}");
            let slot = key_slot(tag.as_bytes()) as usize;
            if tags[slot].is_none() {
                tags[slot] = Some(tag.into_boxed_str());
                missing -= 1;
            }
            n += 1;
        }
        tags.into_iter().map(|t| t.expect("every slot has a tag")).collect()
    });
    &tags[slot as usize % SLOTS]
}

/// Which primary serves each slot, as `(host, port)`; `None` for a slot no
/// primary serves (the cluster is down for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMap {
    owners: Vec<Option<u16>>,
    pub primaries: Vec<(String, u16)>,
}

impl SlotMap {
    /// Parses a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, …],
    /// replicas…], …]`. An empty host means the address the reply came
    /// from (`seed_host`). Untrusted: `None` when malformed.
    pub fn parse(reply: &Value, seed_host: &str) -> Option<SlotMap> {
        let Value::Array(ranges) = reply else { return None };
        let mut map = SlotMap { owners: vec![None; SLOTS], primaries: Vec::new() };
        for range in ranges {
            let Value::Array(parts) = range else { return None };
            let [Value::Int(start), Value::Int(end), Value::Array(primary), ..] = parts.as_slice() else { return None };
            let (start, end) = (usize::try_from(*start).ok()?, usize::try_from(*end).ok()?);
            if start > end || end >= SLOTS {
                return None;
            }
            let host = match primary.first()? {
                Value::BulkString(h) => std::str::from_utf8(h).ok()?.to_string(),
                Value::SimpleString(h) => h.clone(),
                _ => return None,
            };
            let host = if host.is_empty() || host == "?" { seed_host.to_string() } else { host };
            let Value::Int(port) = primary.get(1)? else { return None };
            let port = u16::try_from(*port).ok().filter(|p| *p != 0)?;
            let index = match map.primaries.iter().position(|(h, p)| *h == host && *p == port) {
                Some(i) => i,
                None => {
                    map.primaries.push((host, port));
                    map.primaries.len() - 1
                }
            };
            let index = u16::try_from(index).ok()?;
            map.owners[start..=end].iter_mut().for_each(|o| *o = Some(index));
        }
        Some(map)
    }

    /// The primary serving `slot`, as an index into `primaries`.
    pub fn owner(&self, slot: u16) -> Option<usize> {
        self.owners.get(slot as usize).copied().flatten().map(usize::from)
    }

    /// Slots no primary serves.
    pub fn uncovered(&self) -> usize {
        self.owners.iter().filter(|o| o.is_none()).count()
    }
}

/// A `MOVED <slot> <host:port>` or `ASK <slot> <host:port>` redirection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    Moved { host: String, port: u16 },
    Ask { host: String, port: u16 },
    /// `TRYAGAIN` (a slot mid-migration) or `CLUSTERDOWN`: try later.
    Retry,
}

/// Reads a cluster redirection out of an error reply's code and details.
pub fn redirect(code: &str, details: Option<&str>) -> Option<Redirect> {
    let address = || {
        let addr = details?.split_whitespace().nth(1)?;
        let (host, port) = addr.rsplit_once(':')?;
        Some((host.trim_start_matches('[').trim_end_matches(']').to_string(), port.parse::<u16>().ok()?))
    };
    match code {
        "MOVED" => address().map(|(host, port)| Redirect::Moved { host, port }),
        "ASK" => address().map(|(host, port)| Redirect::Ask { host, port }),
        "TRYAGAIN" | "CLUSTERDOWN" => Some(Redirect::Retry),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_redis_examples_and_hash_tags() {
        // Values from Redis' CLUSTER KEYSLOT (also checked live in tests/it/topology.rs).
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"somekey"), 11058);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"), "empty tag: the whole key");
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
    }

    #[test]
    fn every_slot_has_a_tag_that_hashes_to_it() {
        for slot in [0u16, 1, 5460, 5461, 12182, 16383] {
            assert_eq!(key_slot(format!("k{{{}}}:t", slot_tag(slot)).as_bytes()), slot);
        }
        assert!((0..SLOTS as u16).all(|s| key_slot(slot_tag(s).as_bytes()) == s));
    }

    #[test]
    fn slot_maps_parse_and_refuse_garbage() {
        let node = |host: &str, port: i64| Value::Array(vec![Value::BulkString(host.into()), Value::Int(port), Value::BulkString(b"id".to_vec())]);
        let range = |a: i64, b: i64, host: &str, port: i64| Value::Array(vec![Value::Int(a), Value::Int(b), node(host, port), node("r", 1)]);
        let reply = Value::Array(vec![range(0, 5460, "10.0.0.1", 7000), range(5461, 16383, "", 7001)]);
        let map = SlotMap::parse(&reply, "seed").unwrap();
        assert_eq!(map.primaries, vec![("10.0.0.1".to_string(), 7000), ("seed".to_string(), 7001)]);
        assert_eq!((map.owner(0), map.owner(5461), map.uncovered()), (Some(0), Some(1), 0));
        let partial = SlotMap::parse(&Value::Array(vec![range(0, 99, "h", 1)]), "s").unwrap();
        assert_eq!((partial.owner(100), partial.uncovered()), (None, SLOTS - 100));
        for bad in [Value::Nil, Value::Array(vec![range(5, 4, "h", 1)]), Value::Array(vec![range(0, 16384, "h", 1)]), Value::Array(vec![range(0, 1, "h", 0)])] {
            assert_eq!(SlotMap::parse(&bad, "s"), None);
        }
    }

    #[test]
    fn redirections_are_read_from_error_replies() {
        assert_eq!(redirect("MOVED", Some("3999 127.0.0.1:6381")), Some(Redirect::Moved { host: "127.0.0.1".into(), port: 6381 }));
        assert_eq!(redirect("ASK", Some("3999 [::1]:6381")), Some(Redirect::Ask { host: "::1".into(), port: 6381 }));
        assert_eq!(redirect("TRYAGAIN", Some("Multiple keys request during rehashing of slot")), Some(Redirect::Retry));
        assert_eq!(redirect("MOVED", Some("garbage")), None);
        assert_eq!(redirect("ERR", Some("x")), None);
    }
}
