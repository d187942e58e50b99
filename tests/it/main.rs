//! Integration tests: the real `shardcast` binary, real WebSocket clients.
//! One test binary (faster to link); one module per area.

mod util;


mod admin;
mod auth;
mod backend;
mod bench;
mod clients;
mod conformance;
mod errors;
mod fallback;
mod faults;
mod history;
mod hooks;
mod layers;
mod lifecycle;
mod presence;
mod procs;
mod pubsub;
mod recovery;
mod redis;
mod shutdown;
mod sub_tokens;
mod tls;
mod topology;
mod webhooks;
mod wire;
