//! RFC 6455 behaviour on /echo, the endpoint conformance suites (Autobahn)
//! drive: raw frames written by hand, byte by byte where it matters.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use shardcast::ws::frame::put_client_frame;

use crate::util::Server;

const TEXT: u8 = 1;
const CONT: u8 = 0;
const CLOSE: u8 = 8;
const PING: u8 = 9;
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A raw WebSocket connection to /echo.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn open(server: &Server) -> Raw {
        let mut s = TcpStream::connect(&server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /echo?agent=raw HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
        let mut raw = Raw { s, buf: Vec::new() };
        while !raw.buf.windows(4).any(|w| w == b"\r\n\r\n") {
            raw.fill();
        }
        let end = raw.buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(raw.buf.starts_with(b"HTTP/1.1 101"));
        raw.buf.drain(..end);
        raw
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 4096];
        let n = self.s.read(&mut chunk).unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    fn send(&mut self, opcode: u8, fin: bool, payload: &[u8]) {
        let mut out = Vec::new();
        put_client_frame(&mut out, opcode, fin, MASK, payload);
        self.s.write_all(&out).unwrap();
    }

    /// Sends one frame a byte per write.
    fn send_dribbled(&mut self, opcode: u8, payload: &[u8]) {
        let mut out = Vec::new();
        put_client_frame(&mut out, opcode, true, MASK, payload);
        for b in out {
            self.s.write_all(&[b]).unwrap();
            self.s.flush().unwrap();
        }
    }

    /// Next server frame: (opcode, payload); None when the server closed TCP.
    fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let (hl, len) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => (4, u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize),
                    127 if self.buf.len() >= 10 => (10, u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize),
                    126 | 127 => (usize::MAX, 0),
                    n => (2, n as usize),
                };
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are unmasked");
                if hl != usize::MAX && self.buf.len() >= hl + len {
                    let op = self.buf[0] & 0x0f;
                    let payload = self.buf[hl..hl + len].to_vec();
                    self.buf.drain(..hl + len);
                    return Some((op, payload));
                }
            }
            if self.fill() == 0 {
                return None;
            }
        }
    }

    fn expect_close(&mut self, code: u16) {
        let (op, payload) = self.recv().expect("a close frame");
        assert_eq!(op, CLOSE);
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code);
        assert!(self.recv().is_none(), "TCP closed after the close frame");
    }
}

#[test]
fn fragments_with_interleaved_ping_echo_as_one_message() {
    let server = Server::start("", &["--shards", "1"]);
    let mut c = Raw::open(&server);
    c.send(TEXT, false, b"frag");
    c.send(PING, true, b"mid");
    c.send(CONT, false, "mé".as_bytes());
    c.send(CONT, true, b"nt");
    assert_eq!(c.recv(), Some((0xA, b"mid".to_vec())), "pong first");
    assert_eq!(c.recv(), Some((TEXT, "fragmént".as_bytes().to_vec())));
    // Frames of every length class, a byte per write.
    for len in [0usize, 125, 126, 65535] {
        let msg = vec![b'z'; len];
        c.send_dribbled(TEXT, &msg);
        assert_eq!(c.recv(), Some((TEXT, msg)), "length {len}");
    }
    c.send(CLOSE, true, &1000u16.to_be_bytes());
    c.expect_close(1000);
}

#[test]
fn bad_close_frames_and_framing_get_1002() {
    let server = Server::start("", &["--shards", "1"]);
    for (what, frames) in [
        ("1-byte close payload", vec![(CLOSE, true, vec![0x03])]),
        ("close code 1005 on the wire", vec![(CLOSE, true, 1005u16.to_be_bytes().to_vec())]),
        ("close code 999", vec![(CLOSE, true, 999u16.to_be_bytes().to_vec())]),
        ("continuation first", vec![(CONT, true, b"x".to_vec())]),
        ("new message inside a fragmented one", vec![(TEXT, false, b"a".to_vec()), (TEXT, true, b"b".to_vec())]),
        ("fragmented ping", vec![(PING, false, b"p".to_vec())]),
    ] {
        let mut c = Raw::open(&server);
        for (op, fin, payload) in frames {
            c.send(op, fin, &payload);
        }
        let (op, payload) = c.recv().unwrap_or_else(|| panic!("{what}: no close frame"));
        assert_eq!((op, u16::from_be_bytes([payload[0], payload[1]])), (CLOSE, 1002), "{what}");
    }
    // Valid application close codes are echoed; an invalid UTF-8 reason is 1007.
    let mut c = Raw::open(&server);
    let mut close = 4000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    c.send(CLOSE, true, &close);
    c.expect_close(4000);
    let mut c = Raw::open(&server);
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(&[0xce, 0xba, 0xe1, 0xbd]);
    c.send(CLOSE, true, &close);
    c.expect_close(1007);
}
