//! Topics: name validation and the shard-local subscriber registry.

pub mod registry;

pub use registry::Registry;

/// Why a topic name is refused (error code `invalid_topic`).
pub fn validate(topic: &str, max_len: usize) -> Result<(), &'static str> {
    if topic.is_empty() {
        return Err("topic must not be empty");
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
    }
}
