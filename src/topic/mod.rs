//! Topics: name validation, the reserved internal topics, and the
//! shard-local subscriber registry.

pub mod registry;
pub mod subscribers;

pub use registry::Registry;

/// Topics starting with this are the server's own: clients can neither
/// subscribe nor publish to them (`invalid_topic`).
pub const RESERVED_PREFIX: &str = "$";

/// A user's connections are subscribed to `$user:<user id>`, so direct
/// messages ride the topic machinery: cross-shard interest, fan-out and the
/// Redis bridge's SUBSCRIBE (channel `[redis] channel_prefix` + this topic).
pub const USER_PREFIX: &str = "$user:";

/// Whether `topic` is one of the server's own (not a client's).
pub fn is_internal(topic: &str) -> bool {
    topic.starts_with(RESERVED_PREFIX)
}

/// The internal topic carrying `user`'s direct messages.
pub fn user_topic(user: &str) -> String {
    let mut topic = String::with_capacity(USER_PREFIX.len() + user.len());
    topic.push_str(USER_PREFIX);
    topic.push_str(user);
    topic
}

/// Why a topic name from a client is refused (error code `invalid_topic`).
pub fn validate(topic: &str, max_len: usize) -> Result<(), &'static str> {
    if topic.is_empty() {
        return Err("topic must not be empty");
    }
    if topic.starts_with(RESERVED_PREFIX) {
        return Err("topics starting with '$' are reserved for the server");
    }
    if topic.len() > max_len {
        return Err("topic is longer than limits.max_topic_len");
    }
    if topic.chars().any(char::is_control) {
        return Err("topic must not contain control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_names() {
        assert!(validate("news", 8).is_ok());
        assert!(validate("ünïcode/room:1", 64).is_ok());
        assert!(validate("", 8).is_err());
        assert!(validate("123456789", 8).is_err());
        assert!(validate("a\nb", 8).is_err());
        assert!(validate("a\u{7f}", 8).is_err());
        assert!(validate("a\u{85}", 8).is_err());
        assert!(validate("$user:alice", 64).is_err());
        assert!(validate("$x", 64).is_err());
        assert!(validate("a$", 64).is_ok());
        assert_eq!(user_topic("bob"), "$user:bob");
    }
}
