//! What the replies on a publisher connection do: a publish is counted
//! published, a read is answered to the connection waiting for it, a
//! refill is delivered; an error reply, or a connection that failed before
//! the reply came, fails the command (a publish counted dropped, a read
//! answered "unavailable"); a cluster redirection sends the command again
//! (it was not run, so "at most once" holds). Runs on the bridge shard.

use std::sync::Arc;

use redis::Value;
use tracing::{debug, warn};

use super::cluster::{self, Redirect};
use super::inbound::deliver_refill;
use super::{scripts, Bridge, OnReply, Outbound, MAX_REDIRECTS};
use crate::clock::Stamp;
use crate::protocol::position::Position;
use crate::metrics::ShardStats;
use crate::protocol::{Kind, Outgoing};
use crate::shard::Shard;

impl Bridge {
    /// A command whose reply will never come.
    pub(super) fn fail(&self, shard: &Shard, on_reply: OnReply) {
        match on_reply {
            OnReply::Count => ShardStats::add(&shard.stats().redis_dropped, 1),
            OnReply::Setup => {}
            // The write is lost; the refresh after the reconnect rewrites it.
            OnReply::Written(acks) => acks.into_iter().for_each(|ack| shard.interest_acked(ack)),
            // The gap stays (the offsets show it); what was held goes out.
            OnReply::Refill { topic, .. } => deliver_refill(shard, self, &topic, Vec::new()),
            OnReply::History { to, .. } => shard.answer_history(to, None),
            OnReply::Presence { from, conn, id, .. } => shard.answer_presence(from, conn, id, None),
            // Nothing more can come from a connection that failed.
            OnReply::Drain { slot, id } => {
                self.drain_done(slot, id);
            }
            // Not reported: the change is lost with the reply.
            OnReply::Occupancy { topic, occupied } => debug!(%topic, occupied, "occupancy change not reported: no reply from Redis"),
        }
    }

    /// A command the publisher connection it was written on will never
    /// answer (the connection failed).
    pub(super) fn lost(&self, shard: &Shard, mut command: Outbound) {
        let (slot, fenced) = (command.slot, std::mem::take(&mut command.fenced));
        self.fail(shard, command.on_reply);
        self.settled(slot, fenced);
    }

    /// Hands one reply of a publisher connection to whoever waits for it,
    /// then lets the command's slot fence know.
    pub(super) fn on_command_reply(&self, shard: &Shard, mut command: Outbound, reply: Value) {
        let (slot, fenced) = (command.slot, std::mem::take(&mut command.fenced));
        self.handle_reply(shard, command, reply);
        self.settled(slot, fenced);
    }

    fn handle_reply(&self, shard: &Shard, command: Outbound, reply: Value) {
        let stats = shard.stats();
        if let OnReply::Drain { slot, id } = command.on_reply {
            // Run: wait to hear it on the new owner. Refused (MOVED: the old
            // owner does not forward to the new one): nothing can come later.
            if matches!(reply, Value::ServerError(_)) {
                self.drain_done(slot, id);
            }
            return;
        }
        if let Value::ServerError(e) = &reply {
            if self.is_cluster() {
                if let Some(redirect) = cluster::redirect(e.code(), e.details()) {
                    return self.redirect(shard, command, redirect);
                }
            }
            warn!("redis refused a command: {e:?}");
            return self.fail(shard, command.on_reply);
        }
        match command.on_reply {
            OnReply::Count => ShardStats::add(&stats.redis_published, 1),
            OnReply::Setup | OnReply::Drain { .. } => {}
            OnReply::Occupancy { topic, occupied } => super::occupancy::on_reply(shard, topic, occupied, &reply),
            OnReply::Written(acks) => acks.into_iter().for_each(|ack| shard.interest_acked(ack)),
            OnReply::Refill { topic, epoch: wanted } => {
                let max = shard.config.limits.max_message_bytes;
                let filled: Vec<Arc<Outgoing>> = match scripts::parse_read(&reply, max) {
                    // Another epoch since: the missing messages are gone.
                    Some((_, epoch, _)) if *epoch != *wanted => Vec::new(),
                    Some((_, epoch, publications)) => {
                        let epoch: Arc<str> = epoch.into();
                        ShardStats::add(&stats.history_refilled, publications.len() as u64);
                        publications
                            .into_iter()
                            .map(|p| {
                                let position = Some(Position { offset: p.offset, epoch: epoch.clone() });
                                Outgoing::positioned(&topic, Kind::Message, p.payload, p.json, position, Stamp::now())
                            })
                            .collect()
                    }
                    None => {
                        ShardStats::add(&stats.redis_bad_messages, 1);
                        Vec::new()
                    }
                };
                deliver_refill(shard, self, &topic, filled);
            }
            OnReply::History { query, to } => {
                let read = scripts::parse_read(&reply, shard.config.limits.max_message_bytes);
                if read.is_none() {
                    ShardStats::add(&stats.redis_bad_messages, 1);
                }
                let answer = read.map(|(top, epoch, publications)| {
                    crate::history::answer(&query, Position { offset: top, epoch: epoch.into() }, publications.into_iter())
                });
                shard.answer_history(to, answer);
            }
            OnReply::Presence { stats: want_stats, from, conn, id } => {
                let found = scripts::parse_presence(&reply, want_stats).map(|(found, skipped)| {
                    ShardStats::add(&stats.presence_bad_entries, skipped);
                    found
                });
                if found.is_none() {
                    ShardStats::add(&stats.redis_bad_messages, 1);
                }
                shard.answer_presence(from, conn, id, found);
            }
        }
    }

    /// Cluster mode: a primary answered that another serves the command's slot
    /// (`MOVED`: the map is stale, read it again; `ASK`: only this command, mid
    /// migration) or that it cannot serve it now (`TRYAGAIN`, `CLUSTERDOWN`).
    /// The command was not run, so sending it again keeps "at most once".
    fn redirect(&self, shard: &Shard, mut command: Outbound, redirect: Redirect) {
        ShardStats::add(&shard.stats().redis_redirects, 1);
        if command.redirects >= MAX_REDIRECTS || command.packed.is_empty() {
            debug!(?redirect, "redis: a command was redirected too often; given up");
            return self.fail(shard, command.on_reply);
        }
        command.redirects += 1;
        if !matches!(redirect, Redirect::Ask { .. }) {
            self.refresh.raise();
        }
        // The slot changed hands since the command was sent: it goes ahead
        // of the slot's commands waiting there, to the owner the fence
        // lifts to (an ASK's target may be gone by then: no ASKING).
        let Err(command) = self.fences.borrow_mut().hold_returned(command) else { return };
        match redirect {
            Redirect::Ask { host, port } => match self.link_at(&host, port) {
                Some(link) => {
                    // ASKING and the command, back to back on that connection.
                    let mut outbound = link.outbound.borrow_mut();
                    outbound.push_back(Outbound::setup_command(redis::cmd("ASKING").get_packed_command()));
                    outbound.push_back(command);
                    drop(outbound);
                    link.outbound_ready.raise();
                }
                None => {
                    self.unrouted.borrow_mut().push_back(command);
                    self.refresh.raise();
                }
            },
            Redirect::Moved { host, port } => {
                match self.link_at(&host, port) {
                    Some(link) => link.push(command, self.config.buffer_messages, shard.stats()),
                    None => self.unrouted.borrow_mut().push_back(command),
                }
            }
            Redirect::Retry => {
                // Sent again after the next slot map read.
                self.unrouted.borrow_mut().push_back(command);
            }
        }
    }
}
