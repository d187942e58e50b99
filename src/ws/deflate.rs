//! permessage-deflate (RFC 7692): negotiating the extension, and the
//! compressor and decompressor a shard shares among all its connections.
//!
//! shardcast only ever agrees to `server_no_context_takeover` and
//! `client_no_context_takeover`: every message is compressed and
//! decompressed on its own, so no connection carries zlib state, an idle
//! connection costs what it did without compression, and one compressed
//! form of a message is valid for every subscriber. DEFLATE itself is
//! flate2's (zlib-rs); this file only frames it.

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::frame::{self, Opcode};

/// How a connection's messages are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Not negotiated.
    #[default]
    Off,
    /// Raw DEFLATE, 15-bit window.
    Full,
    /// The client limited the server's window: stored blocks.
    Stored,
}

impl Agreement {
    pub fn mode(&self) -> Mode {
        if self.restricted_window {
            Mode::Stored
        } else {
            Mode::Full
        }
    }
}

/// What was agreed with a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreement {
    /// The client limited the server's window below 15 bits
    /// (`server_max_window_bits`): its messages are sent as stored
    /// (uncompressed) deflate blocks, which reference nothing and so fit any
    /// window, instead of with a second, smaller-window compressor.
    pub restricted_window: bool,
    /// The `Sec-WebSocket-Extensions` response value.
    pub response: String,
}

/// One parameter of an offer: its name and value (unquoted), if any.
type Param = (String, Option<String>);

/// Splits `s` at `sep` outside double quotes.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// A parameter value: a token, or a quoted string (RFC 7230 §3.2.6).
fn unquote(v: &str) -> Option<String> {
    match v.strip_prefix('"') {
        None => Some(v.to_string()),
        Some(rest) => {
            let inner = rest.strip_suffix('"')?;
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                out.push(if c == '\\' { chars.next()? } else { c });
            }
            Some(out)
        }
    }
}

/// The offers in `Sec-WebSocket-Extensions` values: (extension name, params).
fn offers<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<(String, Option<Vec<Param>>)> {
    let mut out = Vec::new();
    for value in values {
        for offer in split_outside_quotes(value, ',') {
            let mut pieces = split_outside_quotes(offer, ';').into_iter();
            let name = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
            if name.is_empty() {
                continue;
            }
            // `None`: a malformed parameter; the offer can only be declined.
            let params: Option<Vec<Param>> = pieces
                .map(|p| {
                    let p = p.trim();
                    match p.split_once('=') {
                        Some((k, v)) => Some((k.trim().to_ascii_lowercase(), Some(unquote(v.trim())?))),
                        None if !p.is_empty() => Some((p.to_ascii_lowercase(), None)),
                        None => None,
                    }
                })
                .collect();
            out.push((name, params));
        }
    }
    out
}

/// A window size parameter: a decimal 8..=15 without leading zeros.
fn window_bits(v: &str) -> Option<u8> {
    (!v.starts_with('0')).then(|| v.parse::<u8>().ok()).flatten().filter(|b| (8..=15).contains(b))
}

/// Whether shardcast can accept this permessage-deflate offer, and how.
fn accept(params: &[Param]) -> Option<Agreement> {
    let mut seen: Vec<&str> = Vec::new();
    let mut server_window = None;
    for (name, value) in params {
        if seen.contains(&name.as_str()) {
            return None; // RFC 7692 §7.1: a parameter at most once
        }
        seen.push(name);
        match (name.as_str(), value.as_deref()) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(v)) => server_window = Some(window_bits(v)?),
            // The client's own window: any size inflates with a 15-bit window.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(v)) => {
                window_bits(v)?;
            }
            _ => return None,
        }
    }
    let mut response = "permessage-deflate; server_no_context_takeover; client_no_context_takeover".to_string();
    if let Some(bits) = server_window {
        response.push_str(&format!("; server_max_window_bits={bits}"));
    }
    Some(Agreement { restricted_window: server_window.is_some_and(|b| b < 15), response })
}

/// Picks the first permessage-deflate offer shardcast can answer with no
/// context takeover either way; `None` declines them all (the connection
/// goes on uncompressed).
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Agreement> {
    offers(values)
        .into_iter()
        .filter(|(name, _)| name == "permessage-deflate")
        .find_map(|(_, params)| accept(params.as_deref()?))
}

/// The tail a sync flush leaves, removed on send and restored on receipt (§7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the allowed size (close 1009).
    TooBig,
    /// Not valid DEFLATE data (close 1007).
    Corrupt,
}

/// One shard's compressors: reset for every message. Touched only by the
/// owning shard.
pub struct Compressor {
    /// Raw DEFLATE at `[compression] level`, 15-bit window.
    full: Compress,
    /// Level 0: stored blocks, for clients that restricted the window.
    stored: Compress,
    /// Output scratch, reused: one message's compressed bytes at a time.
    scratch: Vec<u8>,
}

impl Compressor {
    pub fn new(level: u32) -> Compressor {
        Compressor {
            full: Compress::new(Compression::new(level), false),
            stored: Compress::new(Compression::none(), false),
            scratch: Vec::new(),
        }
    }

    /// A complete compressed frame (RSV1 set) carrying `message`.
    pub fn frame(&mut self, opcode: Opcode, message: &[u8], mode: Mode) -> Bytes {
        let mut out = std::mem::take(&mut self.scratch);
        self.compress(message, mode == Mode::Stored, &mut out);
        let frame = frame::build_compressed(opcode, &out);
        if out.capacity() <= 1 << 20 {
            // Keep a modest buffer for the next message; let a huge one go.
            self.scratch = out;
        }
        frame
    }

    /// Compresses one message into `out` (cleared first), without the sync
    /// flush tail: the payload of a frame with RSV1 set.
    pub fn compress(&mut self, message: &[u8], restricted_window: bool, out: &mut Vec<u8>) {
        let c = if restricted_window { &mut self.stored } else { &mut self.full };
        c.reset();
        out.clear();
        out.reserve(message.len() / 2 + 64);
        loop {
            let consumed = c.total_in() as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            // Compressing to memory cannot fail; a stall only means more room is needed.
            let _ = c.compress_vec(&message[consumed..], out, FlushCompress::Sync);
            if c.total_in() as usize == message.len() && out.len() < out.capacity() {
                break;
            }
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
    }
}

/// One shard's decompressor: reset for every message. Touched only by the
/// owning shard.
pub struct Decompressor {
    inner: Decompress,
}

impl Default for Decompressor {
    fn default() -> Self {
        Decompressor { inner: Decompress::new(false) }
    }
}

/// Output is grown in steps of at most this, so a bomb costs at most the
/// limit plus one step before it is stopped.
const INFLATE_STEP: usize = 64 * 1024;

impl Decompressor {
    /// Inflates one message (its frames' payloads joined) into `out`,
    /// stopping as soon as the output would exceed `max` bytes.
    pub fn inflate(&mut self, message: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), InflateError> {
        let d = &mut self.inner;
        d.reset(false);
        out.clear();
        for input in [message, &TAIL[..]] {
            let start = d.total_in();
            loop {
                let consumed = (d.total_in() - start) as usize;
                if out.len() > max {
                    return Err(InflateError::TooBig);
                }
                if out.capacity() == out.len() {
                    let room = (max + 1 - out.len()).min(INFLATE_STEP.max(input.len() * 2));
                    out.reserve_exact(room);
                }
                let (before_in, before_out) = (d.total_in(), d.total_out());
                let status = d.decompress_vec(&input[consumed..], out, FlushDecompress::Sync).map_err(|_| InflateError::Corrupt)?;
                let done = (d.total_in() - start) as usize == input.len();
                if out.len() > max {
                    return Err(InflateError::TooBig);
                }
                if status == Status::StreamEnd {
                    // The sender ended the stream with a final block (allowed,
                    // §7.2.3.4): nothing follows, not even the tail.
                    return Ok(());
                }
                if done && out.len() < out.capacity() {
                    break;
                }
                if d.total_in() == before_in && d.total_out() == before_out && out.len() < out.capacity() {
                    return Err(InflateError::Corrupt);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agree(header: &str) -> Option<Agreement> {
        negotiate([header])
    }

    #[test]
    fn negotiates_no_context_takeover_both_ways() {
        let a = agree("permessage-deflate; client_max_window_bits").unwrap();
        assert_eq!(a.response, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
        assert!(!a.restricted_window);
        let a = agree("permessage-deflate; server_max_window_bits=10; client_no_context_takeover").unwrap();
        assert!(a.response.ends_with("; server_max_window_bits=10") && a.restricted_window);
        assert!(!agree("permessage-deflate; server_max_window_bits=\"15\"").unwrap().restricted_window, "quoted values");
        assert!(agree("x-webkit-deflate-frame").is_none());
        assert!(agree("").is_none());
    }

    #[test]
    fn declines_bad_offers_and_takes_the_next() {
        for bad in [
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_max_window_bits=1",
            "permessage-deflate; unknown_param",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; ;",
        ] {
            assert!(agree(bad).is_none(), "{bad}");
        }
        let a = negotiate([
            "permessage-deflate; server_max_window_bits=7, permessage-deflate; foo=\"a,b\"",
            "permessage-deflate; client_max_window_bits=\"9\"",
        ])
        .unwrap();
        assert!(!a.restricted_window, "the third offer, after two declined");
    }

    #[test]
    fn round_trips_and_drops_the_tail() {
        let mut c = Compressor::new(1);
        let mut d = Decompressor::default();
        let text = br#"{"type":"message","topic":"news","payload":"hello hello hello hello hello"}"#.repeat(20);
        for restricted in [false, true] {
            let mut packed = Vec::new();
            c.compress(&text, restricted, &mut packed);
            assert!(!packed.ends_with(&TAIL));
            if !restricted {
                assert!(packed.len() < text.len() / 4, "{} of {}", packed.len(), text.len());
            }
            let mut back = Vec::new();
            d.inflate(&packed, 1 << 20, &mut back).unwrap();
            assert_eq!(back, text);
        }
        let mut empty = Vec::new();
        c.compress(b"", false, &mut empty);
        let mut back = vec![1];
        d.inflate(&empty, 10, &mut back).unwrap();
        assert!(back.is_empty());
    }

    #[test]
    fn a_message_ending_in_a_final_block_inflates() {
        let mut c = Compress::new(Compression::new(6), false);
        let mut packed = Vec::with_capacity(1024);
        let _ = c.compress_vec(b"finished properly", &mut packed, FlushCompress::Finish);
        let mut out = Vec::new();
        Decompressor::default().inflate(&packed, 100, &mut out).unwrap();
        assert_eq!(out, b"finished properly");
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let mut c = Compressor::new(9);
        let mut bomb = Vec::new();
        c.compress(&vec![0u8; 50 << 20], false, &mut bomb);
        assert!(bomb.len() < 100_000, "{}", bomb.len());
        let mut out = Vec::new();
        let mut d = Decompressor::default();
        assert_eq!(d.inflate(&bomb, 1 << 20, &mut out), Err(InflateError::TooBig));
        assert!(out.capacity() <= (1 << 20) + INFLATE_STEP + 1, "capacity {}", out.capacity());
        assert_eq!(d.inflate(b"\xff\xff\xff garbage", 1 << 20, &mut out), Err(InflateError::Corrupt));
        // The decompressor is fine for the next message.
        let mut ok = Vec::new();
        c.compress(b"still fine", false, &mut ok);
        d.inflate(&ok, 100, &mut out).unwrap();
        assert_eq!(out, b"still fine");
    }
}
