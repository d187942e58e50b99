//! RESP from Redis (`bridge::resp::RespReader`), fed in the pieces a
//! socket would deliver, and every value through the parsers the bridge
//! applies to replies: the cluster slot map, redirects, the history and
//! presence script replies.
//!
//! Input: byte 0 picks the read size; the rest is the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redis::Value;
use shardcast::bridge::cluster::{redirect, SlotMap};
use shardcast::bridge::resp::RespReader;
use shardcast::bridge::scripts::{parse_presence, parse_read};

fuzz_target!(|data: &[u8]| {
    let [read, stream @ ..] = data else { return };
    let mut reader = RespReader::new(16, 4096);
    for chunk in stream.chunks(usize::from(*read).max(1)) {
        let Ok(values) = reader.feed(chunk) else { return };
        for value in &values {
            let _ = SlotMap::parse(value, "127.0.0.1");
            let _ = parse_read(value, 1024);
            let _ = parse_presence(value, false);
            let _ = parse_presence(value, true);
            if let Value::ServerError(e) = value {
                let _ = redirect(e.code(), e.details());
            }
        }
    }
});
