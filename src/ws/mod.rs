//! RFC 6455 plumbing: the HTTP upgrade ([`handshake`]), frames ([`frame`]),
//! frames into messages ([`reader`]) and permessage-deflate ([`deflate`]).
//! Header parsing and the accept key come from tungstenite; what is here is
//! the part tied to shardcast's memory model (borrowed buffers, shared frames).
//! Pure functions and state machines over bytes: no I/O, so each is unit-tested
//! and fuzzed (`fuzz/`) without a socket.

pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod reader;
