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

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::{flatbuf, json, Encoding, Payload};
use crate::metrics::ShardStats;

/// What the message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A topic message: `{"type":"message","topic":…}`.
    Message,
    /// A direct message to the user of the topic `$user:<id>`, from a
    /// verified sender (`None`: anonymous, or a backend).
    Direct { from: Option<Arc<str>> },
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
    /// The encoded forms, indexed by [`Encoding`].
    forms: [OnceLock<Bytes>; 2],
}

fn index(encoding: Encoding) -> usize {
    match encoding {
        Encoding::Json => 0,
        Encoding::FlatBuffers => 1,
    }
}

impl Outgoing {
    /// A message published by a client speaking `origin`. The publisher's
    /// own encoding is built now (its subscribers are the likeliest); for a
    /// JSON payload the payload is then a slice of that frame, not a copy.
    /// Encodings are counted in `stats` (the building shard's).
    pub fn new(topic: &str, kind: Kind, payload: Payload<'_>, origin: Encoding, stats: &ShardStats) -> Arc<Outgoing> {
        let forms: [OnceLock<Bytes>; 2] = Default::default();
        let bytes = if origin == Encoding::Json && payload.json {
            let frame = encode(Encoding::Json, topic, &kind, payload.bytes, true, stats);
            let slice = json::payload_of(&frame, payload.bytes.len());
            let _ = forms[index(Encoding::Json)].set(frame);
            slice
        } else {
            Bytes::copy_from_slice(payload.bytes)
        };
        Arc::new(Outgoing { topic: topic.into(), kind, payload: bytes, payload_is_json: payload.json, forms })
    }

    /// A message from another node (through Redis), whose payload is already `Bytes`.
    pub fn remote(topic: &str, kind: Kind, payload: Bytes, payload_is_json: bool) -> Arc<Outgoing> {
        Arc::new(Outgoing { topic: topic.into(), kind, payload, payload_is_json, forms: Default::default() })
    }

    /// The frame for a recipient speaking `encoding`, built on first use
    /// (and counted in `stats`, the building shard's).
    pub fn frame(&self, encoding: Encoding, stats: &ShardStats) -> Bytes {
        self.forms[index(encoding)]
            .get_or_init(|| encode(encoding, &self.topic, &self.kind, &self.payload, self.payload_is_json, stats))
            .clone()
    }

    /// Whether the form for `encoding` has been built (metrics, tests).
    pub fn is_encoded(&self, encoding: Encoding) -> bool {
        self.forms[index(encoding)].get().is_some()
    }

    /// The sender of a direct message, for the bridge's envelope.
    pub fn sender(&self) -> Option<&str> {
        match &self.kind {
            Kind::Direct { from } => from.as_deref(),
            Kind::Message => None,
        }
    }
}

fn encode(encoding: Encoding, topic: &str, kind: &Kind, payload: &[u8], is_json: bool, stats: &ShardStats) -> Bytes {
    let counter = match encoding {
        Encoding::Json => &stats.encodings_json,
        Encoding::FlatBuffers => &stats.encodings_flatbuffers,
    };
    ShardStats::add(counter, 1);
    match (encoding, kind) {
        (Encoding::Json, Kind::Message) => json::message_frame(topic, payload, is_json),
        (Encoding::Json, Kind::Direct { from }) => json::direct_frame(from.as_deref(), payload, is_json),
        (Encoding::FlatBuffers, Kind::Message) => flatbuf::message_frame(topic, payload),
        (Encoding::FlatBuffers, Kind::Direct { from }) => flatbuf::direct_frame(from.as_deref(), payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_are_built_once_on_first_use_and_shared() {
        let stats = ShardStats::default();
        let m = Outgoing::new("news", Kind::Message, Payload { bytes: br#"{"a":1}"#, json: true }, Encoding::Json, &stats);
        assert!(m.is_encoded(Encoding::Json), "the publisher's encoding is built at once");
        assert!(!m.is_encoded(Encoding::FlatBuffers));
        let a = m.frame(Encoding::FlatBuffers, &stats);
        let b = m.frame(Encoding::FlatBuffers, &stats);
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same bytes, not a second encoding");
        assert_eq!(&m.payload[..], br#"{"a":1}"#);
        let json = m.frame(Encoding::Json, &stats);
        let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!((count(&stats.encodings_json), count(&stats.encodings_flatbuffers)), (1, 1));
        assert!(json.as_ptr_range().contains(&m.payload.as_ptr()), "the payload is a slice of the JSON frame");
    }

    #[test]
    fn binary_payloads_from_flatbuffers_publishers() {
        let stats = ShardStats::default();
        let m = Outgoing::new("t", Kind::Message, Payload { bytes: b"\x00\x01", json: false }, Encoding::FlatBuffers, &stats);
        assert!(!m.is_encoded(Encoding::Json));
        let text = m.frame(Encoding::Json, &stats);
        assert!(std::str::from_utf8(&text[2..]).unwrap().contains(r#""payload_base64":"AAE=""#));
    }
}
