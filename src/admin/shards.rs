//! The admin thread's way to the shards: calls over the bus, answers
//! gathered with a deadline, and the `[admin] max_pending` bound.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, Semaphore};
use tokio::time::{timeout_at, Instant};

use super::api::ApiError;
use crate::bus::admin::{AdminCall, Reply};
use crate::bus::{ControlMsg, Mailbox};

/// Every shard's mailbox, as the admin thread holds them.
#[derive(Debug)]
pub struct Shards {
    mailboxes: Vec<Mailbox>,
    /// How long to wait for the shards' answers.
    pub timeout: Duration,
    /// API requests in flight (`[admin] max_pending`).
    permits: Arc<Semaphore>,
    /// The Redis bridge's shard, when Redis is configured.
    pub bridge: Option<usize>,
}

/// What a gather brought back: each shard's answer, and the shards that
/// did not answer in time.
#[derive(Debug)]
pub struct Gathered<T> {
    pub answers: Vec<T>,
    pub missing: Vec<usize>,
}

impl Shards {
    pub fn new(mailboxes: Vec<Mailbox>, timeout: Duration, max_pending: usize, bridge: Option<usize>) -> Shards {
        Shards { mailboxes, timeout, permits: Arc::new(Semaphore::new(max_pending)), bridge }
    }

    pub fn count(&self) -> usize {
        self.mailboxes.len()
    }

    /// A reply channel for one call, holding one of the `max_pending`
    /// places until the shard answers; 503 when they are all taken.
    pub fn reply<T>(&self) -> Result<(Reply<T>, oneshot::Receiver<T>), ApiError> {
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| busy())?;
        let (tx, rx) = oneshot::channel();
        Ok((Reply::new(tx, permit), rx))
    }

    /// The shard that handles API messages for `topic`: always the same one,
    /// so messages to one topic keep their order.
    pub fn home(&self, topic: &str) -> usize {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        topic.hash(&mut hasher);
        (hasher.finish() % self.mailboxes.len() as u64) as usize
    }

    /// Sends one call to `shard`.
    pub fn call(&self, shard: usize, call: AdminCall) {
        self.mailboxes[shard].control(ControlMsg::Admin(call));
    }

    /// Asks every shard (`make(shard, reply)` builds each call) and gathers
    /// the answers that arrive within the timeout.
    pub async fn gather<T>(&self, make: impl Fn(usize, Reply<T>) -> AdminCall) -> Result<Gathered<T>, ApiError> {
        // All the places at once, or none: a half-sent gather helps nobody.
        let shards = self.mailboxes.len();
        let mut permits = self.permits.clone().try_acquire_many_owned(shards as u32).map_err(|_| busy())?;
        let mut pending = Vec::with_capacity(shards);
        for shard in 0..shards {
            let (tx, rx) = oneshot::channel();
            let permit = permits.split(1).expect("one permit per shard was taken");
            self.call(shard, make(shard, Reply::new(tx, permit)));
            pending.push(rx);
        }
        Ok(gather(pending, Instant::now() + self.timeout).await)
    }
}

fn busy() -> ApiError {
    ApiError::unavailable("too many admin calls waiting on the shards ([admin] max_pending); retry shortly")
}

/// Awaits every receiver until `deadline`; a receiver that has no answer by
/// then (or whose shard dropped it) is reported by index.
pub async fn gather<T>(pending: Vec<oneshot::Receiver<T>>, deadline: Instant) -> Gathered<T> {
    let mut gathered = Gathered { answers: Vec::with_capacity(pending.len()), missing: Vec::new() };
    for (shard, rx) in pending.into_iter().enumerate() {
        match timeout_at(deadline, rx).await {
            Ok(Ok(answer)) => gathered.answers.push(answer),
            _ => gathered.missing.push(shard),
        }
    }
    gathered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_silent_shard_is_named_and_the_rest_arrive() {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..3).map(|_| oneshot::channel::<usize>()).unzip();
        let mut txs = txs.into_iter();
        let first = txs.next().unwrap();
        let _stuck = txs.next().unwrap(); // never answers
        let third = txs.next().unwrap();
        first.send(10).unwrap();
        third.send(30).unwrap();
        let started = Instant::now();
        let got = gather(rxs, started + Duration::from_millis(100)).await;
        assert_eq!(got.answers, vec![10, 30]);
        assert_eq!(got.missing, vec![1]);
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn permits_are_bounded_and_topics_have_one_home() {
        let (mailboxes, _inboxes) = crate::bus::build(4, 8).unwrap();
        let shards = Shards::new(mailboxes, Duration::from_secs(1), 2, None);
        let a = shards.reply::<()>().unwrap();
        let _b = shards.reply::<()>().unwrap();
        assert!(shards.reply::<()>().is_err(), "a third call in flight is refused");
        drop(a);
        assert!(shards.reply::<()>().is_ok(), "a call's place is free once its reply is gone (answered or dropped)");
        assert_eq!(shards.home("news"), shards.home("news"));
        assert!((0..100).map(|i| shards.home(&format!("t{i}"))).any(|h| h != shards.home("news")), "topics spread over shards");
    }
}
