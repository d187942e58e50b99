//! History and presence in Redis: the Lua scripts, the keys they use, and
//! the parsing of their (untrusted) replies.
//!
//! Why the history is ordered and gap-free: one script ([`NUMBER`]) does
//! the whole publish atomically (Redis runs a script alone): it increments
//! the topic's counter, appends the message to the capped stream under that
//! offset, renews both keys' expiry and PUBLISHes the numbered message. No
//! two publishes can interleave between taking an offset and publishing it,
//! so every node's subscriber connection receives the topic's messages in
//! offset order, each offset once. A node that reads the stream
//! ([`READ`]) after its SUBSCRIBE was confirmed misses nothing: anything
//! numbered after the read arrives on the channel.
//!
//! Keys of topic `T`, under `[redis] channel_prefix` (`p`), with `{H}` a
//! hash tag in the Redis Cluster slot of `T`'s channel `pT`, so that the
//! keys and the channel share one slot (as scripts in a cluster need): `p$meta{H}:T` (hash: `epoch`, `top`),
//! `p$history{H}:T` (stream, ids `<offset>-0`, field `d` = envelope),
//! `p$presence{H}:T` (hash: client id -> user, "" when anonymous) and
//! `p$presence-exp{H}:T` (sorted set: client id -> expiry, Redis time in ms)
//! and `p$occupied{H}:T` (hash: node id -> lease end, Redis time in ms).

use std::sync::OnceLock;

use redis::Value;

use super::envelope::{self, Incoming};
use crate::protocol::position::{Publication, MAX_EPOCH_BYTES};
use crate::presence::{Entry, Found};

/// Numbers and publishes one message of a history topic.
/// KEYS: meta, stream. ARGV: channel, envelope, history_size, ttl_ms, a
/// fresh epoch (used if the topic has none: first publish, expired, flushed),
/// the publish command (`PUBLISH`, or `SPUBLISH` in a cluster: sharded
/// pub/sub, the channel in the keys' slot). Returns the offset.
pub const NUMBER: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[5]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'top', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], offset .. '-0', 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call(ARGV[6], ARGV[1], '\0SCH' .. offset .. '\0' .. epoch .. '\0' .. ARGV[2])
return offset
"#;

/// Reads a topic's position and messages.
/// KEYS: meta, stream. ARGV: mode (`after` | `latest`), the first stream
/// id to read (`after`), count (0: the position only), byte budget, ttl_ms,
/// a fresh epoch (given to a topic that has none, so that every answer has one).
/// Returns `{top, epoch, {{offset, envelope}, …}}`, oldest first, stopping
/// before the budget is exceeded.
pub const READ: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local top = 0
if not epoch then
  epoch = ARGV[6]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return {0, epoch, {}}
end
top = tonumber(redis.call('HGET', KEYS[1], 'top'))
if ARGV[3] == '0' then
  return {top, epoch, {}}
end
local entries
if ARGV[1] == 'latest' then
  entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[3])
  local n = #entries
  for i = 1, math.floor(n / 2) do
    entries[i], entries[n - i + 1] = entries[n - i + 1], entries[i]
  end
else
  entries = redis.call('XRANGE', KEYS[2], ARGV[2], '+', 'COUNT', ARGV[3])
end
local out = {}
local used = 0
local budget = tonumber(ARGV[4])
local first = 1
if ARGV[1] == 'latest' then
  local total = 0
  for i = #entries, 1, -1 do
    total = total + #entries[i][2][2]
    if total > budget then first = i + 1 break end
  end
end
for i = first, #entries do
  local e = entries[i]
  used = used + #e[2][2]
  if used > budget then break end
  local id = e[1]
  out[#out + 1] = {tonumber(string.sub(id, 1, string.find(id, '-') - 1)), e[2][2]}
end
return {top, epoch, out}
"#;

/// Adds, refreshes or removes one node's presence entries of a topic.
/// KEYS: presence hash, expiry set. ARGV: ttl_ms, then (op, client, user)
/// triples, op `+` (add or refresh) or `-` (remove).
pub const PRESENCE_WRITE: &str = r#"
local t = redis.call('TIME')
local expires = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV, 3 do
  if ARGV[i] == '+' then
    redis.call('HSET', KEYS[1], ARGV[i + 1], ARGV[i + 2])
    redis.call('ZADD', KEYS[2], expires, ARGV[i + 1])
  else
    redis.call('HDEL', KEYS[1], ARGV[i + 1])
    redis.call('ZREM', KEYS[2], ARGV[i + 1])
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
return 1
"#;

/// Marks (`+`) or unmarks (`-`) this node as holding subscribers of a
/// topic, for the cluster-wide `topic_occupied` / `topic_vacated` webhooks
/// (`docs/admin.md`, "Webhooks"). KEYS: the occupancy hash (node id ->
/// lease end, Redis time in ms). ARGV: `+` | `-` | `renew`, node id, lease
/// in ms. Marks whose lease ended (a node that died holding the topic) are
/// removed first. Returns 1 when the change is the topic's first mark (a
/// `+` on an empty hash: occupied) or its last (a `-` that empties it:
/// vacated), else 0; `renew` only extends this node's mark and returns 0.
/// Redis runs a script alone, so of two nodes racing for a topic's first
/// or last mark exactly one gets 1.
pub const OCCUPANCY: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local marks = redis.call('HGETALL', KEYS[1])
local others = 0
for i = 1, #marks, 2 do
  if marks[i] ~= ARGV[2] then
    if tonumber(marks[i + 1]) < now then
      redis.call('HDEL', KEYS[1], marks[i])
    else
      others = others + 1
    end
  end
end
if ARGV[1] == '-' then
  local had = redis.call('HDEL', KEYS[1], ARGV[2])
  if others == 0 and had == 1 then
    return 1
  end
  return 0
end
local had = redis.call('HSET', KEYS[1], ARGV[2], now + tonumber(ARGV[3])) == 0
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if ARGV[1] == '+' and others == 0 and not had then
  return 1
end
return 0
"#;

/// Reads a topic's presence across nodes, dropping expired entries first.
/// KEYS: presence hash, expiry set. ARGV: `list` | `stats`, max entries.
/// Returns `{clients, users}` (stats), `{clients}` (more than max), or
/// `{clients, {client, user, …}}`.
pub const PRESENCE_READ: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 10000)
for _, client in ipairs(expired) do
  redis.call('HDEL', KEYS[1], client)
  redis.call('ZREM', KEYS[2], client)
end
local n = redis.call('HLEN', KEYS[1])
if ARGV[1] == 'stats' then
  local seen = {}
  local users = 0
  for _, user in ipairs(redis.call('HVALS', KEYS[1])) do
    if user ~= '' and not seen[user] then
      seen[user] = true
      users = users + 1
    end
  end
  return {n, users}
end
if n > tonumber(ARGV[2]) then
  return {n}
end
return {n, redis.call('HGETALL', KEYS[1])}
"#;

/// The scripts, to refer to them by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    Number,
    Read,
    PresenceWrite,
    PresenceRead,
    Occupancy,
}

impl Script {
    /// Every script, to load on connect.
    pub const ALL: [Script; 5] = [Script::Number, Script::Read, Script::PresenceWrite, Script::PresenceRead, Script::Occupancy];

    pub fn text(self) -> &'static str {
        match self {
            Script::Number => NUMBER,
            Script::Read => READ,
            Script::PresenceWrite => PRESENCE_WRITE,
            Script::PresenceRead => PRESENCE_READ,
            Script::Occupancy => OCCUPANCY,
        }
    }

    /// The script's SHA-1, for EVALSHA (the publisher loads every script
    /// with SCRIPT LOAD on each connection before it sends anything else).
    pub fn sha(self) -> &'static str {
        static SHAS: OnceLock<[String; 5]> = OnceLock::new();
        let shas = SHAS.get_or_init(|| {
            use sha1::{Digest, Sha1};
            Script::ALL.map(|s| format!("{:x}", Sha1::digest(s.text().as_bytes())))
        });
        &shas[self as usize]
    }
}

/// Redis key names for a topic.
pub struct Keys<'a> {
    pub prefix: &'a str,
    pub topic: &'a str,
    /// The cluster slot of the topic's channel (`prefix` + topic).
    pub slot: u16,
}

impl Keys<'_> {
    /// `p$<kind>{<tag>}:<topic>`, with the tag of the channel's slot
    /// ([`super::cluster::slot_tag`]): a topic's keys and its channel share
    /// one Redis Cluster slot, as a script touching the keys and publishing
    /// on the channel needs, whatever braces the topic holds itself.
    fn key(&self, kind: &str) -> String {
        format!("{}${kind}{{{}}}:{}", self.prefix, super::cluster::slot_tag(self.slot), self.topic)
    }
    pub fn meta(&self) -> String {
        self.key("meta")
    }
    pub fn stream(&self) -> String {
        self.key("history")
    }
    pub fn presence(&self) -> String {
        self.key("presence")
    }
    pub fn presence_expiry(&self) -> String {
        self.key("presence-exp")
    }
    pub fn occupied(&self) -> String {
        self.key("occupied")
    }
}

/// The numbered form the [`NUMBER`] script publishes:
/// `"\0SCH" offset "\0" epoch "\0" envelope`. The leading NUL can start
/// neither a JSON value nor a valid envelope.
pub const NUMBERED_MAGIC: &[u8] = b"\0SCH";

/// Splits a numbered message into its offset, epoch and envelope; `None`
/// when it is not a well-formed one.
pub fn split_numbered(data: &[u8]) -> Option<(u64, &str, &[u8])> {
    let rest = data.strip_prefix(NUMBERED_MAGIC)?;
    let digits_end = memchr::memchr(0, rest)?;
    let offset: u64 = std::str::from_utf8(&rest[..digits_end]).ok()?.parse().ok()?;
    let rest = &rest[digits_end + 1..];
    let epoch_end = memchr::memchr(0, rest)?;
    let epoch = std::str::from_utf8(&rest[..epoch_end]).ok().filter(|e| !e.is_empty() && e.len() <= MAX_EPOCH_BYTES)?;
    (offset > 0).then_some((offset, epoch, &rest[epoch_end + 1..]))
}

/// An integer reply (or a bulk string holding one).
pub fn parse_int(v: &Value) -> Option<i64> {
    int(v)
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// A [`READ`] reply: the topic's latest offset and epoch, and its messages
/// (oldest first). `None` for anything malformed, including an entry whose
/// envelope does not verify or an offset sequence that is not contiguous.
pub fn parse_read(reply: &Value, max_payload: usize) -> Option<(u64, String, Vec<Publication>)> {
    let Value::Array(parts) = reply else { return None };
    let [top, epoch, Value::Array(entries)] = parts.as_slice() else { return None };
    let top = u64::try_from(int(top)?).ok()?;
    let epoch = text(epoch).filter(|e| !e.is_empty() && e.len() <= MAX_EPOCH_BYTES)?.to_string();
    let mut publications = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(pair) = entry else { return None };
        let [offset, Value::BulkString(data)] = pair.as_slice() else { return None };
        let offset = u64::try_from(int(offset)?).ok()?;
        if publications.last().is_some_and(|p: &Publication| p.offset + 1 != offset) || offset > top {
            return None;
        }
        let (payload, json) = match envelope::decode(data).ok()? {
            Incoming::Node { payload, json, .. } => (payload, json),
            _ => return None,
        };
        if payload.len() > max_payload {
            return None;
        }
        publications.push(Publication { offset, payload: bytes::Bytes::copy_from_slice(payload), json });
    }
    Some((top, epoch, publications))
}

/// A presence hash value: the user (`""`: anonymous) and, when the
/// connection has `info`, a NUL and the info's JSON text (which cannot
/// hold a raw NUL, so the last NUL splits them).
pub fn presence_value(user: Option<&str>, info: Option<&str>) -> String {
    let user = user.unwrap_or("");
    match info {
        Some(info) => format!("{user}\0{info}"),
        None => user.to_string(),
    }
}

/// A [`PRESENCE_READ`] reply. `None` when malformed; entries that are not
/// valid client ids or users are skipped (counted by the caller as the
/// difference, `skipped`).
pub fn parse_presence(reply: &Value, stats: bool) -> Option<(Found, u64)> {
    let Value::Array(parts) = reply else { return None };
    let clients = u64::try_from(int(parts.first()?)?).ok()?;
    if stats {
        let users = u64::try_from(int(parts.get(1)?)?).ok()?;
        return Some((Found::Stats { clients, users }, 0));
    }
    let Some(Value::Array(flat)) = parts.get(1) else {
        return Some((Found::TooMany(clients), 0));
    };
    let mut list: Vec<Entry> = Vec::with_capacity(flat.len() / 2);
    let mut skipped = 0;
    for pair in flat.chunks(2) {
        let [client, user] = pair else { return None };
        let value = text(user).map(|v| match v.rsplit_once('\0') {
            Some((user, info)) => (user, Some(info)),
            None => (v, None),
        });
        match (text(client), value) {
            (Some(c), Some((u, info))) if !c.is_empty() && c.len() <= 512 && (u.is_empty() || crate::auth::is_user_id(u)) => {
                let info = info.filter(|i| serde_json::from_str::<serde::de::IgnoredAny>(i).is_ok()).map(str::to_string);
                list.push(Entry { client: c.to_string(), user: (!u.is_empty()).then(|| u.to_string()), info });
            }
            _ => skipped += 1,
        }
    }
    Some((Found::Clients(list), skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_messages_split_or_are_refused() {
        let mut m = NUMBERED_MAGIC.to_vec();
        m.extend_from_slice(b"42\0ep-1\0ENVELOPE");
        assert_eq!(split_numbered(&m), Some((42, "ep-1", &b"ENVELOPE"[..])));
        assert_eq!(split_numbered(b"\0SCH0\0e\0x"), None, "offsets start at 1");
        assert_eq!(split_numbered(b"\0SCHx\0e\0x"), None);
        assert_eq!(split_numbered(b"\0SCH1\0\0x"), None, "empty epoch");
        assert_eq!(split_numbered(b"\0SCH1\0e"), None);
        assert_eq!(split_numbered(b"{\"a\":1}"), None);
    }

    #[test]
    fn a_topics_keys_share_its_channels_cluster_slot() {
        use super::super::cluster::key_slot;
        for t in ["chat:{odd}", "a", "b", "{}", "x}{y"] {
            let channel = format!("p:{t}");
            let keys = Keys { prefix: "p:", topic: t, slot: key_slot(channel.as_bytes()) };
            for key in [keys.meta(), keys.stream(), keys.presence(), keys.presence_expiry()] {
                assert_eq!(key_slot(key.as_bytes()), key_slot(channel.as_bytes()), "{key} vs {channel}");
            }
            assert!(keys.stream().starts_with("p:$history{") && keys.stream().ends_with(&format!("}}:{t}")));
        }
    }

    #[test]
    fn shas_are_stable_hex() {
        assert_eq!(Script::Number.sha().len(), 40);
        assert_ne!(Script::Number.sha(), Script::Read.sha());
        // What Redis itself answers to SCRIPT LOAD "return 1" is this SHA-1.
        use sha1::{Digest, Sha1};
        assert_eq!(format!("{:x}", Sha1::digest(b"return 1")), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
    }

    #[test]
    fn malformed_replies_are_refused() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        assert!(parse_read(&Value::Nil, 100).is_none());
        assert!(parse_read(&Value::Array(vec![Value::Int(3), bulk("e"), Value::Array(vec![])]), 100).is_some());
        let bad_entry = Value::Array(vec![Value::Int(1), bulk("not an envelope")]);
        assert!(parse_read(&Value::Array(vec![Value::Int(3), bulk("e"), Value::Array(vec![bad_entry])]), 100).is_none());
        let reply = Value::Array(vec![Value::Int(2), Value::Array(vec![bulk("n:0-1"), bulk("alice"), bulk("n:0-2"), bulk("")])]);
        let (found, skipped) = parse_presence(&reply, false).unwrap();
        assert_eq!(skipped, 0);
        let entry = |c: &str, u: Option<&str>| Entry { client: c.into(), user: u.map(Into::into), info: None };
        assert_eq!(found, Found::Clients(vec![entry("n:0-1", Some("alice")), entry("n:0-2", None)]));
        assert_eq!(parse_presence(&Value::Array(vec![Value::Int(20_000)]), false).unwrap().0, Found::TooMany(20_000));
        assert_eq!(parse_presence(&Value::Array(vec![Value::Int(3), Value::Int(2)]), true).unwrap().0, Found::Stats { clients: 3, users: 2 });
    }
}
