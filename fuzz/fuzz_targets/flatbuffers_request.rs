//! A client's FlatBuffers request (`protocol::flatbuf::parse_request`,
//! `schemas/client.fbs`): every binary frame on `shardcast.flatbuffers.v1`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardcast::protocol::flatbuf::{error_frame, parse_request};

fuzz_target!(|data: &[u8]| {
    if let Err(err) = parse_request(data) {
        let frame = error_frame(&err);
        assert!(frame.len() < 64 * 1024, "an error reply stays small");
    }
});
