//! `[[namespaces]]`: per topic glob, who may subscribe and publish, and the
//! topic's options (presence, join/leave, history, recovery).

use serde::{Deserialize, Serialize};

use crate::auth::namespace::{Access, HistoryPolicy, Namespace, Namespaces, TopicOptions};
use crate::auth::Glob;

use super::{invalid, ms, ConfigError};

/// The most messages a topic's history may keep (`history_size`).
const MAX_HISTORY_SIZE: u64 = 1_000_000;

/// The longest a topic's history may outlive its last publish: 30 days.
const MAX_HISTORY_TTL_MS: u64 = 30 * 86_400_000;

/// One `[[namespaces]]` table. `pattern`, `subscribe` and `publish` are
/// required; the topic options default to off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNamespace {
    pub pattern: String,
    pub subscribe: String,
    pub publish: String,
    #[serde(default)]
    pub presence: bool,
    #[serde(default)]
    pub join_leave: bool,
    #[serde(default)]
    pub history_size: u64,
    #[serde(default)]
    pub history_ttl_ms: u64,
    #[serde(default)]
    pub recover: bool,
}

/// `[[namespaces]]`: tables with exactly the known keys, each of its type.
pub(super) fn check_tables(items: &[toml::Value]) -> Result<(), ConfigError> {
    const REQUIRED: [&str; 3] = ["pattern", "subscribe", "publish"];
    const FLAGS: [&str; 3] = ["presence", "join_leave", "recover"];
    const COUNTS: [&str; 2] = ["history_size", "history_ttl_ms"];
    for (i, item) in items.iter().enumerate() {
        let Some(table) = item.as_table() else {
            return Err(ConfigError::WrongType { key: format!("namespaces[{i}]"), expected: "table", found: item.type_str() });
        };
        for (key, value) in table {
            let full = format!("namespaces[{i}].{key}");
            let (expected, ok) = if REQUIRED.contains(&key.as_str()) {
                ("string", value.is_str())
            } else if FLAGS.contains(&key.as_str()) {
                ("boolean", value.is_bool())
            } else if COUNTS.contains(&key.as_str()) {
                ("integer", value.is_integer())
            } else {
                return Err(ConfigError::UnknownKey { key: full });
            };
            if !ok {
                return Err(ConfigError::WrongType { key: full, expected, found: value.type_str() });
            }
            if value.as_integer().is_some_and(|n| n < 0) {
                return Err(invalid(full, value, "a non-negative integer"));
            }
        }
        if let Some(missing) = REQUIRED.iter().find(|k| !table.contains_key(**k)) {
            return Err(invalid(format!("namespaces[{i}].{missing}"), "(missing)", "every namespace sets pattern, subscribe and publish"));
        }
    }
    Ok(())
}

pub(super) fn validate(raw: &[RawNamespace]) -> Result<Namespaces, ConfigError> {
    const MODES: &str = "\"anyone\", \"users\", \"claim\", \"proxy\", \"token\" or \"nobody\"";
    const PUBLISH_MODES: &str = "\"anyone\", \"users\", \"claim\", \"proxy\" or \"nobody\" (\"token\" is for subscribe only)";
    let mut rules = Vec::with_capacity(raw.len());
    for (i, ns) in raw.iter().enumerate() {
        if ns.pattern.is_empty() || ns.pattern.chars().any(char::is_control) {
            return Err(invalid(format!("namespaces[{i}].pattern"), format!("{:?}", ns.pattern), "a non-empty topic glob such as \"chat:*\""));
        }
        let mode = |key: &str, value: &str| {
            Access::parse(value).ok_or_else(|| invalid(format!("namespaces[{i}].{key}"), format!("{value:?}"), MODES))
        };
        // A subscription token grants one topic to one connection; a publish
        // carries no token.
        let publish = match mode("publish", &ns.publish)? {
            Access::Token => return Err(invalid(format!("namespaces[{i}].publish"), format!("{:?}", ns.publish), PUBLISH_MODES)),
            publish => publish,
        };
        let key = |name: &str| format!("namespaces[{i}].{name}");
        let history = match (ns.history_size, ns.history_ttl_ms) {
            (0, _) => None,
            (_, 0) => return Err(invalid(key("history_ttl_ms"), 0, "1..=2592000000 ms: required when history_size > 0")),
            (size, ttl) => {
                if size > MAX_HISTORY_SIZE {
                    return Err(invalid(key("history_size"), size, format!("0 (no history)..={MAX_HISTORY_SIZE} messages")));
                }
                if ttl > MAX_HISTORY_TTL_MS {
                    return Err(invalid(key("history_ttl_ms"), ttl, format!("1..={MAX_HISTORY_TTL_MS} ms")));
                }
                Some(HistoryPolicy { size: size as usize, ttl: ms(ttl) })
            }
        };
        if ns.recover && history.is_none() {
            return Err(invalid(key("recover"), true, "false: recovery needs history (history_size > 0)"));
        }
        rules.push(Namespace {
            pattern: Glob::new(&ns.pattern),
            subscribe: mode("subscribe", &ns.subscribe)?,
            publish,
            options: TopicOptions { presence: ns.presence, join_leave: ns.join_leave, history, recover: ns.recover },
        });
    }
    Ok(Namespaces::new(rules))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::err;
    use crate::config::{Config, Overrides};

    #[test]
    fn namespaces_load_in_order_and_round_trip() {
        let text = "[[namespaces]]\npattern = \"chat:*\"\nsubscribe = \"users\"\npublish = \"claim\"\n[[namespaces]]\npattern = \"*\"\nsubscribe = \"anyone\"\npublish = \"nobody\"\n";
        let c = Config::from_toml(text, &Overrides::default()).unwrap();
        assert_eq!(c.namespaces.access("chat:1", crate::auth::Action::Publish), Access::Claim);
        assert_eq!(c.namespaces.access("news", crate::auth::Action::Publish), Access::Nobody);
        let again = Config::from_toml(&c.raw.to_toml(), &Overrides::default()).unwrap();
        assert_eq!(c.raw, again.raw);
        assert!(Config::defaults().namespaces.is_empty());
    }

    #[test]
    fn bad_namespaces_are_named() {
        let ns = |body: &str| err(&format!("[[namespaces]]\n{body}"));
        assert!(ns("pattern = \"\"\nsubscribe = \"users\"\npublish = \"users\"").contains("namespaces[0].pattern"));
        assert!(ns("pattern = \"a\"\nsubscribe = \"everyone\"\npublish = \"users\"").contains("namespaces[0].subscribe"));
        assert!(ns("pattern = \"a\"\nsubscribe = \"users\"").contains("namespaces[0].publish"));
        assert!(ns("pattern = \"a\"\nsubscribe = \"users\"\npublish = \"users\"\nhistory = 1").contains("namespaces[0].history"));
        assert!(ns("pattern = 1\nsubscribe = \"users\"\npublish = \"users\"").contains("namespaces[0].pattern"));
        let publish_token = ns("pattern = \"a\"\nsubscribe = \"token\"\npublish = \"token\"");
        assert!(publish_token.contains("namespaces[0].publish") && publish_token.contains("subscribe only"), "{publish_token}");
        let c = Config::from_toml("[[namespaces]]\npattern = \"room:*\"\nsubscribe = \"token\"\npublish = \"users\"\n", &Overrides::default()).unwrap();
        assert_eq!(c.namespaces.access("room:1", crate::auth::Action::Subscribe), Access::Token);
    }

    #[test]
    fn topic_options_load_and_bad_ones_are_named() {
        let base = "[[namespaces]]\npattern = \"chat:*\"\nsubscribe = \"anyone\"\npublish = \"anyone\"\n";
        let c = Config::from_toml(
            &format!("{base}presence = true\njoin_leave = true\nhistory_size = 100\nhistory_ttl_ms = 60000\nrecover = true\n"),
            &Overrides::default(),
        )
        .unwrap();
        let o = c.namespaces.options("chat:1");
        assert!(o.presence && o.join_leave && o.recover);
        assert_eq!(o.history.map(|h| (h.size, h.ttl.as_millis())), Some((100, 60_000)));
        assert!(c.namespaces.any_history());
        assert_eq!(c.namespaces.options("news"), crate::auth::TopicOptions::default());
        let plain = Config::from_toml(base, &Overrides::default()).unwrap();
        assert!(!plain.namespaces.any_history(), "a namespace without the keys is plain");
        let bad = |body: &str| err(&format!("{base}{body}"));
        assert!(bad("history_size = 10").contains("namespaces[0].history_ttl_ms"), "ttl is required with history");
        assert!(bad("recover = true").contains("namespaces[0].recover"), "recover needs history");
        assert!(bad("presence = \"yes\"").contains("namespaces[0].presence"));
        assert!(bad("history_size = -1\nhistory_ttl_ms = 1").contains("namespaces[0].history_size"));
        assert!(bad("history_size = 2000000\nhistory_ttl_ms = 1").contains("namespaces[0].history_size"));
        assert!(bad("history_size = 1\nhistory_ttl_ms = 99999999999").contains("namespaces[0].history_ttl_ms"));
        assert!(bad("join_leave = 1").contains("namespaces[0].join_leave"));
        assert!(err("[limits]\nmax_presence_clients = 0").contains("limits.max_presence_clients"));
        assert!(err("[limits]\nhistory_memory_bytes = 1000").contains("limits.history_memory_bytes"));
        assert!(err("[redis]\nurl = \"redis://127.0.0.1:6379\"\npresence_ttl_ms = 10").contains("redis.presence_ttl_ms"));
        assert!(err("[redis]\nurl = \"redis://127.0.0.1:6379\"\nheartbeat_ms = 50").contains("redis.heartbeat_ms"));
    }
}
