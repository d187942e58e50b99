//! Client-visible outcomes, the one table of them: the error codes of
//! `{"type":"error"}` replies and the WebSocket close codes the server
//! sends (`docs/protocol.md` lists both). Every layer may name them; this
//! module depends on nothing.

/// Error codes of `{"type":"error"}` replies. After any of them the connection
/// stays usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame is not JSON, or not a JSON object.
    BadJson,
    /// A field is missing or has the wrong type; on a FlatBuffers connection,
    /// a frame that fails verification or a text frame.
    BadRequest,
    /// `type` names no request this server knows.
    UnknownType,
    /// Empty, longer than `limits.max_topic_len`, or with control characters.
    InvalidTopic,
    /// Subscribing would exceed `limits.max_topics_per_connection`.
    TooManySubscriptions,
    /// The publish token bucket is empty; the publish was dropped.
    RateLimited,
    /// The connection has not authenticated yet (it must send `auth`), or a
    /// `refresh` token failed verification.
    Unauthorized,
    /// The connection's identity may not do this (namespace rules,
    /// `[auth] direct_messages`, a `refresh` for another user).
    Forbidden,
    /// The topic's namespace does not enable this (`presence`, history,
    /// `recover`), or the Redis copy it needs is unreachable right now.
    NotAvailable,
    /// A `presence` reply would list more than `[limits] max_presence_clients`
    /// connections (`presence_stats` still answers).
    TooManyResults,
    /// The backend's rpc hook refused the call (its own code is the
    /// frame's `backend_code`).
    BackendError,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidTopic => "invalid_topic",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotAvailable => "not_available",
            ErrorCode::TooManyResults => "too_many_results",
            ErrorCode::BackendError => "backend_error",
        }
    }
}

/// WebSocket close codes the server sends (RFC 6455 section 7.4; 4000-4999
/// are shardcast's own).
pub mod close {
    /// Normal closure: the client asked to close, or the close handshake completed.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down (SIGINT/SIGTERM).
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the WebSocket protocol (bad framing, reserved bits or opcodes).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame (or close reason) was not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy: repeated rate-limit abuse, or no traffic within `heartbeat.timeout_ms`.
    pub const POLICY: u16 = 1008;
    /// A message was larger than `limits.max_message_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// The server failed while handling the connection.
    pub const INTERNAL: u16 = 1011;
    /// The client did not read fast enough and its queue overflowed ("slow consumer").
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The token (in the upgrade or an `auth` request) failed verification, or
    /// no `auth` arrived within `[auth] auth_timeout_ms`. The reason says which check failed.
    pub const UNAUTHORIZED: u16 = 4001;
    /// The token's `exp` (plus leeway) passed without a successful `refresh`.
    pub const TOKEN_EXPIRED: u16 = 4002;
    /// The user already has `[limits] max_connections_per_user` connections on this node.
    pub const TOO_MANY_CONNECTIONS_FOR_USER: u16 = 4008;
    /// The admin API's disconnect, when it names no code of its own (4000-4999).
    pub const DISCONNECTED_BY_SERVER: u16 = 4010;
    /// The longest close reason a close frame can carry, in bytes.
    pub const MAX_REASON_BYTES: usize = 123;
}
