//! What a request to a fallback path asks for: a session to open (the
//! stream's POST, the SSE GET), requests for a session (the emulation
//! POST), a CORS preflight, or a refusal. Pure over the bytes read so far,
//! like `ws::handshake`.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::framing::cors;
use super::Transport;
use crate::ws::handshake::{response, token};

/// Which fallback path a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Stream,
    Sse,
    Emulation,
}

/// What the checks need.
#[derive(Debug)]
pub struct Rules<'a> {
    /// Empty = any origin.
    pub allowed_origins: &'a [String],
    /// `[limits] max_emulation_body_bytes`.
    pub max_body: usize,
}

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// More bytes are needed (the headers, or the body `Content-Length` announces).
    Incomplete,
    /// Open a session: `connect` is the connect request (a JSON object's
    /// text), `token` the connection token from wherever it came, `origin`
    /// the request's (allowed) `Origin`.
    Open { transport: Transport, connect: Option<String>, token: Option<String>, origin: Option<String> },
    /// Run `requests` (each a JSON object's text) on `session`.
    Emulate { session: String, requests: Vec<String>, origin: Option<String> },
    /// Write this whole answer, then close.
    Answer(Vec<u8>),
}

const MAX_HEADERS: usize = 48;

fn refuse(status: u16, reason: &str, extra: &str, origin: Option<&str>, body: &str) -> Decision {
    Decision::Answer(response(status, reason, &format!("{extra}{}", cors(origin)), "text/plain", body.as_bytes()))
}

/// An emulation POST's body.
#[derive(Deserialize)]
struct Batch<'a> {
    session: String,
    #[serde(borrow)]
    requests: Vec<&'a RawValue>,
}

/// Why an emulation body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadBatch {
    /// Not `{"session":"…","requests":[…]}`.
    Shape,
    /// A request that is not a JSON object.
    NotObject,
}

/// An emulation POST's body: the session id and each request's JSON
/// text. Also what a node forwards to another over Redis.
pub fn parse_batch(body: &[u8]) -> Result<(String, Vec<String>), BadBatch> {
    let batch = serde_json::from_slice::<Batch<'_>>(body).map_err(|_| BadBatch::Shape)?;
    if batch.requests.iter().any(|r| !r.get().starts_with('{')) {
        return Err(BadBatch::NotObject);
    }
    Ok((batch.session, batch.requests.iter().map(|r| r.get().to_string()).collect()))
}

/// Decides what to answer to the request at the start of `buf`, which came
/// to the fallback path `route`.
pub fn decide(buf: &[u8], route: Route, rules: &Rules<'_>) -> Decision {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Decision::Incomplete,
        Err(_) => return refuse(400, "Bad Request", "", None, "malformed HTTP request\n"),
    };
    let header = |name: &str| req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    let origin = match header("origin").map(std::str::from_utf8) {
        None => None,
        Some(Ok(origin)) if rules.allowed_origins.is_empty() || rules.allowed_origins.iter().any(|o| o == origin) => Some(origin.to_string()),
        Some(_) => return refuse(403, "Forbidden", "", None, "origin not allowed\n"),
    };
    let origin_ref = origin.as_deref();
    let method = req.method.unwrap_or("");
    if method == "OPTIONS" {
        let allow = "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\nAccess-Control-Allow-Headers: content-type, authorization\r\nAccess-Control-Max-Age: 600\r\n";
        return Decision::Answer(response(204, "No Content", &format!("{allow}{}", cors(origin_ref)), "text/plain", b""));
    }
    let target = req.path.unwrap_or("/");
    let wanted = if route == Route::Sse { "GET" } else { "POST" };
    if method != wanted {
        return refuse(405, "Method Not Allowed", &format!("Allow: {wanted}, OPTIONS\r\n"), origin_ref, "wrong method for this endpoint\n");
    }
    if route == Route::Sse {
        let connect = target.split_once('?').and_then(|(_, q)| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "connect")).map(|(_, v)| v.into_owned());
        if connect.as_deref().is_some_and(|c| !is_object(c)) {
            return refuse(400, "Bad Request", "", origin_ref, "connect must be a JSON object\n");
        }
        return Decision::Open { transport: Transport::Sse, token: token(target, &req), connect, origin };
    }
    if header("transfer-encoding").is_some() {
        return refuse(411, "Length Required", "", origin_ref, "send the body with a Content-Length\n");
    }
    let Some(length) = header("content-length") else {
        return refuse(411, "Length Required", "", origin_ref, "send the body with a Content-Length\n");
    };
    let Some(length) = std::str::from_utf8(length).ok().and_then(|l| l.trim().parse::<usize>().ok()) else {
        return refuse(400, "Bad Request", "", origin_ref, "malformed Content-Length\n");
    };
    if length > rules.max_body {
        return refuse(413, "Payload Too Large", "", origin_ref, "body over limits.max_emulation_body_bytes\n");
    }
    let Some(body) = buf.get(consumed..consumed + length) else { return Decision::Incomplete };
    let Ok(body) = std::str::from_utf8(body) else {
        return refuse(400, "Bad Request", "", origin_ref, "the body is not UTF-8\n");
    };
    if route == Route::Emulation {
        return match parse_batch(body.as_bytes()) {
            Ok((session, requests)) => Decision::Emulate { session, requests, origin },
            Err(BadBatch::Shape) => refuse(400, "Bad Request", "", origin_ref, "expected {\"session\":\"…\",\"requests\":[{…},…]}\n"),
            Err(BadBatch::NotObject) => refuse(400, "Bad Request", "", origin_ref, "every request must be a JSON object\n"),
        };
    }
    let line = body.split('\n').next().unwrap_or("").trim();
    let line = if line.is_empty() { "{}" } else { line };
    if !is_object(line) {
        return refuse(400, "Bad Request", "", origin_ref, "the first line must be the connect request, a JSON object\n");
    }
    Decision::Open { transport: Transport::HttpStream, token: token(target, &req), connect: Some(line.to_string()), origin }
}

fn is_object(text: &str) -> bool {
    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules<'static> = Rules { allowed_origins: &[], max_body: 100 };

    fn post(path: &str, body: &str, extra: &str) -> Vec<u8> {
        format!("POST {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
    }

    fn status(d: Decision) -> u16 {
        match d {
            Decision::Answer(a) => String::from_utf8(a).unwrap()[9..12].parse().unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_stream_opens_with_the_first_line_once_the_body_is_whole() {
        let req = post("/stream?token=q", "{\"type\":\"connect\",\"data\":1}\n{\"ignored\":true}", "");
        assert_eq!(decide(&req[..req.len() - 3], Route::Stream, &RULES), Decision::Incomplete);
        let Decision::Open { transport, connect, token, origin } = decide(&req, Route::Stream, &RULES) else { panic!() };
        assert_eq!((transport, connect.as_deref(), token.as_deref(), origin), (Transport::HttpStream, Some("{\"type\":\"connect\",\"data\":1}"), Some("q"), None));
        let Decision::Open { connect, .. } = decide(&post("/stream", "", ""), Route::Stream, &RULES) else { panic!() };
        assert_eq!(connect.as_deref(), Some("{}"), "an empty body is an empty connect request");
        assert_eq!(status(decide(&post("/stream", "[1]", ""), Route::Stream, &RULES)), 400);
        assert_eq!(status(decide(&post("/stream", &"x".repeat(101), ""), Route::Stream, &RULES)), 413);
        let chunked = b"POST /stream HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(status(decide(chunked, Route::Stream, &RULES)), 411);
        assert_eq!(status(decide(b"GET /stream HTTP/1.1\r\n\r\n", Route::Stream, &RULES)), 405);
    }

    #[test]
    fn sse_takes_its_token_and_connect_from_the_query() {
        let req = b"GET /sse?token=t&connect=%7B%22type%22%3A%22connect%22%7D HTTP/1.1\r\nOrigin: https://a\r\n\r\n";
        let Decision::Open { transport, connect, token, origin } = decide(req, Route::Sse, &RULES) else { panic!() };
        assert_eq!((transport, connect.as_deref(), token.as_deref()), (Transport::Sse, Some("{\"type\":\"connect\"}"), Some("t")));
        assert_eq!(origin.as_deref(), Some("https://a"));
        assert_eq!(status(decide(b"GET /sse?connect=nope HTTP/1.1\r\n\r\n", Route::Sse, &RULES)), 400);
    }

    #[test]
    fn emulation_batches_are_checked_whole() {
        let ok = post("/emulation", r#"{"session":"s","requests":[{"type":"ping"},{"type":"publish","topic":"t","payload":1}]}"#, "");
        let rules = Rules { allowed_origins: &[], max_body: 1000 };
        let Decision::Emulate { session, requests, .. } = decide(&ok, Route::Emulation, &rules) else { panic!() };
        assert_eq!((session.as_str(), requests.len()), ("s", 2));
        assert_eq!(requests[0], r#"{"type":"ping"}"#);
        for bad in ["nope", r#"{"session":1,"requests":[]}"#, r#"{"session":"s","requests":[1]}"#, r#"{"session":"s"}"#] {
            assert_eq!(status(decide(&post("/emulation", bad, ""), Route::Emulation, &rules)), 400, "{bad}");
        }
    }

    #[test]
    fn origins_are_checked_and_preflights_answered() {
        let allowed = ["https://app".to_string()];
        let rules = Rules { allowed_origins: &allowed, max_body: 100 };
        assert_eq!(status(decide(&post("/emulation", "{}", "Origin: https://evil\r\n"), Route::Emulation, &rules)), 403);
        let preflight = decide(b"OPTIONS /emulation HTTP/1.1\r\nOrigin: https://app\r\n\r\n", Route::Emulation, &rules);
        let Decision::Answer(answer) = preflight else { panic!() };
        let answer = String::from_utf8(answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 204") && answer.contains("Access-Control-Allow-Origin: https://app\r\n"), "{answer}");
    }
}
