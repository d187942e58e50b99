//! The shard's side of the backend hooks (`[proxy]`): handing a connection's
//! call to the hooks thread, and holding what comes back (the answer, or a
//! hook deadline that passed) until the connection's task takes it. The
//! task decides what the event means; the shard only carries it.
//!
//! Bounded: a connection has at most one request call and one refresh call
//! in flight and one hook deadline, so at most three events wait for it;
//! they go with the connection when it closes.

use std::collections::HashMap;

use super::{Deadline, Shard};
use crate::bus::hooks::{Failure, Hook, HookAnswer, HookReply, HookSender};
use crate::ids::ConnId;

/// Something for a connection's hook state machine.
#[derive(Debug)]
pub enum HookEvent {
    /// The backend answered one of its calls (or the call failed).
    Answer(Hook, HookAnswer),
    /// One of its hook deadlines passed (`ConnectWait`, `Connect`, `Refresh`).
    Due(Deadline),
}

/// Events waiting for their connection's task.
pub(super) type HookEvents = HashMap<ConnId, Vec<HookEvent>, ahash::RandomState>;

impl Shard {
    /// Connects the shard to the hooks thread (once, at start, when
    /// `[proxy]` sets a URL).
    pub fn attach_hooks(&self, sender: HookSender) {
        let _ = self.hooks.set(sender);
    }

    /// Hands `conn`'s call to the hooks thread. `Err` when it was not sent:
    /// over `max_inflight`, or no hooks thread runs.
    pub fn call_hook(&self, hook: Hook, conn: ConnId, body: Vec<u8>) -> Result<(), Failure> {
        let Some(sender) = self.hooks.get() else { return Err(Failure::Transport) };
        sender.call(hook, self.index, conn, body)
    }

    /// An answer from the hooks thread: kept for its connection (if still
    /// open), whose task is woken to act on it.
    pub(super) fn on_hook_reply(&self, reply: HookReply) {
        self.push_hook_event(reply.conn, HookEvent::Answer(reply.hook, reply.answer));
    }

    pub(super) fn push_hook_event(&self, conn: ConnId, event: HookEvent) {
        let Some(peer) = self.peers.borrow().get(&conn).cloned() else { return };
        self.hook_events.borrow_mut().entry(conn).or_default().push(event);
        peer.mark_hook_event();
        peer.wake();
    }

    /// Takes every event waiting for `conn`, oldest first.
    pub fn take_hook_events(&self, conn: ConnId) -> Vec<HookEvent> {
        self.hook_events.borrow_mut().remove(&conn).unwrap_or_default()
    }

    /// Forgets a closed connection's events.
    pub(super) fn forget_hook_events(&self, conn: ConnId) {
        if !self.hook_events.borrow().is_empty() {
            self.hook_events.borrow_mut().remove(&conn);
        }
    }
}
