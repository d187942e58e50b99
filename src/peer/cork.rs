//! [`Cork`]: frames queued while the shard works through a batch of input
//! are sent after that batch, once per connection.
//!
//! uWebSockets' cork/uncork, shaped for a glommio shard. A delivery does not
//! wake its subscriber's task; the first frame queued into an empty outbox
//! puts the connection on the shard's cork list and raises the flush task
//! ([`crate::shard::tasks`]), which sends every listed connection's whole
//! queue with one `sendmsg` each. The flush task is woken like any other
//! task, so it runs after the tasks that were already runnable (the batch of
//! input whose deliveries it collects) and, on an idle shard, at once: a
//! lone message still goes out within microseconds of its publish.
//!
//! Under load the batches grow by themselves (more input arrives per turn),
//! so each send carries more frames exactly when sends are what the core is
//! short of. Compared with waking one task per subscriber, it also saves a
//! task poll (and its readiness check) per delivery.
//!
//! The flush task sends in chunks and yields between them when glommio says
//! other work is due, so a flush of many thousands of connections (a
//! heartbeat round, a huge topic) does not hold the reactor off.
//!
//! Only plain TCP connections are sent to directly; a TLS connection's bytes
//! must pass through its record layer, owned by its task, which is woken
//! instead. A send that would block hands the connection back to its task,
//! which waits for writability through the reactor.

use std::cell::RefCell;
use std::rc::Rc;

use super::send::{flush_direct, Flushed};
use super::Peer;
use crate::metrics::ShardStats;
use crate::notify::Notify;

/// The shard's connections with frames to send, each listed at most once
/// (`Peer::set_corked`): bounded by the shard's connections.
#[derive(Default)]
pub struct Cork {
    listed: RefCell<Vec<Rc<Peer>>>,
    /// The flush task sleeps on it while the list is empty.
    pub ready: Notify,
}

impl Cork {
    /// Lists `peer` to be flushed after the current batch.
    pub fn add(&self, peer: &Rc<Peer>) {
        if peer.set_corked(true) {
            return;
        }
        let mut listed = self.listed.borrow_mut();
        listed.push(peer.clone());
        if listed.len() == 1 {
            self.ready.raise();
        }
    }

    /// Moves the listed connections into `batch` (empty; its capacity is
    /// reused), to be sent with [`Cork::send`].
    pub fn take(&self, batch: &mut Vec<Rc<Peer>>) {
        debug_assert!(batch.is_empty());
        std::mem::swap(&mut *self.listed.borrow_mut(), batch);
    }

    /// Sends each connection's whole queue. A connection listed again while
    /// it waited (it was given more) is sent with the next batch.
    pub fn send(peers: &[Rc<Peer>], scratch: &mut Vec<u8>, stats: &ShardStats) {
        for peer in peers {
            peer.set_corked(false);
            if peer.is_aborted() {
                continue;
            }
            // Only plain connections are listed; one without a socket now
            // was detached while listed: its task has ended.
            let Some(fd) = peer.direct_fd() else { continue };
            match flush_direct(&mut peer.outbox(), fd, scratch, stats) {
                Ok(Flushed::All) => {}
                // Its task waits for writability (or meets the error).
                Ok(Flushed::WouldBlock) | Err(_) => peer.wake(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use std::sync::Arc;
    use std::task::{Wake, Waker};
    use std::time::{Duration, Instant};

    use bytes::Bytes;

    use crate::config::{Overflow, QueueConfig};
    use crate::peer::Queueing;
    use crate::ids::ConnId;

    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    #[test]
    fn a_batch_goes_out_in_one_send_per_connection_and_a_full_socket_goes_to_its_task() {
        let (ours, mut client) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let peer = Rc::new(Peer::new(ConnId::new(0, 1), Instant::now()));
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        peer.set_waker(&Waker::from(wakes.clone()));
        peer.send_directly_on(ours.as_raw_fd());
        let (cork, stats) = (Cork::default(), ShardStats::default());
        let limits = QueueConfig { max_messages: 1000, max_bytes: 1 << 20, overflow: Overflow::Disconnect, close_timeout: Duration::from_secs(1) };
        let reframer = std::cell::RefCell::default();
        let q = Queueing { limits: &limits, stats: &stats, cork: &cork, reframer: &reframer };
        let (mut batch, mut scratch) = (Vec::new(), Vec::with_capacity(4096));
        let mut flush = |batch: &mut Vec<Rc<Peer>>| {
            cork.take(batch);
            Cork::send(batch, &mut scratch, &stats);
            let n = batch.len();
            batch.clear();
            n
        };

        for byte in [b'a', b'b', b'c'] {
            peer.push(Bytes::from(vec![byte; 10]), q);
        }
        assert_eq!(cork.listed.borrow().len(), 1, "listed once, however many frames");
        assert_eq!(flush(&mut batch), 1);
        assert_eq!((stats.socket_writes.load(Relaxed), stats.frames_written.load(Relaxed)), (1, 3));
        let mut got = [0; 30];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got[..], [[b'a'; 10], [b'b'; 10], [b'c'; 10]].concat());
        assert!(peer.outbox().is_empty() && cork.listed.borrow().is_empty());
        assert_eq!(wakes.0.load(Relaxed), 0, "its task was not woken");

        // Fill the socket: what cannot be sent stays queued, for the task.
        let mut filler = ours.try_clone().unwrap();
        while filler.write(&[0; 4096]).is_ok() {}
        peer.push(Bytes::from_static(b"later"), q);
        flush(&mut batch);
        assert!(!peer.outbox().is_empty());
        assert_eq!(wakes.0.load(Relaxed), 1, "a full socket wakes the task");

        // After the task ends its descriptor is never written again.
        let mut drained = vec![0; 1 << 20];
        client.set_nonblocking(true).unwrap();
        while client.read(&mut drained).is_ok() {}
        peer.outbox().consume(5, |_| {});
        peer.detach();
        peer.push(Bytes::from_static(b"stale"), q);
        assert!(cork.listed.borrow().is_empty(), "a detached connection is woken, not listed");
        assert_eq!(wakes.0.load(Relaxed), 2);
        assert!(client.read(&mut drained).is_err(), "nothing was sent");
    }
}
