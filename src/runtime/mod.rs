//! Process-level wiring: bind one SO_REUSEPORT listener per shard, start one
//! pinned glommio executor per shard, print the readiness line, turn
//! SIGINT/SIGTERM into a graceful drain and SIGHUP into a certificate reload.
//! `shard`: one shard's life on its executor.

mod shard;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{info, warn};

use crate::admin;
use crate::auth::Admission;
use crate::bus::hooks::HookSender;
use crate::bus::webhooks::WebhookQueue;
use crate::bus::{self, ControlMsg};
use crate::config::Config;
use crate::metrics::ShardStats;
use shard::ShardInit;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot listen on {addr}: another process listens there (another shardcast?); stop it, or set [server] share_port = true to share the port with it on purpose")]
    PortTaken { addr: SocketAddr },
    #[error("cannot set up the cross-shard bus: {0}")]
    Bus(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot start the admin plane: {0}")]
    Admin(std::io::Error),
    #[error("cannot start the backend hooks: {0}")]
    Hooks(std::io::Error),
    #[error("admin.cpu = {cpu} is not among the CPUs this process may use ({allowed:?})")]
    AdminCpu { cpu: usize, allowed: Vec<usize> },
    #[error("cannot start shard {shard}: {reason}")]
    Shard { shard: usize, reason: String },
}

/// Creates one listening socket for a shard; `send_buffer` is SO_SNDBUF
/// (0: the kernel's autotuning).
fn listener(addr: SocketAddr, backlog: i32, send_buffer: usize) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Accepted sockets inherit TCP_NODELAY and SO_SNDBUF: no setsockopt per connection.
    socket.set_nodelay(true)?;
    if send_buffer > 0 {
        socket.set_send_buffer_size(send_buffer)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket)
}

/// How long the start-up check waits for a connection to the port.
const PORT_CHECK_TIMEOUT: Duration = Duration::from_millis(200);

/// How long a listener found on the port may take to go away before the
/// start is refused: a process that just exited (a crash being restarted)
/// can leave its listener accepting for some milliseconds, until the
/// kernel has torn down its io_uring.
const PORT_CHECK_GRACE: Duration = Duration::from_secs(1);

/// Whether another process listens on `addr` (checked before this process
/// binds it): a connection to it is still accepted after
/// [`PORT_CHECK_GRACE`]. A bind without SO_REUSEPORT would say "in use" too
/// for sockets that only hold the port (an outgoing connection that took it
/// as its source port, a closing one), which a listener with SO_REUSEADDR
/// may share; only a listener takes clients away.
fn port_taken(addr: SocketAddr) -> bool {
    if addr.port() == 0 {
        return false;
    }
    let deadline = std::time::Instant::now() + PORT_CHECK_GRACE;
    while accepts(addr) {
        if std::time::Instant::now() >= deadline {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Whether a connection to `addr` (the loopback address for a wildcard) is accepted.
fn accepts(addr: SocketAddr) -> bool {
    let target = match addr.ip() {
        ip if ip.is_unspecified() && addr.is_ipv4() => SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, addr.port())),
        ip if ip.is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
        _ => addr,
    };
    std::net::TcpStream::connect_timeout(&target, PORT_CHECK_TIMEOUT).is_ok()
}

/// Binds `count` listeners on the same address. With port 0, the first one
/// picks the port and the rest join it. Unless `share_port`, a port another
/// process listens on is refused (SO_REUSEPORT would let both take clients).
pub fn bind_all(addr: SocketAddr, count: usize, backlog: i32, send_buffer: usize, share_port: bool) -> Result<(SocketAddr, Vec<Socket>), RuntimeError> {
    let bind_err = |source| RuntimeError::Bind { addr, source };
    if !share_port && port_taken(addr) {
        return Err(RuntimeError::PortTaken { addr });
    }
    let first = listener(addr, backlog, send_buffer).map_err(bind_err)?;
    let bound = first.local_addr().map_err(bind_err)?.as_socket().expect("an IP socket");
    let mut sockets = vec![first];
    for _ in 1..count {
        sockets.push(listener(bound, backlog, send_buffer).map_err(bind_err)?);
    }
    Ok((bound, sockets))
}

/// CPUs this process may run on (respects taskset and cgroup cpusets).
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

/// Warns when the host limits cannot hold `max_connections`.
fn check_host_limits(config: &Config) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let wanted = config.server.max_connections as u64 + 64 + config.server.shards as u64 * 8;
    if lim.rlim_cur < wanted {
        warn!(
            nofile = lim.rlim_cur,
            max_connections = config.server.max_connections,
            "the open-file limit (RLIMIT_NOFILE) is below server.max_connections; connections beyond about {} will be refused at accept. \
             Raise it (LimitNOFILE= in tuning/shardcast.service, or ulimit -n) or lower server.max_connections",
            lim.rlim_cur.saturating_sub(64)
        );
    }
}

/// mimalloc's `purge_delay` option (`include/mimalloc.h`; its default, 1000
/// ms, is how a test checks the number still names it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays with the process (`[server]
/// return_memory_delay_ms`): mimalloc keeps the pages its threads free for
/// reuse, so after a burst of connections RSS would stay at its peak
/// (31.5 -> 43 MiB after three rounds of 2,000 aborted connections).
fn set_return_memory_delay(delay: Option<Duration>) {
    let ms = delay.map_or(-1, |d| d.as_millis() as libc::c_long);
    // SAFETY: mi_option_set stores one option value (an atomic in mimalloc).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms) };
}

/// SIGHUP: re-reads the TLS certificate and key. New handshakes use them;
/// established connections are untouched; a bad file keeps the old ones.
/// Returns true (keep running) whatever happened.
fn reload(config: &Config) -> bool {
    match &config.tls {
        Some(tls) => match tls.certificates.reload() {
            Ok(()) => info!("SIGHUP: TLS certificate and key reloaded"),
            Err(e) => warn!("SIGHUP: {e}; still serving the previous certificate"),
        },
        None => info!("SIGHUP: no TLS certificate to reload"),
    }
    true
}

/// Runs the server until SIGINT/SIGTERM and a completed drain.
pub fn run(config: Config) -> Result<(), RuntimeError> {
    let config = Arc::new(config);
    let shards = config.server.shards;
    set_return_memory_delay(config.server.return_memory_delay);
    check_host_limits(&config);
    let (addr, sockets) = bind_all(config.server.listen, shards, config.server.backlog, config.server.send_buffer_bytes, config.server.share_port)?;
    let (mailboxes, inboxes) = bus::build(shards, config.bus.capacity).map_err(RuntimeError::Bus)?;
    let admin_bound = admin::bind(&config).map_err(|source| RuntimeError::Bind {
        addr: config.admin.as_ref().expect("bind fails only when configured").listen,
        source,
    })?;
    // Other nodes' announcements: bridge shard -> admin thread.
    let (announce_tx, announce_rx) = tokio::sync::mpsc::channel(admin::announcement_queue(&config));
    let bridge_shard = config.redis.as_ref().map(|r| r.bridge_shard);
    let stats: Arc<[ShardStats]> = (0..shards).map(|_| ShardStats::default()).collect();
    let node_connections = Arc::new(AtomicUsize::new(0));
    let sessions = Arc::new(crate::bus::sessions::Sessions::new(config.limits.max_emulation_pending));
    let admission = Arc::new(Admission::new(config.limits.max_connections_per_user, config.limits.max_connections_per_ip));
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(RuntimeError::Signals)?;
    let cpus = allowed_cpus();
    if let Some(cpu) = config.admin.as_ref().and_then(|a| a.cpu) {
        if !cpus.is_empty() && !cpus.contains(&cpu) {
            return Err(RuntimeError::AdminCpu { cpu, allowed: cpus });
        }
    }

    // The backend hooks' thread, when [proxy] sets a URL: it only answers
    // calls, so it may start before the shards that make them.
    let (hooks, calls) = match config.proxy.any() {
        true => {
            let (sender, calls) = HookSender::new(config.proxy.max_inflight);
            let stats = sender.stats.clone();
            (Some(sender), Some((calls, stats)))
        }
        false => (None, None),
    };
    let webhooks = config.webhooks.as_ref().map(|w| WebhookQueue::new(w.events, w.queue_size, w.max_batch));
    if calls.is_some() || webhooks.is_some() {
        let work = crate::hooks::Work { calls, webhooks: webhooks.clone() };
        crate::hooks::spawn(config.clone(), work, mailboxes.clone()).map_err(RuntimeError::Hooks)?;
    }

    let (ready_tx, ready_rx) = mpsc::channel::<usize>();
    let mut handles = Vec::with_capacity(shards);
    for (index, (listener, inbox)) in sockets.into_iter().zip(inboxes).enumerate() {
        let placement = match (config.server.pin_cores, cpus.is_empty()) {
            (true, false) => Placement::Fixed(cpus[index % cpus.len()]),
            _ => Placement::Unbound,
        };
        let init = ShardInit {
            index,
            config: config.clone(),
            listener,
            inbox,
            mailboxes: mailboxes.clone(),
            stats: stats.clone(),
            node: crate::shard::NodeShared { connections: node_connections.clone(), admission: admission.clone(), sessions: sessions.clone() },
            announcements: (admin_bound.is_some() && bridge_shard == Some(index)).then(|| announce_tx.clone()),
            hooks: hooks.clone(),
            webhooks: webhooks.clone(),
        };
        let ready = ready_tx.clone();
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{index}"))
            .spawn(move || shard::run(init, move || {
                let _ = ready.send(index);
            }))
            .map_err(|e| RuntimeError::Shard { shard: index, reason: e.to_string() })?;
        handles.push(handle);
    }
    drop(ready_tx);
    for _ in 0..shards {
        ready_rx.recv().map_err(|_| RuntimeError::Shard { shard: 0, reason: "a shard exited during start-up".into() })?;
    }
    drop(announce_tx);
    let draining = Arc::new(AtomicBool::new(false));
    let admin_addr = match admin_bound {
        Some(bound) => {
            let addr = bound.addr;
            let wiring = admin::Wiring {
                mailboxes: mailboxes.clone(),
                stats: stats.clone(),
                admission: admission.clone(),
                announcements: announce_rx,
                draining: draining.clone(),
                hooks: hooks.as_ref().map(|h| h.stats.clone()),
                webhooks: webhooks.as_ref().map(|q| q.stats().clone()),
            };
            admin::spawn(config.clone(), bound, wiring).map_err(RuntimeError::Admin)?;
            Some(addr)
        }
        None => None,
    };
    info!(shards, node = %config.server.node_id, "accepting connections");
    let mut stdout = std::io::stdout().lock();
    let scheme = if config.tls.is_some() { "wss" } else { "ws" };
    let _ = writeln!(stdout, "listening on {scheme}://{addr}");
    if let Some(admin) = admin_addr {
        let _ = writeln!(stdout, "admin listening on http://{admin}");
    }
    let _ = stdout.flush();
    drop(stdout);

    let signal = signals.forever().find(|&signal| signal != SIGHUP || !reload(&config)).unwrap_or(SIGTERM);
    info!(signal, "shutting down");
    // A second signal stops at once.
    std::thread::spawn(move || {
        if signals.forever().any(|signal| signal != SIGHUP) {
            warn!("second signal: exiting without draining");
            std::process::exit(1);
        }
    });
    draining.store(true, Ordering::Relaxed);
    for mailbox in &mailboxes {
        mailbox.control(ControlMsg::Shutdown);
    }
    let budget = config.shutdown.drain_timeout + config.queue.close_timeout + Duration::from_secs(2);
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for h in handles {
            let _ = h.join();
        }
        let _ = done_tx.send(());
    });
    if done_rx.recv_timeout(budget).is_err() {
        warn!("shards did not stop in time; exiting");
    }
    info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_number_names_mimallocs_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads one option value.
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }, 1000, "mimalloc's default purge delay");
    }
}
