//! Fallback session ids: 128 random bits, then the holding node's id
//! (`<32 hex>:<node id>`), so that a request POSTed to any node can be
//! forwarded to the one that holds the session without a directory. Known
//! only to the client: presence and everything else show client ids.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

const RANDOM_HEX: usize = 32;

/// A fresh session id of node `node`.
pub fn new_id(node: &str) -> String {
    let mut random = [0u8; RANDOM_HEX / 2];
    SystemRandom::new().fill(&mut random).expect("the system's random source works");
    let mut id = String::with_capacity(RANDOM_HEX + 1 + node.len());
    for byte in random {
        id.push_str(&format!("{byte:02x}"));
    }
    id.push(':');
    id.push_str(node);
    id
}

/// The node holding session `id`; `None` when `id` is not a session id's shape.
pub fn node_of(id: &str) -> Option<&str> {
    let (random, node) = id.split_at_checked(RANDOM_HEX)?;
    let node = node.strip_prefix(':')?;
    (random.bytes().all(|b| b.is_ascii_hexdigit()) && !node.is_empty()).then_some(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_and_name_their_node() {
        let (a, b) = (new_id("host-a:1"), new_id("host-a:1"));
        assert_ne!(a, b);
        assert_eq!(node_of(&a), Some("host-a:1"), "the node id may hold a colon itself");
        assert_eq!(a.len(), 32 + 1 + 8);
        for bad in ["", "abc:node", &"g".repeat(32), &format!("{}:", "a".repeat(32)), &format!("{}-x", "a".repeat(32)), "ü"] {
            assert_eq!(node_of(bad), None, "{bad:?}");
        }
    }
}
