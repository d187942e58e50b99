//! The backend hooks' thread (`[proxy]`, `[webhooks]`): the shards' hook
//! calls, made as HTTP POSTs to the application's backend, their answers
//! sent back to the asking shard's control channel; and the webhooks, the
//! events the shards queue, sent in signed batches.
//!
//! Its own thread with a single-threaded tokio runtime (pinned to `[admin]
//! cpu` when set, beside the admin thread), so a slow backend costs the
//! shards nothing but the connections that wait for it. Each call runs as
//! its own task under `timeout_ms`; at most `max_inflight` exist at once
//! (counted by the shards' [`HookSender`]).
//!
//! - [`http`]: the pooled HTTP/1.1 client (hyper, rustls).
//! - [`answer`]: what the backend said, judged.
//! - [`webhooks`]: the webhooks' batches, signatures and retries.

pub mod answer;
pub mod http;
pub mod webhooks;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::debug;

use crate::bus::hooks::{Hook, HookAnswer, HookCall, HookReply};
use crate::bus::webhooks::WebhookQueue;
use crate::bus::{ControlMsg, Mailbox};
use crate::config::{Config, ProxyConfig};
use crate::metrics::HookStats;
use http::HttpClient;

/// What the hooks thread serves: the hook calls (with `[proxy]` URLs) and
/// the webhooks' queue (with `[webhooks] url`).
pub struct Work {
    pub calls: Option<(UnboundedReceiver<HookCall>, Arc<HookStats>)>,
    pub webhooks: Option<WebhookQueue>,
}

/// Starts the hooks thread serving `work`; answers go to `mailboxes`.
pub fn spawn(config: Arc<Config>, work: Work, mailboxes: Vec<Mailbox>) -> std::io::Result<()> {
    let proxy = config.proxy.clone();
    let client = |headers: &[(String, String)]| {
        HttpClient::new(proxy.tls.clone(), headers, proxy.max_response_bytes).map_err(|e| std::io::Error::other(format!("the hooks' HTTP client: {e}")))
    };
    let calls = match work.calls {
        Some((calls, stats)) => Some((client(&proxy.static_headers)?, calls, stats)),
        None => None,
    };
    let webhooks = match (work.webhooks, config.webhooks.clone()) {
        // Their own client (no static headers: the signature vouches for them).
        (Some(queue), Some(settings)) => Some((client(&[])?, queue, settings)),
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let cpu = config.admin.as_ref().and_then(|a| a.cpu);
    std::thread::Builder::new().name("shardcast-hooks".into()).spawn(move || {
        if let Some(cpu) = cpu {
            crate::affinity::pin_current_thread(cpu, "hooks");
        }
        runtime.block_on(async move {
            if let Some((client, queue, settings)) = webhooks {
                tokio::spawn(webhooks::serve(settings, client, queue));
            }
            match calls {
                Some((client, calls, stats)) => serve(Arc::new(proxy), client, calls, mailboxes, stats).await,
                None => std::future::pending().await,
            }
        });
    })?;
    Ok(())
}

/// Runs every call as its own task until the shards are gone.
async fn serve(proxy: Arc<ProxyConfig>, client: HttpClient, mut calls: UnboundedReceiver<HookCall>, mailboxes: Vec<Mailbox>, stats: Arc<HookStats>) {
    let mailboxes: Arc<[Mailbox]> = mailboxes.into();
    while let Some(call) = calls.recv().await {
        tokio::spawn(run(proxy.clone(), client.clone(), call, mailboxes.clone(), stats.clone()));
    }
}

/// One call: POST, judge, count, answer the shard.
async fn run(proxy: Arc<ProxyConfig>, client: HttpClient, mut call: HookCall, mailboxes: Arc<[Mailbox]>, stats: Arc<HookStats>) {
    let hook = call.hook;
    let answer = match url(&proxy, hook) {
        Some(url) => {
            let started = Instant::now();
            let posted = client.post_json(url, &[], Bytes::from(std::mem::take(&mut call.body)), proxy.timeout).await;
            stats.observe(hook.index(), started.elapsed());
            answer::bounded(answer::judge(hook, posted), proxy.max_info_bytes)
        }
        // A shard calls only hooks with a URL; were one missing, it fails.
        None => HookAnswer::Failed(crate::bus::hooks::Failure::Transport),
    };
    stats.count(hook.index(), answer.result_index());
    match &answer {
        // Debug, not warn: a backend that is down fails every call, and
        // shardcast_proxy_requests_total counts them without flooding the log.
        HookAnswer::Failed(why) => debug!(hook = hook.name(), conn = %call.conn, ?why, "backend hook failed"),
        _ => debug!(hook = hook.name(), conn = %call.conn, "backend hook answered"),
    }
    if let Some(mailbox) = mailboxes.get(call.shard) {
        mailbox.control(ControlMsg::Hook(HookReply { hook, conn: call.conn, answer }));
    }
}

fn url(proxy: &ProxyConfig, hook: Hook) -> Option<&url::Url> {
    match hook {
        Hook::Connect => proxy.connect_url.as_ref(),
        Hook::Refresh => proxy.refresh_url.as_ref(),
        Hook::Subscribe => proxy.subscribe_url.as_ref(),
        Hook::Publish => proxy.publish_url.as_ref(),
        Hook::Rpc => proxy.rpc_url.as_ref(),
    }
}
