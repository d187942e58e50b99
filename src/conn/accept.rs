//! Accepting connections on a shard's `SO_REUSEPORT` listener (in the
//! shard's readiness set, `accept4` without a `fcntl`): one task per
//! connection ([`super::serve`]); an accept that fails (out of descriptors,
//! say) is counted, logged once per interval, and retried after a pause, so
//! a shortage neither spins nor floods the log.

use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::{spawn_local, timer::sleep};
use tracing::warn;

use crate::metrics::ShardStats;
use crate::readiness::Listener;
use crate::shard::Shard;

/// How often a shard logs that accept() keeps failing (e.g. EMFILE).
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Pause after an accept() failure, so a descriptor shortage does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Accepts connections until cancelled, each served by a task of its own.
pub async fn accept_loop(shard: Rc<Shard>, listener: Listener) {
    let mut last_logged: Option<Instant> = None;
    let mut failures_since_log = 0u64;
    loop {
        match listener.accept().await {
            Ok(stream) => {
                spawn_local(super::serve(shard.clone(), stream)).detach();
            }
            Err(err) => {
                ShardStats::add(&shard.stats().accept_errors, 1);
                failures_since_log += 1;
                let now = Instant::now();
                if last_logged.is_none_or(|t| now.duration_since(t) >= ACCEPT_ERROR_LOG_INTERVAL) {
                    let hint = match err.raw_os_error() {
                        Some(libc::EMFILE) | Some(libc::ENFILE) => {
                            " (out of file descriptors: raise LimitNOFILE / ulimit -n, see tuning/README.md); new connections wait in the backlog"
                        }
                        _ => "",
                    };
                    warn!(shard = shard.index, failures = failures_since_log, "accept failed: {err}{hint}");
                    last_logged = Some(now);
                    failures_since_log = 0;
                }
                sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}
