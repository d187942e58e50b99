//! `[auth]`: connection tokens (JWT) and who may send direct messages.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::namespace::Access;
use crate::auth::token::{TokenPolicy, Verifier};

use super::{invalid, ms, ranged, ConfigError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub hmac_secret: String,
    pub public_key_file: String,
    pub audience: String,
    pub issuer: String,
    pub leeway_ms: u64,
    pub allow_anonymous: bool,
    pub require_exp: bool,
    pub auth_timeout_ms: u64,
    pub max_token_bytes: u64,
    pub direct_messages: String,
}

/// `[auth]`, with the key loaded.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `None` when neither `hmac_secret` nor `public_key_file` is set: auth
    /// is off and every connection is anonymous.
    pub verifier: Option<Arc<Verifier>>,
    /// With auth on, a connection with no token is anonymous (true) or must
    /// send an `auth` request within `auth_timeout` (false).
    pub allow_anonymous: bool,
    pub auth_timeout: Duration,
    /// Who may send direct messages: `Anyone`, `Users` or `Nobody`.
    pub direct_messages: Access,
}

pub(super) fn validate(a: &RawAuth) -> Result<AuthConfig, ConfigError> {
    let public_key_pem = if a.public_key_file.is_empty() {
        None
    } else {
        let text = std::fs::read(&a.public_key_file)
            .map_err(|e| invalid("auth.public_key_file", format!("{:?}", a.public_key_file), format!("a readable PEM public key file ({e})")))?;
        Some(text)
    };
    let policy = TokenPolicy {
        hmac_secret: &a.hmac_secret,
        public_key_pem: public_key_pem.as_deref(),
        audience: &a.audience,
        issuer: &a.issuer,
        leeway_ms: ranged("auth.leeway_ms", a.leeway_ms, 0, 86_400_000, "0..=86400000 ms")?,
        require_exp: a.require_exp,
        max_token_bytes: ranged("auth.max_token_bytes", a.max_token_bytes, 16, 1 << 20, "16..=1048576 bytes")?,
    };
    let verifier = Verifier::new(&policy).map_err(|e| {
        invalid("auth.public_key_file", format!("{:?}", a.public_key_file), format!("an RSA, EC P-256/P-384 or Ed25519 public key in PEM; found {e}"))
    })?;
    let direct_messages = match Access::parse(&a.direct_messages) {
        Some(mode @ (Access::Anyone | Access::Users | Access::Nobody)) => mode,
        _ => return Err(invalid("auth.direct_messages", format!("{:?}", a.direct_messages), "\"users\", \"anyone\" or \"nobody\"")),
    };
    Ok(AuthConfig {
        verifier: verifier.map(Arc::new),
        allow_anonymous: a.allow_anonymous,
        auth_timeout: ms(ranged::<u64>("auth.auth_timeout_ms", a.auth_timeout_ms, 1, 3_600_000, "1..=3600000 ms")?),
        direct_messages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::err;
    use crate::config::{Config, Overrides};

    #[test]
    fn auth_section_validates() {
        let c = Config::defaults();
        assert!(c.auth.verifier.is_none(), "auth is off by default");
        assert_eq!(c.auth.direct_messages, Access::Users);
        let on = Config::from_toml("[auth]\nhmac_secret = \"s\"", &Overrides::default()).unwrap();
        assert!(on.auth.verifier.is_some());
        assert!(err("[auth]\npublic_key_file = \"/nonexistent/key.pem\"").contains("auth.public_key_file"));
        let garbage = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(garbage.path(), "not a key").unwrap();
        assert!(err(&format!("[auth]\npublic_key_file = {:?}", garbage.path())).contains("auth.public_key_file"));
        assert!(err("[auth]\ndirect_messages = \"claim\"").contains("auth.direct_messages"));
        assert!(err("[auth]\nauth_timeout_ms = 0").contains("auth.auth_timeout_ms"));
        assert!(err("[limits]\nmax_connections_per_ip = -1").contains("max_connections_per_ip"));
    }
}
