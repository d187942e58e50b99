//! WebSocket frames: parsing client frames out of a borrowed buffer and
//! building server frames once, as shareable [`Bytes`].
//!
//! Server frames are never masked, so one built frame is valid for every
//! recipient: that is what makes encode-once fan-out possible.

use std::io::Cursor;

use bytes::{BufMut, Bytes, BytesMut};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Largest header a frame can have: 2 + 8 (length) + 4 (mask).
pub const MAX_HEADER_LEN: usize = 14;

/// Frame kinds this server handles. Reserved opcodes are a protocol error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }

    fn to_tungstenite(self) -> OpCode {
        match self {
            Opcode::Continuation => OpCode::Data(Data::Continue),
            Opcode::Text => OpCode::Data(Data::Text),
            Opcode::Binary => OpCode::Data(Data::Binary),
            Opcode::Close => OpCode::Control(Control::Close),
            Opcode::Ping => OpCode::Control(Control::Ping),
            Opcode::Pong => OpCode::Control(Control::Pong),
        }
    }
}

/// A parsed client frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    /// RSV1: a compressed message (permessage-deflate). Whether that is
    /// allowed here (negotiated, a first data frame) is the connection's call.
    pub rsv1: bool,
    pub opcode: Opcode,
    pub mask: Option<[u8; 4]>,
    /// Bytes of header before the payload.
    pub header_len: usize,
    pub payload_len: u64,
}

/// Why a frame header is unacceptable. Each maps to close 1002.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// RSV2 or RSV3 set (no extension shardcast speaks uses them), or RSV1
    /// where it is not allowed.
    ReservedBits,
    /// An opcode RFC 6455 reserves.
    ReservedOpcode,
    /// Client frames must be masked.
    Unmasked,
    /// A control frame that is fragmented or longer than 125 bytes.
    BadControl,
    /// The header itself is malformed (e.g. a 64-bit length with the top bit set).
    Malformed,
}

impl FrameError {
    pub fn reason(self) -> &'static str {
        match self {
            FrameError::ReservedBits => "reserved bits set",
            FrameError::ReservedOpcode => "reserved opcode",
            FrameError::Unmasked => "client frames must be masked",
            FrameError::BadControl => "fragmented or oversized control frame",
            FrameError::Malformed => "malformed frame header",
        }
    }
}

/// Parses the header at the start of `buf`; `Ok(None)` when more bytes are needed.
pub fn parse_header(buf: &[u8]) -> Result<Option<Header>, FrameError> {
    let mut cursor = Cursor::new(buf);
    let (h, payload_len) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        // tungstenite refuses reserved opcodes itself; say which problem it was.
        Err(_) if matches!(buf[0] & 0x0f, 3..=7 | 0xb..=0xf) => return Err(FrameError::ReservedOpcode),
        Err(_) => return Err(FrameError::Malformed),
    };
    if h.rsv2 || h.rsv3 {
        return Err(FrameError::ReservedBits);
    }
    let opcode = match h.opcode {
        OpCode::Data(Data::Continue) => Opcode::Continuation,
        OpCode::Data(Data::Text) => Opcode::Text,
        OpCode::Data(Data::Binary) => Opcode::Binary,
        OpCode::Control(Control::Close) => Opcode::Close,
        OpCode::Control(Control::Ping) => Opcode::Ping,
        OpCode::Control(Control::Pong) => Opcode::Pong,
        OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
            return Err(FrameError::ReservedOpcode)
        }
    };
    if h.mask.is_none() {
        return Err(FrameError::Unmasked);
    }
    if opcode.is_control() && (!h.is_final || payload_len > 125) {
        return Err(FrameError::BadControl);
    }
    Ok(Some(Header { fin: h.is_final, rsv1: h.rsv1, opcode, mask: h.mask, header_len: cursor.position() as usize, payload_len }))
}

/// Unmasks `buf` in place. `offset` is how many payload bytes of this frame
/// were unmasked before (so a payload can be unmasked in pieces).
pub fn unmask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let rotated = {
        let r = offset % 4;
        [mask[r], mask[(r + 1) % 4], mask[(r + 2) % 4], mask[(r + 3) % 4]]
    };
    let word = u64::from_ne_bytes([
        rotated[0], rotated[1], rotated[2], rotated[3], rotated[0], rotated[1], rotated[2], rotated[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let v = u64::from_ne_bytes(chunk.try_into().expect("8-byte chunk")) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= rotated[i % 4];
    }
}

/// Writes an unmasked, final server frame header for a payload of `len` bytes.
pub fn put_header(out: &mut BytesMut, opcode: Opcode, len: usize) {
    put_header_rsv1(out, opcode, len, false)
}

fn put_header_rsv1(out: &mut BytesMut, opcode: Opcode, len: usize, rsv1: bool) {
    let header = FrameHeader { is_final: true, rsv1, opcode: opcode.to_tungstenite(), ..FrameHeader::default() };
    let mut w = out.writer();
    header.format(len as u64, &mut w).expect("writing to memory cannot fail");
}

/// Size of a server frame header for a payload of `len` bytes.
pub fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

/// Builds a complete server frame from payload pieces, in one allocation.
pub fn build(opcode: Opcode, pieces: &[&[u8]]) -> Bytes {
    let len: usize = pieces.iter().map(|p| p.len()).sum();
    let mut out = BytesMut::with_capacity(header_len(len) + len);
    put_header(&mut out, opcode, len);
    for p in pieces {
        out.extend_from_slice(p);
    }
    out.freeze()
}

/// A compressed message (permessage-deflate): `deflated` in one frame with RSV1 set.
pub fn build_compressed(opcode: Opcode, deflated: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(header_len(deflated.len()) + deflated.len());
    put_header_rsv1(&mut out, opcode, deflated.len(), true);
    out.extend_from_slice(deflated);
    out.freeze()
}

/// The payload of a server frame (everything after its header).
pub fn payload_of(frame: &[u8]) -> &[u8] {
    let len_byte = frame[1] & 0x7f;
    let header = match len_byte {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    &frame[header..]
}

/// A close frame with `code` and a short UTF-8 `reason` (truncated to fit 125 bytes).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(crate::codes::close::MAX_REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    build(Opcode::Close, &[&code.to_be_bytes(), &reason.as_bytes()[..end]])
}

/// Appends a client frame (masked with `mask`), as a client or a test sends it.
/// `opcode` is the raw 4-bit opcode, so tests can send reserved ones too.
pub fn put_client_frame(out: &mut Vec<u8>, opcode: u8, fin: bool, mask: [u8; 4], payload: &[u8]) {
    out.push((u8::from(fin) << 7) | opcode);
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    if mask != [0; 4] {
        unmask(&mut out[start..], mask, 0);
    }
}

/// Whether a close code received from a client is one RFC 6455 allows on the wire.
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut v = Vec::new();
        put_client_frame(&mut v, opcode, fin, mask, payload);
        v
    }

    #[test]
    fn parses_and_unmasks_in_pieces() {
        let payload: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let wire = masked(1, true, &payload, [1, 2, 3, 4]);
        let h = parse_header(&wire).unwrap().unwrap();
        assert_eq!((h.fin, h.opcode, h.header_len, h.payload_len), (true, Opcode::Text, 8, 300));
        let mut body = wire[h.header_len..].to_vec();
        let (a, b) = body.split_at_mut(7);
        unmask(a, h.mask.unwrap(), 0);
        unmask(b, h.mask.unwrap(), 7);
        assert_eq!(body, payload);
    }

    #[test]
    fn incomplete_header_needs_more() {
        let wire = masked(2, true, &[0; 200], [9; 4]);
        for cut in 0..8 {
            assert_eq!(parse_header(&wire[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn rejects_protocol_violations() {
        let mut rsv = masked(1, true, b"x", [0; 4]);
        rsv[0] |= 0x20;
        assert_eq!(parse_header(&rsv), Err(FrameError::ReservedBits), "RSV2");
        rsv[0] ^= 0x20 | 0x40;
        assert!(parse_header(&rsv).unwrap().unwrap().rsv1, "RSV1 is the connection's call");
        assert_eq!(parse_header(&masked(3, true, b"", [0; 4])), Err(FrameError::ReservedOpcode));
        assert_eq!(parse_header(&masked(9, false, b"", [0; 4])), Err(FrameError::BadControl));
        assert_eq!(parse_header(&masked(9, true, &[0; 126], [0; 4])), Err(FrameError::BadControl));
        assert_eq!(parse_header(&[0x81, 0x01, b'x']), Err(FrameError::Unmasked));
    }

    #[test]
    fn server_frames_have_minimal_headers() {
        for len in [0usize, 125, 126, 65535, 65536, 100_000] {
            let f = build(Opcode::Binary, &[&vec![7u8; len]]);
            assert_eq!(f.len(), header_len(len) + len);
            assert_eq!(f[0], 0x82);
        }
        let z = build_compressed(Opcode::Text, &[1, 2, 3]);
        assert_eq!((z[0], payload_of(&z)), (0xC1, &[1u8, 2, 3][..]));
        let c = close(1013, "slow consumer");
        assert_eq!(&c[..4], &[0x88, 15, 0x03, 0xF5]);
        assert_eq!(&c[4..], b"slow consumer");
    }
}
