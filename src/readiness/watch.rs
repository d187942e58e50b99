//! The watcher thread of a readiness set: what lets a sleeping shard hear
//! of socket readiness. glommio sleeps in its own io_uring, which cannot
//! wait on an epoll descriptor; so this thread waits on a second epoll set
//! holding the shard's set, one-shot, and on each event calls the shard's
//! `ring` (its doorbell, which writes a byte only when the shard said it is
//! about to sleep). The one-shot registration stays off until the shard
//! re-arms it right before it sleeps again, so the thread wakes at most once
//! per shard sleep and never spins while the shard works.
//!
//! Stopped (and joined) when the set is dropped, through an eventfd in the
//! same second set.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::thread::JoinHandle;

use super::cvt;

/// `epoll_event.u64` of the shard's set in the watcher's set.
const SET: u64 = 1;
/// `epoll_event.u64` of the stop eventfd.
const STOP: u64 = 2;

pub(super) struct Watcher {
    /// The watcher's own set: the shard's set (one-shot) and `stop`.
    outer: OwnedFd,
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

fn ctl(outer: RawFd, op: libc::c_int, fd: RawFd, events: libc::c_int, data: u64) -> io::Result<()> {
    let mut event = libc::epoll_event { events: events as u32, u64: data };
    // SAFETY: both descriptors are open; event is initialised.
    cvt(unsafe { libc::epoll_ctl(outer, op, fd, &mut event) }).map(drop)
}

impl Watcher {
    /// Starts the thread watching `set` (the shard's epoll descriptor).
    pub(super) fn start(name: &str, set: RawFd, ring: Box<dyn Fn() + Send>) -> io::Result<Watcher> {
        // SAFETY: both calls return new descriptors we own, or -1.
        let outer = unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        let stop = unsafe { OwnedFd::from_raw_fd(cvt(libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))?) };
        ctl(outer.as_raw_fd(), libc::EPOLL_CTL_ADD, set, libc::EPOLLIN | libc::EPOLLONESHOT, SET)?;
        ctl(outer.as_raw_fd(), libc::EPOLL_CTL_ADD, stop.as_raw_fd(), libc::EPOLLIN, STOP)?;
        let waits_on = outer.as_raw_fd();
        let thread = std::thread::Builder::new().name(format!("{name}-ready")).spawn(move || {
            let mut events = [libc::epoll_event { events: 0, u64: 0 }; 2];
            loop {
                // SAFETY: the descriptor outlives the thread (joined in drop); the buffer holds 2 events.
                let n = unsafe { libc::epoll_wait(waits_on, events.as_mut_ptr(), 2, -1) };
                if n < 0 {
                    if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return;
                }
                if events[..n as usize].iter().any(|e| e.u64 == STOP) {
                    return;
                }
                ring();
            }
        })?;
        Ok(Watcher { outer, stop, thread: Some(thread) })
    }

    /// Re-arms the one-shot registration of `set`: its next event (or the
    /// one it already has) wakes the thread once.
    pub(super) fn rearm(&self, set: RawFd) {
        // A failure leaves the shard to its busy-turn drains and its other
        // wake-ups; it cannot fail for descriptors that are open.
        let _ = ctl(self.outer.as_raw_fd(), libc::EPOLL_CTL_MOD, set, libc::EPOLLIN | libc::EPOLLONESHOT, SET);
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a u64 to our eventfd.
        unsafe { libc::write(self.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
