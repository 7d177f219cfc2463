//! Which deliveries may start now under key ordering: one in flight per key, the rest of that
//! key waiting behind it in arrival order.
//!
//! A plain synchronous type, so that its promise can be tested on its own: an item starts only
//! when every earlier item of its key has finished, and items of other keys never wait for it.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};

/// Items admitted under key ordering and not finished yet, by key.
///
/// ```text
/// push(a, 1) -> Some(1)   a is idle: 1 starts
/// push(a, 2) -> None      2 waits behind 1
/// push(b, 3) -> Some(3)   b is another key: 3 starts
/// finish(a)  -> Some(2)   1 finished: 2 starts
/// finish(a)  -> None      a is idle again
/// ```
#[derive(Debug)]
pub(crate) struct KeyQueues<T> {
    /// Keys with an item in flight, and what waits behind it. An idle key has no entry.
    busy: HashMap<u64, VecDeque<T>>,
    /// Admitted and not finished: in flight plus waiting.
    len: usize,
}

impl<T> Default for KeyQueues<T> {
    fn default() -> Self {
        Self {
            busy: HashMap::new(),
            len: 0,
        }
    }
}

impl<T> KeyQueues<T> {
    /// Admits `item` of `key`; returns it if it may start now, or keeps it behind the key's
    /// earlier items.
    pub(crate) fn push(&mut self, key: u64, item: T) -> Option<T> {
        self.len += 1;
        match self.busy.entry(key) {
            Entry::Occupied(mut waiting) => {
                waiting.get_mut().push_back(item);
                None
            }
            Entry::Vacant(idle) => {
                idle.insert(VecDeque::new());
                Some(item)
            }
        }
    }

    /// The item of `key` in flight finished; returns the next item of that key, which may start
    /// now. Finishing a key with nothing in flight changes nothing.
    pub(crate) fn finish(&mut self, key: u64) -> Option<T> {
        let Entry::Occupied(mut waiting) = self.busy.entry(key) else {
            return None;
        };
        self.len -= 1;
        let next = waiting.get_mut().pop_front();
        if next.is_none() {
            waiting.remove();
        }
        next
    }

    /// Items admitted and not finished, in flight or waiting.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Keys with an item in flight.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.busy.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::backend::offsets::OffsetTracker;

    #[test]
    fn one_item_per_key_runs_and_the_rest_wait_in_order() {
        let mut q = KeyQueues::default();
        assert_eq!(q.push(1, "a1"), Some("a1"));
        assert_eq!(q.push(1, "a2"), None);
        assert_eq!(q.push(1, "a3"), None);
        assert_eq!(q.push(2, "b1"), Some("b1"), "another key does not wait");
        assert_eq!(q.len(), 4);
        assert_eq!(q.finish(1), Some("a2"));
        assert_eq!(q.finish(2), None);
        assert_eq!(q.finish(1), Some("a3"));
        assert_eq!(q.finish(1), None);
        assert_eq!(q.len(), 0);
        assert_eq!(q.in_flight(), 0);
        assert_eq!(q.finish(1), None, "an idle key has nothing to finish");
        assert_eq!(q.len(), 0);
    }

    /// What one simulated run does: deliveries of one partition, with random keys, admitted in
    /// offset order; at each step either the next delivery is admitted or a random running one
    /// finishes (random handler durations and completion orders).
    #[derive(Clone, Debug)]
    struct Run {
        keys: Vec<u64>,
        /// Per step: `None` admits the next delivery; `Some(i)` finishes running item `i % n`.
        steps: Vec<Option<usize>>,
    }

    fn runs() -> impl Strategy<Value = Run> {
        (1..60usize, 1..8u64).prop_flat_map(|(n, key_space)| {
            (
                proptest::collection::vec(0..key_space, n),
                proptest::collection::vec(proptest::option::weighted(0.5, 0..64usize), 0..4 * n),
            )
                .prop_map(|(keys, steps)| Run { keys, steps })
        })
    }

    proptest! {
        /// Per-key order is kept, keys never wait for each other, and the commit point of the
        /// partition never passes an offset that has not finished.
        #[test]
        fn key_order_is_kept_and_commits_never_pass_unfinished_work(run in runs()) {
            let mut queues = KeyQueues::default();
            let mut tracker = OffsetTracker::new(0);
            let mut running: Vec<(u64, i64)> = Vec::new();
            let mut finished: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
            let mut done = vec![false; run.keys.len()];
            let mut admitted = 0usize;
            let mut steps = run.steps.iter().copied();
            // After the random steps, finish whatever still runs, oldest first.
            let mut step = move |running_now: usize, admitted_all: bool| match steps.next() {
                Some(s) => s,
                None if !admitted_all => None,
                None if running_now > 0 => Some(0),
                None => None,
            };
            loop {
                let all_admitted = admitted == run.keys.len();
                match step(running.len(), all_admitted) {
                    None if !all_admitted => {
                        let offset = admitted as i64;
                        let key = run.keys[admitted];
                        tracker.track(offset);
                        admitted += 1;
                        if let Some(started) = queues.push(key, offset) {
                            running.push((key, started));
                        }
                    }
                    Some(i) if !running.is_empty() => {
                        let (key, offset) = running.remove(i % running.len());
                        done[offset as usize] = true;
                        finished.entry(key).or_default().push(offset);
                        tracker.complete(offset);
                        if let Some(next) = queues.finish(key) {
                            running.push((key, next));
                        }
                    }
                    None if running.is_empty() => break,
                    _ => {}
                }
                // At most one per key runs, and every key with work has one running.
                let mut keys_running: Vec<u64> = running.iter().map(|&(k, _)| k).collect();
                keys_running.sort_unstable();
                let before = keys_running.len();
                keys_running.dedup();
                prop_assert_eq!(before, keys_running.len(), "two items of one key ran at once");
                prop_assert_eq!(queues.in_flight(), running.len());
                let point = tracker.commit_point();
                prop_assert!(
                    done[..point as usize].iter().all(|&d| d),
                    "commit point {} passes an unfinished offset", point
                );
            }
            prop_assert_eq!(queues.len(), 0);
            prop_assert_eq!(tracker.commit_point(), run.keys.len() as i64);
            for (key, offsets) in finished {
                let expected: Vec<i64> = run
                    .keys
                    .iter()
                    .enumerate()
                    .filter(|&(_, &k)| k == key)
                    .map(|(o, _)| o as i64)
                    .collect();
                prop_assert_eq!(offsets, expected, "key {} out of order", key);
            }
        }
    }
}
