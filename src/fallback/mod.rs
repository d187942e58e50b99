//! The fallback transports (`docs/protocol.md`, "Fallback transports"):
//! HTTP-streaming and Server-Sent Events, for clients WebSocket cannot
//! reach. Pure functions over bytes: what a request asks for
//! ([`request`]), how a server frame is written on each transport
//! ([`framing`]), and the session ids ([`session`]). A fallback session is
//! otherwise a connection like any other (`conn`): its frames are queued as
//! WebSocket frames and re-framed as they enter its queue
//! (`peer::Peer::push`).

pub mod framing;
pub mod request;
pub mod session;

/// How a connection's frames reach its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    #[default]
    WebSocket,
    /// `POST stream_path`: one JSON frame per line, chunked.
    HttpStream,
    /// `GET sse_path`: one `data:` event per frame.
    Sse,
}

impl Transport {
    /// The welcome's `transport`, the hooks' bodies, the metrics' label.
    pub fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::HttpStream => "http_stream",
            Transport::Sse => "sse",
        }
    }

    pub fn is_fallback(self) -> bool {
        self != Transport::WebSocket
    }
}
