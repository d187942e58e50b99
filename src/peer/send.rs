//! Writing a connection's queue to its plain TCP socket without waiting:
//! small frames copied into one buffer and sent with one `sendmsg`, large
//! ones as a vectored write straight from the queue. Used by the shard's
//! flush ([`super::Cork`]) and by the connection's own task.

use std::io;

use super::Outbox;
use crate::clock::Stamp;
use crate::metrics::ShardStats;
use crate::readiness::send_vectored;

/// Frames gathered into one `sendmsg`.
pub const MAX_IOVECS: usize = 64;

/// Records `n` bytes written from `out`: frames completed, and how long each
/// waited in the queue (one clock read per write, not per frame).
pub fn wrote(out: &mut Outbox, n: usize, stats: &ShardStats) {
    let now = Stamp::now();
    let mut frames = 0;
    out.consume(n, |queued| {
        stats.write_delay.observe_micros(now.micros_since(queued));
        frames += 1;
    });
    ShardStats::add(&stats.frames_written, frames);
}

/// What [`flush_direct`] left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// The outbox is empty.
    All,
    /// The socket's send buffer is full; frames remain.
    WouldBlock,
}

/// Sends `out` on the plain socket `fd` until it is empty or the socket is
/// full, without waiting. Small frames are copied into the shard's write
/// `scratch` and sent with one `send` (one kernel copy of one buffer beats
/// many tiny iovecs); a frame too large for the scratch goes out as a
/// vectored write straight from the queue. Used by a connection's task and
/// by the shard's flush ([`super::Cork`]).
pub fn flush_direct(out: &mut Outbox, fd: i32, scratch: &mut Vec<u8>, stats: &ShardStats) -> io::Result<Flushed> {
    while !out.is_empty() {
        scratch.clear();
        let cap = scratch.capacity();
        for slice in out.slices(usize::MAX) {
            if scratch.len() + slice.len() > cap {
                break;
            }
            scratch.extend_from_slice(slice);
        }
        let sent = if scratch.is_empty() {
            let iov: IovBatch = out.slices(MAX_IOVECS).collect();
            send_vectored(fd, iov.as_slice())
        } else {
            let one = [libc::iovec { iov_base: scratch.as_mut_ptr().cast(), iov_len: scratch.len() }];
            send_vectored(fd, &one)
        };
        ShardStats::add(&stats.socket_writes, 1);
        match sent {
            Ok(n) => wrote(out, n, stats),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::WouldBlock),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Flushed::All)
}

/// Up to [`MAX_IOVECS`] buffers for one `sendmsg`, on the stack.
struct IovBatch {
    items: [libc::iovec; MAX_IOVECS],
    len: usize,
}

impl IovBatch {
    fn as_slice(&self) -> &[libc::iovec] {
        &self.items[..self.len]
    }
}

impl<'a> FromIterator<&'a [u8]> for IovBatch {
    fn from_iter<I: IntoIterator<Item = &'a [u8]>>(iter: I) -> IovBatch {
        let empty = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
        let mut batch = IovBatch { items: [empty; MAX_IOVECS], len: 0 };
        for s in iter.into_iter().take(MAX_IOVECS) {
            batch.items[batch.len] = libc::iovec { iov_base: s.as_ptr() as *mut _, iov_len: s.len() };
            batch.len += 1;
        }
        batch
    }
}
