//! The fallback transports on a connection (`docs/protocol.md`, "Fallback
//! transports"): reading a request to one of their paths whole (bounded by
//! `max_handshake_bytes` plus `[limits] max_emulation_body_bytes`, under
//! the handshake's timeout), then opening a session (a connection whose
//! frames are re-framed for its transport), or handing a POST's requests to
//! their session and answering it. A session's input is the requests
//! POSTed for it; what its socket sends after the request is discarded,
//! and its end ends the session.

use futures_lite::AsyncReadExt;

use super::upgrade::{admit, answer, forwarded, Upgraded};
use super::{Conn, Transport};
use crate::codes::close;
use crate::fallback::framing::{cors, head};
use crate::metrics::ShardStats;
use crate::fallback::request::{self, Decision, Route};
use crate::protocol::{Encoding, Wire};
use crate::shard::{NotTaken, Shard};
use crate::ws::deflate::Mode;
use crate::ws::frame::Opcode;
use crate::ws::handshake::{response, Endpoint};

/// `plain_paths`' order in the WebSocket handshake's rules.
const ROUTES: [Route; 3] = [Route::Stream, Route::Sse, Route::Emulation];

/// Reads the request to fallback path `path` (whose first `buf` bytes are
/// read) whole and answers it; `Some` for a session to open.
pub(super) async fn handshake(shard: &Shard, stream: &mut Transport, mut buf: Vec<u8>, path: usize) -> Option<Upgraded> {
    let server = &shard.config.server;
    let max_body = shard.config.limits.max_emulation_body_bytes;
    let rules = request::Rules { allowed_origins: &server.allowed_origins, max_body };
    let max = server.max_handshake_bytes + max_body;
    let route = ROUTES[path];
    let decision = loop {
        match request::decide(&buf, route, &rules) {
            Decision::Incomplete if buf.len() >= max => break Decision::Answer(response(431, "Request Header Fields Too Large", "", "text/plain", b"request too large\n")),
            Decision::Incomplete => {
                let filled = buf.len();
                buf.resize((filled * 2).clamp(4096, max), 0);
                let n = stream.read(&mut buf[filled..]).await.ok()?;
                buf.truncate(filled + n);
                if n == 0 {
                    return None;
                }
            }
            decided => break decided,
        }
    };
    match decision {
        Decision::Answer(reply) => answer(shard, stream, &reply).await,
        Decision::Emulate { session, requests, origin } => {
            let body = batch_json(&session, &requests);
            let reply = match shard.emulate(&session, requests, body.as_bytes()) {
                Ok(()) => response(204, "No Content", &cors(origin.as_deref()), "text/plain", b""),
                Err(NotTaken::Unknown) => response(404, "Not Found", &cors(origin.as_deref()), "text/plain", b"no such session\n"),
                Err(NotTaken::TooMany) => {
                    response(413, "Payload Too Large", &cors(origin.as_deref()), "text/plain", b"more requests than limits.max_emulation_pending in one POST\n")
                }
                Err(NotTaken::Full) => {
                    let extra = format!("Retry-After: 1\r\n{}", cors(origin.as_deref()));
                    response(429, "Too Many Requests", &extra, "text/plain", b"the session has too many requests waiting\n")
                }
            };
            answer(shard, stream, &reply).await;
        }
        Decision::Open { transport, connect, token, origin } => match admit(shard, stream) {
            Ok(ip) => {
                // A token in the connect request comes first.
                let token = connect.as_deref().and_then(connect_token).or(token);
                let response = head(transport, origin.as_deref());
                let wire = Wire { encoding: Encoding::Json, deflate: Mode::Off };
                let headers = forwarded(shard, &buf);
                let fallback = Some((transport, connect));
                return Some(Upgraded { endpoint: Endpoint::PubSub, response, leftover: Vec::new(), token, ip, wire, headers, fallback });
            }
            Err(Some(refusal)) => answer(shard, stream, &refusal).await,
            Err(None) => {}
        },
        Decision::Incomplete => unreachable!("the loop exits with a decision"),
    }
    None
}

/// An emulation POST's body again, to forward to another node.
fn batch_json(session: &str, requests: &[String]) -> String {
    let mut body = format!("{{\"session\":{},\"requests\":[", serde_json::Value::from(session));
    for (i, r) in requests.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(r);
    }
    body.push_str("]}");
    body
}

/// The `token` of a connect request, `{"type":"connect","token":…}` or
/// `{"type":"auth","token":…}`: either authenticates the session from its
/// start, as a token in a WebSocket upgrade does.
fn connect_token(connect: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(connect).ok()?;
    (value["type"] == "connect" || value["type"] == "auth").then(|| value["token"].as_str().map(str::to_string)).flatten()
}

impl Conn {
    /// The connect request a fallback session opened with (its token
    /// already taken): when the connect hook decides this connection, it
    /// is called now, with a `connect` request's `data` (no later first
    /// request can come on a stream: `connect_wait_ms` is not waited).
    pub(super) fn fallback_connect(&mut self, connect: String) {
        if self.awaiting_auth() {
            // Its `auth` would need the session id, which only the welcome
            // brings: the token must come with the connect request.
            self.shard.clear_deadline(self.peer.id);
            ShardStats::add(&self.shard.stats().auth_failures, 1);
            return self.peer.close(close::UNAUTHORIZED, "authentication required: send the token in the connect request", true);
        }
        if !self.connect_uncalled() {
            return;
        }
        let Ok(serde_json::Value::Object(mut request)) = serde_json::from_str(&connect) else { return };
        if request.get("type").and_then(|t| t.as_str()) != Some("connect") || !request.contains_key("data") {
            return self.call_connect(None);
        }
        request.remove("token");
        let first = serde_json::Value::Object(request).to_string();
        self.on_message(Opcode::Text, &mut first.into_bytes());
    }

    /// Runs the next request POSTed for this fallback session, when it may
    /// run one now; false when there is none.
    pub(super) fn run_emulated(&mut self) -> bool {
        if !self.peer.transport.get().is_fallback() || self.blocked.is_some() || self.peer.awaiting() || self.peer.closing_since().is_some() {
            return false;
        }
        let Some(request) = self.shard.take_emulated(self.peer.id) else { return false };
        ShardStats::add(&self.shard.stats().emulation_requests, 1);
        self.on_message(Opcode::Text, &mut request.into_bytes());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_batch_is_the_posted_one() {
        let body = batch_json("a\"b", &[r#"{"type":"ping"}"#.to_string(), "{}".to_string()]);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v, serde_json::json!({"session": "a\"b", "requests": [{"type": "ping"}, {}]}));
        assert_eq!(connect_token(r#"{"type":"connect","token":"t"}"#).as_deref(), Some("t"));
        assert_eq!(connect_token(r#"{"type":"auth","token":"t"}"#).as_deref(), Some("t"));
        assert_eq!(connect_token(r#"{"token":"t"}"#), None, "a connect request has its type");
    }
}
