//! A connection's requests: one decoded [`Command`] in, its reply (or
//! error) queued, whatever the encoding. This file dispatches and holds the
//! checks every family shares (topic, permission, an id to answer under);
//! each family has its own file:
//! - [`session`]: who the connection is (`auth`, `refresh`, the welcome);
//! - [`subscribe`]: `subscribe`, `unsubscribe`;
//! - [`publish`]: `publish`, and the publish rate every sender shares;
//! - [`direct`]: `send` to a user;
//! - [`presence`]: `presence`, `presence_stats`;
//! - [`history`]: `history` requests;
//! - [`hooks`]: what the backend decides (`[proxy]`): connect, refresh,
//!   the `proxy` steps of subscribe and publish, and `rpc`.
//!
//! Runs on the connection's shard, inside its task; never waits. A request
//! that needs other shards (a subscribe's interest round, a history or
//! presence query) marks the connection awaiting, and the shard completes
//! it (`Peer::awaiting`).

mod direct;
mod history;
pub(super) mod hooks;
mod presence;
mod publish;
pub(super) mod session;
mod subscribe;

use crate::auth::{Access, Action, TopicOptions};
use crate::codes::ErrorCode;
use crate::metrics::ShardStats;
use crate::protocol::{Command, Encoding, RequestError};
use crate::shard::PendingPublish;
use crate::ws::frame::Opcode;

use super::{Blocked, Conn};

impl Conn {
    /// Decodes one complete message as a request and handles it.
    pub(super) fn on_request(&mut self, opcode: Opcode, data: &[u8]) {
        let encoding = self.peer.encoding();
        // JSON is accepted in binary frames too; FlatBuffers never in text frames.
        if encoding == Encoding::FlatBuffers && opcode == Opcode::Text {
            let message = "a text frame on a shardcast.flatbuffers.v1 connection: send ClientFrames in binary frames".into();
            return self.reply_error(RequestError { id: None, code: ErrorCode::BadRequest, message });
        }
        let request = match encoding.parse_request(data) {
            Ok(r) => r,
            Err(e) => return self.reply_error(e),
        };
        let id = request.id;
        if self.connect_first(opcode, data, &request.command) {
            return;
        }
        if self.awaiting_auth() && !matches!(request.command, Command::Auth { .. }) {
            let message = "authenticate first: send {\"type\":\"auth\",\"token\":…}".into();
            return self.reply_error(RequestError { id, code: ErrorCode::Unauthorized, message });
        }
        match request.command {
            Command::Ping => self.send(encoding.pong_frame(id)),
            Command::Auth { token } => self.on_auth(id, &token),
            Command::Refresh { token } => self.on_refresh(id, &token),
            Command::Subscribe { topic, recover, token, data } => self.on_subscribe(id, &topic, recover, token.as_deref(), data),
            Command::Connect { .. } => {
                let message = "connect is accepted only as a connection's first request, on a server with a connect hook ([proxy] connect_url)".into();
                self.reply_error(RequestError { id, code: ErrorCode::BadRequest, message });
            }
            Command::Rpc { method, data } => self.on_rpc(id, &method, data),
            Command::Unsubscribe { topic } => self.on_unsubscribe(id, &topic),
            Command::Publish { topic, payload, skip_self } => self.on_publish(id, &topic, payload, skip_self),
            Command::Send { user, payload } => self.on_send(id, &user, payload),
            Command::Presence { topic } => self.on_presence(id, &topic, false),
            Command::PresenceStats { topic } => self.on_presence(id, &topic, true),
            Command::History { topic, since, limit } => self.on_history(id, &topic, since, limit),
        }
    }

    /// Checks a `presence` / `presence_stats` / `history` request: a valid
    /// topic the connection may subscribe to, and an id to answer under.
    /// Returns the id and the topic's options, or answers the error.
    fn topic_request(&mut self, id: Option<u64>, topic: &str, kind: &str) -> Option<(u64, TopicOptions)> {
        let Some(req) = id else {
            let message = format!("a {kind} request needs an `id` to answer under");
            self.reply_error(RequestError { id, code: ErrorCode::BadRequest, message });
            return None;
        };
        if !self.topic_allowed(id, topic, Action::Subscribe) {
            return None;
        }
        Some((req, self.shard.config.namespaces.options(topic)))
    }

    fn not_available(&mut self, id: u64, message: &str) {
        self.reply_error(RequestError { id: Some(id), code: ErrorCode::NotAvailable, message: message.into() });
    }

    /// Whether `topic` is a valid client topic this connection may use for
    /// `action`; answers `invalid_topic` or `forbidden` otherwise. A `token`
    /// namespace's topic is open (to `presence`, `history`) only to its
    /// subscribers.
    fn topic_allowed(&mut self, id: Option<u64>, topic: &str, action: Action) -> bool {
        if let Err(why) = crate::topic::validate(topic, self.shard.config.limits.max_topic_len) {
            self.reply_error(RequestError { id, code: ErrorCode::InvalidTopic, message: why.into() });
            return false;
        }
        let namespaces = &self.shard.config.namespaces;
        let by_token = || action == Action::Subscribe && namespaces.access(topic, action) == Access::Token && self.is_subscribed(topic);
        if !namespaces.allows(topic, action, self.identity()) && !by_token() {
            let verb = if action == Action::Subscribe { "subscribe to" } else { "publish to" };
            self.forbidden(id, format!("not allowed to {verb} this topic"));
            return false;
        }
        true
    }

    /// Acks an accepted publish or direct message; stops reading while part
    /// of it waits for room on another shard's channel.
    fn accepted(&mut self, id: Option<u64>, result: Result<(), Box<PendingPublish>>) {
        if let Err(pending) = result {
            self.blocked = Some(Box::new(Blocked::Bus { pending: *pending, retry: None }));
            self.shard.publish_blocked(true);
        }
        if let Some(id) = id {
            self.send(self.peer.encoding().ack_frame(id));
        }
    }

    fn reply_error(&mut self, err: RequestError) {
        ShardStats::add(&self.shard.stats().request_errors, 1);
        self.send(self.peer.encoding().error_frame(&err));
    }
}
