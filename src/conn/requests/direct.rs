//! `send`: a direct message to every connection of a user, on every node
//! (`[auth] direct_messages` says who may send; the publish rate applies).

use crate::auth::{Access, MAX_USER_BYTES};
use crate::codes::ErrorCode;
use crate::protocol::{Payload, RequestError};

use super::Conn;

impl Conn {
    pub(super) fn on_send(&mut self, id: Option<u64>, user: &str, payload: Payload<'_>) {
        let policy = self.shard.config.auth.direct_messages;
        let allowed = match policy {
            Access::Anyone => true,
            Access::Users => self.identity().is_some(),
            _ => false,
        };
        if !allowed {
            let message = match policy {
                Access::Users => "only authenticated connections may send direct messages",
                _ => "direct messages are disabled ([auth] direct_messages = \"nobody\")",
            };
            return self.forbidden(id, message.into());
        }
        if !crate::auth::is_user_id(user) {
            let message = format!("field `user` must be a user id of 1 to {MAX_USER_BYTES} bytes");
            return self.reply_error(RequestError { id, code: ErrorCode::BadRequest, message });
        }
        if !self.take_publish_token(id) {
            return;
        }
        let from = self.identity().map(|i| i.user.clone());
        let sent = self.shard.send_direct(&self.peer, from.as_ref(), user, payload);
        self.accepted(id, sent);
    }
}
