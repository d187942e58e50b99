//! Topic permissions: `[[namespaces]]` tables, first match wins.
//!
//! A rule set is read-only after start-up and shared by every shard. With no
//! namespaces (the default) every check is answered without matching
//! anything, so a server without permissions pays nothing per publish.

use super::glob::Glob;
use super::Identity;

/// Who may subscribe to or publish on a namespace's topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Every connection, anonymous ones included.
    Anyone,
    /// Any authenticated connection.
    Users,
    /// Authenticated connections whose token's `subscribe` / `publish` claim
    /// has a glob matching the topic.
    Claim,
    /// No client (backends still publish through Redis).
    Nobody,
    /// The backend decides, per request (`[proxy] subscribe_url` /
    /// `publish_url`); the namespace check itself lets it through.
    Proxy,
    /// `subscribe` only: each subscribe carries a subscription token for its
    /// topic (checked by the connection, see `conn::requests::subscribe`);
    /// the rule itself admits nobody.
    Token,
}

impl Access {
    /// Parses a config value; `None` for anything else.
    pub fn parse(value: &str) -> Option<Access> {
        match value {
            "anyone" => Some(Access::Anyone),
            "users" => Some(Access::Users),
            "claim" => Some(Access::Claim),
            "nobody" => Some(Access::Nobody),
            "proxy" => Some(Access::Proxy),
            "token" => Some(Access::Token),
            _ => None,
        }
    }
}

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Subscribe,
    Publish,
}

/// How long and how much of a topic's messages are kept (`history_size`,
/// `history_ttl_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Messages kept per topic (at least 1).
    pub size: usize,
    /// How long the history lives after the topic's last publish.
    pub ttl: std::time::Duration,
}

/// What a namespace turns on for its topics besides permissions. Resolved
/// once per request from the first matching namespace; all off for topics
/// no namespace matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TopicOptions {
    /// `presence` / `presence_stats` requests are answered.
    pub presence: bool,
    /// Subscribers receive `join` and `leave` messages.
    pub join_leave: bool,
    /// Messages carry an offset and epoch and are kept (`None`: a plain topic).
    pub history: Option<HistoryPolicy>,
    /// `subscribe` may carry `recover` (implies `history`).
    pub recover: bool,
}

#[derive(Debug, Clone)]
pub struct Namespace {
    pub pattern: Glob,
    pub subscribe: Access,
    pub publish: Access,
    pub options: TopicOptions,
}

/// The `[[namespaces]]` rules, in file order.
#[derive(Debug, Clone, Default)]
pub struct Namespaces {
    rules: Vec<Namespace>,
    /// Some namespace keeps history: publishes must look their topic up.
    any_history: bool,
}

impl Namespaces {
    pub fn new(rules: Vec<Namespace>) -> Namespaces {
        let any_history = rules.iter().any(|ns| ns.options.history.is_some());
        Namespaces { rules, any_history }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The access rule for `action` on `topic`: the first namespace whose
    /// pattern matches, else `Anyone`.
    pub fn access(&self, topic: &str, action: Action) -> Access {
        match self.rules.iter().find(|ns| ns.pattern.matches(topic)) {
            Some(ns) if action == Action::Subscribe => ns.subscribe,
            Some(ns) => ns.publish,
            None => Access::Anyone,
        }
    }

    /// The options of `topic`'s namespace (all off when none matches).
    pub fn options(&self, topic: &str) -> TopicOptions {
        if self.rules.is_empty() {
            return TopicOptions::default();
        }
        self.rules.iter().find(|ns| ns.pattern.matches(topic)).map(|ns| ns.options).unwrap_or_default()
    }

    /// Whether any namespace keeps history (the publish path asks per
    /// message only when one does).
    pub fn any_history(&self) -> bool {
        self.any_history
    }

    /// Whether `who` (`None`: anonymous) may do `action` on `topic`. A
    /// `token` namespace answers no: its subscriptions are granted one at a
    /// time by subscription tokens, never by the rule.
    pub fn allows(&self, topic: &str, action: Action, who: Option<&Identity>) -> bool {
        if self.rules.is_empty() {
            return true;
        }
        match (self.access(topic, action), who) {
            // Proxy: the connection asks the backend next (the caller checks
            // `access` for it before acting).
            (Access::Anyone | Access::Proxy, _) => true,
            (Access::Users, who) => who.is_some(),
            (Access::Claim, Some(id)) => {
                let claim = match action {
                    Action::Subscribe => &id.subscribe,
                    Action::Publish => &id.publish,
                };
                claim.iter().any(|g| g.matches(topic))
            }
            (Access::Claim, None) | (Access::Nobody, _) | (Access::Token, _) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(pattern: &str, subscribe: Access, publish: Access) -> Namespace {
        Namespace { pattern: Glob::new(pattern), subscribe, publish, options: TopicOptions::default() }
    }

    fn user(subscribe: &[&str], publish: &[&str]) -> Identity {
        Identity {
            user: "alice".into(),
            expires_at: None,
            subscribe: subscribe.iter().map(|g| Glob::new(g)).collect(),
            publish: publish.iter().map(|g| Glob::new(g)).collect(),
            channels: Box::default(),
            info: None,
        }
    }

    #[test]
    fn no_rules_allow_everything() {
        let rules = Namespaces::default();
        assert!(rules.allows("x", Action::Publish, None));
        assert!(rules.allows("x", Action::Subscribe, None));
    }

    #[test]
    fn first_match_wins_and_unmatched_topics_are_open() {
        let rules = Namespaces::new(vec![
            ns("chat:vip:*", Access::Nobody, Access::Nobody),
            ns("chat:*", Access::Users, Access::Claim),
        ]);
        let alice = user(&[], &["chat:1*"]);
        assert!(!rules.allows("chat:vip:1", Action::Subscribe, Some(&alice)), "first match, not the broader one");
        assert!(rules.allows("chat:2", Action::Subscribe, Some(&alice)));
        assert!(!rules.allows("chat:2", Action::Subscribe, None));
        assert!(rules.allows("chat:12", Action::Publish, Some(&alice)));
        assert!(!rules.allows("chat:2", Action::Publish, Some(&alice)));
        assert!(!rules.allows("chat:12", Action::Publish, None));
        assert!(rules.allows("news", Action::Publish, None), "no namespace: anyone");
    }

    #[test]
    fn every_mode() {
        for (mode, anon, authed, claimed) in [
            (Access::Anyone, true, true, true),
            (Access::Users, false, true, true),
            (Access::Claim, false, false, true),
            (Access::Nobody, false, false, false),
            (Access::Token, false, false, false),
        ] {
            let rules = Namespaces::new(vec![ns("*", mode, mode)]);
            let plain = user(&[], &[]);
            let with_claim = user(&["t*"], &["t*"]);
            for action in [Action::Subscribe, Action::Publish] {
                assert_eq!(rules.allows("topic", action, None), anon, "{mode:?} anonymous");
                assert_eq!(rules.allows("topic", action, Some(&plain)), authed, "{mode:?} user");
                assert_eq!(rules.allows("topic", action, Some(&with_claim)), claimed, "{mode:?} claim");
            }
        }
        assert_eq!(Access::parse("users"), Some(Access::Users));
        assert_eq!(Access::parse("Users"), None);
        assert_eq!(Access::parse("token"), Some(Access::Token));
    }
}
