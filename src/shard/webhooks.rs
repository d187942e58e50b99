//! The shard's side of the webhooks (`[webhooks]`): the events it sees,
//! queued for the hooks thread, never waited for.
//!
//! - `client_connected` / `client_disconnected`: by the connection's shard,
//!   at its first welcome and at its end.
//! - `member_added` / `member_removed`: by the topic's presence owner
//!   (`presence`), for presence topics.
//! - `topic_occupied` / `topic_vacated`: by one shard per node, the bridge
//!   shard with Redis, else shard 0; it learns of every change of the
//!   node's interest, and keeps the set of occupied topics. Without Redis a
//!   change of the node is the cluster's; with Redis the bridge asks Redis
//!   whether it is the cluster's first or last (`bridge::occupancy`).

use std::sync::Arc;

use super::Shard;
use crate::bus::webhooks::{WebhookEvent, WebhookQueue};
use crate::config::WebhookKind;

impl Shard {
    /// Connects the shard to the webhooks' queue (once, at start, when
    /// `[webhooks] url` is set).
    pub fn attach_webhooks(&self, queue: WebhookQueue) {
        let _ = self.webhooks.set(queue);
    }

    /// The queue, when events of `kind` are sent.
    fn webhooks_for(&self, kind: WebhookKind) -> Option<&WebhookQueue> {
        self.webhooks.get().filter(|q| q.wants(kind))
    }

    /// Queues `event` (dropped at once when its kind is not sent).
    pub fn webhook(&self, event: WebhookEvent) {
        if let Some(queue) = self.webhooks.get() {
            queue.push(event);
        }
    }

    /// A connection was welcomed (`connected`) or ended after its welcome.
    pub fn client_event(&self, connected: bool, client: Arc<str>, user: Option<&str>) {
        let kind = if connected { WebhookKind::ClientConnected } else { WebhookKind::ClientDisconnected };
        if let Some(queue) = self.webhooks_for(kind) {
            queue.push(WebhookEvent::client(kind, client, user.map(Arc::from)));
        }
    }

    /// A member joined (`added`) or left a presence topic; called by the
    /// topic's presence owner.
    pub(super) fn member_event(&self, added: bool, topic: &str, client: &Arc<str>, user: Option<&Arc<str>>) {
        let kind = if added { WebhookKind::MemberAdded } else { WebhookKind::MemberRemoved };
        if !self.config.namespaces.options(topic).presence {
            return;
        }
        if let Some(queue) = self.webhooks_for(kind) {
            queue.push(WebhookEvent::member(kind, topic.into(), client.clone(), user.cloned()));
        }
    }

    /// The node's interest in `topic` is now `interested`; on the shard that
    /// tracks occupancy, a change is reported.
    pub(super) fn occupancy(&self, topic: &str, interested: bool) {
        if self.index != self.bridge_shard.unwrap_or(0) || crate::topic::is_internal(topic) {
            return;
        }
        let wanted = [WebhookKind::TopicOccupied, WebhookKind::TopicVacated].into_iter().any(|k| self.webhooks_for(k).is_some());
        if !wanted {
            return;
        }
        let changed = {
            let mut occupied = self.occupied.borrow_mut();
            match interested {
                true => !occupied.contains(topic) && occupied.insert(topic.into()),
                false => occupied.remove(topic),
            }
        };
        if !changed {
            return;
        }
        match self.remote() {
            Some(link) => link.occupancy(topic, interested),
            None => {
                let kind = if interested { WebhookKind::TopicOccupied } else { WebhookKind::TopicVacated };
                self.webhook(WebhookEvent::topic(kind, topic.into()));
            }
        }
    }
}
