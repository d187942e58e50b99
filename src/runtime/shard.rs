//! One shard's life on its pinned executor: the [`Shard`] built, its
//! listener's accept loop (`conn`), its background tasks and bus loop
//! (`shard::tasks`), its bridge to Redis on the bridge shard (`bridge`),
//! then, at the shutdown signal, the shutdown (`shard::shutdown`).

use std::rc::Rc;
use std::sync::Arc;

use glommio::spawn_local;
use tracing::{debug, error};

use crate::bridge::Bridge;
use crate::bus::{Inbox, Mailbox};
use crate::config::Config;
use crate::conn;
use crate::metrics::ShardStats;
use crate::readiness::{Listener, Readiness};
use crate::shard::{self, Shard};

/// Everything a shard needs, built on the main thread and moved to its own.
pub struct ShardInit {
    pub index: usize,
    pub config: Arc<Config>,
    pub listener: socket2::Socket,
    pub inbox: Inbox,
    pub mailboxes: Vec<Mailbox>,
    pub stats: Arc<[ShardStats]>,
    /// Counts and tables every shard shares.
    pub node: crate::shard::NodeShared,
    /// Where the bridge shard hands other nodes' announcements to the admin thread.
    pub announcements: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
    /// The way to the backend hooks' thread, when `[proxy]` sets a URL.
    pub hooks: Option<crate::bus::hooks::HookSender>,
    /// The webhooks' queue, when `[webhooks] url` is set.
    pub webhooks: Option<crate::bus::webhooks::WebhookQueue>,
}

/// The shard's whole life, run inside its pinned executor. `ready` is called
/// once it accepts connections.
pub async fn run(init: ShardInit, ready: impl FnOnce()) {
    let ShardInit { index, config, listener, inbox, mailboxes, stats, node, announcements, hooks, webhooks } = init;
    let bridge = config
        .redis
        .as_ref()
        .filter(|r| r.bridge_shard == index)
        .map(|r| Rc::new(Bridge::new(r.clone(), config.server.node_id.clone(), announcements)));
    let bell = inbox.bell.clone();
    let readiness = match Readiness::new(&format!("shard-{index}"), move || bell.ring()) {
        Ok(readiness) => Rc::new(readiness),
        Err(e) => return error!(shard = index, "cannot create the shard's readiness set: {e}"),
    };
    let listener = match Listener::new(listener, &readiness) {
        Ok(listener) => listener,
        Err(e) => return error!(shard = index, "cannot watch the shard's listener: {e}"),
    };
    let shard = Rc::new(Shard::new(index, config, mailboxes, stats, node, readiness));
    if let Some(bridge) = &bridge {
        shard.attach_remote(bridge.clone());
    }
    if let Some(queue) = webhooks {
        shard.attach_webhooks(queue);
    }
    if let Some(hooks) = hooks {
        shard.attach_hooks(hooks);
    }
    let accept = spawn_local(conn::accept_loop(shard.clone(), listener)).detach();
    let background = shard::tasks::start(&shard);
    if let Some(bridge) = &bridge {
        crate::bridge::spawn(shard.clone(), bridge.clone());
    }
    ready();
    let inbox = shard::tasks::serve_bus(&shard, inbox).await;
    accept.cancel();
    shard::shutdown::shut_down(&shard, &inbox).await;
    background.stop();
    if let Some(bridge) = &bridge {
        bridge.stop();
    }
    debug!(shard = index, "shard stopped");
}
