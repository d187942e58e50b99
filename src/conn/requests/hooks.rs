//! The backend hooks on one connection (`[proxy]`): the calls it makes
//! (connect, refresh, subscribe and publish in `proxy` namespaces, `rpc`),
//! and what it does with each answer.
//!
//! A request that needs the backend stops the connection's input until the
//! answer is in (`Blocked::Hook`), so its requests are answered, and its
//! publishes delivered, in the order it sent them, whatever order the
//! backend answers in. Refresh runs beside that and blocks nothing. The
//! shard carries answers and hook deadlines to the task
//! ([`crate::shard::hooks`]); everything else happens here.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{Map, Value};

use crate::bus::hooks::{Failure, Hook, HookAnswer, HookResult, PublishResult};
use crate::clock::Stamp;
use crate::codes::{close, ErrorCode};
use crate::config::ConnectFailure;
use crate::protocol::position::Since;
use crate::protocol::{Encoding, Payload, RequestError};
use crate::shard::hooks::HookEvent;
use crate::shard::Deadline;
use crate::ws::frame::Opcode;

use super::super::{Blocked, Conn};

/// What a connection waits for the backend to decide.
pub(in crate::conn) enum Pending {
    Connect,
    Subscribe { id: Option<u64>, topic: String, recover: Option<Since> },
    /// The payload is kept (copied out of the read buffer) for when the
    /// backend lets it through unchanged.
    Publish { id: Option<u64>, topic: String, payload: Vec<u8>, json: bool, skip_self: bool },
    Rpc { id: u64 },
}

/// What the connect hook reports back to the session.
pub(in crate::conn) enum Connected {
    /// Welcome as this user (or anonymous, `None`), with the result's `data`.
    As { user: Option<String>, expire_at: Option<u64>, channels: Vec<String>, info: Option<String>, data: Option<String> },
    /// Close with this code and reason.
    Refused { code: u16, reason: String },
}

/// A payload as a hook body carries it: JSON embedded under `key`, anything
/// else base64 under `key_base64`; `null` when there is none.
fn put_payload(body: &mut Map<String, Value>, key: &str, payload: Option<Payload<'_>>) {
    match payload {
        Some(p) if p.json => {
            let value = serde_json::from_slice(p.bytes).unwrap_or(Value::Null);
            body.insert(key.into(), value);
        }
        Some(p) => {
            body.insert(key.into(), Value::Null);
            body.insert(format!("{key}_base64"), base64::engine::general_purpose::STANDARD.encode(p.bytes).into());
        }
        None => {
            body.insert(key.into(), Value::Null);
        }
    }
}

/// Unix seconds -> a shard time stamp (a time in the past is now).
fn stamp_of_unix(at: u64) -> Stamp {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let ahead = Duration::from_secs(at).saturating_sub(now);
    Stamp::from(Instant::now() + ahead)
}

/// When to ask the refresh hook for a session expiring at `at`: a quarter
/// of the time left before it, at most 10 s before, so that the answer is in
/// before the expiry close.
fn refresh_at(at: u64) -> Stamp {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let left = Duration::from_secs(at).saturating_sub(now);
    let lead = (left / 4).min(Duration::from_secs(10));
    Stamp::from(Instant::now() + left - lead)
}

impl Conn {
    /// The fields every hook body carries, plus `user` when known.
    fn hook_body(&self) -> Map<String, Value> {
        let shard = &self.shard;
        let mut body = Map::new();
        body.insert("client".into(), shard.client_id(self.peer.id).into());
        body.insert("node".into(), shard.config.server.node_id.clone().into());
        body.insert("transport".into(), self.peer.transport.get().name().into());
        let encoding = match self.peer.encoding() {
            Encoding::Json => "json",
            Encoding::FlatBuffers => "flatbuffers",
        };
        body.insert("encoding".into(), encoding.into());
        if let Some(user) = self.hook_user() {
            body.insert("user".into(), user.into());
        }
        body
    }

    /// Sends a call and stops reading until it is answered; a call that
    /// could not be sent is answered at once as a failure.
    fn call(&mut self, hook: Hook, body: Map<String, Value>, pending: Pending) {
        let bytes = serde_json::to_vec(&body).expect("a JSON map serialises");
        match self.shard.call_hook(hook, self.peer.id, bytes) {
            Ok(()) => self.blocked = Some(Box::new(Blocked::Hook(pending))),
            Err(failure) => self.on_answer_to(pending, HookAnswer::Failed(failure)),
        }
    }

    /// Acts on what the shard holds for this connection (after
    /// [`crate::peer::Peer::take_hook_mark`]).
    pub(in crate::conn) fn on_hook_events(&mut self) {
        for event in self.shard.take_hook_events(self.peer.id) {
            match event {
                HookEvent::Answer(Hook::Refresh, answer) => self.on_refresh_answer(answer),
                HookEvent::Answer(_, answer) => {
                    let Some(Blocked::Hook(_)) = self.blocked.as_deref() else { continue };
                    let Some(Blocked::Hook(pending)) = self.blocked.take().map(|b| *b) else { unreachable!() };
                    // Frames read while it waited are decoded next.
                    self.resume = true;
                    self.on_answer_to(pending, answer);
                }
                HookEvent::Due(Deadline::ConnectWait) => self.call_connect(None),
                HookEvent::Due(Deadline::Connect) => {
                    // Connect took longer than handshake_timeout_ms: a failure.
                    if matches!(self.blocked.as_deref(), Some(Blocked::Hook(Pending::Connect))) {
                        self.blocked = None;
                        self.resume = true;
                        self.on_answer_to(Pending::Connect, HookAnswer::Failed(Failure::Timeout));
                    }
                }
                HookEvent::Due(Deadline::Refresh) => self.call_refresh(),
                HookEvent::Due(Deadline::Auth | Deadline::Expiry) => {}
            }
        }
    }

    fn on_answer_to(&mut self, pending: Pending, answer: HookAnswer) {
        if let HookAnswer::Disconnect { code, reason } = &answer {
            return self.close_by_backend(*code, reason);
        }
        match pending {
            Pending::Connect => self.on_connect_answer(answer),
            Pending::Subscribe { id, topic, recover } => match answer {
                HookAnswer::Result(HookResult::Subscribe(result)) => {
                    let data = result.data.map(|d| d.get().to_owned());
                    self.subscribe_now(id, &topic, recover, None, data.as_deref());
                }
                other => self.refused_by_backend(id, other, ErrorCode::Forbidden),
            },
            Pending::Publish { id, topic, payload, json, skip_self } => match answer {
                HookAnswer::Result(HookResult::Publish(result)) => self.publish_decided(id, &topic, (payload, json), skip_self, result),
                other => self.refused_by_backend(id, other, ErrorCode::Forbidden),
            },
            Pending::Rpc { id } => match answer {
                HookAnswer::Result(HookResult::Rpc(result)) => {
                    let frame = self.peer.encoding().rpc_result_frame(id, result.data.as_deref().map(|d| d.get()));
                    self.send(frame);
                }
                other => self.refused_by_backend(Some(id), other, ErrorCode::BackendError),
            },
        }
    }

    /// A `disconnect` answer: close with the backend's code and reason.
    fn close_by_backend(&mut self, code: u16, reason: &str) {
        self.shard.clear_deadline(self.peer.id);
        self.input_closed = true;
        self.peer.close(code, reason, true);
    }

    /// An `error` answer (`code` as the error's, with the backend's number
    /// and message), or a failure (`not_available`).
    fn refused_by_backend(&mut self, id: Option<u64>, answer: HookAnswer, code: ErrorCode) {
        match answer {
            HookAnswer::Error { code: backend_code, message } => {
                if code == ErrorCode::Forbidden {
                    crate::metrics::ShardStats::add(&self.shard.stats().forbidden, 1);
                }
                crate::metrics::ShardStats::add(&self.shard.stats().request_errors, 1);
                let frame = self.peer.encoding().backend_error_frame(&RequestError { id, code, message }, backend_code);
                self.send(frame);
            }
            _ => self.reply_error(RequestError { id, code: ErrorCode::NotAvailable, message: "backend unavailable".into() }),
        }
    }

    // --- connect ---------------------------------------------------------

    /// Intercepts a connection's first request while connect waits for it:
    /// `connect` gives its `data`; any other request calls connect without
    /// data and is handled once the answer is in. Returns whether the
    /// request was taken.
    pub(in crate::conn) fn connect_first(&mut self, opcode: Opcode, data: &[u8], request: &crate::protocol::Command<'_>) -> bool {
        if !self.connect_uncalled() {
            return false;
        }
        match request {
            crate::protocol::Command::Connect { data } => self.call_connect(*data),
            _ => {
                self.defer_first_request(opcode, data.to_vec());
                self.call_connect(None);
            }
        }
        true
    }

    /// Calls the connect hook (once): with the first request's `data`, or
    /// none when connect_wait_ms passed first.
    pub(in crate::conn) fn call_connect(&mut self, data: Option<Payload<'_>>) {
        let Some(headers) = self.take_connect_headers() else { return };
        let shard = self.shard.clone();
        let at = Stamp::from(Instant::now() + shard.config.server.handshake_timeout);
        shard.set_deadline(self.peer.id, at, Deadline::Connect);
        let mut body = self.hook_body();
        let headers: Map<String, Value> = headers.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
        body.insert("headers".into(), headers.into());
        put_payload(&mut body, "data", data);
        self.call(Hook::Connect, body, Pending::Connect);
    }

    fn on_connect_answer(&mut self, answer: HookAnswer) {
        self.shard.clear_deadline(self.peer.id);
        let connected = match answer {
            HookAnswer::Result(HookResult::Connect(r)) => Connected::As {
                user: (!r.user.is_empty()).then_some(r.user),
                expire_at: r.expire_at,
                channels: r.channels,
                info: r.info.map(|i| i.get().to_owned()),
                data: r.data.map(|d| d.get().to_owned()),
            },
            HookAnswer::Error { message, .. } => Connected::Refused { code: close::UNAUTHORIZED, reason: message },
            HookAnswer::Disconnect { code, reason } => Connected::Refused { code, reason },
            HookAnswer::Result(_) | HookAnswer::Failed(_) => match self.shard.config.proxy.connect_on_failure {
                ConnectFailure::Reject => Connected::Refused { code: close::INTERNAL, reason: "backend unavailable".into() },
                ConnectFailure::Anonymous => Connected::As { user: None, expire_at: None, channels: Vec::new(), info: None, data: None },
            },
        };
        self.finish_connect(connected);
    }

    /// Arms what a session granted by the connect hook needs at `expire_at`:
    /// a refresh call before it (with a refresh hook), else the expiry close.
    pub(in crate::conn) fn arm_expiry(&self, expire_at: u64) {
        let id = self.peer.id;
        match self.shard.config.proxy.refresh_url {
            Some(_) => self.shard.set_deadline(id, refresh_at(expire_at), Deadline::Refresh),
            None => self.shard.set_deadline(id, stamp_of_unix(expire_at), Deadline::Expiry),
        }
    }

    // --- refresh ---------------------------------------------------------

    /// Asks the refresh hook to extend the session; meanwhile the expiry
    /// close stays armed, so a backend that does not answer lets it expire.
    fn call_refresh(&mut self) {
        let Some(expire_at) = self.hook_expire_at() else { return };
        self.shard.set_deadline(self.peer.id, stamp_of_unix(expire_at), Deadline::Expiry);
        let body = self.hook_body();
        let bytes = serde_json::to_vec(&body).expect("a JSON map serialises");
        if self.shard.call_hook(Hook::Refresh, self.peer.id, bytes).is_err() {
            tracing::debug!(conn = %self.peer.id, "refresh hook not called (max_inflight); the session expires at its time");
        }
    }

    fn on_refresh_answer(&mut self, answer: HookAnswer) {
        match answer {
            HookAnswer::Result(HookResult::Refresh(r)) if !r.expired => match r.expire_at {
                Some(at) => {
                    self.set_hook_expire_at(Some(at));
                    self.arm_expiry(at);
                }
                None => {
                    // No new expiry: the session no longer expires.
                    self.set_hook_expire_at(None);
                    self.shard.clear_deadline(self.peer.id);
                }
            },
            HookAnswer::Result(HookResult::Refresh(_)) | HookAnswer::Error { .. } => {
                crate::metrics::ShardStats::add(&self.shard.stats().token_expiries, 1);
                self.close_by_backend(close::TOKEN_EXPIRED, "token expired");
            }
            HookAnswer::Disconnect { code, reason } => self.close_by_backend(code, &reason),
            // A failure: the expiry close armed at the call stands.
            HookAnswer::Result(_) | HookAnswer::Failed(_) => {}
        }
    }

    // --- subscribe, publish, rpc ---------------------------------------

    /// Asks the subscribe hook about `topic` (a `proxy` namespace's).
    pub(in crate::conn) fn call_subscribe(&mut self, id: Option<u64>, topic: &str, recover: Option<Since>, data: Option<Payload<'_>>) {
        let mut body = self.hook_body();
        body.insert("topic".into(), topic.into());
        put_payload(&mut body, "data", data);
        self.call(Hook::Subscribe, body, Pending::Subscribe { id, topic: topic.to_owned(), recover });
    }

    /// Asks the publish hook about a publish to `topic` (a `proxy` namespace's).
    pub(in crate::conn) fn call_publish(&mut self, id: Option<u64>, topic: &str, payload: Payload<'_>, skip_self: bool) {
        let mut body = self.hook_body();
        body.insert("topic".into(), topic.into());
        put_payload(&mut body, "payload", Some(payload));
        let pending = Pending::Publish { id, topic: topic.to_owned(), payload: payload.bytes.to_vec(), json: payload.json, skip_self };
        self.call(Hook::Publish, body, pending);
    }

    /// Delivers a publish as the publish hook decided: unchanged, with a new
    /// payload, or not at all (`skip`: acknowledged only).
    fn publish_decided(&mut self, id: Option<u64>, topic: &str, (payload, json): (Vec<u8>, bool), skip_self: bool, result: PublishResult) {
        if result.skip {
            if let Some(id) = id {
                self.send(self.peer.encoding().ack_frame(id));
            }
            return;
        }
        let replaced = match (&result.payload, &result.payload_base64) {
            (Some(json), _) => Some((json.get().as_bytes().to_vec(), true)),
            (None, Some(b64)) => match base64::engine::general_purpose::STANDARD.decode(b64) {
                Ok(bytes) => Some((bytes, false)),
                Err(_) => {
                    let message = "backend unavailable (its payload_base64 is not base64)".into();
                    return self.reply_error(RequestError { id, code: ErrorCode::NotAvailable, message });
                }
            },
            (None, None) => None,
        };
        let (bytes, json) = replaced.unwrap_or((payload, json));
        if bytes.len() > self.shard.config.limits.max_message_bytes {
            let message = "the backend's payload is larger than max_message_bytes".into();
            return self.reply_error(RequestError { id, code: ErrorCode::NotAvailable, message });
        }
        // The backend's JSON may say the same thing as a FlatBuffers payload would.
        let payload = Payload { bytes: &bytes, json: json || Payload::from_bytes(&bytes).json };
        let published = self.shard.publish(&self.peer, topic, payload, skip_self);
        self.accepted(id, published);
    }

    /// `{"type":"rpc","method":…,"data":…,"id":N}`.
    pub(in crate::conn) fn on_rpc(&mut self, id: Option<u64>, method: &str, data: Option<Payload<'_>>) {
        let Some(id) = id else {
            let message = "an rpc request needs an `id` to answer under".into();
            return self.reply_error(RequestError { id, code: ErrorCode::BadRequest, message });
        };
        if self.shard.config.proxy.rpc_url.is_none() {
            return self.not_available(id, "rpc is not enabled on this server ([proxy] rpc_url)");
        }
        let mut body = self.hook_body();
        body.insert("method".into(), method.into());
        put_payload(&mut body, "data", data);
        self.call(Hook::Rpc, body, Pending::Rpc { id });
    }
}
