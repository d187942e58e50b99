//! RFC 6455 behaviour on /echo, the endpoint conformance suites (Autobahn)
//! drive: raw frames written by hand, byte by byte where it matters.

use crate::util::{RawWs, Server};

const TEXT: u8 = 1;
const CONT: u8 = 0;
const CLOSE: u8 = 8;
const PING: u8 = 9;

/// A raw WebSocket connection to /echo.
fn open(server: &Server) -> RawWs {
    let (raw, head) = RawWs::open(&server.addr, "/echo?agent=raw", "");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    raw
}

#[test]
fn fragments_with_interleaved_ping_echo_as_one_message() {
    let server = Server::start("", &["--shards", "1"]);
    let mut c = open(&server);
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
        let mut c = open(&server);
        for (op, fin, payload) in frames {
            c.send(op, fin, &payload);
        }
        let (op, payload) = c.recv().unwrap_or_else(|| panic!("{what}: no close frame"));
        assert_eq!((op, u16::from_be_bytes([payload[0], payload[1]])), (CLOSE, 1002), "{what}");
    }
    // Valid application close codes are echoed; an invalid UTF-8 reason is 1007.
    let mut c = open(&server);
    let mut close = 4000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    c.send(CLOSE, true, &close);
    c.expect_close(4000);
    let mut c = open(&server);
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(&[0xce, 0xba, 0xe1, 0xbd]);
    c.send(CLOSE, true, &close);
    c.expect_close(1007);
}
