//! What a connection asks the application's backend (the `[proxy]` hooks),
//! and the answer that comes back. A shard hands a [`HookCall`] to the hooks
//! thread through [`HookSender`] and never waits for it: the answer arrives
//! later on the shard's control channel ([`super::ControlMsg::Hook`]), and
//! only the connection that asked stops reading meanwhile.
//!
//! Bounded twice: a connection has at most one call in flight for its
//! requests and one for its refresh, and the node at most `[proxy]
//! max_inflight` in all ([`HookSender::call`] refuses one more at once).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::ids::ConnId;
use crate::metrics::{HookStats, HOOK_NAMES, HOOK_RESULTS};

/// The five hooks, each with its own URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    Connect,
    Refresh,
    Subscribe,
    Publish,
    Rpc,
}

impl Hook {
    pub const ALL: [Hook; 5] = [Hook::Connect, Hook::Refresh, Hook::Subscribe, Hook::Publish, Hook::Rpc];

    /// The `hook` label of the metrics, and the name in logs.
    pub fn name(self) -> &'static str {
        HOOK_NAMES[self.index()]
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// One call to the backend: the JSON body, built on the shard, and where
/// the answer goes.
#[derive(Debug)]
pub struct HookCall {
    pub hook: Hook,
    pub shard: usize,
    pub conn: ConnId,
    pub body: Vec<u8>,
    /// The call's place among `max_inflight`, released when it is dropped
    /// (answered, or lost with the hooks thread).
    _inflight: Inflight,
}

/// What came back for one call.
#[derive(Debug)]
pub struct HookReply {
    pub hook: Hook,
    pub conn: ConnId,
    pub answer: HookAnswer,
}

/// A backend's answer: exactly one of `result`, `error`, `disconnect`, or a
/// failure (anything else).
#[derive(Debug)]
pub enum HookAnswer {
    Result(HookResult),
    /// `{"error":{"code":N,"message":"…"}}`: the request is refused.
    Error { code: u32, message: String },
    /// `{"disconnect":{"code":4000..=4999,"reason":"…"}}`: close the connection.
    Disconnect { code: u16, reason: String },
    Failed(Failure),
}

/// Why a call counts as a backend failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `max_inflight` calls were already in flight (never sent).
    Overloaded,
    /// No answer within `timeout_ms`.
    Timeout,
    /// A status other than 200.
    Status(u16),
    /// 200, but not one of the three answer shapes (or a result of the wrong
    /// shape for its hook, or longer than `max_response_bytes`).
    BadBody,
    /// The request could not be made (refused, reset, TLS).
    Transport,
}

impl HookAnswer {
    /// The answer's index in [`HOOK_RESULTS`] (the metrics' `result` label).
    pub fn result_index(&self) -> usize {
        let label = match self {
            HookAnswer::Result(_) => "ok",
            HookAnswer::Error { .. } => "error",
            HookAnswer::Disconnect { .. } => "disconnect",
            HookAnswer::Failed(Failure::Timeout) => "timeout",
            HookAnswer::Failed(Failure::Status(_)) => "bad_status",
            HookAnswer::Failed(Failure::BadBody) => "bad_body",
            HookAnswer::Failed(Failure::Transport) => "unreachable",
            HookAnswer::Failed(Failure::Overloaded) => "overloaded",
        };
        HOOK_RESULTS.iter().position(|l| *l == label).expect("every answer kind has a label")
    }
}

/// A `result` object, typed by the hook that asked. Unknown fields are
/// ignored; a known one of the wrong type makes the answer a `BadBody`.
#[derive(Debug)]
pub enum HookResult {
    Connect(ConnectResult),
    Refresh(RefreshResult),
    Subscribe(SubscribeResult),
    Publish(PublishResult),
    Rpc(RpcResult),
}

#[derive(Debug, Default, Deserialize)]
pub struct ConnectResult {
    /// The user id; empty: anonymous.
    #[serde(default)]
    pub user: String,
    /// Unix seconds; then refresh applies.
    #[serde(default)]
    pub expire_at: Option<u64>,
    /// Topics to subscribe the connection to at once (no permission check).
    #[serde(default)]
    pub channels: Vec<String>,
    /// JSON attached to the connection.
    #[serde(default)]
    pub info: Option<Box<RawValue>>,
    /// JSON for the client, in the welcome's `data`.
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RefreshResult {
    #[serde(default)]
    pub expire_at: Option<u64>,
    #[serde(default)]
    pub expired: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct SubscribeResult {
    /// JSON for the client, in the subscribe's ack.
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PublishResult {
    /// Replaces the payload (any JSON value).
    #[serde(default)]
    pub payload: Option<Box<RawValue>>,
    /// Replaces the payload with these bytes (standard base64), for
    /// payloads that are not JSON.
    #[serde(default)]
    pub payload_base64: Option<String>,
    /// Acknowledge the publish without delivering it.
    #[serde(default)]
    pub skip: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct RpcResult {
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
}

/// The shards' way to the hooks thread.
#[derive(Debug, Clone)]
pub struct HookSender {
    tx: mpsc::UnboundedSender<HookCall>,
    /// Its `inflight` gauge is the count `max_inflight` bounds.
    pub stats: Arc<HookStats>,
    max_inflight: u64,
}

/// One call's count in the `inflight` gauge.
#[derive(Debug)]
struct Inflight(Arc<HookStats>);

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl HookSender {
    /// The sender, and the receiver the hooks thread serves.
    pub fn new(max_inflight: usize) -> (HookSender, mpsc::UnboundedReceiver<HookCall>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (HookSender { tx, stats: Arc::default(), max_inflight: max_inflight as u64 }, rx)
    }

    /// Hands a call to the hooks thread; `Err(Failure::Overloaded)` (and
    /// counted) when `max_inflight` calls are in flight: nothing was sent.
    /// The channel is unbounded in type, bounded by this count.
    pub fn call(&self, hook: Hook, shard: usize, conn: ConnId, body: Vec<u8>) -> Result<(), Failure> {
        if self.stats.inflight.fetch_add(1, Ordering::Relaxed) >= self.max_inflight {
            self.stats.inflight.fetch_sub(1, Ordering::Relaxed);
            self.stats.count(hook.index(), HookAnswer::Failed(Failure::Overloaded).result_index());
            return Err(Failure::Overloaded);
        }
        let call = HookCall { hook, shard, conn, body, _inflight: Inflight(self.stats.clone()) };
        // Gone only when the hooks thread is (it never stops before the shards).
        self.tx.send(call).map_err(|_| Failure::Transport)
    }

    /// Calls in flight now.
    pub fn inflight(&self) -> u64 {
        self.stats.inflight.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_result_labels_line_up_with_the_metrics() {
        assert_eq!(Hook::ALL.map(Hook::name), HOOK_NAMES);
        assert_eq!(HOOK_RESULTS[HookAnswer::Failed(Failure::Status(500)).result_index()], "bad_status");
    }

    #[test]
    fn one_call_beyond_max_inflight_is_refused_until_one_is_answered() {
        let (sender, mut rx) = HookSender::new(2);
        let conn = ConnId::new(0, 1);
        assert!(sender.call(Hook::Rpc, 0, conn, b"{}".to_vec()).is_ok());
        assert!(sender.call(Hook::Rpc, 0, conn, b"{}".to_vec()).is_ok());
        assert_eq!(sender.call(Hook::Rpc, 0, conn, b"{}".to_vec()), Err(Failure::Overloaded));
        assert_eq!(sender.inflight(), 2);
        assert_eq!(sender.stats.requests(Hook::Rpc.index(), HookAnswer::Failed(Failure::Overloaded).result_index()), 1);
        drop(rx.try_recv().unwrap());
        assert_eq!(sender.inflight(), 1);
        assert!(sender.call(Hook::Connect, 0, conn, b"{}".to_vec()).is_ok());
    }
}
