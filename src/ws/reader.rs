//! Client frames -> messages: the frame decoder and fragment reassembly, as
//! a state machine over bytes. The connection task does the I/O and acts on
//! what comes out; everything a client can get wrong at this layer is
//! decided here, so it can be tested and fuzzed without a socket.
//!
//! Never allocates for an unfragmented frame: its payload is unmasked in
//! place and lent to the caller. A fragmented message is copied into memory
//! of the reader's own, bounded by `max_message_bytes`.

use super::frame::{self, Opcode};
use crate::codes::close;

/// What the connection allows at this layer.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest message, all its fragments together (`[limits] max_message_bytes`).
    /// A deflated message's bound after inflation is the inflater's business.
    pub max_message_bytes: usize,
    /// permessage-deflate was negotiated: RSV1 may mark a message's first frame.
    pub deflate: bool,
}

/// Why the connection must fail: the close code and the reason to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

/// One decoded frame, as the connection acts on it.
#[derive(Debug)]
pub enum Event<'a> {
    /// A ping, its payload unmasked (to be echoed in a pong).
    Ping(&'a [u8]),
    Pong,
    /// A close frame's raw payload; [`close_code`] checks it.
    Close(&'a [u8]),
    /// A whole message, unmasked. `compressed`: to be inflated first.
    Message {
        opcode: Opcode,
        compressed: bool,
        data: Data<'a>,
    },
    /// A fragment was kept; the message is not complete yet.
    Fragment,
}

/// A message's bytes: lent from the input (one frame) or joined from fragments.
#[derive(Debug)]
pub enum Data<'a> {
    Frame(&'a mut [u8]),
    Joined(Vec<u8>),
}

impl Data<'_> {
    pub fn as_mut(&mut self) -> &mut [u8] {
        match self {
            Data::Frame(bytes) => bytes,
            Data::Joined(bytes) => bytes,
        }
    }
}

/// A message being reassembled from fragments.
#[derive(Debug)]
struct Fragment {
    opcode: Opcode,
    /// Its first frame had RSV1: the joined payload is to be inflated.
    compressed: bool,
    data: Vec<u8>,
}

/// Decoding state between frames. Owned by one connection.
#[derive(Debug, Default)]
pub struct Reader {
    /// Boxed: most connections never fragment, and an idle one must be small.
    fragment: Option<Box<Fragment>>,
}

impl Reader {
    /// Decodes the frame at the start of `buf`, unmasking it in place.
    /// `Ok(None)`: the frame is incomplete (nothing was consumed); otherwise
    /// how many bytes it took and what it was. After a violation the reader
    /// holds nothing; the connection is to be failed with its code.
    pub fn next<'a>(
        &mut self,
        buf: &'a mut [u8],
        limits: Limits,
    ) -> Result<Option<(usize, Event<'a>)>, Violation> {
        let header = match frame::parse_header(buf) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.violation(close::PROTOCOL_ERROR, e.reason())),
        };
        let so_far = self.fragment.as_ref().map_or(0, |f| f.data.len() as u64);
        // Saturating: a hostile 64-bit length must not wrap past the check.
        // (Control frames are at most 125 bytes: parse_header saw to that.)
        if !header.opcode.is_control()
            && header.payload_len.saturating_add(so_far) > limits.max_message_bytes as u64
        {
            return Err(self.violation(close::TOO_BIG, "message too big"));
        }
        let total = header.header_len + header.payload_len as usize;
        if buf.len() < total {
            return Ok(None);
        }
        let data_frame = matches!(header.opcode, Opcode::Text | Opcode::Binary);
        if header.rsv1 && !(limits.deflate && data_frame) {
            return Err(self.violation(
                close::PROTOCOL_ERROR,
                "RSV1 set without permessage-deflate, or on a control or continuation frame",
            ));
        }
        let payload = &mut buf[header.header_len..total];
        frame::unmask(
            payload,
            header.mask.expect("parse_header refuses unmasked frames"),
            0,
        );
        let event = match header.opcode {
            Opcode::Ping => Event::Ping(payload),
            Opcode::Pong => Event::Pong,
            Opcode::Close => Event::Close(payload),
            Opcode::Text | Opcode::Binary if self.fragment.is_some() => {
                return Err(self.violation(close::PROTOCOL_ERROR, "expected a continuation frame"))
            }
            opcode @ (Opcode::Text | Opcode::Binary) if header.fin => Event::Message {
                opcode,
                compressed: header.rsv1,
                data: Data::Frame(payload),
            },
            opcode @ (Opcode::Text | Opcode::Binary) => {
                self.fragment = Some(Box::new(Fragment {
                    opcode,
                    compressed: header.rsv1,
                    data: payload.to_vec(),
                }));
                Event::Fragment
            }
            Opcode::Continuation => {
                let Some(fragment) = &mut self.fragment else {
                    return Err(
                        self.violation(close::PROTOCOL_ERROR, "continuation without a message")
                    );
                };
                fragment.data.extend_from_slice(payload);
                if header.fin {
                    let Fragment {
                        opcode,
                        compressed,
                        data,
                    } = *self.fragment.take().expect("present");
                    Event::Message {
                        opcode,
                        compressed,
                        data: Data::Joined(data),
                    }
                } else {
                    Event::Fragment
                }
            }
        };
        Ok(Some((total, event)))
    }

    /// Forgets a message in progress (the connection failed).
    pub fn reset(&mut self) {
        self.fragment = None;
    }

    /// Bytes of a fragmented message held so far.
    pub fn held(&self) -> usize {
        self.fragment.as_ref().map_or(0, |f| f.data.len())
    }

    fn violation(&mut self, code: u16, reason: &'static str) -> Violation {
        self.reset();
        Violation { code, reason }
    }
}

/// The close code of a client's close frame payload (1000 for an empty one),
/// or why the payload is unacceptable (RFC 6455 §5.5.1, §7.4).
pub fn close_code(payload: &[u8]) -> Result<u16, Violation> {
    match payload {
        [] => Ok(close::NORMAL),
        [_] => Err(Violation {
            code: close::PROTOCOL_ERROR,
            reason: "close frame with a 1-byte payload",
        }),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !frame::close_code_allowed(code) {
                return Err(Violation {
                    code: close::PROTOCOL_ERROR,
                    reason: "invalid close code",
                });
            }
            if simdutf8::basic::from_utf8(reason).is_err() {
                return Err(Violation {
                    code: close::INVALID_PAYLOAD,
                    reason: "close reason is not UTF-8",
                });
            }
            Ok(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_message_bytes: 1000,
        deflate: false,
    };

    fn client(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        frame::put_client_frame(&mut v, opcode, fin, [7, 1, 2, 3], payload);
        v
    }

    /// Every message the reader assembles from `wire`, or the first violation.
    fn messages(wire: &[u8], limits: Limits) -> Result<Vec<Vec<u8>>, Violation> {
        let mut buf = wire.to_vec();
        let mut reader = Reader::default();
        let (mut pos, mut out) = (0, Vec::new());
        while let Some((used, event)) = reader.next(&mut buf[pos..], limits)? {
            if let Event::Message { mut data, .. } = event {
                out.push(data.as_mut().to_vec());
            }
            pos += used;
        }
        Ok(out)
    }

    #[test]
    fn fragments_join_around_control_frames() {
        let mut wire = client(1, false, b"frag");
        wire.extend(client(9, true, b"ping"));
        wire.extend(client(0, false, b"me"));
        wire.extend(client(0, true, b"nt"));
        wire.extend(client(2, true, b"whole"));
        assert_eq!(
            messages(&wire, LIMITS).unwrap(),
            vec![b"fragment".to_vec(), b"whole".to_vec()]
        );
    }

    #[test]
    fn an_incomplete_frame_consumes_nothing() {
        let wire = client(1, true, b"hello");
        for cut in 0..wire.len() {
            let mut part = wire[..cut].to_vec();
            assert_eq!(
                Reader::default()
                    .next(&mut part, LIMITS)
                    .unwrap()
                    .map(|(n, _)| n),
                None,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn the_message_bound_counts_every_fragment() {
        let mut wire = client(1, false, &[b'a'; 600]);
        wire.extend(client(0, true, &[b'b'; 401]));
        assert_eq!(messages(&wire, LIMITS).unwrap_err().code, close::TOO_BIG);
        // A 64-bit length that would wrap the sum is refused, not trusted.
        let mut huge = client(1, false, b"x");
        huge.extend([
            0x80, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0,
        ]);
        assert_eq!(messages(&huge, LIMITS).unwrap_err().code, close::TOO_BIG);
    }

    #[test]
    fn out_of_order_frames_and_rsv1_are_violations() {
        let cont_first = client(0, true, b"x");
        assert_eq!(
            messages(&cont_first, LIMITS).unwrap_err().code,
            close::PROTOCOL_ERROR
        );
        let mut two_starts = client(1, false, b"a");
        two_starts.extend(client(1, true, b"b"));
        assert_eq!(
            messages(&two_starts, LIMITS).unwrap_err().reason,
            "expected a continuation frame"
        );
        let mut rsv1 = client(1, true, b"x");
        rsv1[0] |= 0x40;
        assert_eq!(
            messages(&rsv1, LIMITS).unwrap_err().code,
            close::PROTOCOL_ERROR
        );
        assert!(
            messages(
                &rsv1,
                Limits {
                    deflate: true,
                    ..LIMITS
                }
            )
            .is_ok(),
            "allowed once negotiated"
        );
    }

    #[test]
    fn close_payloads_are_checked() {
        assert_eq!(close_code(b""), Ok(close::NORMAL));
        assert_eq!(close_code(&[0x03, 0xe8, b'o', b'k']), Ok(1000));
        assert_eq!(close_code(&[3]).unwrap_err().code, close::PROTOCOL_ERROR);
        assert_eq!(
            close_code(&1005u16.to_be_bytes()).unwrap_err().code,
            close::PROTOCOL_ERROR
        );
        assert_eq!(
            close_code(&[0x0f, 0xa0, 0xff]).unwrap_err().code,
            close::INVALID_PAYLOAD
        );
    }
}
