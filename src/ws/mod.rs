//! RFC 6455 plumbing: the HTTP upgrade ([`handshake`]) and frames ([`frame`]).
//! Header parsing and the accept key come from tungstenite; what is here is
//! the part tied to shardcast's memory model (borrowed buffers, shared frames).

pub mod deflate;
pub mod frame;
pub mod handshake;
