//! The client protocol in FlatBuffers (`schemas/client.fbs`), negotiated
//! with `Sec-WebSocket-Protocol: shardcast.flatbuffers.v1`: one `ClientFrame`
//! per binary WebSocket frame in, one `ServerFrame` per frame out.
//!
//! A translator, nothing else: it turns verified bytes into the same
//! [`Request`] the JSON codec produces, and replies into frames. Every
//! incoming buffer is untrusted and verified with tight [`VerifierOptions`]
//! before a field is read.

use std::borrow::Cow;

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, VerifierOptions, WIPOffset};

use super::position::{Answer, Since, MAX_EPOCH_BYTES};
use super::{Command, Payload, Reply, Request, RequestError};
use crate::codes::ErrorCode;
use crate::ws::frame::{self, Opcode};

#[allow(clippy::all, unused_imports, dead_code, non_snake_case, unsafe_op_in_unsafe_fn, mismatched_lifetime_syntaxes)]
#[path = "generated/client_generated.rs"]
mod generated;

/// The generated schema types (`ServerFrame`, `ClientFrame`, ...), for
/// clients and tests.
pub use generated::shardcast::client as schema;

use schema::Request as Request_;
use schema::*;

/// The subprotocol name clients offer.
pub const SUBPROTOCOL: &str = "shardcast.flatbuffers.v1";

fn bad(id: Option<u64>, message: impl Into<String>) -> RequestError {
    RequestError { id, code: ErrorCode::BadRequest, message: message.into() }
}

/// Verifier bounds for one client frame: a `ClientFrame` is two tables
/// deep, so anything deeper or wider is hostile.
fn options(len: usize) -> VerifierOptions {
    VerifierOptions { max_depth: 8, max_tables: 16, max_apparent_size: len.saturating_mul(2).max(1024), ..Default::default() }
}

fn required<'a>(s: Option<&'a str>, id: Option<u64>, field: &str) -> Result<Cow<'a, str>, RequestError> {
    s.map(Cow::Borrowed).ok_or_else(|| bad(id, format!("missing field `{field}`")))
}

fn payload<'a>(v: Option<flatbuffers::Vector<'a, u8>>, id: Option<u64>) -> Result<Payload<'a>, RequestError> {
    v.map(|v| Payload::from_bytes(v.bytes())).ok_or_else(|| bad(id, "missing field `payload`"))
}

fn since(p: StreamPosition<'_>, id: Option<u64>, field: &str) -> Result<Since, RequestError> {
    let epoch = p.epoch().ok_or_else(|| bad(id, format!("missing field `{field}.epoch`")))?;
    if epoch.len() > MAX_EPOCH_BYTES {
        return Err(bad(id, format!("field `{field}.epoch` is longer than {MAX_EPOCH_BYTES} bytes")));
    }
    Ok(Since { offset: p.offset(), epoch: epoch.to_string() })
}

/// Decodes one request from a binary frame's bytes.
pub fn parse_request<'a>(buf: &'a [u8]) -> Result<Request<'a>, RequestError> {
    let frame = root_as_client_frame_with_opts(&options(buf.len()), buf)
        .map_err(|e| bad(None, format!("not a valid ClientFrame: {e}")))?;
    let id = frame.id();
    let missing = || bad(id, "missing field `request`");
    let command = match frame.request_type() {
        Request_::Subscribe => {
            let sub = frame.request_as_subscribe().ok_or_else(missing)?;
            let recover = sub.recover().map(|p| since(p, id, "recover")).transpose()?;
            let data = sub.data().map(|d| Payload::from_bytes(d.bytes()));
            Command::Subscribe { topic: required(sub.topic(), id, "topic")?, recover, token: sub.token().map(Cow::Borrowed), data }
        }
        Request_::Unsubscribe => Command::Unsubscribe { topic: required(frame.request_as_unsubscribe().and_then(|r| r.topic()), id, "topic")? },
        Request_::Publish => {
            let p = frame.request_as_publish().ok_or_else(missing)?;
            Command::Publish { topic: required(p.topic(), id, "topic")?, payload: payload(p.payload(), id)?, skip_self: p.skip_self() }
        }
        Request_::Ping => Command::Ping,
        Request_::Auth => Command::Auth { token: required(frame.request_as_auth().and_then(|r| r.token()), id, "token")? },
        Request_::Refresh => Command::Refresh { token: required(frame.request_as_refresh().and_then(|r| r.token()), id, "token")? },
        Request_::Send => {
            let s = frame.request_as_send().ok_or_else(missing)?;
            Command::Send { user: required(s.user(), id, "user")?, payload: payload(s.payload(), id)? }
        }
        Request_::Presence => Command::Presence { topic: required(frame.request_as_presence().and_then(|r| r.topic()), id, "topic")? },
        Request_::PresenceStats => {
            Command::PresenceStats { topic: required(frame.request_as_presence_stats().and_then(|r| r.topic()), id, "topic")? }
        }
        Request_::History => {
            let h = frame.request_as_history().ok_or_else(missing)?;
            let since = h.since().map(|p| since(p, id, "since")).transpose()?;
            Command::History { topic: required(h.topic(), id, "topic")?, since, limit: h.limit() }
        }
        Request_::Connect => {
            let c = frame.request_as_connect().ok_or_else(missing)?;
            Command::Connect { data: c.data().map(|d| Payload::from_bytes(d.bytes())) }
        }
        Request_::Rpc => {
            let r = frame.request_as_rpc().ok_or_else(missing)?;
            Command::Rpc { method: required(r.method(), id, "method")?, data: r.data().map(|d| Payload::from_bytes(d.bytes())) }
        }
        Request_::NONE => return Err(missing()),
        other => {
            let message = format!("unknown request type {}", other.0);
            return Err(RequestError { id, code: ErrorCode::UnknownType, message });
        }
    };
    Ok(Request { id, command })
}

/// Builds one `ServerFrame` around the event `build` adds, as a binary frame.
fn server_frame(
    id: Option<u64>,
    kind: Event,
    build: impl FnOnce(&mut FlatBufferBuilder<'static>) -> WIPOffset<UnionWIPOffset>,
) -> Bytes {
    let mut fbb = FlatBufferBuilder::with_capacity(128);
    let event = build(&mut fbb);
    let root = ServerFrame::create(&mut fbb, &ServerFrameArgs { id, event_type: kind, event: Some(event) });
    fbb.finish(root, None);
    frame::build(Opcode::Binary, &[fbb.finished_data()])
}

pub fn ack_frame(id: u64) -> Bytes {
    server_frame(Some(id), Event::Ack, |b| Ack::create(b, &AckArgs::default()).as_union_value())
}

pub fn pong_frame(id: Option<u64>) -> Bytes {
    server_frame(id, Event::Pong, |b| Pong::create(b, &PongArgs {}).as_union_value())
}

pub fn error_frame(err: &RequestError) -> Bytes {
    error_with(err, None)
}

pub fn welcome_frame(client: &str, node: &str, shard: usize, user: Option<&str>, data: Option<&str>) -> Bytes {
    server_frame(None, Event::Welcome, |b| {
        let client = b.create_string(client);
        let node = b.create_string(node);
        let user = user.map(|u| b.create_string(u));
        let data = data.map(|d| b.create_vector(d.as_bytes()));
        Welcome::create(b, &WelcomeArgs { client: Some(client), node: Some(node), shard: shard as u32, user, data }).as_union_value()
    })
}

/// A subscribe's ack with the subscribe hook's `data` (JSON text, as bytes).
pub fn ack_data_frame(id: u64, data: &str) -> Bytes {
    server_frame(Some(id), Event::Ack, |b| {
        let data = b.create_vector(data.as_bytes());
        Ack::create(b, &AckArgs { data: Some(data), ..AckArgs::default() }).as_union_value()
    })
}

/// An `RpcResult`: the backend's `data` (JSON text, as bytes), if any.
pub fn rpc_result_frame(id: u64, data: Option<&str>) -> Bytes {
    server_frame(Some(id), Event::RpcResult, |b| {
        let data = data.map(|d| b.create_vector(d.as_bytes()));
        RpcResult::create(b, &RpcResultArgs { data }).as_union_value()
    })
}

/// An `Error` relaying a backend's refusal, with its `backend_code`.
pub fn backend_error_frame(err: &RequestError, backend_code: u32) -> Bytes {
    error_with(err, Some(backend_code))
}

fn error_with(err: &RequestError, backend_code: Option<u32>) -> Bytes {
    server_frame(err.id, Event::Error, |b| {
        let code = b.create_string(err.code.as_str());
        let message = b.create_string(&err.message);
        Error::create(b, &ErrorArgs { code: Some(code), message: Some(message), backend_code }).as_union_value()
    })
}

/// An `Unsubscribed` event: the server ended a subscription.
pub fn unsubscribed_frame(topic: &str, reason: &str) -> Bytes {
    server_frame(None, Event::Unsubscribed, |b| {
        let topic = b.create_string(topic);
        let reason = b.create_string(reason);
        Unsubscribed::create(b, &UnsubscribedArgs { topic: Some(topic), reason: Some(reason) }).as_union_value()
    })
}

/// A reply carrying data (see [`Reply`]).
pub fn reply_frame(reply: &Reply<'_>) -> Bytes {
    fn publications<'b>(
        b: &mut FlatBufferBuilder<'b>,
        answer: &Answer,
    ) -> WIPOffset<flatbuffers::Vector<'b, flatbuffers::ForwardsUOffset<Publication<'b>>>> {
        let items: Vec<_> = answer
            .publications
            .iter()
            .map(|p| {
                let payload = b.create_vector(&p.payload);
                Publication::create(b, &PublicationArgs { offset: p.offset, payload: Some(payload) })
            })
            .collect();
        b.create_vector(&items)
    }
    match reply {
        Reply::Subscribed { id, answer, recovery, data } => server_frame(Some(*id), Event::Ack, |b| {
            let pubs = recovery.then(|| publications(b, answer));
            let epoch = b.create_string(&answer.position.epoch);
            let data = data.map(|d| b.create_vector(d.as_bytes()));
            let args = AckArgs {
                recovered: recovery.then_some(answer.recovered),
                publications: pubs,
                offset: Some(answer.position.offset),
                epoch: Some(epoch),
                data,
            };
            Ack::create(b, &args).as_union_value()
        }),
        Reply::History { id, answer } => server_frame(Some(*id), Event::HistoryResult, |b| {
            let pubs = publications(b, answer);
            let epoch = b.create_string(&answer.position.epoch);
            let args = HistoryResultArgs { publications: Some(pubs), offset: answer.position.offset, epoch: Some(epoch) };
            HistoryResult::create(b, &args).as_union_value()
        }),
        Reply::Presence { id, clients } => server_frame(Some(*id), Event::PresenceResult, |b| {
            let items: Vec<_> = clients
                .iter()
                .map(|entry| {
                    let client = b.create_string(&entry.client);
                    let user = entry.user.as_deref().map(|u| b.create_string(u));
                    let info = entry.info.as_deref().map(|i| b.create_vector(i.as_bytes()));
                    ClientInfo::create(b, &ClientInfoArgs { client: Some(client), user, info })
                })
                .collect();
            let clients = b.create_vector(&items);
            PresenceResult::create(b, &PresenceResultArgs { clients: Some(clients) }).as_union_value()
        }),
        Reply::PresenceStats { id, clients, users } => server_frame(Some(*id), Event::PresenceStatsResult, |b| {
            PresenceStatsResult::create(b, &PresenceStatsResultArgs { clients: *clients, users: *users }).as_union_value()
        }),
    }
}

/// A `Join` (`join`) or `Leave` event's `ServerFrame`.
pub fn presence_event_frame(join: bool, topic: &str, client: &str, user: Option<&str>) -> Bytes {
    let kind = if join { Event::Join } else { Event::Leave };
    server_frame(None, kind, |b| {
        let topic = Some(b.create_string(topic));
        let client = Some(b.create_string(client));
        let user = user.map(|u| b.create_string(u));
        if join {
            Join::create(b, &JoinArgs { topic, client, user }).as_union_value()
        } else {
            Leave::create(b, &LeaveArgs { topic, client, user }).as_union_value()
        }
    })
}

/// A topic message's `ServerFrame`; the payload travels as it was published.
pub fn message_frame(topic: &str, payload: &[u8]) -> Bytes {
    message_frame_at(topic, payload, None)
}

/// A message's `ServerFrame`, with its offset and epoch on a history topic.
pub fn message_frame_at(topic: &str, payload: &[u8], position: Option<(u64, &str)>) -> Bytes {
    server_frame(None, Event::Message, |b| {
        let topic = b.create_string(topic);
        let payload = b.create_vector(payload);
        let epoch = position.map(|(_, e)| b.create_string(e));
        let args = MessageArgs { topic: Some(topic), payload: Some(payload), offset: position.map(|(o, _)| o), epoch };
        Message::create(b, &args).as_union_value()
    })
}

/// A direct message's `ServerFrame`; `from` absent for anonymous senders and backends.
pub fn direct_frame(from: Option<&str>, payload: &[u8]) -> Bytes {
    server_frame(None, Event::Direct, |b| {
        let from = from.map(|f| b.create_string(f));
        let payload = b.create_vector(payload);
        Direct::create(b, &DirectArgs { from, payload: Some(payload) }).as_union_value()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes a request as a client would.
    fn client_frame(id: Option<u64>, kind: Request_, build: impl FnOnce(&mut FlatBufferBuilder<'static>) -> Option<WIPOffset<UnionWIPOffset>>) -> Vec<u8> {
        let mut b = FlatBufferBuilder::new();
        let request = build(&mut b);
        let root = ClientFrame::create(&mut b, &ClientFrameArgs { id, request_type: kind, request });
        b.finish(root, None);
        b.finished_data().to_vec()
    }

    fn body(frame: &Bytes) -> &[u8] {
        assert_eq!(frame[0], 0x82, "a final binary frame");
        frame::payload_of(frame)
    }

    #[test]
    fn parses_every_request() {
        let publish = client_frame(Some(7), Request_::Publish, |b| {
            let topic = b.create_string("news");
            let payload = b.create_vector(&[1u8, 2, 3]);
            Some(Publish::create(b, &PublishArgs { topic: Some(topic), payload: Some(payload), skip_self: true }).as_union_value())
        });
        let r = parse_request(&publish).unwrap();
        assert_eq!(r.id, Some(7));
        match r.command {
            Command::Publish { topic, payload, skip_self } => {
                assert_eq!((&*topic, payload.bytes, payload.json, skip_self), ("news", &[1u8, 2, 3][..], false, true));
            }
            other => panic!("{other:?}"),
        }
        let send = client_frame(None, Request_::Send, |b| {
            let user = b.create_string("alice");
            let payload = b.create_vector(br#"{"a":1}"#);
            Some(Send::create(b, &SendArgs { user: Some(user), payload: Some(payload) }).as_union_value())
        });
        match parse_request(&send).unwrap().command {
            Command::Send { user, payload } => assert_eq!((&*user, payload.json), ("alice", true)),
            other => panic!("{other:?}"),
        }
        let ping = client_frame(Some(0), Request_::Ping, |b| Some(Ping::create(b, &PingArgs {}).as_union_value()));
        assert!(matches!(parse_request(&ping).unwrap(), Request { id: Some(0), command: Command::Ping }));
        let auth = client_frame(None, Request_::Auth, |b| {
            let token = b.create_string("a.b.c");
            Some(Auth::create(b, &AuthArgs { token: Some(token) }).as_union_value())
        });
        assert!(matches!(parse_request(&auth).unwrap().command, Command::Auth { token } if token == "a.b.c"));
        let subscribe = client_frame(Some(2), Request_::Subscribe, |b| {
            let topic = b.create_string("room:1");
            let token = b.create_string("s.u.b");
            Some(Subscribe::create(b, &SubscribeArgs { topic: Some(topic), recover: None, token: Some(token), data: None }).as_union_value())
        });
        match parse_request(&subscribe).unwrap().command {
            Command::Subscribe { topic, recover: None, token, .. } => assert_eq!((&*topic, token.as_deref()), ("room:1", Some("s.u.b"))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_frames_are_bad_requests_never_panics() {
        let none = client_frame(Some(3), Request_::NONE, |_| None);
        assert_eq!(parse_request(&none).unwrap_err().id, Some(3));
        let no_topic = client_frame(Some(4), Request_::Subscribe, |b| Some(Subscribe::create(b, &SubscribeArgs { topic: None, ..Default::default() }).as_union_value()));
        let e = parse_request(&no_topic).unwrap_err();
        assert_eq!((e.id, e.code), (Some(4), ErrorCode::BadRequest));
        assert_eq!(parse_request(b"").unwrap_err().code, ErrorCode::BadRequest);
        assert_eq!(parse_request(b"{\"type\":\"ping\"}").unwrap_err().code, ErrorCode::BadRequest);
        let good = client_frame(Some(1), Request_::Auth, |b| {
            let token = b.create_string("t");
            Some(Auth::create(b, &AuthArgs { token: Some(token) }).as_union_value())
        });
        for cut in 0..good.len() {
            let _ = parse_request(&good[..cut]);
        }
        for i in 0..good.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] ^= flip;
                let _ = parse_request(&bad);
            }
        }
    }

    #[test]
    fn server_frames_read_back() {
        let f = ack_frame(9);
        let sf = flatbuffers::root::<ServerFrame>(body(&f)).unwrap();
        assert_eq!((sf.id(), sf.event_type()), (Some(9), Event::Ack));
        let f = message_frame("news", b"\x00\xff");
        let m = flatbuffers::root::<ServerFrame>(body(&f)).unwrap().event_as_message().unwrap();
        assert_eq!((m.topic(), m.payload().unwrap().bytes()), (Some("news"), &b"\x00\xff"[..]));
        let f = welcome_frame("0-1", "n", 3, None, None);
        let w = flatbuffers::root::<ServerFrame>(body(&f)).unwrap().event_as_welcome().unwrap();
        assert_eq!((w.client(), w.shard(), w.user()), (Some("0-1"), 3, None));
        let e = RequestError { id: None, code: ErrorCode::Forbidden, message: "no".into() };
        let f = error_frame(&e);
        let sf = flatbuffers::root::<ServerFrame>(body(&f)).unwrap();
        assert_eq!(sf.id(), None);
        assert_eq!(sf.event_as_error().unwrap().code(), Some("forbidden"));
        let d = direct_frame(Some("bob"), b"x");
        let d = flatbuffers::root::<ServerFrame>(body(&d)).unwrap().event_as_direct().unwrap();
        assert_eq!(d.from(), Some("bob"));
        let f = unsubscribed_frame("room:1", "token expired");
        let sf = flatbuffers::root::<ServerFrame>(body(&f)).unwrap();
        assert_eq!(sf.event_type(), Event::Unsubscribed);
        let u = sf.event_as_unsubscribed().unwrap();
        assert_eq!((u.topic(), u.reason()), (Some("room:1"), Some("token expired")));
        let clients = [crate::protocol::PresenceEntry { client: "n:0-1".into(), user: Some("al".into()), info: Some("{\"a\":1}".into()) }];
        let f = reply_frame(&Reply::Presence { id: 4, clients: &clients });
        let p = flatbuffers::root::<ServerFrame>(body(&f)).unwrap().event_as_presence_result().unwrap();
        let c = p.clients().unwrap().get(0);
        assert_eq!((c.client(), c.user(), c.info().map(|i| i.bytes())), (Some("n:0-1"), Some("al"), Some(&b"{\"a\":1}"[..])));
    }
}
