//! The webhooks' sender: takes the shards' events from the queue in
//! batches, signs each body, POSTs it, and retries what fails.
//!
//! One batch is in flight at a time, so the backend hears the events in
//! the order the queue got them (per shard, the order they happened). A
//! batch goes when it is full or when its first event has waited
//! `max_delay_ms`. A 5xx, a timeout or a failed connection is retried with
//! a doubling backoff (100 ms up to 5 s) for `max_retry_ms`; meanwhile the
//! queue keeps filling up to its bound, and nothing else waits.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use serde::Serialize;
use tracing::{debug, warn};

use super::http::{HttpClient, PostError};
use crate::bus::webhooks::{WebhookEvent, WebhookQueue};
use crate::config::WebhooksConfig;
use crate::metrics::{WEBHOOK_FAILED, WEBHOOK_SENT};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub const SIGNATURE_HEADER: &str = "x-shardcast-signature";
pub const TIMESTAMP_HEADER: &str = "x-shardcast-timestamp";

/// Serves the queue until the process ends.
pub async fn serve(config: WebhooksConfig, client: HttpClient, queue: WebhookQueue) {
    let key = (!config.secret.is_empty()).then(|| hmac::Key::new(hmac::HMAC_SHA256, config.secret.as_bytes()));
    loop {
        while queue.is_empty() {
            queue.ready().await;
        }
        if queue.len() < queue.batch() {
            // Let the batch fill for max_delay_ms (or until it is full).
            let fill = async {
                while queue.len() < queue.batch() {
                    queue.ready().await;
                }
            };
            let _ = tokio::time::timeout(config.max_delay, fill).await;
        }
        let batch = queue.take_batch();
        if !batch.is_empty() {
            send(&config, &client, key.as_ref(), &queue, &batch).await;
        }
    }
}

/// POSTs one batch until it is answered 2xx, refused, or out of retries.
async fn send(config: &WebhooksConfig, client: &HttpClient, key: Option<&hmac::Key>, queue: &WebhookQueue, batch: &[WebhookEvent]) {
    let started = Instant::now();
    let mut backoff = FIRST_BACKOFF;
    let stats = queue.stats();
    loop {
        let time_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let body = Bytes::from(body(time_ms, batch));
        let headers = headers(key, time_ms, &body);
        let retry = match client.post_json(&config.url, &headers, body, config.timeout).await {
            Ok(answer) if (200..300).contains(&answer.status) => {
                stats.count(WEBHOOK_SENT, batch.len() as u64);
                return;
            }
            Ok(answer) if answer.status >= 500 => format!("status {}", answer.status),
            Ok(answer) => {
                warn!(status = answer.status, events = batch.len(), "webhook refused; not retried");
                stats.count(WEBHOOK_FAILED, batch.len() as u64);
                return;
            }
            Err(PostError::TooLong) => {
                warn!(events = batch.len(), "webhook answered with a body over [proxy] max_response_bytes; not retried");
                stats.count(WEBHOOK_FAILED, batch.len() as u64);
                return;
            }
            Err(e) => format!("{e:?}"),
        };
        if started.elapsed() + backoff > config.max_retry {
            warn!(events = batch.len(), why = retry, "webhook given up after webhooks.max_retry_ms");
            stats.count(WEBHOOK_FAILED, batch.len() as u64);
            return;
        }
        debug!(why = retry, ?backoff, "webhook retried");
        stats.retried();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[derive(Serialize)]
struct Body<'a> {
    time_ms: u64,
    events: Vec<Event<'a>>,
}

#[derive(Serialize)]
struct Event<'a> {
    name: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<&'a str>,
}

/// `{"time_ms":…,"events":[…]}`.
pub fn body(time_ms: u64, batch: &[WebhookEvent]) -> Vec<u8> {
    let events = batch
        .iter()
        .map(|e| Event { name: e.kind.name(), topic: e.topic.as_deref(), user: e.user.as_deref(), client: e.client.as_deref() })
        .collect();
    serde_json::to_vec(&Body { time_ms, events }).expect("plain strings and numbers serialise")
}

/// `X-Shardcast-Timestamp` (the body's `time_ms`) and, with a secret,
/// `X-Shardcast-Signature: sha256=<hex of HMAC-SHA256(secret, body)>`.
pub fn headers(key: Option<&hmac::Key>, time_ms: u64, body: &[u8]) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = vec![(HeaderName::from_static(TIMESTAMP_HEADER), HeaderValue::from(time_ms))];
    if let Some(key) = key {
        let tag = hmac::sign(key, body);
        let mut value = String::with_capacity(7 + 64);
        value.push_str("sha256=");
        for byte in tag.as_ref() {
            value.push_str(&format!("{byte:02x}"));
        }
        headers.push((HeaderName::from_static(SIGNATURE_HEADER), HeaderValue::from_str(&value).expect("hex is a valid header value")));
    }
    headers
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::WebhookKind;

    #[test]
    fn body_lists_each_event_with_its_fields() {
        let batch = [
            WebhookEvent::topic(WebhookKind::TopicOccupied, Arc::from("chat")),
            WebhookEvent::member(WebhookKind::MemberAdded, Arc::from("chat"), Arc::from("n:0-1"), Some(Arc::from("alice"))),
            WebhookEvent::client(WebhookKind::ClientDisconnected, Arc::from("n:0-2"), None),
        ];
        let body: serde_json::Value = serde_json::from_slice(&body(7, &batch)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"time_ms": 7, "events": [
                {"name": "topic_occupied", "topic": "chat"},
                {"name": "member_added", "topic": "chat", "user": "alice", "client": "n:0-1"},
                {"name": "client_disconnected", "user": "", "client": "n:0-2"},
            ]})
        );
    }

    #[test]
    fn signature_is_the_hmac_sha256_of_the_body_in_hex() {
        // RFC 4231, test case 2.
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let headers = headers(Some(&key), 5, b"what do ya want for nothing?");
        assert_eq!(headers[0].1, "5");
        assert_eq!(headers[1].1, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert_eq!(super::headers(None, 5, b"").len(), 1, "no secret, no signature");
    }
}
