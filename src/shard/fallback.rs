//! The shard's side of the fallback transports: its sessions (id,
//! transport, the requests POSTed for them and not run yet), and taking a
//! POSTed batch to the session's shard, here, or, for a session of another
//! node, to the bridge shard and over Redis. Touched only by this shard;
//! the node's index of sessions is `bus::sessions`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::Shard;
use crate::bus::sessions::{Refused, Slot};
use crate::bus::ControlMsg;
use crate::fallback::{session, Transport};
use crate::ids::ConnId;
use crate::metrics::ShardStats;

/// One fallback session of this shard.
#[derive(Debug)]
pub(super) struct Session {
    id: Box<str>,
    transport: Transport,
    slot: Arc<Slot>,
    /// POSTed requests not run yet (at most `max_emulation_pending`,
    /// counted in the slot).
    queue: VecDeque<String>,
}

pub(super) type Sessions = HashMap<ConnId, Session, ahash::RandomState>;

/// Why a POST's requests were not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotTaken {
    /// No such session (here or, without Redis, anywhere): 404.
    Unknown,
    /// The session holds `max_emulation_pending` requests: 429.
    Full,
    /// More requests in one POST than `max_emulation_pending`: 413.
    TooMany,
}

impl Shard {
    /// Makes connection `conn` a fallback session on `transport`; returns
    /// its id (for the welcome).
    pub fn open_fallback(&self, conn: ConnId, transport: Transport) -> Box<str> {
        let id: Box<str> = session::new_id(&self.config.server.node_id).into();
        let slot = self.sessions.open(&id, self.index, conn);
        self.fallbacks.borrow_mut().insert(conn, Session { id: id.clone(), transport, slot, queue: VecDeque::new() });
        ShardStats::add(self.fallback_gauge(transport), 1);
        id
    }

    /// The transport and session id of a fallback connection.
    pub fn fallback_of(&self, conn: ConnId) -> Option<(Transport, Box<str>)> {
        self.fallbacks.borrow().get(&conn).map(|s| (s.transport, s.id.clone()))
    }

    /// Forgets a closed fallback session (and what it had not run).
    pub(super) fn close_fallback(&self, conn: ConnId) {
        let Some(session) = self.fallbacks.borrow_mut().remove(&conn) else { return };
        self.sessions.close(&session.id);
        session.slot.ran(session.queue.len());
        ShardStats::sub(self.fallback_gauge(session.transport), 1);
    }

    fn fallback_gauge(&self, transport: Transport) -> &std::sync::atomic::AtomicU64 {
        let stats = self.stats();
        match transport {
            Transport::Sse => &stats.sse_sessions,
            _ => &stats.stream_sessions,
        }
    }

    /// A POST's `requests` for session `id`: sent to its shard, or, for a
    /// session of another node, over Redis to it (then taken on trust:
    /// that node drops them if the session is gone). `body` is the POST's
    /// JSON, forwarded as it is.
    pub fn emulate(&self, id: &str, requests: Vec<String>, body: &[u8]) -> Result<(), NotTaken> {
        match self.sessions.admit(id, requests.len()) {
            Ok(slot) => {
                self.post(slot.shard, ControlMsg::Emulation { conn: slot.conn, requests });
                Ok(())
            }
            Err(Refused::Full) => Err(NotTaken::Full),
            Err(Refused::TooMany) => Err(NotTaken::TooMany),
            Err(Refused::Unknown) => match (session::node_of(id), self.bridge_shard) {
                (Some(node), Some(bridge)) if node != self.config.server.node_id => {
                    self.post(bridge, ControlMsg::ForwardEmulation { node: node.to_string(), body: body.to_vec() });
                    Ok(())
                }
                _ => Err(NotTaken::Unknown),
            },
        }
    }

    /// Requests for connection `conn` of this shard: queued for its task.
    pub(super) fn on_emulation(&self, conn: ConnId, requests: Vec<String>) {
        let mut sessions = self.fallbacks.borrow_mut();
        // Closed since the POST: nothing runs them (its slot, and the
        // count in it, went with it).
        let Some(session) = sessions.get_mut(&conn) else { return };
        session.queue.extend(requests);
        drop(sessions);
        if let Some(peer) = self.peers.borrow().get(&conn) {
            peer.wake();
        }
    }

    /// The next request POSTed for `conn`, once its task can run it.
    pub fn take_emulated(&self, conn: ConnId) -> Option<String> {
        let mut sessions = self.fallbacks.borrow_mut();
        let session = sessions.get_mut(&conn)?;
        let request = session.queue.pop_front()?;
        session.slot.ran(1);
        Some(request)
    }

    /// Requests forwarded by another node over Redis (the emulation POST's
    /// JSON, untrusted): taken like a local POST's, dropped (and counted)
    /// when the session is gone or full.
    pub fn emulation_from_node(&self, body: &[u8]) {
        let Ok((session, requests)) = crate::fallback::request::parse_batch(body) else {
            return ShardStats::add(&self.stats().redis_bad_messages, 1);
        };
        match self.sessions.admit(&session, requests.len()) {
            Ok(slot) => self.post(slot.shard, ControlMsg::Emulation { conn: slot.conn, requests }),
            Err(_) => ShardStats::add(&self.stats().emulation_dropped, requests.len() as u64),
        }
    }
}
