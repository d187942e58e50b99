//! [`Notify`]: a single-waiter wake-up flag for tasks of one shard (`!Send`).
//! Raising it before anyone waits is remembered, so a wake-up is never lost
//! between a check and the wait that follows it.

use std::cell::Cell;
use std::future::poll_fn;
use std::task::{Poll, Waker};

#[derive(Default)]
pub struct Notify {
    raised: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Notify {
    pub fn raise(&self) {
        self.raised.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Forgets a raise nobody waited for.
    pub fn clear(&self) {
        self.raised.set(false);
    }

    /// Waits until raised (at once if it was raised since the last wait).
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.raised.replace(false) {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}
