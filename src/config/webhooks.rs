//! `[webhooks]`: batched, signed POSTs to the application's backend about
//! rooms and clients (`docs/admin.md`, "Webhooks").

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, ms, ranged, ConfigError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhooks {
    pub url: String,
    pub secret: String,
    pub events: Vec<String>,
    pub max_batch: u64,
    pub max_delay_ms: u64,
    pub queue_size: u64,
    pub max_retry_ms: u64,
    pub timeout_ms: u64,
}

/// The events a webhook can carry, in the order of [`EVENT_NAMES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookKind {
    TopicOccupied,
    TopicVacated,
    MemberAdded,
    MemberRemoved,
    ClientConnected,
    ClientDisconnected,
}

/// The events' names as the body and `events` spell them.
pub const EVENT_NAMES: [&str; 6] = ["topic_occupied", "topic_vacated", "member_added", "member_removed", "client_connected", "client_disconnected"];

impl WebhookKind {
    pub const ALL: [WebhookKind; 6] = [
        WebhookKind::TopicOccupied,
        WebhookKind::TopicVacated,
        WebhookKind::MemberAdded,
        WebhookKind::MemberRemoved,
        WebhookKind::ClientConnected,
        WebhookKind::ClientDisconnected,
    ];

    pub fn name(self) -> &'static str {
        EVENT_NAMES[self as usize]
    }
}

/// A set of [`WebhookKind`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookKinds(u8);

impl WebhookKinds {
    pub fn contains(self, kind: WebhookKind) -> bool {
        self.0 & (1 << kind as u8) != 0
    }

    pub fn insert(&mut self, kind: WebhookKind) {
        self.0 |= 1 << kind as u8;
    }
}

/// `[webhooks]`, validated; `None` in [`super::Config`] when `url` is empty.
#[derive(Debug, Clone)]
pub struct WebhooksConfig {
    pub url: url::Url,
    /// The HMAC-SHA256 key of `X-Shardcast-Signature`; empty: unsigned.
    pub secret: String,
    pub events: WebhookKinds,
    pub max_batch: usize,
    /// How long the first event of a batch waits for more.
    pub max_delay: Duration,
    /// Events waiting to be sent; beyond it the oldest is dropped.
    pub queue_size: usize,
    /// How long one batch is retried (5xx, timeouts, refused) before it is
    /// given up.
    pub max_retry: Duration,
    /// Time the backend has to answer one POST.
    pub timeout: Duration,
}

pub(super) fn validate(w: &RawWebhooks) -> Result<Option<WebhooksConfig>, ConfigError> {
    let mut events = WebhookKinds::default();
    for (i, name) in w.events.iter().enumerate() {
        let Some(kind) = WebhookKind::ALL.into_iter().find(|k| k.name() == name) else {
            return Err(invalid(format!("webhooks.events[{i}]"), format!("{name:?}"), format!("one of {}", EVENT_NAMES.join(", "))));
        };
        events.insert(kind);
    }
    let max_batch = ranged("webhooks.max_batch", w.max_batch, 1, 10_000, "1..=10000")?;
    let max_delay = ms(ranged::<u64>("webhooks.max_delay_ms", w.max_delay_ms, 0, 60_000, "0..=60000 ms")?);
    let queue_size: usize = ranged("webhooks.queue_size", w.queue_size, 1, 10_000_000, "1..=10000000")?;
    if queue_size < max_batch {
        return Err(invalid("webhooks.queue_size", queue_size, format!("at least webhooks.max_batch ({max_batch})")));
    }
    let max_retry = ms(ranged::<u64>("webhooks.max_retry_ms", w.max_retry_ms, 0, 86_400_000, "0..=86400000 ms")?);
    let timeout = ms(ranged::<u64>("webhooks.timeout_ms", w.timeout_ms, 10, 600_000, "10..=600000 ms")?);
    let Some(url) = super::proxy::hook_url("webhooks.url", &w.url)? else { return Ok(None) };
    Ok(Some(WebhooksConfig { url, secret: w.secret.clone(), events, max_batch, max_delay, queue_size, max_retry, timeout }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::err;
    use crate::config::{Config, Overrides};

    #[test]
    fn off_by_default_and_every_event_when_on() {
        assert!(Config::defaults().webhooks.is_none());
        let c = Config::from_toml("[webhooks]\nurl = \"http://127.0.0.1:9/hook\"\nsecret = \"s\"", &Overrides::default()).unwrap();
        let w = c.webhooks.unwrap();
        assert!(WebhookKind::ALL.into_iter().all(|k| w.events.contains(k)));
        assert_eq!((w.max_batch, w.max_delay, w.queue_size), (100, Duration::from_millis(200), 100_000));
        assert_eq!((w.max_retry, w.timeout), (Duration::from_secs(60), Duration::from_secs(3)));
    }

    #[test]
    fn bad_values_name_their_key() {
        assert!(err("[webhooks]\nurl = \"ftp://x\"").contains("`webhooks.url`"));
        assert!(err("[webhooks]\nevents = [\"topic_occupied\", \"nope\"]").contains("`webhooks.events[1]`"));
        assert!(err("[webhooks]\nmax_batch = 0").contains("`webhooks.max_batch`"));
        assert!(err("[webhooks]\nqueue_size = 10\nmax_batch = 20").contains("`webhooks.queue_size`"));
    }

    #[test]
    fn events_choose_a_subset() {
        let c = Config::from_toml("[webhooks]\nurl = \"https://example.com/h\"\nevents = [\"client_connected\"]", &Overrides::default()).unwrap();
        let w = c.webhooks.unwrap();
        assert!(w.events.contains(WebhookKind::ClientConnected));
        assert!(!w.events.contains(WebhookKind::TopicOccupied));
    }
}
