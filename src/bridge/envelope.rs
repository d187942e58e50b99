//! The Redis wire format between nodes: a FlatBuffers [`Envelope`]
//! (`schemas/bridge.fbs`), or, from any other Redis client, a bare JSON value.

use flatbuffers::FlatBufferBuilder;
use serde_json::value::RawValue;

#[allow(clippy::all, unused_imports, dead_code, non_snake_case, unsafe_op_in_unsafe_fn, mismatched_lifetime_syntaxes)]
#[path = "generated/bridge_generated.rs"]
mod generated;

pub use generated::shardcast::bridge::{Envelope, EnvelopeArgs, Flags};

/// A message read from Redis, borrowed from the push that carried it.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// Published by a shardcast node. `sender` is a direct message's
    /// verified sender (`None`: anonymous, or a topic message); `json` says
    /// the payload is a JSON value (else bytes from a FlatBuffers publisher).
    /// `skip` is the publishing connection on `origin` that asked not to
    /// receive it (0: none); `seq` its number from `origin`
    /// (`super::sequence`; 0: none).
    Node { origin: &'a str, payload: &'a [u8], sender: Option<&'a str>, json: bool, skip: u64, seq: u64 },
    /// A join (or leave) of connection `client` of `user` on `origin`.
    Presence { origin: &'a str, join: bool, client: &'a str, user: Option<&'a str> },
    /// Published by another Redis client: the bytes are the JSON payload.
    External { payload: &'a [u8] },
    /// A shardcast node's admin API asks every node to close the
    /// connections of the channel's user with `code` and `reason`.
    Disconnect { origin: &'a str, code: u16, reason: &'a str },
}

/// Why a message from Redis was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadMessage {
    /// Neither a valid envelope nor a JSON value.
    Undecodable,
    /// An envelope flagged JSON whose payload is not a JSON value.
    PayloadNotJson,
    /// A disconnect with a code outside 4000-4999 or a reason that is not
    /// UTF-8 of at most 123 bytes.
    BadDisconnect,
    /// A join or leave without a client id, or with one or a user too long.
    BadPresence,
}

/// The numbers a message's envelope carries besides its content.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Numbers {
    /// Its number in the origin's sequence of the topic (`super::sequence`); 0: none.
    pub seq: u64,
    /// The publishing connection that asked not to receive it; 0: none.
    pub skip: u64,
}

/// Encodes one envelope into `builder` (reset first) and returns its bytes.
pub fn encode<'b>(
    builder: &'b mut FlatBufferBuilder<'static>,
    origin: &str,
    topic: &str,
    payload: &[u8],
    json: bool,
    sender: Option<&str>,
    numbers: Numbers,
) -> &'b [u8] {
    builder.reset();
    let origin = builder.create_string(origin);
    let topic = builder.create_string(topic);
    let payload = builder.create_vector(payload);
    let user = sender.map(|s| builder.create_string(s));
    let flags = if json { Flags::Json } else { Flags::empty() };
    let Numbers { seq, skip } = numbers;
    let args = EnvelopeArgs { origin: Some(origin), topic: Some(topic), payload: Some(payload), flags, user, skip, seq, ..Default::default() };
    let env = Envelope::create(builder, &args);
    generated::shardcast::bridge::finish_envelope_buffer(builder, env);
    builder.finished_data()
}

/// Encodes a disconnect order for the connections of the user of `topic`
/// (`$user:<id>`) into `builder` (reset first) and returns its bytes.
pub fn encode_disconnect<'b>(builder: &'b mut FlatBufferBuilder<'static>, origin: &str, topic: &str, code: u16, reason: &str) -> &'b [u8] {
    builder.reset();
    let origin = builder.create_string(origin);
    let topic = builder.create_string(topic);
    let payload = builder.create_vector(reason.as_bytes());
    let args = EnvelopeArgs { origin: Some(origin), topic: Some(topic), payload: Some(payload), flags: Flags::Disconnect, code, ..Default::default() };
    let env = Envelope::create(builder, &args);
    generated::shardcast::bridge::finish_envelope_buffer(builder, env);
    builder.finished_data()
}

/// Encodes a join (`join`) or leave of connection `client` of `user` on
/// `topic` into `builder` (reset first) and returns its bytes.
pub fn encode_presence<'b>(
    builder: &'b mut FlatBufferBuilder<'static>,
    origin: &str,
    topic: &str,
    join: bool,
    client: &str,
    user: Option<&str>,
) -> &'b [u8] {
    builder.reset();
    let origin = builder.create_string(origin);
    let topic = builder.create_string(topic);
    let payload = builder.create_vector::<u8>(&[]);
    let client = builder.create_string(client);
    let user = user.map(|u| builder.create_string(u));
    let flags = if join { Flags::Join } else { Flags::Leave };
    let args = EnvelopeArgs { origin: Some(origin), topic: Some(topic), payload: Some(payload), flags, user, client: Some(client), ..Default::default() };
    let env = Envelope::create(builder, &args);
    generated::shardcast::bridge::finish_envelope_buffer(builder, env);
    builder.finished_data()
}

fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<&RawValue>(bytes).is_ok()
}

/// Verifies and decodes untrusted bytes from Redis.
pub fn decode(bytes: &[u8]) -> Result<Incoming<'_>, BadMessage> {
    if bytes.len() >= 8 && generated::shardcast::bridge::envelope_buffer_has_identifier(bytes) {
        if let Ok(env) = generated::shardcast::bridge::root_as_envelope(bytes) {
            let payload = env.payload().bytes();
            if env.flags().contains(Flags::Disconnect) {
                let reason = std::str::from_utf8(payload).map_err(|_| BadMessage::BadDisconnect)?;
                if !(4000..=4999).contains(&env.code()) || reason.len() > crate::codes::close::MAX_REASON_BYTES {
                    return Err(BadMessage::BadDisconnect);
                }
                return Ok(Incoming::Disconnect { origin: env.origin(), code: env.code(), reason });
            }
            if env.flags().intersects(Flags::Join | Flags::Leave) {
                let client = env.client().filter(|c| !c.is_empty() && c.len() <= 512).ok_or(BadMessage::BadPresence)?;
                let user = env.user().filter(|u| !u.is_empty());
                if user.is_some_and(|u| !crate::auth::is_user_id(u)) {
                    return Err(BadMessage::BadPresence);
                }
                return Ok(Incoming::Presence { origin: env.origin(), join: env.flags().contains(Flags::Join), client, user });
            }
            let json = env.flags().contains(Flags::Json);
            if json && !is_json(payload) {
                return Err(BadMessage::PayloadNotJson);
            }
            let sender = env.user().filter(|u| !u.is_empty());
            return Ok(Incoming::Node { origin: env.origin(), payload, sender, json, skip: env.skip(), seq: env.seq() });
        }
    }
    if is_json(bytes) {
        return Ok(Incoming::External { payload: bytes });
    }
    Err(BadMessage::Undecodable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let mut b = FlatBufferBuilder::new();
        let bytes = encode(&mut b, "node-a", "news", br#"{"x":1}"#, true, None, Numbers { seq: 1 << 40 | 9, skip: 0 }).to_vec();
        assert_eq!(decode(&bytes), Ok(Incoming::Node { origin: "node-a", payload: br#"{"x":1}"#, sender: None, json: true, skip: 0, seq: 1 << 40 | 9 }));
        let bytes = encode(&mut b, "node-a", "$user:bob", b"2", true, Some("alice"), Numbers { seq: 0, skip: 7 }).to_vec();
        assert_eq!(decode(&bytes), Ok(Incoming::Node { origin: "node-a", payload: b"2", sender: Some("alice"), json: true, skip: 7, seq: 0 }));
        let bytes = encode(&mut b, "node-a", "bin", b"\x00\xff", false, None, Numbers::default()).to_vec();
        assert_eq!(decode(&bytes), Ok(Incoming::Node { origin: "node-a", payload: b"\x00\xff", sender: None, json: false, skip: 0, seq: 0 }));
        let bytes = encode_presence(&mut b, "node-a", "chat", true, "node-a:0-1", Some("alice")).to_vec();
        assert_eq!(decode(&bytes), Ok(Incoming::Presence { origin: "node-a", join: true, client: "node-a:0-1", user: Some("alice") }));
        let bytes = encode_presence(&mut b, "node-a", "chat", false, "node-a:0-1", None).to_vec();
        assert_eq!(decode(&bytes), Ok(Incoming::Presence { origin: "node-a", join: false, client: "node-a:0-1", user: None }));
        let bytes = encode_presence(&mut b, "node-a", "chat", false, "", None).to_vec();
        assert_eq!(decode(&bytes), Err(BadMessage::BadPresence));
    }

    #[test]
    fn disconnects_round_trip_and_are_checked() {
        let mut b = FlatBufferBuilder::new();
        let bytes = encode_disconnect(&mut b, "node-a", "$user:bob", 4010, "banned").to_vec();
        assert_eq!(decode(&bytes), Ok(Incoming::Disconnect { origin: "node-a", code: 4010, reason: "banned" }));
        let bad_code = encode_disconnect(&mut b, "n", "$user:bob", 1000, "").to_vec();
        assert_eq!(decode(&bad_code), Err(BadMessage::BadDisconnect));
        let long = "x".repeat(124);
        let bad_reason = encode_disconnect(&mut b, "n", "$user:bob", 4000, &long).to_vec();
        assert_eq!(decode(&bad_reason), Err(BadMessage::BadDisconnect));
    }

    #[test]
    fn bare_json_is_external() {
        assert_eq!(decode(b" [1, 2] "), Ok(Incoming::External { payload: b" [1, 2] " }));
        assert_eq!(decode(b"\"SCB1SCB1\""), Ok(Incoming::External { payload: b"\"SCB1SCB1\"" }));
    }

    #[test]
    fn garbage_is_refused_never_panics() {
        let mut b = FlatBufferBuilder::new();
        let good = encode(&mut b, "n", "t", b"1", true, None, Numbers::default()).to_vec();
        assert_eq!(decode(b"not json"), Err(BadMessage::Undecodable));
        assert_eq!(decode(b""), Err(BadMessage::Undecodable));
        for cut in 0..good.len() {
            let _ = decode(&good[..cut]);
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0xff;
            let _ = decode(&bad);
        }
        let not_json = encode(&mut b, "n", "t", b"{oops", true, None, Numbers::default()).to_vec();
        assert_eq!(decode(&not_json), Err(BadMessage::PayloadNotJson));
    }
}
