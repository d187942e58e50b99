//! The HTTP/1.1 upgrade request: parsed with httparse, answered here.
//!
//! Pure functions over bytes, so every refusal is unit-tested without a
//! socket; the connection task does the I/O and the timeout.

use super::deflate::{self, Agreement};

/// Which WebSocket endpoint a request upgraded to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    PubSub,
    Echo,
}

/// The paths and policies the handshake checks against.
#[derive(Debug)]
pub struct Rules<'a> {
    pub ws_path: &'a str,
    pub echo_path: Option<&'a str>,
    pub metrics_path: Option<&'a str>,
    pub allowed_origins: &'a [String],
    /// Negotiate permessage-deflate (`[compression] enabled`).
    pub compression: bool,
    /// The subprotocols the pub/sub endpoint speaks (`Sec-WebSocket-Protocol`).
    pub subprotocols: &'a [&'static str],
    /// Paths served over plain HTTP by the layer above (the fallback
    /// transports): a request to one is [`Decision::Plain`] with its index.
    pub plain_paths: [Option<&'a str>; 3],
}

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// More bytes are needed to see the whole request.
    Incomplete,
    /// Upgrade: `response` is the 101; `consumed` bytes were the request
    /// (anything after them is already WebSocket data). `token` is the
    /// connection token, if the request carried one; `subprotocol` the
    /// first offer of the client's that the server speaks (`None`: none
    /// offered or known, and no header in the answer); `deflate` what
    /// permessage-deflate agreement was reached, if any.
    Upgrade { endpoint: Endpoint, response: Vec<u8>, consumed: usize, token: Option<String>, subprotocol: Option<&'static str>, deflate: Option<Agreement> },
    /// Serve the metrics page.
    Metrics,
    /// A request to `plain_paths[i]`, for the layer above to read whole
    /// and answer.
    Plain(usize),
    /// Refuse with this status and short text.
    Refuse { status: u16, reason: &'static str, body: &'static str, extra_headers: &'static str },
}

fn refuse(status: u16, reason: &'static str, body: &'static str) -> Decision {
    Decision::Refuse { status, reason, body, extra_headers: "" }
}

const MAX_HEADERS: usize = 48;

fn header<'a>(req: &'a httparse::Request<'_, '_>, name: &str) -> Option<&'a [u8]> {
    req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
}

/// Every value of a header that may be repeated, as text (non-UTF-8 values skipped).
fn header_values<'a>(req: &'a httparse::Request<'_, '_>, name: &'a str) -> impl Iterator<Item = &'a str> {
    req.headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).filter_map(|h| std::str::from_utf8(h.value).ok())
}

/// The values of the headers named in `names` (lower case) in a complete
/// request, for the connect hook: repeated headers joined (`; ` for
/// cookies, `, ` otherwise), non-UTF-8 values skipped, absent ones left out.
pub fn forwarded_headers(request: &[u8], names: &[String]) -> Vec<(String, String)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(request), Ok(httparse::Status::Complete(_))) {
        return Vec::new();
    }
    names
        .iter()
        .filter_map(|name| {
            let values: Vec<&str> = header_values(&req, name).map(str::trim).collect();
            let separator = if name == "cookie" { "; " } else { ", " };
            (!values.is_empty()).then(|| (name.clone(), values.join(separator)))
        })
        .collect()
}

fn has_token(value: Option<&[u8]>, token: &str) -> bool {
    value.is_some_and(|v| v.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes())))
}

/// The connection token: the `token` query parameter of the URL (what a
/// browser can send), else an `Authorization: Bearer` header; first found wins.
pub fn token(target: &str, req: &httparse::Request<'_, '_>) -> Option<String> {
    if let Some((_, query)) = target.split_once('?') {
        if let Some((_, value)) = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "token") {
            return Some(value.into_owned());
        }
    }
    let value = std::str::from_utf8(header(req, "authorization")?).ok()?.trim();
    let (scheme, credentials) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| credentials.trim().to_string())
}

/// RFC 6455 §4.1: the key is the base64 of 16 bytes (24 characters,
/// padding included, nothing else).
fn valid_key(key: &[u8]) -> bool {
    use base64::Engine;
    key.len() == 24 && base64::engine::general_purpose::STANDARD.decode(key).is_ok_and(|raw| raw.len() == 16)
}

/// Decides what to answer to the request at the start of `buf`.
pub fn decide(buf: &[u8], rules: &Rules<'_>) -> Decision {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Decision::Incomplete,
        Err(httparse::Error::TooManyHeaders) => {
            return refuse(431, "Request Header Fields Too Large", "too many headers\n")
        }
        Err(_) => return refuse(400, "Bad Request", "malformed HTTP request\n"),
    };
    let target = req.path.unwrap_or("/");
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let endpoint = if path == rules.ws_path {
        Endpoint::PubSub
    } else if Some(path) == rules.echo_path {
        Endpoint::Echo
    } else if Some(path) == rules.metrics_path && req.method == Some("GET") {
        return Decision::Metrics;
    } else if let Some(i) = rules.plain_paths.iter().position(|p| *p == Some(path)) {
        return Decision::Plain(i);
    } else {
        return refuse(404, "Not Found", "no such endpoint\n");
    };
    if req.method != Some("GET") {
        return Decision::Refuse {
            status: 405,
            reason: "Method Not Allowed",
            body: "WebSocket endpoints accept only GET upgrade requests\n",
            extra_headers: "Allow: GET\r\n",
        };
    }
    // RFC 6455 §4.1: the upgrade is an HTTP/1.1 (or later) GET.
    if req.version != Some(1) {
        return refuse(400, "Bad Request", "a WebSocket upgrade needs HTTP/1.1\n");
    }
    if !has_token(header(&req, "upgrade"), "websocket") || !has_token(header(&req, "connection"), "upgrade") {
        return Decision::Refuse {
            status: 426,
            reason: "Upgrade Required",
            body: "this endpoint speaks WebSocket only\n",
            extra_headers: "Upgrade: websocket\r\nConnection: Upgrade\r\n",
        };
    }
    if header(&req, "sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return Decision::Refuse {
            status: 426,
            reason: "Upgrade Required",
            body: "unsupported WebSocket version; use 13\n",
            extra_headers: "Sec-WebSocket-Version: 13\r\n",
        };
    }
    let Some(key) = header(&req, "sec-websocket-key").map(<[u8]>::trim_ascii).filter(|k| valid_key(k)) else {
        return refuse(400, "Bad Request", "missing or malformed Sec-WebSocket-Key (base64 of 16 bytes)\n");
    };
    if !rules.allowed_origins.is_empty() {
        // A request without Origin is not from a browser; only browsers are
        // subject to the origin policy.
        if let Some(origin) = header(&req, "origin") {
            if !rules.allowed_origins.iter().any(|o| o.as_bytes() == origin) {
                return refuse(403, "Forbidden", "origin not allowed\n");
            }
        }
    }
    let accept = tungstenite::handshake::derive_accept_key(key);
    // Subprotocols matter on the pub/sub endpoint only; /echo speaks none.
    let subprotocol = if endpoint == Endpoint::PubSub { first_known(header_values(&req, "sec-websocket-protocol"), rules.subprotocols) } else { None };
    let protocol_line = subprotocol.map_or(String::new(), |name| format!("Sec-WebSocket-Protocol: {name}\r\n"));
    let deflate = if rules.compression { deflate::negotiate(header_values(&req, "sec-websocket-extensions")) } else { None };
    let extension_line = deflate.as_ref().map_or(String::new(), |a| format!("Sec-WebSocket-Extensions: {}\r\n", a.response));
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{protocol_line}{extension_line}\r\n"
    )
    .into_bytes();
    Decision::Upgrade { endpoint, response, consumed, token: token(target, &req), subprotocol, deflate }
}

/// The first of the offered subprotocols (header values, comma-separated)
/// that is `known`.
fn first_known<'a>(offers: impl IntoIterator<Item = &'a str>, known: &[&'static str]) -> Option<&'static str> {
    offers.into_iter().flat_map(|v| v.split(',')).map(str::trim).find_map(|offer| known.iter().find(|k| **k == offer).copied())
}

/// A complete short HTTP response that closes the connection.
pub fn response(status: u16, reason: &str, extra_headers: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\n{extra_headers}Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules<'static> =
        Rules {
            ws_path: "/ws",
            echo_path: Some("/echo"),
            metrics_path: Some("/metrics"),
            allowed_origins: &[],
            compression: false,
            subprotocols: &["shardcast.json.v1", "shardcast.flatbuffers.v1"],
            plain_paths: [None, Some("/sse"), None],
        };

    fn upgrade(path: &str, extra: &str) -> String {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn status(d: Decision) -> u16 {
        match d {
            Decision::Refuse { status, .. } => status,
            Decision::Upgrade { .. } => 101,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn upgrades_with_the_rfc_accept_key_and_keeps_trailing_bytes() {
        let mut req = upgrade("/ws?token=1", "").into_bytes();
        let len = req.len();
        req.extend_from_slice(b"\x81\x80");
        match decide(&req, &RULES) {
            Decision::Upgrade { endpoint, response, consumed, token, .. } => {
                assert_eq!(token.as_deref(), Some("1"));
                assert_eq!(endpoint, Endpoint::PubSub);
                assert_eq!(consumed, len);
                let text = String::from_utf8(response).unwrap();
                assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{text}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(decide(upgrade("/echo", "").as_bytes(), &RULES), Decision::Upgrade { endpoint: Endpoint::Echo, .. }));
    }

    #[test]
    fn token_from_query_first_then_bearer_header() {
        let tok = |path: &str, extra: &str| match decide(upgrade(path, extra).as_bytes(), &RULES) {
            Decision::Upgrade { token, .. } => token,
            other => panic!("{other:?}"),
        };
        assert_eq!(tok("/ws", ""), None);
        assert_eq!(tok("/ws?a=1&token=x.y%2Ez&b=2", "Authorization: Bearer h.h.h\r\n"), Some("x.y.z".into()));
        assert_eq!(tok("/ws", "Authorization: bearer  h.h.h \r\n"), Some("h.h.h".into()));
        assert_eq!(tok("/ws", "Authorization: Basic dXNlcg==\r\n"), None);
        assert_eq!(tok("/ws?token=", ""), Some(String::new()));
    }

    #[test]
    fn subprotocols_pick_the_first_known_offer() {
        let answer = |extra: &str| match decide(upgrade("/ws", extra).as_bytes(), &RULES) {
            Decision::Upgrade { response, subprotocol, .. } => {
                let text = String::from_utf8(response).unwrap();
                let line = text.lines().find_map(|l| l.strip_prefix("Sec-WebSocket-Protocol: ")).map(str::to_string);
                assert_eq!(line.as_deref(), subprotocol, "the answer names the chosen one");
                subprotocol
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(answer(""), None);
        assert_eq!(answer("Sec-WebSocket-Protocol: chat, superchat\r\n"), None, "no known offer: no header");
        assert_eq!(answer("Sec-WebSocket-Protocol: x, shardcast.flatbuffers.v1\r\n"), Some("shardcast.flatbuffers.v1"));
        assert_eq!(
            answer("Sec-WebSocket-Protocol: shardcast.json.v1\r\nSec-WebSocket-Protocol: shardcast.flatbuffers.v1\r\n"),
            Some("shardcast.json.v1")
        );
    }

    #[test]
    fn deflate_only_when_enabled() {
        let offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
        let agreed = |rules: &Rules<'_>| match decide(upgrade("/echo", offer).as_bytes(), rules) {
            Decision::Upgrade { response, deflate, .. } => {
                let text = String::from_utf8(response).unwrap();
                assert_eq!(deflate.is_some(), text.contains("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover"));
                deflate.is_some()
            }
            other => panic!("{other:?}"),
        };
        assert!(!agreed(&RULES));
        assert!(agreed(&Rules { compression: true, ..RULES }));
    }

    #[test]
    fn refusals() {
        assert_eq!(decide(b"GET /ws HTTP/1.1\r\nHost:", &RULES), Decision::Incomplete);
        assert_eq!(status(decide(b"\x16\x03\x01garbage\r\n\r\n", &RULES)), 400);
        assert_eq!(status(decide(upgrade("/nope", "").as_bytes(), &RULES)), 404);
        assert_eq!(status(decide(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", &RULES)), 426);
        assert_eq!(status(decide(upgrade("/ws", "").replace("13", "8").as_bytes(), &RULES)), 426);
        assert_eq!(status(decide(upgrade("/ws", "").replace("GET", "POST").as_bytes(), &RULES)), 405);
        let no_key = upgrade("/ws", "").replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
        assert_eq!(status(decide(no_key.as_bytes(), &RULES)), 400);
        assert_eq!(decide(b"GET /metrics HTTP/1.1\r\n\r\n", &RULES), Decision::Metrics);
        assert_eq!(decide(b"GET /sse?token=x HTTP/1.1\r\n\r\n", &RULES), Decision::Plain(1), "the layer above reads it");
        // Issue 22.12-13: HTTP/1.0, and keys of the right length that are
        // not base64 of 16 bytes.
        assert_eq!(status(decide(upgrade("/ws", "").replace("HTTP/1.1", "HTTP/1.0").as_bytes(), &RULES)), 400);
        for bad in ["!!!!!!!!!!!!!!!!!!!!!!!!", "AAAAAAAAAAAAAAAAAAAAAAAA", "dGhlIHNhbXBsZSBub25jZQ=A"] {
            let request = upgrade("/ws", "").replace("dGhlIHNhbXBsZSBub25jZQ==", bad);
            assert_eq!(status(decide(request.as_bytes(), &RULES)), 400, "{bad}");
        }
    }

    #[test]
    fn origin_policy() {
        let allowed = ["https://good.example".to_string()];
        let rules = Rules { allowed_origins: &allowed, ..RULES };
        assert_eq!(status(decide(upgrade("/ws", "Origin: https://evil.example\r\n").as_bytes(), &rules)), 403);
        assert_eq!(status(decide(upgrade("/ws", "Origin: https://good.example\r\n").as_bytes(), &rules)), 101);
        assert_eq!(status(decide(upgrade("/ws", "").as_bytes(), &rules)), 101);
    }
}
