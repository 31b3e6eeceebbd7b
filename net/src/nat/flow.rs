//! One flow table for every kind of flow: TCP, UDP, ICMP echo and peers' datagrams to
//! forwarded UDP ports.
//!
//! A flow has a key (what a packet names: ports and addresses) and an id (what the engine's
//! epoll tokens carry). The table is kept in order of use, least recent first, so that
//! evicting the least recently used flow when full, and finding the flows idle for too long,
//! cost nothing per packet: both are at the front. Keys are chosen by the guest and by
//! peers, so both maps hash with std's keyed SipHash.

use std::collections::HashMap;
use std::hash::{Hash, RandomState};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hashlink::LinkedHashMap;

/// What a flow is known by: the guest's port (or its echo identifier) and the far end as
/// the guest sees it.
pub(super) type FlowKey = (u16, SocketAddr);

/// A flow's id: unique in its table for the engine's life, below 2^56 (the top byte of an
/// epoll token says which table).
pub(super) type FlowId = u64;

const ID_MASK: u64 = (1 << 56) - 1;

struct Entry<K, V> {
    key: K,
    last: Instant,
    flow: V,
}

/// Flows by key and by id, at most `limit`, least recently used first.
pub(super) struct FlowTable<K, V> {
    by_id: LinkedHashMap<FlowId, Entry<K, V>, RandomState>,
    by_key: HashMap<K, FlowId>,
    limit: usize,
    next_id: FlowId,
}

impl<K: Hash + Eq + Copy, V> FlowTable<K, V> {
    /// An empty table that holds at most `limit` flows (at least one).
    pub(super) fn new(limit: usize) -> Self {
        Self {
            by_id: LinkedHashMap::default(),
            by_key: HashMap::new(),
            limit: limit.max(1),
            next_id: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(super) fn is_full(&self) -> bool {
        self.by_id.len() >= self.limit
    }

    /// The id of the flow with `key`.
    pub(super) fn id(&self, key: &K) -> Option<FlowId> {
        self.by_key.get(key).copied()
    }

    pub(super) fn contains_key(&self, key: &K) -> bool {
        self.by_key.contains_key(key)
    }

    pub(super) fn get(&self, id: FlowId) -> Option<&V> {
        self.by_id.get(&id).map(|e| &e.flow)
    }

    /// The flow, without counting this as a use.
    pub(super) fn get_mut(&mut self, id: FlowId) -> Option<&mut V> {
        self.by_id.get_mut(&id).map(|e| &mut e.flow)
    }

    /// The flow's key.
    pub(super) fn key(&self, id: FlowId) -> Option<K> {
        self.by_id.get(&id).map(|e| e.key)
    }

    /// Marks the flow used at `now` (it moves to the back) and returns it.
    pub(super) fn touch(&mut self, id: FlowId, now: Instant) -> Option<&mut V> {
        let entry = self.by_id.to_back(&id)?;
        entry.last = now;
        Some(&mut entry.flow)
    }

    /// Adds a flow under `key`, used at `now`, which must not be in the table. When the
    /// table is full the least recently used flow makes room and is returned.
    pub(super) fn insert(&mut self, key: K, flow: V, now: Instant) -> (FlowId, Option<(K, V)>) {
        debug_assert!(!self.by_key.contains_key(&key));
        let evicted = if self.is_full() {
            self.pop_front()
        } else {
            None
        };
        self.next_id = (self.next_id + 1) & ID_MASK;
        let id = self.next_id;
        self.by_key.insert(key, id);
        self.by_id.insert(
            id,
            Entry {
                key,
                last: now,
                flow,
            },
        );
        (id, evicted)
    }

    pub(super) fn remove(&mut self, id: FlowId) -> Option<(K, V)> {
        let entry = self.by_id.remove(&id)?;
        self.by_key.remove(&entry.key);
        Some((entry.key, entry.flow))
    }

    fn pop_front(&mut self) -> Option<(K, V)> {
        let (_, entry) = self.by_id.pop_front()?;
        self.by_key.remove(&entry.key);
        Some((entry.key, entry.flow))
    }

    /// Removes and returns the flows not used for `idle` or longer before `now`.
    pub(super) fn expire(&mut self, now: Instant, idle: Duration) -> Vec<(K, V)> {
        let mut gone = Vec::new();
        while self
            .by_id
            .front()
            .is_some_and(|(_, e)| now.saturating_duration_since(e.last) >= idle)
        {
            gone.extend(self.pop_front());
        }
        gone
    }

    /// Every flow with its id and when it was last used, least recently used first.
    pub(super) fn iter(&self) -> impl Iterator<Item = (FlowId, Instant, &V)> {
        self.by_id.iter().map(|(id, e)| (*id, e.last, &e.flow))
    }

    /// The ids of every flow, least recently used first.
    pub(super) fn ids(&self) -> Vec<FlowId> {
        self.by_id.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_evicts_the_least_recently_used() {
        let t0 = Instant::now();
        let mut t = FlowTable::new(2);
        let (a, none) = t.insert('a', 1, t0);
        assert!(none.is_none());
        let (b, _) = t.insert('b', 2, t0);
        // 'a' used again: 'b' is now the least recent.
        assert_eq!(t.touch(a, t0).copied(), Some(1));
        let (c, evicted) = t.insert('c', 3, t0);
        assert_eq!(evicted, Some(('b', 2)));
        assert_eq!(t.len(), 2);
        assert_eq!(t.id(&'b'), None);
        assert_eq!(t.get(b), None);
        assert_eq!(t.id(&'c'), Some(c));
        assert_eq!(t.key(c), Some('c'));
        assert_ne!(a, c);
        assert_eq!(t.remove(a), Some(('a', 1)));
        assert!(!t.contains_key(&'a'));
        assert_eq!(t.ids(), vec![c]);
    }

    #[test]
    fn expiry_takes_only_the_idle_prefix() {
        let t0 = Instant::now();
        let idle = Duration::from_secs(60);
        let mut t = FlowTable::new(10);
        let (a, _) = t.insert('a', (), t0);
        t.insert('b', (), t0 + Duration::from_secs(30));
        t.insert('c', (), t0 + Duration::from_secs(40));
        // 'a' used again at 59 s: the order of use is now b, c, a.
        t.touch(a, t0 + Duration::from_secs(59));
        let gone: Vec<char> = t
            .expire(t0 + Duration::from_secs(70), idle)
            .into_iter()
            .map(|(k, ())| k)
            .collect();
        assert_eq!(gone, vec![]);
        let gone: Vec<char> = t
            .expire(t0 + Duration::from_secs(95), idle)
            .into_iter()
            .map(|(k, ())| k)
            .collect();
        assert_eq!(gone, vec!['b']);
        assert_eq!(t.len(), 2);
    }
}
