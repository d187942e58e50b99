//! The client protocol, independent of how it is encoded on the wire.
//!
//! [`Request`] is what a client asks for, [`Outgoing`] what the server fans
//! out, [`RequestError`] a refusal (its codes, and the close codes, are in
//! [`crate::codes`]). Two translators, nothing else: `json.rs` (JSON in text
//! frames, `shardcast.json.v1`) and `flatbuf.rs` (`schemas/client.fbs` in
//! binary frames, `shardcast.flatbuffers.v1`). See `docs/protocol.md`.

pub mod flatbuf;
pub mod json;
pub mod outgoing;
pub mod position;

pub use outgoing::{Builder, Kind, Outgoing, Wire};

use bytes::Bytes;

use crate::codes::ErrorCode;
use serde_json::value::RawValue;

use position::{Answer, Since};

/// How a connection's requests and replies are encoded, from its
/// `Sec-WebSocket-Protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// `shardcast.json.v1`, or no subprotocol.
    #[default]
    Json,
    /// `shardcast.flatbuffers.v1`.
    FlatBuffers,
}

impl Encoding {
    /// The `Sec-WebSocket-Protocol` names of the encodings, in the
    /// server's order.
    pub const SUBPROTOCOLS: [&'static str; 2] = [json::SUBPROTOCOL, flatbuf::SUBPROTOCOL];

    /// The encoding of a negotiated subprotocol (`None`, or an unknown one: JSON).
    pub fn of_subprotocol(name: Option<&str>) -> Encoding {
        match name {
            Some(flatbuf::SUBPROTOCOL) => Encoding::FlatBuffers,
            _ => Encoding::Json,
        }
    }

    /// Decodes one request from a complete message.
    pub fn parse_request(self, data: &[u8]) -> Result<Request<'_>, RequestError> {
        match self {
            Encoding::Json => json::parse_request(data),
            Encoding::FlatBuffers => flatbuf::parse_request(data),
        }
    }

    pub fn ack_frame(self, id: u64) -> Bytes {
        match self {
            Encoding::Json => json::ack_frame(id),
            Encoding::FlatBuffers => flatbuf::ack_frame(id),
        }
    }

    pub fn pong_frame(self, id: Option<u64>) -> Bytes {
        match self {
            Encoding::Json => json::pong_frame(id),
            Encoding::FlatBuffers => flatbuf::pong_frame(id),
        }
    }

    pub fn error_frame(self, err: &RequestError) -> Bytes {
        match self {
            Encoding::Json => json::error_frame(err),
            Encoding::FlatBuffers => flatbuf::error_frame(err),
        }
    }

    pub fn reply_frame(self, reply: &Reply<'_>) -> Bytes {
        match self {
            Encoding::Json => json::reply_frame(reply),
            Encoding::FlatBuffers => flatbuf::reply_frame(reply),
        }
    }

    /// The server ended the connection's subscription to `topic` (`reason`:
    /// "token expired").
    pub fn unsubscribed_frame(self, topic: &str, reason: &str) -> Bytes {
        match self {
            Encoding::Json => json::unsubscribed_frame(topic, reason),
            Encoding::FlatBuffers => flatbuf::unsubscribed_frame(topic, reason),
        }
    }

    /// The welcome; `data` (JSON text) from the connect hook.
    /// `fallback`: a fallback session's `(transport, session id)` (JSON
    /// only: fallback sessions speak nothing else).
    pub fn welcome_frame(self, client: &str, node: &str, shard: usize, user: Option<&str>, data: Option<&str>, fallback: Option<(&str, &str)>) -> Bytes {
        match self {
            Encoding::Json => json::welcome_frame(client, node, shard, user, data, fallback),
            Encoding::FlatBuffers => flatbuf::welcome_frame(client, node, shard, user, data),
        }
    }

    /// An ack carrying the subscribe hook's `data` (JSON text).
    pub fn ack_data_frame(self, id: u64, data: &str) -> Bytes {
        match self {
            Encoding::Json => json::ack_data_frame(id, data),
            Encoding::FlatBuffers => flatbuf::ack_data_frame(id, data),
        }
    }

    /// The answer to an `rpc` request (`data`: JSON text, or none).
    pub fn rpc_result_frame(self, id: u64, data: Option<&str>) -> Bytes {
        match self {
            Encoding::Json => json::rpc_result_frame(id, data),
            Encoding::FlatBuffers => flatbuf::rpc_result_frame(id, data),
        }
    }

    /// An error relaying a backend's refusal with its numeric code.
    pub fn backend_error_frame(self, err: &RequestError, backend_code: u32) -> Bytes {
        match self {
            Encoding::Json => json::backend_error_frame(err, backend_code),
            Encoding::FlatBuffers => flatbuf::backend_error_frame(err, backend_code),
        }
    }
}

/// A message payload as a client sent it.
#[derive(Debug, Clone, Copy)]
pub struct Payload<'a> {
    pub bytes: &'a [u8],
    /// The bytes are one valid JSON value (UTF-8): JSON subscribers get it
    /// embedded verbatim; otherwise as `payload_base64`.
    pub json: bool,
}

impl<'a> Payload<'a> {
    /// A payload the JSON codec already validated.
    pub fn json(raw: &'a RawValue) -> Payload<'a> {
        Payload { bytes: raw.get().as_bytes(), json: true }
    }

    /// Any bytes (a FlatBuffers payload): JSON if they parse as one value.
    pub fn from_bytes(bytes: &'a [u8]) -> Payload<'a> {
        Payload { bytes, json: serde_json::from_slice::<&RawValue>(bytes).is_ok() }
    }
}

/// A decoded client request. Borrowed from the frame it was read from.
#[derive(Debug)]
pub struct Request<'a> {
    /// The client's correlation id; a request with one gets exactly one reply.
    pub id: Option<u64>,
    pub command: Command<'a>,
}

#[derive(Debug)]
pub enum Command<'a> {
    /// `recover`: the last position the client saw of the topic. `token`:
    /// a subscription token (required by `token` namespaces). `data`: for
    /// the subscribe hook (`proxy` namespaces).
    Subscribe { topic: std::borrow::Cow<'a, str>, recover: Option<Since>, token: Option<std::borrow::Cow<'a, str>>, data: Option<Payload<'a>> },
    Unsubscribe { topic: std::borrow::Cow<'a, str> },
    /// `payload` is kept verbatim (never re-serialised).
    Publish { topic: std::borrow::Cow<'a, str>, payload: Payload<'a>, skip_self: bool },
    Ping,
    /// The connect hook's `data`: only as a connection's first request,
    /// while the server waits to call `[proxy] connect_url`.
    Connect { data: Option<Payload<'a>> },
    /// A call to the backend's `[proxy] rpc_url`, answered `rpc_result`.
    Rpc { method: std::borrow::Cow<'a, str>, data: Option<Payload<'a>> },
    /// Authenticates a connection that brought no token in its upgrade.
    Auth { token: std::borrow::Cow<'a, str> },
    /// Replaces the connection's token with a newer one for the same user.
    Refresh { token: std::borrow::Cow<'a, str> },
    /// A direct message to every connection of `user`, on every node.
    Send { user: std::borrow::Cow<'a, str>, payload: Payload<'a> },
    /// Who is subscribed to `topic`, on every shard and node.
    Presence { topic: std::borrow::Cow<'a, str> },
    /// How many connections and distinct users are subscribed to `topic`.
    PresenceStats { topic: std::borrow::Cow<'a, str> },
    /// Messages of `topic`'s history: after `since`, or the latest; at
    /// most `limit` (`None`: up to the namespace's `history_size`).
    History { topic: std::borrow::Cow<'a, str>, since: Option<Since>, limit: Option<u64> },
}

/// A client in a presence reply.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PresenceEntry {
    pub client: String,
    /// `None`: anonymous.
    pub user: Option<String>,
    /// The connect hook's `info` (JSON text), if it gave one.
    pub info: Option<String>,
}

/// A reply that carries data, in whichever encoding the connection speaks.
#[derive(Debug)]
pub enum Reply<'a> {
    /// The ack of a subscribe to a history topic: its position and, for a
    /// subscribe with `recover`, the outcome and what was missed; `data`:
    /// the subscribe hook's (JSON text).
    Subscribed { id: u64, answer: &'a Answer, recovery: bool, data: Option<&'a str> },
    History { id: u64, answer: &'a Answer },
    /// Every subscriber: client id, user, info.
    Presence { id: u64, clients: &'a [PresenceEntry] },
    PresenceStats { id: u64, clients: u64, users: u64 },
}

/// A request the server refuses, with the id to answer it under (when the id
/// itself could be read).
#[derive(Debug, PartialEq, Eq)]
pub struct RequestError {
    pub id: Option<u64>,
    pub code: ErrorCode,
    pub message: String,
}
