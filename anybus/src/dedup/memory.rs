//! The in-process dedup store (`memory://`): right for one member, or for tests; members of a
//! group on different processes need a shared store.
//!
//! Entries live in a map, and in a queue in the order they were written, so that expired ones
//! are dropped from the front as the store is used. The store holds at most `max_entries` keys:
//! beyond that, the oldest finished keys are forgotten first (a forgotten key lets one duplicate
//! through; unbounded memory would take the process down). Live leases are never evicted.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::{DedupError, DedupStore, Reservation};
use crate::handler::BoxFuture;

/// Keys held by default.
pub const DEFAULT_MAX_ENTRIES: usize = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Leased,
    Done,
}

#[derive(Debug)]
struct Entry {
    state: State,
    /// Who holds a lease (empty once done).
    holder: String,
    expires: Instant,
    /// Which write of the queue this entry is: older queue items of the key are stale.
    seq: u64,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    written: VecDeque<(u64, String)>,
    next_seq: u64,
}

/// A bounded in-process [`DedupStore`] with lease and TTL expiry.
#[derive(Debug)]
pub struct MemoryDedupStore {
    inner: Mutex<Inner>,
    max_entries: usize,
}

impl Default for MemoryDedupStore {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ENTRIES)
    }
}

impl MemoryDedupStore {
    /// A store that holds at most `max_entries` keys (at least 1).
    pub fn new(max_entries: usize) -> Self {
        Self {
            inner: Mutex::default(),
            max_entries: max_entries.max(1),
        }
    }

    /// Keys held now, leased or done.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reserve_now(&self, key: String, holder: &str, lease: Duration) -> Reservation {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.expire(now);
        if let Some(entry) = inner.entries.get(&key) {
            if entry.expires > now {
                return match entry.state {
                    State::Leased => Reservation::InProgress,
                    State::Done => Reservation::Done,
                };
            }
        }
        inner.write(key, State::Leased, holder, now + lease);
        inner.bound(self.max_entries, now);
        Reservation::Fresh
    }

    fn complete_now(&self, key: String, ttl: Duration) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.write(key, State::Done, "", now + ttl);
        inner.bound(self.max_entries, now);
    }

    fn extend_now(&self, key: String, holder: &str, lease: Duration) {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner
            .entries
            .get(&key)
            .is_some_and(|e| e.state == State::Leased && e.holder == holder && e.expires > now)
        {
            inner.write(key, State::Leased, holder, now + lease);
            inner.bound(self.max_entries, now);
        }
    }

    fn release_now(&self, key: &str, holder: &str) {
        let mut inner = self.lock();
        if inner
            .entries
            .get(key)
            .is_some_and(|e| e.state == State::Leased && e.holder == holder)
        {
            inner.entries.remove(key);
        }
    }
}

impl Inner {
    fn write(&mut self, key: String, state: State, holder: &str, expires: Instant) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.written.push_back((seq, key.clone()));
        self.entries.insert(
            key,
            Entry {
                state,
                holder: holder.to_owned(),
                expires,
                seq,
            },
        );
    }

    /// Rebuilds the queue from the live entries when stale items (keys written again, released
    /// leases) make up most of it, so that a key reserved over and over cannot grow it.
    fn compact(&mut self) {
        if self.written.len() <= 2 * self.entries.len() + 1024 {
            return;
        }
        let mut live: Vec<(u64, String)> = self
            .entries
            .iter()
            .map(|(key, entry)| (entry.seq, key.clone()))
            .collect();
        live.sort_unstable_by_key(|(seq, _)| *seq);
        self.written = live.into();
    }

    /// Drops stale queue items and expired entries from the front of the queue.
    fn expire(&mut self, now: Instant) {
        while let Some((seq, key)) = self.written.front() {
            match self.entries.get(key) {
                Some(entry) if entry.seq == *seq && entry.expires > now => break,
                Some(entry) if entry.seq == *seq => {
                    self.entries.remove(key);
                }
                // Rewritten later, or gone: this item is stale.
                _ => {}
            }
            self.written.pop_front();
        }
    }

    /// Forgets the oldest finished keys while more than `max` are held.
    fn bound(&mut self, max: usize, now: Instant) {
        self.expire(now);
        self.compact();
        while self.entries.len() > max {
            let Some((seq, key)) = self.written.pop_front() else {
                return;
            };
            match self.entries.get(&key) {
                Some(entry) if entry.seq == seq && entry.state == State::Done => {
                    self.entries.remove(&key);
                }
                Some(entry) if entry.seq == seq => {
                    // A live lease: keep it, at the back, and stop; leases are bounded by what
                    // is in flight.
                    self.written.push_back((seq, key));
                    return;
                }
                _ => {}
            }
        }
    }
}

/// The map key of `key` in `group`.
fn scoped(group: &str, key: &str) -> String {
    format!("{group}\u{0}{key}")
}

impl DedupStore for MemoryDedupStore {
    fn reserve<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
        holder: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Reservation, DedupError>> {
        let found = self.reserve_now(scoped(group, key), holder, lease);
        Box::pin(std::future::ready(Ok(found)))
    }

    fn complete<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), DedupError>> {
        self.complete_now(scoped(group, key), ttl);
        Box::pin(std::future::ready(Ok(())))
    }

    fn release<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), DedupError>> {
        self.release_now(&scoped(group, key), holder);
        Box::pin(std::future::ready(Ok(())))
    }

    fn extend<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
        holder: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), DedupError>> {
        self.extend_now(scoped(group, key), holder, lease);
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const LEASE: Duration = Duration::from_secs(30);
    const TTL: Duration = Duration::from_secs(3600);

    #[tokio::test(start_paused = true)]
    async fn a_renewed_lease_lasts_until_renewals_stop() {
        let store = MemoryDedupStore::default();
        assert_eq!(
            store.reserve("g", "k", "h", LEASE).await.ok(),
            Some(Reservation::Fresh)
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        store.extend("g", "k", "h", LEASE).await.expect("extend");
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(
            store.reserve("g", "k", "h", LEASE).await.ok(),
            Some(Reservation::InProgress),
            "renewed at 20 s, so held at 40 s"
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(
            store.reserve("g", "k", "h", LEASE).await.ok(),
            Some(Reservation::Fresh)
        );
        store.complete("g", "k", TTL).await.expect("complete");
        store.extend("g", "k", "h", LEASE).await.expect("extend");
        store.extend("g", "free", "h", LEASE).await.expect("extend");
        assert_eq!(
            store.reserve("g", "k", "h", LEASE).await.ok(),
            Some(Reservation::Done)
        );
        assert_eq!(
            store.reserve("g", "free", "h", LEASE).await.ok(),
            Some(Reservation::Fresh)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_many_concurrent_reservations_of_one_key_exactly_one_is_fresh() {
        let store = Arc::new(MemoryDedupStore::default());
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { store.reserve("g", "k", "h", LEASE).await })
            })
            .collect();
        let mut fresh = 0;
        for task in tasks {
            match task.await.expect("task").expect("reserve") {
                Reservation::Fresh => fresh += 1,
                Reservation::InProgress => {}
                Reservation::Done => panic!("nothing completed the key"),
            }
        }
        assert_eq!(fresh, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_lease_is_taken_over_and_a_released_one_at_once() {
        let store = MemoryDedupStore::default();
        let lease = Duration::from_millis(100);
        assert_eq!(
            store.reserve("g", "k", "h", lease).await.ok(),
            Some(Reservation::Fresh)
        );
        assert_eq!(
            store.reserve("g", "k", "h", lease).await.ok(),
            Some(Reservation::InProgress)
        );
        tokio::time::advance(lease).await;
        assert_eq!(
            store.reserve("g", "k", "h", lease).await.ok(),
            Some(Reservation::Fresh)
        );
        store.release("g", "k", "h").await.expect("release");
        assert_eq!(
            store.reserve("g", "k", "h", lease).await.ok(),
            Some(Reservation::Fresh)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_taken_over_is_not_the_old_holders_to_renew_or_release() {
        let store = MemoryDedupStore::default();
        let lease = Duration::from_millis(100);
        store
            .reserve("g", "k", "old", lease)
            .await
            .expect("reserve");
        tokio::time::advance(lease).await;
        assert_eq!(
            store.reserve("g", "k", "new", lease).await.ok(),
            Some(Reservation::Fresh)
        );
        store.extend("g", "k", "old", LEASE).await.expect("extend");
        store.release("g", "k", "old").await.expect("release");
        assert_eq!(
            store.reserve("g", "k", "third", lease).await.ok(),
            Some(Reservation::InProgress),
            "the old holder freed it"
        );
        tokio::time::advance(lease).await;
        assert_eq!(
            store.reserve("g", "k", "third", lease).await.ok(),
            Some(Reservation::Fresh),
            "the old holder's renewal kept it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_completed_key_is_done_until_its_ttl_runs_out() {
        let store = MemoryDedupStore::default();
        store.reserve("g", "k", "h", LEASE).await.expect("reserve");
        store.complete("g", "k", TTL).await.expect("complete");
        assert_eq!(
            store.reserve("g", "k", "h", LEASE).await.ok(),
            Some(Reservation::Done)
        );
        store.release("g", "k", "h").await.expect("release");
        assert_eq!(
            store.reserve("g", "k", "h", LEASE).await.ok(),
            Some(Reservation::Done),
            "releasing does not undo a completion"
        );
        tokio::time::advance(TTL).await;
        assert_eq!(
            store.reserve("g", "k", "h", LEASE).await.ok(),
            Some(Reservation::Fresh)
        );
    }

    #[tokio::test]
    async fn groups_do_not_suppress_each_other() {
        let store = MemoryDedupStore::default();
        store.reserve("a", "k", "h", LEASE).await.expect("reserve");
        store.complete("a", "k", TTL).await.expect("complete");
        assert_eq!(
            store.reserve("b", "k", "h", LEASE).await.ok(),
            Some(Reservation::Fresh)
        );
    }

    #[tokio::test]
    async fn a_key_reserved_over_and_over_does_not_grow_the_store() {
        let store = MemoryDedupStore::default();
        // A done key at the front of the queue, kept for its TTL.
        store
            .reserve("g", "done", "h", LEASE)
            .await
            .expect("reserve");
        store.complete("g", "done", TTL).await.expect("complete");
        for _ in 0..100_000 {
            store
                .reserve("g", "flaky", "h", LEASE)
                .await
                .expect("reserve");
            store.release("g", "flaky", "h").await.expect("release");
        }
        let queued = store.lock().written.len();
        assert!(queued <= 2 * store.len() + 1025, "{queued} queue items");
    }

    #[tokio::test]
    async fn a_million_keys_stay_within_the_bound() {
        const MAX: usize = 10_000;
        let store = MemoryDedupStore::new(MAX);
        for i in 0..1_000_000u32 {
            let key = i.to_string();
            store.reserve("g", &key, "h", LEASE).await.expect("reserve");
            store.complete("g", &key, TTL).await.expect("complete");
        }
        assert!(store.len() <= MAX, "{} keys held", store.len());
        let queued = store.lock().written.len();
        assert!(queued <= 3 * MAX, "{queued} queue items");
        // The newest keys are the ones kept.
        assert_eq!(
            store.reserve("g", "999999", "h", LEASE).await.ok(),
            Some(Reservation::Done)
        );
    }
}
