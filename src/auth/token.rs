//! Connection tokens: a JWT -> [`Identity`], or the reason it is refused;
//! and subscription tokens (a `token` namespace's subscribe): the same JWT
//! checks -> [`SubscriptionToken`].
//!
//! The accepted algorithms follow from the configured keys alone:
//! `hmac_secret` allows HS256/384/512; `public_key_file` allows the family of
//! its key (RSA: RS* and PS*; EC P-256: ES256; EC P-384: ES384; Ed25519:
//! EdDSA). A token is checked only against the key of its header's
//! algorithm family, so an HMAC token is never checked against a public key
//! (algorithm confusion), and `alg: none` is not an algorithm at all.
//!
//! jsonwebtoken parses the token, checks the signature, `aud` and `iss`.
//! Time claims are checked here instead, because `[auth] leeway_ms` is in
//! milliseconds and jsonwebtoken's leeway is in whole seconds.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::{Glob, Identity, MAX_USER_BYTES};
use crate::clock::Stamp;

/// Why a token was refused. [`TokenError::reason`] is the close reason the
/// client sees with code 4001.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Longer than `[auth] max_token_bytes`.
    TooLong,
    /// Not three base64url parts of JSON, or a claim of the wrong type.
    Malformed,
    /// The signature does not verify with the configured key.
    BadSignature,
    /// `alg` is `none`, unknown, or not allowed by the configured keys.
    WrongAlgorithm,
    /// `exp` (plus leeway) has passed.
    Expired,
    /// `nbf` (minus leeway) is still ahead.
    NotYetValid,
    /// `[auth] audience` is set and `aud` is missing or different.
    WrongAudience,
    /// `[auth] issuer` is set and `iss` is missing or different.
    WrongIssuer,
    /// `sub` is missing, empty, or not a string.
    MissingSub,
    /// `sub` is longer than 256 bytes.
    SubTooLong,
    /// `exp` is missing and `[auth] require_exp` is true.
    MissingExp,
    /// The `subscribe` or `publish` claim is not a list of strings.
    BadPermissionClaim,
    /// The `channels` claim is not a list of strings.
    BadChannelsClaim,
}

impl TokenError {
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::TooLong => "token too long",
            TokenError::Malformed => "malformed token",
            TokenError::BadSignature => "bad signature",
            TokenError::WrongAlgorithm => "wrong algorithm",
            TokenError::Expired => "token expired",
            TokenError::NotYetValid => "token not yet valid",
            TokenError::WrongAudience => "wrong audience",
            TokenError::WrongIssuer => "wrong issuer",
            TokenError::MissingSub => "sub missing or empty",
            TokenError::SubTooLong => "sub longer than 256 bytes",
            TokenError::MissingExp => "exp missing",
            TokenError::BadPermissionClaim => "subscribe/publish claim is not a list of strings",
            TokenError::BadChannelsClaim => "channels claim is not a list of strings",
        }
    }
}

/// Why the configured key cannot be used (a config error).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Unsupported(String),
}

/// One key and the algorithms it verifies.
struct Checker {
    key: DecodingKey,
    validation: Validation,
}

/// Verifies connection tokens. Built once from `[auth]`; shared read-only
/// by every shard.
pub struct Verifier {
    hmac: Option<Checker>,
    public: Option<Checker>,
    leeway_ms: u64,
    require_exp: bool,
    max_token_bytes: usize,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Verifier")
            .field("hmac", &self.hmac.as_ref().map(|c| &c.validation.algorithms))
            .field("public", &self.public.as_ref().map(|c| &c.validation.algorithms))
            .field("leeway_ms", &self.leeway_ms)
            .finish_non_exhaustive()
    }
}

/// What `[auth]` says about tokens.
#[derive(Debug, Default)]
pub struct TokenPolicy<'a> {
    pub hmac_secret: &'a str,
    /// The PEM text of `public_key_file`, when set.
    pub public_key_pem: Option<&'a [u8]>,
    pub audience: &'a str,
    pub issuer: &'a str,
    pub leeway_ms: u64,
    pub require_exp: bool,
    pub max_token_bytes: usize,
}

const RSA_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// Reads a public key PEM and tells which algorithms it verifies.
fn public_key(pem_text: &[u8]) -> Result<(DecodingKey, &'static [Algorithm]), KeyError> {
    const RSA: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
    const EC: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
    const P256: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
    const P384: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.3.132.0.34");
    const ED25519: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.3.101.112");
    let unsupported = |what: String| KeyError::Unsupported(what);
    let block = pem::parse(pem_text).map_err(|e| unsupported(format!("not a PEM file ({e})")))?;
    let bad_key = |e: jsonwebtoken::errors::Error| unsupported(format!("unreadable key ({e})"));
    match block.tag() {
        "RSA PUBLIC KEY" => Ok((DecodingKey::from_rsa_pem(pem_text).map_err(bad_key)?, RSA_ALGORITHMS)),
        "PUBLIC KEY" => {
            let info = spki::SubjectPublicKeyInfoRef::try_from(block.contents())
                .map_err(|e| unsupported(format!("not a SubjectPublicKeyInfo ({e})")))?;
            let oid = info.algorithm.oid;
            if oid == RSA {
                Ok((DecodingKey::from_rsa_pem(pem_text).map_err(bad_key)?, RSA_ALGORITHMS))
            } else if oid == ED25519 {
                Ok((DecodingKey::from_ed_pem(pem_text).map_err(bad_key)?, &[Algorithm::EdDSA]))
            } else if oid == EC {
                let algorithms: &'static [Algorithm] = match info.algorithm.parameters_oid() {
                    Ok(curve) if curve == P256 => &[Algorithm::ES256],
                    Ok(curve) if curve == P384 => &[Algorithm::ES384],
                    _ => return Err(unsupported("an EC key on a curve other than P-256 or P-384".into())),
                };
                Ok((DecodingKey::from_ec_pem(pem_text).map_err(bad_key)?, algorithms))
            } else {
                Err(unsupported(format!("a public key of algorithm {oid}, not RSA, EC or Ed25519")))
            }
        }
        other => Err(unsupported(format!("a PEM block {other:?}, not \"PUBLIC KEY\" or \"RSA PUBLIC KEY\""))),
    }
}

/// The token fields shardcast reads. Kept as raw JSON values so that a claim
/// of the wrong type is reported by name instead of failing the whole parse.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<Value>,
    #[serde(default)]
    exp: Option<Value>,
    #[serde(default)]
    nbf: Option<Value>,
    #[serde(default)]
    subscribe: Option<Value>,
    #[serde(default)]
    publish: Option<Value>,
    #[serde(default)]
    channels: Option<Value>,
    #[serde(default)]
    channel: Option<Value>,
}

/// A verified subscription token: who it is for, which topic, until when.
/// Checked against the connection and the subscribe by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionToken {
    /// The token's `sub`.
    pub user: Arc<str>,
    /// The token's `channel` claim; `None` when absent or not a string
    /// (then it grants no topic).
    pub channel: Option<Box<str>>,
    /// When the subscription ends (`exp` plus `[auth] leeway_ms`); `None`
    /// for a token without `exp`.
    pub expires_at: Option<Stamp>,
}

/// What every token (connection or subscription) passed: its user and
/// expiry, with the rest of its claims still raw.
struct Checked {
    user: Arc<str>,
    expires_at: Option<Stamp>,
    claims: Claims,
}

impl Verifier {
    /// Builds the verifier, or `None` when no key is configured (auth off).
    pub fn new(policy: &TokenPolicy<'_>) -> Result<Option<Verifier>, KeyError> {
        let validation = |algorithms: &[Algorithm]| {
            let mut v = Validation::new(algorithms[0]);
            v.algorithms = algorithms.to_vec();
            // Time claims are checked with millisecond leeway in `verify`.
            v.validate_exp = false;
            v.validate_nbf = false;
            v.leeway = 0;
            let mut required = HashSet::new();
            // Empty audience / issuer: those claims are not looked at at all
            // (jsonwebtoken would otherwise refuse any token carrying `aud`).
            v.validate_aud = !policy.audience.is_empty();
            if !policy.audience.is_empty() {
                v.set_audience(&[policy.audience]);
                required.insert("aud".to_string());
            }
            if !policy.issuer.is_empty() {
                v.set_issuer(&[policy.issuer]);
                required.insert("iss".to_string());
            }
            v.required_spec_claims = required;
            v
        };
        let hmac = (!policy.hmac_secret.is_empty()).then(|| Checker {
            key: DecodingKey::from_secret(policy.hmac_secret.as_bytes()),
            validation: validation(&[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]),
        });
        let public = match policy.public_key_pem {
            Some(pem_text) => {
                let (key, algorithms) = public_key(pem_text)?;
                Some(Checker { key, validation: validation(algorithms) })
            }
            None => None,
        };
        if hmac.is_none() && public.is_none() {
            return Ok(None);
        }
        Ok(Some(Verifier { hmac, public, leeway_ms: policy.leeway_ms, require_exp: policy.require_exp, max_token_bytes: policy.max_token_bytes }))
    }

    /// Verifies `token` now.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.verify_at(token, now_ms, Instant::now())
    }

    /// Verifies `token` as of `now_ms` (Unix time in ms), which is `now`.
    pub fn verify_at(&self, token: &str, now_ms: u64, now: Instant) -> Result<Identity, TokenError> {
        let Checked { user, expires_at, claims } = self.check(token, now_ms, now)?;
        Ok(Identity {
            user,
            expires_at,
            subscribe: globs(claims.subscribe.as_ref())?,
            publish: globs(claims.publish.as_ref())?,
            channels: channels(claims.channels.as_ref())?,
            info: None,
        })
    }

    /// Verifies a subscription token now: the same keys, algorithms,
    /// `aud`, `iss` and time checks as a connection token. Its permission
    /// and `channels` claims are not read.
    pub fn verify_subscription(&self, token: &str) -> Result<SubscriptionToken, TokenError> {
        let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.verify_subscription_at(token, now_ms, Instant::now())
    }

    /// [`Verifier::verify_subscription`] as of `now_ms`, which is `now`.
    pub fn verify_subscription_at(&self, token: &str, now_ms: u64, now: Instant) -> Result<SubscriptionToken, TokenError> {
        let Checked { user, expires_at, claims } = self.check(token, now_ms, now)?;
        let channel = match claims.channel {
            Some(Value::String(topic)) => Some(topic.into_boxed_str()),
            _ => None,
        };
        Ok(SubscriptionToken { user, channel, expires_at })
    }

    /// The checks every token passes: size, algorithm, signature, `aud`,
    /// `iss`, `exp`, `nbf` and `sub`.
    fn check(&self, token: &str, now_ms: u64, now: Instant) -> Result<Checked, TokenError> {
        if token.len() > self.max_token_bytes {
            return Err(TokenError::TooLong);
        }
        let alg = match jsonwebtoken::decode_header(token) {
            Ok(header) => header.alg,
            Err(_) if names_an_algorithm(token) => return Err(TokenError::WrongAlgorithm),
            Err(_) => return Err(TokenError::Malformed),
        };
        let checker = match alg.family() {
            AlgorithmFamily::Hmac => self.hmac.as_ref(),
            _ => self.public.as_ref(),
        };
        let checker = checker.filter(|c| c.validation.algorithms.contains(&alg)).ok_or(TokenError::WrongAlgorithm)?;
        let claims = jsonwebtoken::decode::<Claims>(token, &checker.key, &checker.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidEddsaKey
                | ErrorKind::InvalidRsaKey(_) => TokenError::BadSignature,
                ErrorKind::InvalidAlgorithm => TokenError::WrongAlgorithm,
                ErrorKind::InvalidAudience => TokenError::WrongAudience,
                ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                ErrorKind::MissingRequiredClaim(c) if c == "aud" => TokenError::WrongAudience,
                ErrorKind::MissingRequiredClaim(c) if c == "iss" => TokenError::WrongIssuer,
                _ => TokenError::Malformed,
            })?
            .claims;
        let leeway = self.leeway_ms as f64;
        let exp_ms = match &claims.exp {
            None if self.require_exp => return Err(TokenError::MissingExp),
            None => None,
            Some(v) => Some(numeric_date_ms(v)?),
        };
        if exp_ms.is_some_and(|exp| exp + leeway <= now_ms as f64) {
            return Err(TokenError::Expired);
        }
        if let Some(nbf) = &claims.nbf {
            if numeric_date_ms(nbf)? - leeway > now_ms as f64 {
                return Err(TokenError::NotYetValid);
            }
        }
        let user = match &claims.sub {
            Some(Value::String(s)) if s.len() > MAX_USER_BYTES => return Err(TokenError::SubTooLong),
            Some(Value::String(s)) if !s.is_empty() => Arc::<str>::from(s.as_str()),
            _ => return Err(TokenError::MissingSub),
        };
        // An expiry beyond any connection's life is no expiry (and keeps far
        // dates away from Instant's and Stamp's ranges).
        const FOREVER_MS: f64 = 10.0 * 365.0 * 86_400_000.0;
        let expires_at = exp_ms
            .map(|exp| exp + leeway - now_ms as f64)
            .filter(|left| *left < FOREVER_MS)
            .map(|left| Stamp::from(now + Duration::from_millis(left as u64)));
        Ok(Checked { user, expires_at, claims })
    }
}

/// A NumericDate (seconds since the epoch, possibly fractional) in ms.
fn numeric_date_ms(v: &Value) -> Result<f64, TokenError> {
    v.as_f64().filter(|s| s.is_finite()).map(|s| s * 1000.0).ok_or(TokenError::Malformed)
}

/// A permission claim: absent, or a list of glob strings.
fn globs(claim: Option<&Value>) -> Result<Box<[Glob]>, TokenError> {
    match claim {
        None | Some(Value::Null) => Ok(Box::default()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(Glob::new).ok_or(TokenError::BadPermissionClaim))
            .collect(),
        Some(_) => Err(TokenError::BadPermissionClaim),
    }
}

/// The `channels` claim: absent, or a list of topic names (validated when
/// subscribed, not here).
fn channels(claim: Option<&Value>) -> Result<Box<[Box<str>]>, TokenError> {
    match claim {
        None | Some(Value::Null) => Ok(Box::default()),
        Some(Value::Array(items)) => {
            items.iter().map(|item| item.as_str().map(Box::from).ok_or(TokenError::BadChannelsClaim)).collect()
        }
        Some(_) => Err(TokenError::BadChannelsClaim),
    }
}

/// Whether the token's header is JSON naming an `alg` jsonwebtoken does not
/// know (`none`, say): worth "wrong algorithm" rather than "malformed token".
/// Only the error message depends on this; nothing is accepted because of it.
fn names_an_algorithm(token: &str) -> bool {
    #[derive(Deserialize)]
    struct AlgOnly {
        alg: String,
    }
    let Some((header, _)) = token.split_once('.') else { return false };
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header.trim_end_matches('=')) else {
        return false;
    };
    serde_json::from_slice::<AlgOnly>(&json).is_ok_and(|h| !h.alg.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "test-secret";
    const NOW_MS: u64 = 1_800_000_000_000;

    fn verifier(audience: &str, issuer: &str, require_exp: bool) -> Verifier {
        Verifier::new(&TokenPolicy {
            hmac_secret: SECRET,
            audience,
            issuer,
            leeway_ms: 5000,
            require_exp,
            max_token_bytes: 8192,
            ..Default::default()
        })
        .unwrap()
        .unwrap()
    }

    fn hs256(claims: Value) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    }

    fn check(v: &Verifier, token: &str) -> Result<Identity, TokenError> {
        v.verify_at(token, NOW_MS, Instant::now())
    }

    fn exp_in(ms: i64) -> f64 {
        (NOW_MS as i64 + ms) as f64 / 1000.0
    }

    #[test]
    fn no_key_means_auth_off() {
        assert!(Verifier::new(&TokenPolicy::default()).unwrap().is_none());
    }

    #[test]
    fn a_good_token_gives_its_identity() {
        let v = verifier("", "", true);
        let id = check(&v, &hs256(json!({"sub":"alice","exp":exp_in(60_000),"publish":["chat:*"],"extra":1}))).unwrap();
        assert_eq!(&*id.user, "alice");
        assert!(id.expires_at.is_some());
        assert_eq!(id.publish.len(), 1);
        assert!(id.subscribe.is_empty());
    }

    #[test]
    fn every_refusal_has_its_reason() {
        let v = verifier("", "", true);
        let cases = [
            (hs256(json!({"sub":"a","exp":exp_in(-6000)})), TokenError::Expired),
            (hs256(json!({"sub":"a","exp":exp_in(60_000),"nbf":exp_in(6000)})), TokenError::NotYetValid),
            (hs256(json!({"exp":exp_in(60_000)})), TokenError::MissingSub),
            (hs256(json!({"sub":"","exp":exp_in(60_000)})), TokenError::MissingSub),
            (hs256(json!({"sub":7,"exp":exp_in(60_000)})), TokenError::MissingSub),
            (hs256(json!({"sub":"x".repeat(257),"exp":exp_in(60_000)})), TokenError::SubTooLong),
            (hs256(json!({"sub":"a"})), TokenError::MissingExp),
            (hs256(json!({"sub":"a","exp":"soon"})), TokenError::Malformed),
            (hs256(json!({"sub":"a","exp":exp_in(60_000),"subscribe":"chat:*"})), TokenError::BadPermissionClaim),
            (hs256(json!({"sub":"a","exp":exp_in(60_000),"channels":"chat:1"})), TokenError::BadChannelsClaim),
            (hs256(json!({"sub":"a","exp":exp_in(60_000),"channels":["chat:1", 2]})), TokenError::BadChannelsClaim),
            ("not.a.token".to_string(), TokenError::Malformed),
            ("".to_string(), TokenError::Malformed),
            ("x".repeat(9000), TokenError::TooLong),
        ];
        for (token, want) in cases {
            assert_eq!(check(&v, &token).unwrap_err(), want, "{token}");
        }
        let other = encode(&Header::new(Algorithm::HS256), &json!({"sub":"a","exp":exp_in(60_000)}), &EncodingKey::from_secret(b"other")).unwrap();
        assert_eq!(check(&v, &other).unwrap_err(), TokenError::BadSignature);
    }

    #[test]
    fn the_channels_claim_lists_topics() {
        let v = verifier("", "", true);
        let id = check(&v, &hs256(json!({"sub":"a","exp":exp_in(60_000),"channels":["news","chat:1"]}))).unwrap();
        assert_eq!(&*id.channels, &["news".into(), "chat:1".into()] as &[Box<str>]);
        let none = check(&v, &hs256(json!({"sub":"a","exp":exp_in(60_000),"channels":null}))).unwrap();
        assert!(none.channels.is_empty());
        assert_eq!(TokenError::BadChannelsClaim.reason(), "channels claim is not a list of strings");
    }

    #[test]
    fn subscription_tokens_pass_the_same_checks_and_name_their_channel() {
        let v = verifier("app", "", true);
        let sub = |claims: Value| v.verify_subscription_at(&hs256(claims), NOW_MS, Instant::now());
        let t = sub(json!({"sub":"alice","exp":exp_in(60_000),"aud":"app","channel":"room:1","channels":7})).unwrap();
        assert_eq!((&*t.user, t.channel.as_deref()), ("alice", Some("room:1")));
        assert!(t.expires_at.is_some());
        assert_eq!(sub(json!({"sub":"alice","exp":exp_in(60_000),"aud":"app","channel":["room:1"]})).unwrap().channel, None);
        assert_eq!(sub(json!({"sub":"alice","exp":exp_in(-6000),"aud":"app","channel":"room:1"})).unwrap_err(), TokenError::Expired);
        assert_eq!(sub(json!({"sub":"alice","exp":exp_in(60_000),"channel":"room:1"})).unwrap_err(), TokenError::WrongAudience);
        assert_eq!(sub(json!({"sub":"alice","aud":"app","channel":"room:1"})).unwrap_err(), TokenError::MissingExp);
        assert_eq!(v.verify_subscription_at("a.b.c", NOW_MS, Instant::now()).unwrap_err(), TokenError::Malformed);
    }

    #[test]
    fn leeway_is_in_milliseconds() {
        let v = verifier("", "", true);
        assert!(check(&v, &hs256(json!({"sub":"a","exp":exp_in(-4000)}))).is_ok(), "within 5 s of leeway");
        assert!(check(&v, &hs256(json!({"sub":"a","exp":exp_in(60_000),"nbf":exp_in(4000)}))).is_ok());
    }

    #[test]
    fn exp_is_optional_when_configured() {
        let v = verifier("", "", false);
        let id = check(&v, &hs256(json!({"sub":"a"}))).unwrap();
        assert!(id.expires_at.is_none());
        let far = check(&v, &hs256(json!({"sub":"a","exp":1e300}))).unwrap();
        assert!(far.expires_at.is_none(), "a date beyond any connection's life never expires");
    }

    #[test]
    fn audience_and_issuer_are_checked_only_when_set() {
        let open = verifier("", "", true);
        assert!(check(&open, &hs256(json!({"sub":"a","exp":exp_in(60_000),"aud":"x","iss":"y"}))).is_ok());
        let strict = verifier("app", "auth.example", true);
        let ok = json!({"sub":"a","exp":exp_in(60_000),"aud":"app","iss":"auth.example"});
        assert!(check(&strict, &hs256(ok.clone())).is_ok());
        let mut list = ok.clone();
        list["aud"] = json!(["other", "app"]);
        assert!(check(&strict, &hs256(list)).is_ok());
        for (field, value, want) in [
            ("aud", json!("other"), TokenError::WrongAudience),
            ("aud", Value::Null, TokenError::WrongAudience),
            ("iss", json!("evil"), TokenError::WrongIssuer),
            ("iss", Value::Null, TokenError::WrongIssuer),
        ] {
            let mut claims = ok.clone();
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(field);
            } else {
                claims[field] = value;
            }
            assert_eq!(check(&strict, &hs256(claims)).unwrap_err(), want, "{field}");
        }
    }

    #[test]
    fn alg_none_and_unconfigured_families_are_refused() {
        let v = verifier("", "", true);
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(r#"{"sub":"a","exp":9999999999}"#));
        assert_eq!(check(&v, &none).unwrap_err(), TokenError::WrongAlgorithm);
        let rs = format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(r#"{"sub":"a","exp":9999999999}"#));
        assert_eq!(check(&v, &rs).unwrap_err(), TokenError::WrongAlgorithm, "no public key configured");
    }

    #[test]
    fn public_keys_choose_their_algorithms() {
        let rsa_only = "-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n";
        assert!(public_key(rsa_only.as_bytes()).is_err());
        assert!(public_key(b"no pem here").is_err());
        let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(public_key(cert.as_bytes()), Err(KeyError::Unsupported(m)) if m.contains("CERTIFICATE")));
    }
}
