//! [`Subscribers`]: one topic's subscribers on this shard. Most topics have
//! one or a few (a user's direct-message topic, a small room, the idle
//! connection on its own topic), so up to [`FEW`] live in a small vector,
//! the first one inline, searched linearly; a larger topic moves to an
//! index map (dense for fan-out iteration, `swap_remove` for O(1)
//! unsubscribes). Touched only by the owning shard.

use std::rc::Rc;

use indexmap::IndexMap;
use smallvec::SmallVec;

use crate::ids::ConnId;
use crate::peer::Peer;

/// Subscribers kept in the small vector before a topic takes an index map.
pub const FEW: usize = 8;

type Entry = (ConnId, Rc<Peer>);

#[derive(Debug)]
pub enum Subscribers {
    Few(SmallVec<[Entry; 1]>),
    /// Boxed: rare, and a topic with one subscriber should not carry its size.
    Many(Box<IndexMap<ConnId, Rc<Peer>, ahash::RandomState>>),
}

impl Default for Subscribers {
    fn default() -> Self {
        Subscribers::Few(SmallVec::new())
    }
}

impl Subscribers {
    /// Adds `peer` under `id`. Returns false when it was there already.
    pub fn insert(&mut self, id: ConnId, peer: Rc<Peer>) -> bool {
        match self {
            Subscribers::Few(few) if few.iter().any(|(i, _)| *i == id) => false,
            Subscribers::Few(few) if few.len() < FEW => {
                few.push((id, peer));
                true
            }
            Subscribers::Few(few) => {
                let mut many: IndexMap<ConnId, Rc<Peer>, ahash::RandomState> = few.drain(..).collect();
                many.insert(id, peer);
                *self = Subscribers::Many(Box::new(many));
                true
            }
            Subscribers::Many(many) => many.insert(id, peer).is_none(),
        }
    }

    /// Removes `id`, handing back its peer.
    pub fn remove(&mut self, id: &ConnId) -> Option<Rc<Peer>> {
        match self {
            Subscribers::Few(few) => {
                let at = few.iter().position(|(i, _)| i == id)?;
                Some(few.swap_remove(at).1)
            }
            Subscribers::Many(many) => many.swap_remove(id),
        }
    }

    pub fn contains_key(&self, id: &ConnId) -> bool {
        match self {
            Subscribers::Few(few) => few.iter().any(|(i, _)| i == id),
            Subscribers::Many(many) => many.contains_key(id),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Subscribers::Few(few) => few.len(),
            Subscribers::Many(many) => many.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> Iter<'_> {
        match self {
            Subscribers::Few(few) => Iter::Few(few.iter()),
            Subscribers::Many(many) => Iter::Many(many.iter()),
        }
    }

    pub fn values(&self) -> impl Iterator<Item = &Rc<Peer>> {
        self.iter().map(|(_, peer)| peer)
    }
}

/// The subscribers, in no particular order.
pub enum Iter<'a> {
    Few(std::slice::Iter<'a, Entry>),
    Many(indexmap::map::Iter<'a, ConnId, Rc<Peer>>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a ConnId, &'a Rc<Peer>);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Few(few) => few.next().map(|(id, peer)| (id, peer)),
            Iter::Many(many) => many.next(),
        }
    }
}

impl<'a> IntoIterator for &'a Subscribers {
    type Item = (&'a ConnId, &'a Rc<Peer>);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn peer(seq: u64) -> Rc<Peer> {
        Rc::new(Peer::new(ConnId::new(0, seq), Instant::now()))
    }

    #[test]
    fn few_become_many_and_every_subscriber_stays_once() {
        let mut s = Subscribers::default();
        for i in 0..(FEW as u64 + 5) {
            assert!(s.insert(ConnId::new(0, i), peer(i)));
            assert!(!s.insert(ConnId::new(0, i), peer(i)), "once");
            assert_eq!(s.len(), i as usize + 1);
            assert_eq!(matches!(s, Subscribers::Many(_)), i as usize >= FEW);
        }
        assert!(s.remove(&ConnId::new(0, 3)).is_some());
        assert!(s.remove(&ConnId::new(0, 3)).is_none());
        let mut ids: Vec<u64> = s.iter().map(|(id, _)| id.0).collect();
        ids.sort();
        assert_eq!(ids.len(), FEW + 4);
        assert!(!ids.contains(&3) && s.contains_key(&ConnId::new(0, 4)));
        let mut one = Subscribers::default();
        one.insert(ConnId::new(0, 1), peer(1));
        assert_eq!(one.values().count(), 1);
        assert!(one.remove(&ConnId::new(0, 1)).is_some() && one.is_empty());
    }
}
