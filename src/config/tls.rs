//! `[tls]`: the certificate and key of `wss://`, the lowest version, and
//! session resumption.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::tls::{Certificates, MinVersion, TlsError};

use super::{invalid, ConfigError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert_file: String,
    pub key_file: String,
    pub min_version: String,
    pub session_tickets: bool,
}

/// `[tls]`, with the certificate and key loaded (and checked to match).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub certificates: Arc<Certificates>,
    pub min_version: MinVersion,
    /// The node's session ticket keys (`session_tickets`), shared by every
    /// shard so that a client resumes on whichever shard it lands on.
    /// `None`: no resumption.
    pub tickets: Option<Arc<dyn rustls::server::ProducesTickets>>,
}

pub(super) fn validate(t: &RawTls) -> Result<Option<TlsConfig>, ConfigError> {
    let min_version = match t.min_version.as_str() {
        "1.2" => MinVersion::Tls12,
        "1.3" => MinVersion::Tls13,
        other => return Err(invalid("tls.min_version", format!("{other:?}"), "\"1.2\" or \"1.3\"")),
    };
    match (t.cert_file.is_empty(), t.key_file.is_empty()) {
        (true, true) => return Ok(None),
        (false, true) => return Err(invalid("tls.key_file", "\"\"", "a PEM private key file: tls.cert_file is set")),
        (true, false) => return Err(invalid("tls.cert_file", "\"\"", "a PEM certificate (chain) file: tls.key_file is set")),
        (false, false) => {}
    }
    let certificates = Certificates::load(Path::new(&t.cert_file), Path::new(&t.key_file)).map_err(|e| {
        let key = match e {
            TlsError::Certificate { .. } => "tls.cert_file",
            TlsError::Key { .. } | TlsError::Mismatch { .. } => "tls.key_file",
        };
        let value = if key == "tls.cert_file" { &t.cert_file } else { &t.key_file };
        invalid(key, format!("{value:?}"), e.to_string())
    })?;
    let tickets = match t.session_tickets {
        true => Some(rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| invalid("tls.session_tickets", "true", format!("false (no ticket key: {e})")))?),
        false => None,
    };
    Ok(Some(TlsConfig { certificates: Arc::new(certificates), min_version, tickets }))
}
