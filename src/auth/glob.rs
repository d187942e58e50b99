//! Topic globs: `*` matches any run of characters (`:` included, possibly
//! empty); every other character matches itself. No `?`, no classes, no
//! escapes: topic names may contain anything but control characters, and a
//! pattern language with fewer special characters is one with fewer surprises.

/// A compiled pattern: the literal pieces between its stars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    /// The pattern as written (for logs and errors).
    source: Box<str>,
    /// Literal pieces, split at `*`. `pieces.len() == stars + 1`.
    pieces: Box<[Box<str>]>,
}

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        Glob { source: pattern.into(), pieces: pattern.split('*').map(Into::into).collect() }
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `text` matches the whole pattern.
    ///
    /// Works on bytes: UTF-8 is self-synchronising, so a literal piece
    /// matches at the same places byte-wise as character-wise.
    pub fn matches(&self, text: &str) -> bool {
        let (first, rest) = self.pieces.split_first().expect("split yields at least one piece");
        let mut text = text.as_bytes();
        // Empty pieces (a leading or trailing star, `**`) match trivially; they
        // are skipped rather than compared (a zero-length compare costs a
        // library call).
        if !first.is_empty() {
            let Some(after) = text.strip_prefix(first.as_bytes()) else { return false };
            text = after;
        }
        let Some((last, middle)) = rest.split_last() else {
            // No star: the pattern is a literal.
            return text.is_empty();
        };
        // Each middle piece at its leftmost occurrence: taking the earliest
        // match leaves the most text for the pieces after it, so a greedy
        // scan finds a match whenever one exists.
        for piece in middle.iter().filter(|p| !p.is_empty()) {
            match memchr::memmem::find(text, piece.as_bytes()) {
                Some(at) => text = &text[at + piece.len()..],
                None => return false,
            }
        }
        last.is_empty() || text.ends_with(last.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::Glob;

    fn m(pattern: &str, text: &str) -> bool {
        Glob::new(pattern).matches(text)
    }

    #[test]
    fn literals_match_only_themselves() {
        assert!(m("news", "news"));
        assert!(!m("news", "news2"));
        assert!(!m("news", "new"));
        assert!(m("", ""));
        assert!(!m("", "x"));
    }

    #[test]
    fn star_matches_any_run_including_colons_and_nothing() {
        assert!(m("*", ""));
        assert!(m("*", "a:b:c"));
        assert!(m("chat:*", "chat:"));
        assert!(m("chat:*", "chat:42:sub"));
        assert!(!m("chat:*", "chat"));
        assert!(!m("chat:*", "xchat:1"));
        assert!(m("*:admin", "room:1:admin"));
        assert!(!m("*:admin", "room:1:admins"));
        assert!(m("a*b*c", "abc"));
        assert!(m("a*b*c", "aXbYbZc"));
        assert!(!m("a*b*c", "aXcYb"));
        assert!(m("user:*:inbox", "user:alice:inbox"));
        assert!(m("**", "anything"));
    }

    #[test]
    fn overlapping_prefix_and_suffix_need_distinct_characters() {
        assert!(!m("ab*ba", "aba"));
        assert!(m("ab*ba", "abba"));
        assert!(m("a*a", "aa"));
        assert!(!m("a*a", "a"));
    }

    #[test]
    fn other_characters_are_literal() {
        assert!(m("a?b", "a?b"));
        assert!(!m("a?b", "axb"));
        assert!(m("[x]*", "[x]1"));
        assert!(m("ünï*", "ünïcode"));
    }
}
