//! Webhook events on their way from the shards to the hooks thread
//! (`[webhooks]`): a bounded queue that never blocks the shard that pushes.
//!
//! A shard pushes an event and goes on; the hooks thread takes them in
//! batches. At `queue_size` the oldest event is dropped and counted, so a
//! backend that is down costs a bounded amount of memory and nothing else.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::config::{WebhookKind, WebhookKinds};
use crate::metrics::WebhookStats;

/// One event, as the body lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    pub kind: WebhookKind,
    /// `topic_*` and `member_*`.
    pub topic: Option<Arc<str>>,
    /// `member_*` and `client_*`: the client id.
    pub client: Option<Arc<str>>,
    /// `member_*` and `client_*`: the user, `""` for an anonymous one.
    pub user: Option<Arc<str>>,
}

impl WebhookEvent {
    pub fn topic(kind: WebhookKind, topic: Arc<str>) -> WebhookEvent {
        WebhookEvent { kind, topic: Some(topic), client: None, user: None }
    }

    pub fn member(kind: WebhookKind, topic: Arc<str>, client: Arc<str>, user: Option<Arc<str>>) -> WebhookEvent {
        WebhookEvent { kind, topic: Some(topic), client: Some(client), user: Some(user.unwrap_or_else(|| Arc::from(""))) }
    }

    pub fn client(kind: WebhookKind, client: Arc<str>, user: Option<Arc<str>>) -> WebhookEvent {
        WebhookEvent { kind, topic: None, client: Some(client), user: Some(user.unwrap_or_else(|| Arc::from(""))) }
    }
}

/// The queue, shared by every shard (pushing) and the hooks thread (taking).
#[derive(Debug, Clone)]
pub struct WebhookQueue(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    events: Mutex<VecDeque<WebhookEvent>>,
    /// Raised when the queue stops being empty or holds a whole batch.
    ready: Notify,
    wanted: WebhookKinds,
    capacity: usize,
    batch: usize,
    stats: Arc<WebhookStats>,
}

impl WebhookQueue {
    pub fn new(wanted: WebhookKinds, capacity: usize, batch: usize) -> WebhookQueue {
        WebhookQueue(Arc::new(Shared {
            events: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            wanted,
            capacity,
            batch,
            stats: Arc::default(),
        }))
    }

    /// Whether events of `kind` are sent (a shard skips building the others).
    pub fn wants(&self, kind: WebhookKind) -> bool {
        self.0.wanted.contains(kind)
    }

    /// Queues `event` if its kind is wanted, dropping the oldest at the bound.
    pub fn push(&self, event: WebhookEvent) {
        if !self.wants(event.kind) {
            return;
        }
        let shared = &*self.0;
        let mut events = shared.events.lock().unwrap_or_else(|e| e.into_inner());
        if events.len() >= shared.capacity {
            events.pop_front();
            shared.stats.dropped(1);
        }
        events.push_back(event);
        let len = events.len();
        drop(events);
        shared.stats.set_depth(len);
        if len == 1 || len == shared.batch {
            shared.ready.notify_one();
        }
    }

    /// Up to a batch of the oldest events (empty when there are none).
    pub fn take_batch(&self) -> Vec<WebhookEvent> {
        let shared = &*self.0;
        let mut events = shared.events.lock().unwrap_or_else(|e| e.into_inner());
        let n = events.len().min(shared.batch);
        let batch: Vec<_> = events.drain(..n).collect();
        let len = events.len();
        drop(events);
        shared.stats.set_depth(len);
        batch
    }

    /// Events waiting now.
    pub fn len(&self) -> usize {
        self.0.events.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves once an event arrived in an empty queue or a batch is full
    /// (or at once, when that happened since the last wait).
    pub async fn ready(&self) {
        self.0.ready.notified().await;
    }

    pub fn batch(&self) -> usize {
        self.0.batch
    }

    pub fn stats(&self) -> &Arc<WebhookStats> {
        &self.0.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connected(n: usize) -> WebhookEvent {
        WebhookEvent::client(WebhookKind::ClientConnected, Arc::from(n.to_string()), None)
    }

    #[test]
    fn full_queue_drops_the_oldest_and_counts_it() {
        let mut all = WebhookKinds::default();
        all.insert(WebhookKind::ClientConnected);
        let q = WebhookQueue::new(all, 3, 2);
        for n in 0..5 {
            q.push(connected(n));
        }
        assert_eq!(q.len(), 3);
        assert_eq!(q.stats().events(crate::metrics::WEBHOOK_DROPPED), 2);
        let first = q.take_batch();
        assert_eq!(first, vec![connected(2), connected(3)], "oldest kept first, a batch at most");
        assert_eq!(q.take_batch(), vec![connected(4)]);
        assert!(q.take_batch().is_empty());
        assert_eq!(q.stats().depth(), 0);
    }

    #[test]
    fn unwanted_kinds_are_not_queued() {
        let q = WebhookQueue::new(WebhookKinds::default(), 10, 10);
        q.push(connected(1));
        assert!(q.is_empty());
    }
}
