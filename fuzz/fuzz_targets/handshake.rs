//! The HTTP upgrade request (`ws::handshake::decide`) and the
//! permessage-deflate offer it negotiates, and the fallback transports'
//! requests (`fallback::request::decide`), on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardcast::fallback::request::{self, Route};
use shardcast::ws::handshake::{decide, Decision, Rules};

fuzz_target!(|data: &[u8]| {
    let origins = ["https://app.example".to_string()];
    for (compression, allowed_origins) in [(false, &[][..]), (true, &origins[..])] {
        let subprotocols = &["shardcast.json.v1", "shardcast.flatbuffers.v1"];
        let plain_paths = [Some("/stream"), Some("/sse"), Some("/emulation")];
        let rules = Rules { ws_path: "/ws", echo_path: Some("/echo"), metrics_path: Some("/metrics"), allowed_origins, compression, subprotocols, plain_paths };
        match decide(data, &rules) {
            Decision::Upgrade { response, consumed, deflate, .. } => {
                assert!(consumed <= data.len(), "consumed past the input");
                assert!(response.starts_with(b"HTTP/1.1 101 "), "an upgrade answers 101");
                assert!(response.ends_with(b"\r\n\r\n"), "the response head is complete");
                assert!(compression || deflate.is_none(), "deflate negotiated while off");
            }
            Decision::Refuse { status, .. } => assert!((400..500).contains(&status), "refusals are 4xx: {status}"),
            Decision::Plain(i) => assert!(i < plain_paths.len(), "a plain path's index"),
            Decision::Incomplete | Decision::Metrics => {}
        }
        let rules = request::Rules { allowed_origins, max_body: 1024 };
        for route in [Route::Stream, Route::Sse, Route::Emulation] {
            if let request::Decision::Answer(answer) = request::decide(data, route, &rules) {
                assert!(answer.starts_with(b"HTTP/1.1 "), "a whole HTTP answer");
            }
        }
    }
});
