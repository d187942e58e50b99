//! What arrives on a Redis channel (`bridge::envelope::decode`): a node's
//! FlatBuffers envelope, a numbered history message
//! (`bridge::scripts::split_numbered`) around one, or any other client's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardcast::bridge::envelope::decode;
use shardcast::bridge::scripts::split_numbered;

fuzz_target!(|data: &[u8]| {
    let _ = decode(data);
    if let Some((offset, epoch, inner)) = split_numbered(data) {
        assert!(offset > 0 && !epoch.is_empty());
        let _ = decode(inner);
    }
});
