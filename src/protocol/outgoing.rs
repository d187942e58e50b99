//! [`Outgoing`]: one message on its way to subscribers, and every wire form
//! it takes.
//!
//! Encode once, send many: a publish becomes one `Arc<Outgoing>`, shared by
//! every recipient on every shard of the node (it rides `PublishMsg`). Each
//! form (JSON text frame, FlatBuffers binary frame) is built the first time a
//! recipient needs it, at most once per node, and the same `Bytes` then go
//! to every recipient speaking that encoding. A form is built under a
//! `OnceLock`: the one shard that builds it does the work, any other shard
//! asking at the same moment waits for the result instead of repeating it.

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::{flatbuf, json, Encoding, Payload};
use crate::clock::Stamp;
use super::position::Position;
use crate::metrics::ShardStats;
use crate::ws::deflate::{Compressor, Mode};
use crate::ws::frame::{self, Opcode};

/// How a connection takes its messages: encoding and compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Wire {
    pub encoding: Encoding,
    pub deflate: Mode,
}

/// What building a form needs from the shard that builds it.
pub struct Builder<'a> {
    /// The building shard's counters.
    pub stats: &'a ShardStats,
    /// The building shard's compressor.
    pub compressor: &'a RefCell<Compressor>,
    /// `[compression] min_bytes`: smaller messages go uncompressed.
    pub min_bytes: usize,
}

impl Builder<'_> {
    /// Compresses a plain frame's payload into a compressed frame, counted.
    pub fn compress(&self, plain: &[u8], mode: Mode) -> Bytes {
        let opcode = if plain[0] & 0x0f == 0x1 { Opcode::Text } else { Opcode::Binary };
        let body = frame::payload_of(plain);
        let compressed = self.compressor.borrow_mut().frame(opcode, body, mode);
        ShardStats::add(&self.stats.compressions, 1);
        ShardStats::add(&self.stats.compression_input, body.len() as u64);
        ShardStats::add(&self.stats.compression_output, frame::payload_of(&compressed).len() as u64);
        compressed
    }

    /// Whether a plain frame is worth compressing.
    pub fn worth_compressing(&self, plain: &[u8]) -> bool {
        frame::payload_of(plain).len() >= self.min_bytes
    }
}

/// What the message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A topic message: `{"type":"message","topic":…}`.
    Message,
    /// A direct message to the user of the topic `$user:<id>`, from a
    /// verified sender (`None`: anonymous, or a backend).
    Direct { from: Option<Arc<str>> },
    /// `{"type":"join"}`: connection `client` (of `user`, `None` when
    /// anonymous) subscribed to the topic. No payload.
    Join { client: Arc<str>, user: Option<Arc<str>> },
    /// `{"type":"leave"}`: it unsubscribed or disconnected.
    Leave { client: Arc<str>, user: Option<Arc<str>> },
}

/// A message being fanned out. `Send + Sync`: shared across shards.
#[derive(Debug)]
pub struct Outgoing {
    /// The registry key it is delivered to: the topic, or `$user:<id>`.
    pub topic: Arc<str>,
    pub kind: Kind,
    /// The payload exactly as published: JSON text, or any bytes from a
    /// FlatBuffers publisher. For the Redis bridge, and every form.
    pub payload: Bytes,
    /// `payload` is one valid JSON value.
    pub payload_is_json: bool,
    /// When the node received it (read from the publisher's socket, the
    /// admin API or Redis): the start of the fan-out delay histogram.
    pub received: Stamp,
    /// Its place in the topic's history; `None` on topics without history.
    pub position: Option<Position>,
    /// The encoded forms, indexed by [`Wire`]: each encoding plain, deflated,
    /// and in stored blocks.
    forms: [OnceLock<Bytes>; 6],
}

fn index(encoding: Encoding, deflate: Mode) -> usize {
    let e = match encoding {
        Encoding::Json => 0,
        Encoding::FlatBuffers => 1,
    };
    let d = match deflate {
        Mode::Off => 0,
        Mode::Full => 1,
        Mode::Stored => 2,
    };
    e * 3 + d
}

impl Outgoing {
    /// A message published by a client speaking `origin`. The publisher's
    /// own encoding is built now (its subscribers are the likeliest); for a
    /// JSON payload the payload is then a slice of that frame, not a copy.
    /// Encodings are counted in `stats` (the building shard's).
    pub fn new(topic: &str, kind: Kind, payload: Payload<'_>, origin: Encoding, received: Stamp, stats: &ShardStats) -> Arc<Outgoing> {
        let forms: [OnceLock<Bytes>; 6] = Default::default();
        let bytes = if origin == Encoding::Json && payload.json {
            let frame = encode(Encoding::Json, topic, &kind, payload.bytes, true, None, stats);
            let slice = json::embedded_payload(&frame, payload.bytes.len());
            let _ = forms[index(Encoding::Json, Mode::Off)].set(frame);
            slice
        } else {
            Bytes::copy_from_slice(payload.bytes)
        };
        Arc::new(Outgoing { topic: topic.into(), kind, payload: bytes, payload_is_json: payload.json, received, position: None, forms })
    }

    /// A message whose payload is already `Bytes` (from another node through
    /// Redis, or from the admin API); no form is built yet.
    pub fn remote(topic: &str, kind: Kind, payload: Bytes, payload_is_json: bool, received: Stamp) -> Arc<Outgoing> {
        Outgoing::positioned(topic, kind, payload, payload_is_json, None, received)
    }

    /// A message with its place in the topic's history (given by the
    /// topic's home shard, or by Redis); no form is built yet.
    pub fn positioned(topic: &str, kind: Kind, payload: Bytes, payload_is_json: bool, position: Option<Position>, received: Stamp) -> Arc<Outgoing> {
        Arc::new(Outgoing { topic: topic.into(), kind, payload, payload_is_json, received, position, forms: Default::default() })
    }

    /// A `join` or `leave` message (no payload).
    pub fn presence(topic: &str, kind: Kind) -> Arc<Outgoing> {
        Outgoing::positioned(topic, kind, Bytes::new(), true, None, Stamp::now())
    }

    /// The frame for a recipient taking `wire`, built on first use (with
    /// the building shard's compressor, counted in its stats). A message
    /// smaller than `min_bytes` goes to compressing recipients plain.
    pub fn frame(&self, wire: Wire, b: &Builder<'_>) -> Bytes {
        let plain = self.plain(wire.encoding, b.stats);
        if wire.deflate == Mode::Off || !b.worth_compressing(plain) {
            return plain.clone();
        }
        self.forms[index(wire.encoding, wire.deflate)].get_or_init(|| b.compress(plain, wire.deflate)).clone()
    }

    /// The uncompressed frame in `encoding`, built on first use.
    pub fn plain(&self, encoding: Encoding, stats: &ShardStats) -> &Bytes {
        self.forms[index(encoding, Mode::Off)]
            .get_or_init(|| {
                let position = self.position.as_ref().map(|p| (p.offset, &*p.epoch));
                encode(encoding, &self.topic, &self.kind, &self.payload, self.payload_is_json, position, stats)
            })
    }

    /// Whether the uncompressed form for `encoding` has been built (tests).
    pub fn is_encoded(&self, encoding: Encoding) -> bool {
        self.forms[index(encoding, Mode::Off)].get().is_some()
    }

    /// The sender of a direct message, for the bridge's envelope.
    pub fn sender(&self) -> Option<&str> {
        match &self.kind {
            Kind::Direct { from } => from.as_deref(),
            Kind::Join { user, .. } | Kind::Leave { user, .. } => user.as_deref(),
            Kind::Message => None,
        }
    }
}

fn encode(encoding: Encoding, topic: &str, kind: &Kind, payload: &[u8], is_json: bool, position: Option<(u64, &str)>, stats: &ShardStats) -> Bytes {
    let counter = match encoding {
        Encoding::Json => &stats.encodings_json,
        Encoding::FlatBuffers => &stats.encodings_flatbuffers,
    };
    ShardStats::add(counter, 1);
    match (encoding, kind) {
        (Encoding::Json, Kind::Message) => json::message_frame_at(topic, payload, is_json, position),
        (Encoding::Json, Kind::Direct { from }) => json::direct_frame(from.as_deref(), payload, is_json),
        (Encoding::Json, Kind::Join { client, user }) => json::presence_event_frame("join", topic, client, user.as_deref()),
        (Encoding::Json, Kind::Leave { client, user }) => json::presence_event_frame("leave", topic, client, user.as_deref()),
        (Encoding::FlatBuffers, Kind::Message) => flatbuf::message_frame_at(topic, payload, position),
        (Encoding::FlatBuffers, Kind::Direct { from }) => flatbuf::direct_frame(from.as_deref(), payload),
        (Encoding::FlatBuffers, Kind::Join { client, user }) => flatbuf::presence_event_frame(true, topic, client, user.as_deref()),
        (Encoding::FlatBuffers, Kind::Leave { client, user }) => flatbuf::presence_event_frame(false, topic, client, user.as_deref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_are_built_once_on_first_use_and_shared() {
        let stats = ShardStats::default();
        let m = Outgoing::new("news", Kind::Message, Payload { bytes: br#"{"a":1}"#, json: true }, Encoding::Json, Stamp::now(), &stats);
        assert!(m.is_encoded(Encoding::Json), "the publisher's encoding is built at once");
        assert!(!m.is_encoded(Encoding::FlatBuffers));
        let a = m.plain(Encoding::FlatBuffers, &stats).clone();
        let b = m.plain(Encoding::FlatBuffers, &stats).clone();
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same bytes, not a second encoding");
        assert_eq!(&m.payload[..], br#"{"a":1}"#);
        let json = m.plain(Encoding::Json, &stats).clone();
        let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!((count(&stats.encodings_json), count(&stats.encodings_flatbuffers)), (1, 1));
        assert!(json.as_ptr_range().contains(&m.payload.as_ptr()), "the payload is a slice of the JSON frame");
    }

    #[test]
    fn binary_payloads_from_flatbuffers_publishers() {
        let stats = ShardStats::default();
        let m = Outgoing::new("t", Kind::Message, Payload { bytes: b"\x00\x01", json: false }, Encoding::FlatBuffers, Stamp::now(), &stats);
        assert!(!m.is_encoded(Encoding::Json));
        let text = m.plain(Encoding::Json, &stats).clone();
        assert!(std::str::from_utf8(&text[2..]).unwrap().contains(r#""payload_base64":"AAE=""#));
    }

    #[test]
    fn compressed_forms_are_built_once_and_only_above_min_bytes() {
        let stats = ShardStats::default();
        let compressor = RefCell::new(Compressor::new(1));
        let b = Builder { stats: &stats, compressor: &compressor, min_bytes: 256 };
        let big = format!("\"{}\"", "abc".repeat(200));
        let m = Outgoing::new("t", Kind::Message, Payload { bytes: big.as_bytes(), json: true }, Encoding::Json, Stamp::now(), &stats);
        let deflate = Wire { encoding: Encoding::Json, deflate: Mode::Full };
        let x = m.frame(deflate, &b);
        let y = m.frame(deflate, &b);
        assert_eq!(x.as_ptr(), y.as_ptr());
        assert_eq!(x[0], 0xC1, "RSV1 on a final text frame");
        assert!(x.len() < 100, "{}", x.len());
        assert_eq!(stats.compressions.load(std::sync::atomic::Ordering::Relaxed), 1);
        let small = Outgoing::new("t", Kind::Message, Payload { bytes: b"1", json: true }, Encoding::Json, Stamp::now(), &stats);
        assert_eq!(small.frame(deflate, &b)[0], 0x81, "below min_bytes: plain");
    }
}
