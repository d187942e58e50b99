//! A shard's readiness set: every client socket of the shard (and its
//! listener) registered once, edge-triggered, in one epoll set the shard
//! owns, instead of a poll armed in glommio's io_uring after every read and
//! cancelled at close, with a poll source allocated per socket.
//!
//! - A socket ([`Socket`], [`Listener`]) is registered when it is made and
//!   forgotten when it is dropped: one `epoll_ctl` in its life. Its slot
//!   holds the waker of the task waiting on it and whether it may be
//!   readable; nothing else.
//! - The shard drains the set ([`Readiness::drain`], `epoll_wait` with a
//!   zero timeout) on every turn of its bus loop and wakes the tasks whose
//!   sockets became ready.
//! - glommio cannot wait on an epoll descriptor, so a sleeping shard learns
//!   of readiness from a watcher thread ([`watch`]) blocked on a second
//!   epoll set that holds the first one, one-shot: it rings the shard's
//!   doorbell (the same one the bus rings) and waits until the shard, about
//!   to sleep again, re-arms it ([`Readiness::rearm`]). A busy shard never
//!   involves the thread.
//!
//! Owned by its shard and touched only by it (`Rc`, `RefCell`); only the
//! watcher thread and its descriptors cross to another thread. Never
//! blocks the shard.

mod socket;
mod watch;

pub use socket::{send_vectored, Listener, Socket};

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::task::Waker;

use slab::Slab;

/// Readiness events taken from the set per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 256;

/// A syscall's result: negative is the thread's `errno`.
fn cvt<T: Copy + PartialOrd + Default>(rc: T) -> io::Result<T> {
    if rc < T::default() {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A registered socket's place in the set: its slot, and the slot's
/// generation (so that an event for a socket that is gone, still in the
/// kernel's list, is not taken for the one that reuses the slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    index: u32,
    generation: u32,
}

impl Token {
    fn pack(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    fn unpack(data: u64) -> Token {
        Token { index: data as u32, generation: (data >> 32) as u32 }
    }
}

/// One socket's state in the set.
#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    /// The task to wake at the next event.
    waker: Option<Waker>,
    /// An event (or the registration) said it may have bytes to read, and
    /// no read has found it empty since. Edge-triggered: while it is false,
    /// the next arrival brings an event.
    readable: bool,
}

/// The readiness set of one shard.
pub struct Readiness {
    /// Dropped (stopped and joined) first, while the set it watches is open.
    watcher: watch::Watcher,
    epoll: OwnedFd,
    slots: RefCell<Slab<Slot>>,
    /// Generations handed out, so that a reused slot gets a new one.
    generation: std::cell::Cell<u32>,
    events: RefCell<Vec<libc::epoll_event>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness").field("sockets", &self.slots.borrow().len()).finish_non_exhaustive()
    }
}

impl Readiness {
    /// A new set, and its watcher thread, which calls `ring` (from its own
    /// thread) when the set has events while the shard is armed to sleep.
    pub fn new(name: &str, ring: impl Fn() + Send + 'static) -> io::Result<Readiness> {
        // SAFETY: epoll_create1 returns a new descriptor we own, or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor owned by nobody else.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let watcher = watch::Watcher::start(name, epoll.as_raw_fd(), Box::new(ring))?;
        Ok(Readiness {
            watcher,
            epoll,
            slots: RefCell::new(Slab::new()),
            generation: std::cell::Cell::new(0),
            events: RefCell::new(Vec::with_capacity(EVENTS_PER_WAIT)),
        })
    }

    /// Registers `fd` (non-blocking) for reads and writes, edge-triggered.
    fn register(&self, fd: RawFd) -> io::Result<Token> {
        let generation = self.generation.get().wrapping_add(1);
        self.generation.set(generation);
        let index = self.slots.borrow_mut().insert(Slot { generation, waker: None, readable: true });
        let token = Token { index: index as u32, generation };
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: token.pack(),
        };
        // SAFETY: both descriptors are open; event is initialised.
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
            let err = io::Error::last_os_error();
            self.slots.borrow_mut().remove(index);
            return Err(err);
        }
        Ok(token)
    }

    /// Forgets a socket about to be closed (closing it takes it out of the
    /// set: it is never duplicated).
    fn forget(&self, token: Token) {
        let mut slots = self.slots.borrow_mut();
        if slots.get(token.index as usize).is_some_and(|s| s.generation == token.generation) {
            slots.remove(token.index as usize);
        }
    }

    /// Whether `token`'s socket may be readable.
    fn readable(&self, token: Token) -> bool {
        self.slots.borrow().get(token.index as usize).is_some_and(|s| s.readable)
    }

    /// A read found `token`'s socket empty (or took less than it could):
    /// the next arrival brings an event.
    fn drained(&self, token: Token) {
        if let Some(slot) = self.slots.borrow_mut().get_mut(token.index as usize) {
            slot.readable = false;
        }
    }

    /// The task `waker` waits for `token`'s next event.
    fn wait(&self, token: Token, waker: &Waker) {
        if let Some(slot) = self.slots.borrow_mut().get_mut(token.index as usize) {
            match &slot.waker {
                Some(w) if w.will_wake(waker) => {}
                _ => slot.waker = Some(waker.clone()),
            }
        }
    }

    /// Takes the events the set holds, without waiting, and wakes the
    /// tasks waiting on those sockets. Returns how many sockets were ready.
    pub fn drain(&self) -> usize {
        let mut ready = 0;
        let mut events = self.events.borrow_mut();
        loop {
            // SAFETY: the buffer has room for EVENTS_PER_WAIT events; the
            // kernel writes at most that many and returns the count.
            let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), EVENTS_PER_WAIT as i32, 0) };
            if n <= 0 {
                // 0: none; -1 (EINTR) is retried on the next turn.
                return ready;
            }
            // SAFETY: the kernel initialised the first n entries.
            unsafe { events.set_len(n as usize) };
            let mut slots = self.slots.borrow_mut();
            for event in events.iter() {
                let token = Token::unpack(event.u64);
                let Some(slot) = slots.get_mut(token.index as usize).filter(|s| s.generation == token.generation) else { continue };
                if event.events & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                    slot.readable = true;
                }
                // Waking only schedules the task (glommio runs it later),
                // so the slots stay borrowed safely meanwhile.
                if let Some(waker) = slot.waker.take() {
                    waker.wake();
                }
            }
            drop(slots);
            ready += n as usize;
            events.clear();
            if (n as usize) < EVENTS_PER_WAIT {
                return ready;
            }
        }
    }

    /// About to sleep: lets the watcher thread report the set's next event
    /// (at once, if it already has one).
    pub fn rearm(&self) {
        self.watcher.rearm(self.epoll.as_raw_fd());
    }
}
