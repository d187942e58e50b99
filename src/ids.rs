//! Identifiers every layer names: a connection ([`ConnId`]) and an
//! interest round awaiting acknowledgement ([`InterestAck`]). Plain values;
//! this module depends on nothing.

/// Node-unique connection id: shard index in the top 16 bits, a per-shard
/// sequence number below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl ConnId {
    pub fn new(shard: usize, seq: u64) -> ConnId {
        ConnId(((shard as u64) << 48) | (seq & ((1 << 48) - 1)))
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0 >> 48, self.0 & ((1 << 48) - 1))
    }
}

/// One acknowledgement owed for an interest round: shard `shard` waits for
/// it to complete its round `token` (a subscribe that waits until every
/// shard, and Redis, will deliver the topic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterestAck {
    pub shard: usize,
    pub token: u64,
}
