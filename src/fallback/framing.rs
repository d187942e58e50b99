//! Server frames on the fallback transports. Everything for a connection
//! is queued as a WebSocket frame (shared, encoded once); a fallback
//! session's copy is re-framed as it is queued: a text frame becomes an
//! NDJSON line or an SSE `data:` event, a ping a heartbeat, the close
//! frame the `close` JSON frame and the response's end, each in one HTTP
//! chunk.

use bytes::Bytes;

use super::Transport;

/// The padding comment an SSE stream opens with, so that a buffering proxy
/// passes the first event at once.
const SSE_PADDING: usize = 2048;

/// The response head of a session on `transport`, with the CORS headers of
/// `origin` (an allowed one) when the request had one. SSE's padding
/// follows it, as the response's first chunk.
pub fn head(transport: Transport, origin: Option<&str>) -> Vec<u8> {
    let content_type = match transport {
        Transport::Sse => "text/event-stream",
        _ => "application/x-ndjson",
    };
    let mut head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nCache-Control: no-store\r\nX-Accel-Buffering: no\r\n{}Connection: close\r\n\r\n",
        cors(origin)
    )
    .into_bytes();
    if transport == Transport::Sse {
        let mut padding = Vec::with_capacity(SSE_PADDING + 3);
        padding.push(b':');
        padding.resize(SSE_PADDING + 1, b' ');
        padding.extend_from_slice(b"\n\n");
        chunk(&mut head, &[&padding]);
    }
    head
}

/// The CORS headers for a request from `origin` (already checked against
/// `allowed_origins`); none without one.
pub fn cors(origin: Option<&str>) -> String {
    match origin {
        Some(origin) => format!(
            "Access-Control-Allow-Origin: {origin}\r\nAccess-Control-Allow-Credentials: true\r\nAccess-Control-Expose-Headers: Retry-After\r\nVary: Origin\r\n"
        ),
        None => String::new(),
    }
}

/// Appends one HTTP chunk holding `pieces` to `out`.
fn chunk(out: &mut Vec<u8>, pieces: &[&[u8]]) {
    use std::io::Write;
    let len: usize = pieces.iter().map(|p| p.len()).sum();
    write!(out, "{len:x}\r\n").expect("writing to a Vec cannot fail");
    for piece in pieces {
        out.extend_from_slice(piece);
    }
    out.extend_from_slice(b"\r\n");
}

/// The opcode and payload of an unmasked server frame; `None` for a frame
/// that is not whole.
fn split(frame: &[u8]) -> Option<(u8, &[u8])> {
    let (&first, rest) = frame.split_first()?;
    let (&second, rest) = rest.split_first()?;
    let (len, rest) = match second & 0x7f {
        126 => {
            let (len, rest) = rest.split_first_chunk::<2>()?;
            (u16::from_be_bytes(*len) as usize, rest)
        }
        127 => {
            let (len, rest) = rest.split_first_chunk::<8>()?;
            (usize::try_from(u64::from_be_bytes(*len)).ok()?, rest)
        }
        len => (usize::from(len), rest),
    };
    (rest.len() == len).then_some((first & 0x0f, rest))
}

/// `frame` (a whole WebSocket frame as the server builds it) as it goes
/// down a `transport` stream; `None` for what has no place there (a pong,
/// a binary frame: fallback sessions speak JSON only).
pub fn reframe(transport: Transport, frame: &[u8]) -> Option<Bytes> {
    let (opcode, payload) = split(frame)?;
    let mut out = Vec::with_capacity(payload.len() + 24);
    match (opcode, transport) {
        (0x1, Transport::HttpStream) => chunk(&mut out, &[payload, b"\n"]),
        (0x1, Transport::Sse) => chunk(&mut out, &[b"data: ", payload, b"\n\n"]),
        (0x9, Transport::HttpStream) => chunk(&mut out, &[b"\n"]),
        (0x9, Transport::Sse) => chunk(&mut out, &[b": ping\n\n"]),
        (0x8, _) => {
            let (code, reason) = match payload.split_first_chunk::<2>() {
                Some((code, reason)) => (u16::from_be_bytes(*code), String::from_utf8_lossy(reason)),
                None => (1005, "".into()),
            };
            let reason = serde_json::Value::from(reason).to_string();
            let line = format!(r#"{{"type":"close","code":{code},"reason":{reason}}}"#);
            let close = match transport {
                Transport::Sse => [b"data: ".as_slice(), line.as_bytes(), b"\n\n"].concat(),
                _ => [line.as_bytes(), b"\n"].concat(),
            };
            chunk(&mut out, &[&close]);
            // The last chunk: the response ends here.
            out.extend_from_slice(b"0\r\n\r\n");
        }
        _ => return None,
    }
    Some(Bytes::from(out))
}

/// The last frame re-framed for each fallback transport, so that a
/// message fanned out to many fallback sessions is re-framed once, as it
/// is encoded once: the same frame (the same shared buffer) gets the same
/// re-framed buffer. One per shard. Holding the input keeps its buffer
/// alive, so a pointer match can only be that very frame.
#[derive(Debug, Default)]
pub struct Reframer {
    last: [Option<(Bytes, Bytes)>; 2],
}

impl Reframer {
    /// [`reframe`], once per frame and transport.
    pub fn reframe(&mut self, transport: Transport, frame: Bytes) -> Option<Bytes> {
        let slot = match transport {
            Transport::WebSocket => return Some(frame),
            Transport::HttpStream => &mut self.last[0],
            Transport::Sse => &mut self.last[1],
        };
        if let Some((input, output)) = slot {
            if input.as_ptr() == frame.as_ptr() && input.len() == frame.len() {
                return Some(output.clone());
            }
        }
        let output = reframe(transport, &frame)?;
        *slot = Some((frame, output.clone()));
        Some(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::{self, Opcode};

    fn text(transport: Transport, payload: &[u8]) -> String {
        String::from_utf8(reframe(transport, &frame::build(Opcode::Text, &[payload])).unwrap().to_vec()).unwrap()
    }

    #[test]
    fn text_frames_become_lines_and_events_in_chunks() {
        assert_eq!(text(Transport::HttpStream, br#"{"a":1}"#), "8\r\n{\"a\":1}\n\r\n");
        assert_eq!(text(Transport::Sse, br#"{"a":1}"#), "f\r\ndata: {\"a\":1}\n\n\r\n");
        let long = vec![b'x'; 70_000];
        let framed = text(Transport::HttpStream, &long);
        assert!(framed.starts_with("11171\r\n"), "70,001 bytes in one chunk, a 64-bit length read");
    }

    #[test]
    fn pings_are_heartbeats_pongs_vanish_and_close_ends_the_response() {
        let ping = frame::build(Opcode::Ping, &[b""]);
        assert_eq!(&reframe(Transport::HttpStream, &ping).unwrap()[..], b"1\r\n\n\r\n");
        assert_eq!(&reframe(Transport::Sse, &ping).unwrap()[..], b"8\r\n: ping\n\n\r\n");
        assert!(reframe(Transport::Sse, &frame::build(Opcode::Pong, &[b""])).is_none());
        let close = frame::close(4001, "bad \"token\"");
        let out = String::from_utf8(reframe(Transport::Sse, &close).unwrap().to_vec()).unwrap();
        assert!(out.ends_with("\n\n\r\n0\r\n\r\n"), "{out:?}");
        let event = out.split("\r\n").nth(1).unwrap().strip_prefix("data: ").unwrap().trim_end();
        let json: serde_json::Value = serde_json::from_str(event).unwrap();
        assert_eq!(json, serde_json::json!({"type": "close", "code": 4001, "reason": "bad \"token\""}));
    }

    #[test]
    fn the_sse_head_pads_and_neither_caches_nor_buffers() {
        let head = String::from_utf8(head(Transport::Sse, Some("https://app.example"))).unwrap();
        assert!(head.contains("Content-Type: text/event-stream\r\n") && head.contains("X-Accel-Buffering: no\r\n"));
        assert!(head.contains("Access-Control-Allow-Origin: https://app.example\r\n"));
        assert!(head.ends_with(&format!("{:x}\r\n:{}\n\n\r\n", SSE_PADDING + 3, " ".repeat(SSE_PADDING))));
        assert!(!String::from_utf8(super::head(Transport::HttpStream, None)).unwrap().contains("Access-Control"));
    }

    #[test]
    fn the_same_frame_is_reframed_once_per_transport() {
        let mut reframer = Reframer::default();
        let frame = frame::build(Opcode::Text, &[b"{}"]);
        let a = reframer.reframe(Transport::Sse, frame.clone()).unwrap();
        let b = reframer.reframe(Transport::Sse, frame.clone()).unwrap();
        assert_eq!(a.as_ptr(), b.as_ptr(), "one buffer for every session");
        let ndjson = reframer.reframe(Transport::HttpStream, frame.clone()).unwrap();
        assert_eq!(&ndjson[..], b"3\r\n{}\n\r\n");
        let other = frame::build(Opcode::Text, &[b"{}"]);
        let c = reframer.reframe(Transport::Sse, other).unwrap();
        assert_ne!(c.as_ptr(), a.as_ptr(), "an equal frame in another buffer is framed anew");
        assert_eq!(c, a);
    }

    #[test]
    fn a_cut_frame_is_not_reframed() {
        let frame = frame::build(Opcode::Text, &[b"hello"]);
        assert!(reframe(Transport::Sse, &frame[..4]).is_none());
    }
}
