//! Protocol v1: JSON objects in text frames (`docs/protocol.md`).
//!
//! Requests are decoded without building a DOM: each known field is captured
//! as a borrowed [`RawValue`] and then typed one by one, so a wrong-typed field
//! gets `bad_request` naming it, and a publish payload is validated once and
//! then embedded verbatim in the outgoing frame.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::position::{Answer, Since, MAX_EPOCH_BYTES};
use super::{Command, Payload, Reply, Request, RequestError};
use crate::codes::ErrorCode;
use crate::ws::frame::{self, Opcode};

/// The subprotocol name (also what no `Sec-WebSocket-Protocol` means).
pub const SUBPROTOCOL: &str = "shardcast.json.v1";

/// The request object with every field still raw. Unknown fields are ignored
/// so that newer clients can send extra fields to older servers.
#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "present")]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    topic: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    payload: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    skip_self: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    token: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    user: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    recover: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    since: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    limit: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    method: Option<&'a RawValue>,
}

/// `{"offset":N,"epoch":"…"}` as a client sends it (other fields ignored,
/// as in every request).
#[derive(Deserialize)]
struct RawSince {
    offset: u64,
    epoch: String,
}

/// A `recover` or `since` field: an object with a u64 `offset` and a
/// string `epoch` of at most [`MAX_EPOCH_BYTES`] bytes.
fn since_field(raw: &RawValue, id: Option<u64>, name: &str) -> Result<Since, RequestError> {
    let wrong = || bad(id, ErrorCode::BadRequest, format!("field `{name}` must be {{\"offset\":<unsigned integer>,\"epoch\":<string>}}"));
    // serde would also take a struct from an array (`[1,"e"]`); the protocol says an object.
    if !raw.get().starts_with('{') {
        return Err(wrong());
    }
    let since: RawSince = serde_json::from_str(raw.get()).map_err(|_| wrong())?;
    if since.epoch.len() > MAX_EPOCH_BYTES {
        return Err(bad(id, ErrorCode::BadRequest, format!("field `{name}.epoch` is longer than {MAX_EPOCH_BYTES} bytes")));
    }
    Ok(Since { offset: since.offset, epoch: since.epoch })
}

/// `Some(raw)` for any present value, `null` included (serde's `Option`
/// would turn `null` into "absent").
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

fn bad(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> RequestError {
    RequestError { id, code, message: message.into() }
}

fn string_field<'a>(raw: &'a RawValue, id: Option<u64>, name: &str) -> Result<Cow<'a, str>, RequestError> {
    let text = raw.get();
    if let Ok(s) = serde_json::from_str::<&'a str>(text) {
        return Ok(Cow::Borrowed(s));
    }
    // Strings with escapes cannot be borrowed.
    serde_json::from_str::<String>(text)
        .map(Cow::Owned)
        .map_err(|_| bad(id, ErrorCode::BadRequest, format!("field `{name}` must be a string")))
}

/// Decodes one request from a text frame's bytes (already valid UTF-8).
pub fn parse_request<'a>(text: &'a [u8]) -> Result<Request<'a>, RequestError> {
    let first = text.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        let message = if serde_json::from_slice::<&RawValue>(text).is_ok() {
            "request must be a JSON object"
        } else {
            "request is not valid JSON"
        };
        return Err(bad(None, ErrorCode::BadJson, message));
    }
    let raw: RawRequest<'a> = serde_json::from_slice(text)
        .map_err(|e| bad(None, ErrorCode::BadJson, format!("request is not valid JSON: {e}")))?;
    let id = match raw.id {
        None => None,
        Some(v) => Some(
            serde_json::from_str::<u64>(v.get())
                .map_err(|_| bad(None, ErrorCode::BadRequest, "field `id` must be an unsigned integer"))?,
        ),
    };
    let kind = raw.kind.ok_or_else(|| bad(id, ErrorCode::BadRequest, "missing field `type`"))?;
    let kind = string_field(kind, id, "type")?;
    let required = |field: Option<&'a RawValue>, name: &str| -> Result<&'a RawValue, RequestError> {
        field.ok_or_else(|| bad(id, ErrorCode::BadRequest, format!("missing field `{name}`")))
    };
    let string = |field: Option<&'a RawValue>, name: &str| string_field(required(field, name)?, id, name);
    let topic = || string(raw.topic, "topic");
    let command = match &*kind {
        "subscribe" => {
            let recover = raw.recover.map(|r| since_field(r, id, "recover")).transpose()?;
            let token = raw.token.map(|t| string_field(t, id, "token")).transpose()?;
            Command::Subscribe { topic: topic()?, recover, token, data: raw.data.map(Payload::json) }
        }
        "unsubscribe" => Command::Unsubscribe { topic: topic()? },
        "publish" => {
            let topic = topic()?;
            let payload = Payload::json(required(raw.payload, "payload")?);
            let skip_self = match raw.skip_self {
                None => false,
                Some(v) => serde_json::from_str::<bool>(v.get())
                    .map_err(|_| bad(id, ErrorCode::BadRequest, "field `skip_self` must be a boolean"))?,
            };
            Command::Publish { topic, payload, skip_self }
        }
        "ping" => Command::Ping,
        "connect" => Command::Connect { data: raw.data.map(Payload::json) },
        "rpc" => Command::Rpc { method: string(raw.method, "method")?, data: raw.data.map(Payload::json) },
        "auth" => Command::Auth { token: string(raw.token, "token")? },
        "refresh" => Command::Refresh { token: string(raw.token, "token")? },
        "send" => Command::Send { user: string(raw.user, "user")?, payload: Payload::json(required(raw.payload, "payload")?) },
        "presence" => Command::Presence { topic: topic()? },
        "presence_stats" => Command::PresenceStats { topic: topic()? },
        "history" => {
            let since = raw.since.map(|r| since_field(r, id, "since")).transpose()?;
            let limit = match raw.limit {
                None => None,
                Some(v) => Some(
                    serde_json::from_str::<u64>(v.get())
                        .map_err(|_| bad(id, ErrorCode::BadRequest, "field `limit` must be an unsigned integer"))?,
                ),
            };
            Command::History { topic: topic()?, since, limit }
        }
        other => {
            let mut shown: String = other.chars().take(64).collect();
            if shown.len() < other.len() {
                shown.push('…');
            }
            return Err(bad(id, ErrorCode::UnknownType, format!("unknown request type {shown:?}")));
        }
    };
    Ok(Request { id, command })
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing a string to memory cannot fail");
}

fn text_frame(body: &[u8]) -> Bytes {
    frame::build(Opcode::Text, &[body])
}

/// The payload field of a message: `"payload":P` with a JSON payload
/// embedded verbatim, else `"payload_base64":"..."` (standard base64).
fn payload_pieces(payload: &[u8], is_json: bool) -> (&'static [u8], std::borrow::Cow<'_, [u8]>) {
    use base64::Engine;
    if is_json {
        (br#","payload":"#, std::borrow::Cow::Borrowed(payload))
    } else {
        let mut encoded = Vec::with_capacity(payload.len().div_ceil(3) * 4 + 2);
        encoded.push(b'"');
        encoded.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(payload).as_bytes());
        encoded.push(b'"');
        (br#","payload_base64":"#, std::borrow::Cow::Owned(encoded))
    }
}

/// `{"type":"message","topic":T,"payload":P}` as a complete text frame:
/// built once per message per node and shared by every JSON recipient.
pub fn message_frame(topic: &str, payload: &[u8], is_json: bool) -> Bytes {
    message_frame_at(topic, payload, is_json, None)
}

/// A message frame; on a history topic with its `"offset"` and `"epoch"`
/// (before the payload, which stays last: see [`embedded_payload`]).
pub fn message_frame_at(topic: &str, payload: &[u8], is_json: bool, position: Option<(u64, &str)>) -> Bytes {
    const PREFIX: &[u8] = br#"{"type":"message","topic":"#;
    let mut quoted = Vec::with_capacity(topic.len() + 2);
    push_json_str(&mut quoted, topic);
    if let Some((offset, epoch)) = position {
        quoted.extend_from_slice(format!(r#","offset":{offset},"epoch":"#).as_bytes());
        push_json_str(&mut quoted, epoch);
    }
    let (field, value) = payload_pieces(payload, is_json);
    frame::build(Opcode::Text, &[PREFIX, &quoted, field, &value, b"}"])
}

/// `{"type":"join"|"leave","topic":T,"client":C,"user":U}` (`user` null
/// for an anonymous connection).
pub fn presence_event_frame(kind: &str, topic: &str, client: &str, user: Option<&str>) -> Bytes {
    let mut body = Vec::with_capacity(48 + topic.len() + client.len() + user.map_or(4, str::len));
    body.extend_from_slice(br#"{"type":"#);
    push_json_str(&mut body, kind);
    body.extend_from_slice(br#","topic":"#);
    push_json_str(&mut body, topic);
    body.extend_from_slice(br#","client":"#);
    push_json_str(&mut body, client);
    body.extend_from_slice(br#","user":"#);
    push_json_nullable_str(&mut body, user);
    body.push(b'}');
    text_frame(&body)
}

/// `{"type":"direct","from":F,"payload":P}`: a direct message. `from` is the
/// sender's verified user id, `null` for anonymous senders and backends.
pub fn direct_frame(from: Option<&str>, payload: &[u8], is_json: bool) -> Bytes {
    const PREFIX: &[u8] = br#"{"type":"direct","from":"#;
    let mut quoted = Vec::with_capacity(from.map_or(4, |f| f.len() + 2));
    push_json_nullable_str(&mut quoted, from);
    let (field, value) = payload_pieces(payload, is_json);
    frame::build(Opcode::Text, &[PREFIX, &quoted, field, &value, b"}"])
}

/// The JSON payload embedded in a message or direct frame built from it
/// (the frame ends with `P}`), as a slice of the frame: no copy.
pub fn embedded_payload(frame: &Bytes, payload_len: usize) -> Bytes {
    let end = frame.len() - 1;
    frame.slice(end - payload_len..end)
}

fn push_json_nullable_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => push_json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// The first frame of an authenticated (or anonymous: `user` = `None`) connection.
/// The welcome; `data` (JSON text, from the connect hook) as its `data`.
/// `fallback`: a fallback session's `(transport, session id)`.
pub fn welcome_frame(client: &str, node: &str, shard: usize, user: Option<&str>, data: Option<&str>, fallback: Option<(&str, &str)>) -> Bytes {
    let mut body = Vec::with_capacity(80 + client.len() + node.len() + user.map_or(0, str::len) + data.map_or(0, str::len));
    body.extend_from_slice(br#"{"type":"welcome","client":"#);
    push_json_str(&mut body, client);
    body.extend_from_slice(br#","node":"#);
    push_json_str(&mut body, node);
    body.extend_from_slice(format!(r#","shard":{shard},"user":"#).as_bytes());
    push_json_nullable_str(&mut body, user);
    if let Some(data) = data {
        body.extend_from_slice(br#","data":"#);
        body.extend_from_slice(data.as_bytes());
    }
    if let Some((transport, session)) = fallback {
        body.extend_from_slice(br#","transport":"#);
        push_json_str(&mut body, transport);
        body.extend_from_slice(br#","session":"#);
        push_json_str(&mut body, session);
    }
    body.push(b'}');
    text_frame(&body)
}

/// `{"type":"unsubscribed","topic":T,"reason":R}`: the server ended a
/// subscription (its subscription token expired).
pub fn unsubscribed_frame(topic: &str, reason: &str) -> Bytes {
    let mut body = Vec::with_capacity(48 + topic.len() + reason.len());
    body.extend_from_slice(br#"{"type":"unsubscribed","topic":"#);
    push_json_str(&mut body, topic);
    body.extend_from_slice(br#","reason":"#);
    push_json_str(&mut body, reason);
    body.push(b'}');
    text_frame(&body)
}

/// `"publications":[{"offset":N,"payload":P},…],"offset":N,"epoch":E`.
fn push_answer(body: &mut Vec<u8>, answer: &Answer) {
    body.extend_from_slice(br#""publications":["#);
    for (i, p) in answer.publications.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(format!(r#"{{"offset":{}"#, p.offset).as_bytes());
        let (field, value) = payload_pieces(&p.payload, p.json);
        body.extend_from_slice(field);
        body.extend_from_slice(&value);
        body.push(b'}');
    }
    body.extend_from_slice(format!(r#"],"offset":{},"epoch":"#, answer.position.offset).as_bytes());
    push_json_str(body, &answer.position.epoch);
}

/// A reply carrying data (see [`Reply`]).
pub fn reply_frame(reply: &Reply<'_>) -> Bytes {
    let mut body = Vec::with_capacity(128);
    match reply {
        Reply::Subscribed { id, answer, recovery, data } => {
            body.extend_from_slice(format!(r#"{{"type":"ack","id":{id},"#).as_bytes());
            if let Some(data) = data {
                // Valid JSON: checked when the backend's answer was read.
                body.extend_from_slice(br#""data":"#);
                body.extend_from_slice(data.as_bytes());
                body.push(b',');
            }
            if *recovery {
                body.extend_from_slice(format!(r#""recovered":{},"#, answer.recovered).as_bytes());
                push_answer(&mut body, answer);
            } else {
                body.extend_from_slice(format!(r#""offset":{},"epoch":"#, answer.position.offset).as_bytes());
                push_json_str(&mut body, &answer.position.epoch);
            }
        }
        Reply::History { id, answer } => {
            body.extend_from_slice(format!(r#"{{"type":"history","id":{id},"#).as_bytes());
            push_answer(&mut body, answer);
        }
        Reply::Presence { id, clients } => {
            body.extend_from_slice(format!(r#"{{"type":"presence","id":{id},"clients":{{"#).as_bytes());
            for (i, entry) in clients.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                push_json_str(&mut body, &entry.client);
                body.extend_from_slice(br#":{"user":"#);
                push_json_nullable_str(&mut body, entry.user.as_deref());
                if let Some(info) = &entry.info {
                    // Valid JSON: checked when the backend's answer was read
                    // (or when Redis' copy was).
                    body.extend_from_slice(br#","info":"#);
                    body.extend_from_slice(info.as_bytes());
                }
                body.push(b'}');
            }
            body.push(b'}');
        }
        Reply::PresenceStats { id, clients, users } => {
            body.extend_from_slice(format!(r#"{{"type":"presence_stats","id":{id},"clients":{clients},"users":{users}"#).as_bytes());
        }
    }
    body.push(b'}');
    text_frame(&body)
}

pub fn ack_frame(id: u64) -> Bytes {
    text_frame(format!(r#"{{"type":"ack","id":{id}}}"#).as_bytes())
}

/// `{"type":T,"id":N,"data":D}`: `data` is JSON text (a backend's).
fn data_frame(kind: &str, id: u64, data: &str) -> Bytes {
    let mut body = Vec::with_capacity(40 + data.len());
    body.extend_from_slice(format!(r#"{{"type":"{kind}","id":{id},"data":"#).as_bytes());
    body.extend_from_slice(data.as_bytes());
    body.push(b'}');
    text_frame(&body)
}

/// A subscribe's ack carrying the subscribe hook's `data`.
pub fn ack_data_frame(id: u64, data: &str) -> Bytes {
    data_frame("ack", id, data)
}

/// `{"type":"rpc_result","id":N,"data":D}` (`null` when the backend gave none).
pub fn rpc_result_frame(id: u64, data: Option<&str>) -> Bytes {
    data_frame("rpc_result", id, data.unwrap_or("null"))
}

/// An error frame relaying a backend's refusal: its numeric code as
/// `backend_code`, its message as the message.
pub fn backend_error_frame(err: &RequestError, backend_code: u32) -> Bytes {
    error_with(err, Some(backend_code))
}

pub fn pong_frame(id: Option<u64>) -> Bytes {
    match id {
        Some(id) => text_frame(format!(r#"{{"type":"pong","id":{id}}}"#).as_bytes()),
        None => text_frame(br#"{"type":"pong"}"#),
    }
}

pub fn error_frame(err: &RequestError) -> Bytes {
    error_with(err, None)
}

/// `{"type":"error",["id":N,]"code":C,"message":M[,"backend_code":B]}`.
fn error_with(err: &RequestError, backend_code: Option<u32>) -> Bytes {
    let mut body = Vec::with_capacity(80 + err.message.len());
    body.extend_from_slice(br#"{"type":"error","#);
    if let Some(id) = err.id {
        body.extend_from_slice(format!(r#""id":{id},"#).as_bytes());
    }
    body.extend_from_slice(br#""code":""#);
    body.extend_from_slice(err.code.as_str().as_bytes());
    body.extend_from_slice(br#"","message":"#);
    push_json_str(&mut body, &err.message);
    if let Some(code) = backend_code {
        body.extend_from_slice(format!(r#","backend_code":{code}"#).as_bytes());
    }
    body.push(b'}');
    text_frame(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(frame: &Bytes) -> serde_json::Value {
        serde_json::from_slice(frame::payload_of(frame)).unwrap()
    }

    fn code(text: &str) -> (Option<u64>, ErrorCode) {
        let e = parse_request(text.as_bytes()).unwrap_err();
        (e.id, e.code)
    }

    #[test]
    fn unsubscribed_frames_name_the_topic_and_reason() {
        let f = unsubscribed_frame("room:\"1", "token expired");
        let v: serde_json::Value = serde_json::from_slice(frame::payload_of(&f)).unwrap();
        assert_eq!(v, serde_json::json!({"type":"unsubscribed","topic":"room:\"1","reason":"token expired"}));
    }

    #[test]
    fn parses_every_request() {
        let r = parse_request(br#"{"type":"subscribe","topic":"news","id":1}"#).unwrap();
        assert_eq!(r.id, Some(1));
        assert!(matches!(r.command, Command::Subscribe { ref topic, recover: None, token: None, .. } if topic == "news"));
        let r = parse_request(br#"{"type":"subscribe","topic":"room:1","token":"a.b\/c"}"#).unwrap();
        assert!(matches!(r.command, Command::Subscribe { token: Some(ref t), .. } if t == "a.b/c"));
        assert_eq!(code(r#"{"type":"subscribe","topic":"room:1","token":7,"id":2}"#), (Some(2), ErrorCode::BadRequest));
        let r = parse_request(br#"{"type":"subscribe","topic":"c","recover":{"offset":10,"epoch":"e1"}}"#).unwrap();
        assert!(matches!(r.command, Command::Subscribe { recover: Some(Since { offset: 10, ref epoch }), .. } if epoch == "e1"));
        let r = parse_request(br#"{"type":"history","topic":"c","since":{"offset":3,"epoch":"e"},"limit":5,"id":3}"#).unwrap();
        assert!(matches!(r.command, Command::History { since: Some(_), limit: Some(5), .. }));
        let r = parse_request(br#"{"type":"history","topic":"c"}"#).unwrap();
        assert!(matches!(r.command, Command::History { since: None, limit: None, .. }));
        assert!(matches!(parse_request(br#"{"type":"presence","topic":"c"}"#).unwrap().command, Command::Presence { .. }));
        assert!(matches!(parse_request(br#"{"type":"presence_stats","topic":"c"}"#).unwrap().command, Command::PresenceStats { .. }));
        let r = parse_request(br#"{"type":"unsubscribe","topic":"n\"ews"}"#).unwrap();
        assert!(matches!(r.command, Command::Unsubscribe { ref topic } if topic == "n\"ews"));
        let r = parse_request(br#" {"type":"publish","topic":"t","payload":{"a": [1, 2]},"skip_self":true} "#).unwrap();
        match r.command {
            Command::Publish { payload, skip_self, .. } => {
                assert_eq!(payload.bytes, br#"{"a": [1, 2]}"#);
                assert!(skip_self);
            }
            other => panic!("{other:?}"),
        }
        let r = parse_request(br#"{"type":"publish","topic":"t","payload":null}"#).unwrap();
        assert!(matches!(r.command, Command::Publish { payload, .. } if payload.bytes == b"null" && payload.json));
        assert!(matches!(parse_request(br#"{"type":"ping","extra":1}"#).unwrap().command, Command::Ping));
        let r = parse_request(br#"{"type":"auth","token":"a.b.c","id":1}"#).unwrap();
        assert!(matches!(r.command, Command::Auth { ref token } if token == "a.b.c"));
        let r = parse_request(br#"{"type":"refresh","token":"t"}"#).unwrap();
        assert!(matches!(r.command, Command::Refresh { ref token } if token == "t"));
        let r = parse_request(br#"{"type":"send","user":"alice","payload":[1]}"#).unwrap();
        assert!(matches!(r.command, Command::Send { ref user, payload } if user == "alice" && payload.bytes == b"[1]"));
    }

    #[test]
    fn classifies_bad_input() {
        assert_eq!(code("nope"), (None, ErrorCode::BadJson));
        assert_eq!(code("[1,2]"), (None, ErrorCode::BadJson));
        assert_eq!(code(r#"{"type":"ping""#), (None, ErrorCode::BadJson));
        assert_eq!(code(r#"{"id":5}"#), (Some(5), ErrorCode::BadRequest));
        assert_eq!(code(r#"{"type":7,"id":5}"#), (Some(5), ErrorCode::BadRequest));
        assert_eq!(code(r#"{"type":"ping","id":-1}"#), (None, ErrorCode::BadRequest));
        assert_eq!(code(r#"{"type":"ping","id":null}"#), (None, ErrorCode::BadRequest));
        assert_eq!(code(r#"{"type":"subscribe","id":2}"#), (Some(2), ErrorCode::BadRequest));
        assert_eq!(code(r#"{"type":"subscribe","topic":3}"#), (None, ErrorCode::BadRequest));
        assert_eq!(code(r#"{"type":"publish","topic":"t"}"#), (None, ErrorCode::BadRequest));
        assert_eq!(code(r#"{"type":"publish","topic":"t","payload":1,"skip_self":"y"}"#), (None, ErrorCode::BadRequest));
        assert_eq!(code(r#"{"type":"dance","id":9}"#), (Some(9), ErrorCode::UnknownType));
        assert_eq!(code(r#"{"type":"auth","id":3}"#), (Some(3), ErrorCode::BadRequest));
        assert_eq!(code(r#"{"type":"auth","token":1}"#), (None, ErrorCode::BadRequest));
        assert_eq!(code(r#"{"type":"send","user":"a"}"#), (None, ErrorCode::BadRequest));
        assert_eq!(code(r#"{"type":"send","payload":1}"#), (None, ErrorCode::BadRequest));
        assert_eq!(code(r#"{"type":"subscribe","topic":"t","recover":{"offset":-1,"epoch":"e"},"id":1}"#), (Some(1), ErrorCode::BadRequest));
        assert_eq!(code(r#"{"type":"subscribe","topic":"t","recover":{"offset":1}}"#), (None, ErrorCode::BadRequest));
        assert_eq!(code(r#"{"type":"subscribe","topic":"t","recover":5}"#), (None, ErrorCode::BadRequest));
        // Issue 22.14: an array in place of the object was taken.
        assert_eq!(code(r#"{"type":"subscribe","topic":"t","recover":[1,"e"],"id":2}"#), (Some(2), ErrorCode::BadRequest));
        assert_eq!(code(r#"{"type":"history","topic":"t","since":[1,"e"],"id":3}"#), (Some(3), ErrorCode::BadRequest));
        let spaced = parse_request(br#"{"type":"subscribe","topic":"c","recover" :  {"offset":1,"epoch":"e"}}"#).unwrap();
        assert!(matches!(spaced.command, Command::Subscribe { recover: Some(_), .. }));
        let long = format!(r#"{{"type":"history","topic":"t","since":{{"offset":1,"epoch":"{}"}}}}"#, "e".repeat(65));
        assert_eq!(code(&long), (None, ErrorCode::BadRequest));
        assert_eq!(code(r#"{"type":"history","topic":"t","limit":"x"}"#), (None, ErrorCode::BadRequest));
        assert_eq!(code(r#"{"type":"presence"}"#), (None, ErrorCode::BadRequest));
    }

    #[test]
    fn payload_slice_is_inside_the_frame() {
        let big = format!("[{}]", "1,".repeat(40_000) + "1");
        let frame = message_frame("t", big.as_bytes(), true);
        let payload = embedded_payload(&frame, big.len());
        assert_eq!(&payload[..], big.as_bytes());
        assert!(frame.as_ptr_range().contains(&payload.as_ptr()));
    }

    #[test]
    fn binary_payloads_travel_as_base64() {
        let m = message_frame("t", b"\x00\xffhi", false);
        assert_eq!(body(&m), serde_json::json!({"type":"message","topic":"t","payload_base64":"AP9oaQ=="}));
        let d = direct_frame(None, b"\x01", false);
        assert_eq!(body(&d), serde_json::json!({"type":"direct","from":null,"payload_base64":"AQ=="}));
    }

    #[test]
    fn frames_are_valid_json() {
        let m = message_frame("a\"b", br#"{"x":1}"#, true);
        assert_eq!(body(&m), serde_json::json!({"type":"message","topic":"a\"b","payload":{"x":1}}));
        assert_eq!(body(&ack_frame(7)), serde_json::json!({"type":"ack","id":7}));
        assert_eq!(body(&pong_frame(Some(3))), serde_json::json!({"type":"pong","id":3}));
        let e = RequestError { id: None, code: ErrorCode::RateLimited, message: "slow \"down\"".into() };
        assert_eq!(body(&error_frame(&e)), serde_json::json!({"type":"error","code":"rate_limited","message":"slow \"down\""}));
        assert_eq!(
            body(&welcome_frame("c1", "n", 2, None, None, None)),
            serde_json::json!({"type":"welcome","client":"c1","node":"n","shard":2,"user":null})
        );
        assert_eq!(body(&welcome_frame("c1", "n", 2, Some("a\"b"), None, None))["user"], "a\"b");
        let d = direct_frame(Some("bob"), br#"{"t":1}"#, true);
        assert_eq!(body(&d), serde_json::json!({"type":"direct","from":"bob","payload":{"t":1}}));
        assert_eq!(&embedded_payload(&d, 7)[..], br#"{"t":1}"#);
        assert_eq!(body(&direct_frame(None, b"2", true)), serde_json::json!({"type":"direct","from":null,"payload":2}));
        let m = message_frame_at("c", b"[1]", true, Some((11, "e\"1")));
        assert_eq!(body(&m), serde_json::json!({"type":"message","topic":"c","offset":11,"epoch":"e\"1","payload":[1]}));
        assert_eq!(&embedded_payload(&m, 3)[..], b"[1]");
        let j = presence_event_frame("join", "c", "0-1", Some("alice"));
        assert_eq!(body(&j), serde_json::json!({"type":"join","topic":"c","client":"0-1","user":"alice"}));
        assert_eq!(body(&presence_event_frame("leave", "c", "0-1", None))["user"], serde_json::Value::Null);
    }

    #[test]
    fn replies_have_the_documented_shapes() {
        use crate::protocol::position::{Position, Publication};
        let publications = vec![
            Publication { offset: 11, payload: Bytes::from_static(b"{\"a\":1}"), json: true },
            Publication { offset: 12, payload: Bytes::from_static(b"\x00"), json: false },
        ];
        let answer = Answer { position: Position { offset: 12, epoch: "ep".into() }, publications, recovered: true, from_newest: false };
        let r = reply_frame(&Reply::Subscribed { id: 4, answer: &answer, recovery: true, data: None });
        assert_eq!(
            body(&r),
            serde_json::json!({"type":"ack","id":4,"recovered":true,"publications":[{"offset":11,"payload":{"a":1}},{"offset":12,"payload_base64":"AA=="}],"offset":12,"epoch":"ep"})
        );
        let r = reply_frame(&Reply::Subscribed { id: 5, answer: &answer, recovery: false, data: Some(r#"{"k":1}"#) });
        assert_eq!(body(&r), serde_json::json!({"type":"ack","id":5,"data":{"k":1},"offset":12,"epoch":"ep"}));
        let r = reply_frame(&Reply::History { id: 3, answer: &answer });
        assert_eq!(body(&r)["publications"][0]["offset"], 11);
        assert_eq!(body(&r)["type"], "history");
        let clients = vec![
            crate::protocol::PresenceEntry { client: "0-1".into(), user: Some("alice".into()), info: Some(r#"{"role":"admin"}"#.into()) },
            crate::protocol::PresenceEntry { client: "1-2".into(), user: None, info: None },
        ];
        let r = reply_frame(&Reply::Presence { id: 1, clients: &clients });
        let want = serde_json::json!({"type":"presence","id":1,"clients":{"0-1":{"user":"alice","info":{"role":"admin"}},"1-2":{"user":null}}});
        assert_eq!(body(&r), want);
        let r = reply_frame(&Reply::PresenceStats { id: 2, clients: 3, users: 2 });
        assert_eq!(body(&r), serde_json::json!({"type":"presence_stats","id":2,"clients":3,"users":2}));
    }
}
