//! Client frames into messages (`ws::reader::Reader`), fed in the pieces a
//! socket would deliver, as the connection task feeds it: fragment
//! reassembly, the message bound, close payloads, and the inflate path a
//! compressed message takes after reassembly.
//!
//! Input: byte 0 picks the limits, byte 1 the read size; the rest is the wire.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardcast::ws::deflate::{Decompressor, InflateError};
use shardcast::ws::frame::Opcode;
use shardcast::ws::reader::{close_code, Event, Limits, Reader};

fuzz_target!(|data: &[u8]| {
    let [knobs, read, wire @ ..] = data else { return };
    let max_message_bytes = [0usize, 1, 125, 126, 4096, 65536][usize::from(knobs & 7) % 6];
    let limits = Limits { max_message_bytes, deflate: knobs & 8 != 0 };
    let read = usize::from(*read).max(1);
    let mut reader = Reader::default();
    let mut inflater = Decompressor::default();
    let mut partial: Vec<u8> = Vec::new();
    for chunk in wire.chunks(read) {
        partial.extend_from_slice(chunk);
        let mut pos = 0;
        loop {
            let before = partial.len() - pos;
            match reader.next(&mut partial[pos..], limits) {
                Ok(None) => break,
                Err(violation) => {
                    assert!(matches!(violation.code, 1002 | 1009), "{violation:?}");
                    assert_eq!(reader.held(), 0, "a violation leaves nothing held");
                    return;
                }
                Ok(Some((used, event))) => {
                    assert!(used > 0 && used <= before, "used {used} of {before}");
                    pos += used;
                    match event {
                        Event::Close(payload) => {
                            assert!(payload.len() <= 125);
                            if let Ok(code) = close_code(payload) {
                                assert!(shardcast::ws::frame::close_code_allowed(code) || code == 1000);
                            }
                        }
                        Event::Ping(payload) => assert!(payload.len() <= 125),
                        Event::Message { opcode, compressed, mut data } => {
                            assert!(matches!(opcode, Opcode::Text | Opcode::Binary));
                            let data = data.as_mut();
                            assert!(data.len() <= max_message_bytes, "a message past the bound");
                            assert!(!compressed || limits.deflate, "RSV1 accepted without deflate");
                            if compressed {
                                let mut out = Vec::new();
                                match inflater.inflate(data, max_message_bytes, &mut out) {
                                    Ok(()) => assert!(out.len() <= max_message_bytes),
                                    Err(InflateError::TooBig | InflateError::Corrupt) => {}
                                }
                            }
                        }
                        Event::Pong | Event::Fragment => {}
                    }
                    assert!(reader.held() <= max_message_bytes, "fragments past the bound");
                }
            }
        }
        partial.drain(..pos);
    }
});
