//! Connection tokens (`auth::token::Verifier`): arbitrary text as a token,
//! and arbitrary header and claims JSON correctly signed with the
//! configured HMAC secret, so the claims parsing behind the signature
//! check is reached too.
//!
//! Input: byte 0 picks the shape and the clock; the rest is the token, or
//! header JSON and claims JSON split at the first 0xff.
#![no_main]

use std::time::Instant;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use shardcast::auth::token::TokenPolicy;
use shardcast::auth::Verifier;

const SECRET: &str = "fuzz-secret";

fuzz_target!(|data: &[u8]| {
    let [knobs, rest @ ..] = data else { return };
    let policy = TokenPolicy {
        hmac_secret: SECRET,
        public_key_pem: None,
        audience: if knobs & 1 != 0 { "shardcast" } else { "" },
        issuer: if knobs & 2 != 0 { "issuer" } else { "" },
        leeway_ms: 1000,
        require_exp: knobs & 4 != 0,
        max_token_bytes: 4096,
    };
    let verifier = Verifier::new(&policy).expect("the secret is a key").expect("auth is on");
    // Near 0, now, and the end of time: expiry arithmetic must not overflow.
    let now_ms = [0, 1_764_000_000_000, u64::MAX / 2, u64::MAX][usize::from(knobs >> 3 & 3)];
    let token = if knobs & 0x80 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let mut parts = rest.splitn(2, |&b| b == 0xff);
        let (header, claims) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let signature = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key, Algorithm::HS256).expect("HMAC signs anything");
        format!("{signing_input}.{signature}")
    };
    let _ = verifier.verify_at(&token, now_ms, Instant::now());
});
