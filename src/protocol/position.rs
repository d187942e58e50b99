//! Where a message sits in its topic's history, and what the history
//! answers: the values history replies and recoveries carry on the wire.
//! The history itself (rings, offsets, the hold-and-merge) is
//! [`crate::history`]; it builds these.

use std::sync::Arc;

use bytes::Bytes;

/// The longest epoch accepted from a client or from Redis, in bytes.
pub const MAX_EPOCH_BYTES: usize = 64;

/// Where a message sits in its topic's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// 1 for the topic's first message of this epoch, +1 per message.
    pub offset: u64,
    /// Changes whenever the history may have been lost.
    pub epoch: Arc<str>,
}

/// One stored message.
#[derive(Debug, Clone)]
pub struct Publication {
    pub offset: u64,
    /// The payload as published (shared with the fanned-out message).
    pub payload: Bytes,
    /// `payload` is one JSON value.
    pub json: bool,
}

/// A client's last known position: `{"offset":…,"epoch":…}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    pub offset: u64,
    pub epoch: String,
}

/// The history's answer to a query (`crate::history::Query`).
#[derive(Debug, Clone)]
pub struct Answer {
    /// The topic's latest offset (0: nothing published in this epoch) and epoch.
    pub position: Position,
    /// Oldest first, contiguous.
    pub publications: Vec<Publication>,
    /// Recovery only: the publications are exactly everything after
    /// `since` (same epoch, nothing trimmed).
    pub recovered: bool,
    /// The publications were taken from the newest end (a `history`
    /// request without `since`): a cut for size keeps the newest. Every
    /// other answer reads forward from a position, and a cut keeps the
    /// oldest, so that a client paging forward skips nothing.
    pub from_newest: bool,
}

impl Answer {
    /// The answer for a position that has no history (epoch unknown, or
    /// history unavailable): position only.
    pub fn position_only(position: Position) -> Answer {
        Answer { position, publications: Vec::new(), recovered: false, from_newest: false }
    }

    /// Cuts the publications so that their payloads fit `budget` bytes
    /// (a reply never exceeds `max_message_bytes`). For a `Range` without
    /// `since` the newest are kept, otherwise the oldest (the same rule as
    /// the Redis script's, `bridge::scripts`); a recovery that loses any is
    /// no longer `recovered`.
    pub fn fit(&mut self, budget: usize) {
        let keep_newest = self.from_newest;
        let mut used = 0;
        let fits = |p: &Publication, used: &mut usize| {
            // base64 and framing can grow a payload by a third.
            *used += p.payload.len() * 4 / 3 + 64;
            *used <= budget
        };
        let keep = if keep_newest {
            self.publications.iter().rev().take_while(|p| fits(p, &mut used)).count()
        } else {
            self.publications.iter().take_while(|p| fits(p, &mut used)).count()
        };
        if keep < self.publications.len() {
            self.recovered = false;
            if keep_newest {
                self.publications.drain(..self.publications.len() - keep);
            } else {
                self.publications.truncate(keep);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_cut_to_the_budget() {
        let pubs = (1..=10).map(|offset| Publication { offset, payload: Bytes::from(vec![b'1'; 100]), json: true }).collect();
        let mut a = Answer { position: Position { offset: 10, epoch: "e".into() }, publications: pubs, recovered: true, from_newest: false };
        let mut b = Answer { from_newest: true, ..a.clone() };
        a.fit(5 * (100 * 4 / 3 + 64));
        assert_eq!(a.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
        assert!(!a.recovered);
        b.fit(2 * (100 * 4 / 3 + 64));
        assert_eq!(b.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![9, 10]);
    }
}
