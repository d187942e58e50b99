//! A client's JSON request (`protocol::json::parse_request`): every frame
//! a client sends on the JSON protocol goes through it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardcast::protocol::json::{error_frame, parse_request};

fuzz_target!(|data: &[u8]| {
    if let Err(err) = parse_request(data) {
        // The error reply is built from what the request carried (its id).
        let frame = error_frame(&err);
        assert!(frame.len() < 64 * 1024, "an error reply stays small");
    }
});
