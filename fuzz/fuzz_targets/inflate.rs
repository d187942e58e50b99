//! permessage-deflate: arbitrary compressed messages through the shard's
//! inflater (bounded output: a bomb stops at the limit), and arbitrary
//! messages through the compressor and back (they must come back intact).
//!
//! Input: byte 0 picks the bound and the direction; the rest is the message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardcast::ws::deflate::{Compressor, Decompressor};

fuzz_target!(|data: &[u8]| {
    let [knobs, message @ ..] = data else { return };
    let max = [0usize, 16, 1024, 65536, 1 << 20][usize::from(knobs & 7) % 5];
    let mut inflater = Decompressor::default();
    let mut out = Vec::new();
    if knobs & 0x80 == 0 {
        // Hostile input: each message is independent (no context takeover).
        for part in message.split(|&b| b == 0xff) {
            if inflater.inflate(part, max, &mut out).is_ok() {
                assert!(out.len() <= max, "inflated past the bound");
            }
        }
    } else {
        let mut compressor = Compressor::new(u32::from(knobs >> 3 & 7) + 1);
        let mut deflated = Vec::new();
        compressor.compress(message, knobs & 0x40 != 0, &mut deflated);
        inflater.inflate(&deflated, message.len(), &mut out).expect("our own output inflates");
        assert_eq!(out, message, "round trip");
    }
});
