//! Identity: who a connection is and what it may do.
//!
//! - [`token`]: a connection JWT -> [`Identity`], a subscription JWT ->
//!   [`SubscriptionToken`] (jsonwebtoken does the JOSE parsing and signature
//!   checks; this crate picks the key and applies the claim policy with
//!   millisecond leeway).
//! - [`namespace`]: `[[namespaces]]` rules -> allow / deny per topic.
//! - [`glob`]: the `*` patterns both of them use.
//! - [`admission`]: node-wide connection counts per user and per client IP.
//!
//! Nothing here does I/O or touches shard state: the connection task calls in
//! at connect, `auth`, `refresh`, subscribe and publish time, and keeps the
//! result ([`Identity`]) for the life of the connection, so delivering a
//! message never consults any of it.

pub mod admission;
pub mod glob;
pub mod namespace;
pub mod token;

use std::sync::Arc;

pub use admission::{Admission, IpSlot, UserSlot};
pub use glob::Glob;
pub use namespace::{Access, Action, HistoryPolicy, Namespaces, TopicOptions};
pub use token::{SubscriptionToken, TokenError, Verifier};

use crate::clock::Stamp;

/// An authenticated connection's identity, from its verified token.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The token's `sub`: the user id (1..=256 bytes).
    pub user: Arc<str>,
    /// When the connection must be closed with 4002 (the token's `exp` plus
    /// `[auth] leeway_ms`); `None` for a token without `exp`.
    pub expires_at: Option<Stamp>,
    /// The token's `subscribe` claim: topics a `claim` namespace lets it subscribe to.
    pub subscribe: Box<[Glob]>,
    /// The token's `publish` claim.
    pub publish: Box<[Glob]>,
    /// The token's `channels` claim: topics the connection is subscribed to
    /// by the server when it authenticates (no permission check). Taken out
    /// (left empty) once subscribed, so it is not held for the connection's
    /// life.
    pub channels: Box<[Box<str>]>,
    /// JSON the connect hook attached to the connection, shown with it in
    /// presence (`None` for a token's identity).
    pub info: Option<Arc<str>>,
}

/// Longest `sub` (user id) accepted, in bytes.
pub const MAX_USER_BYTES: usize = 256;

/// Whether `user` can be a user id: 1 to [`MAX_USER_BYTES`] bytes. The one
/// rule for ids arriving from a client's `send`, the admin API and Redis.
pub fn is_user_id(user: &str) -> bool {
    !user.is_empty() && user.len() <= MAX_USER_BYTES
}
