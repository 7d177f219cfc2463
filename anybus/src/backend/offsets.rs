//! Which offset of a partition may be committed, when messages finish in any order.
//!
//! The commit point is the lowest offset that was handed out and is not finished yet, or, when
//! everything handed out is finished, one past the last of it. Committing it never skips an
//! unfinished message, whatever order completions arrive in.

use std::collections::VecDeque;

/// Tracks the offsets of one partition that were handed out and which of them are finished.
///
/// ```
/// use anybus::backend::offsets::OffsetTracker;
/// let mut t = OffsetTracker::new(10);
/// for o in 10..13 { t.track(o); }
/// t.complete(12);
/// assert_eq!(t.commit_point(), 10);   // 10 and 11 still run
/// t.complete(10);
/// assert_eq!(t.commit_point(), 11);
/// t.complete(11);
/// assert_eq!(t.commit_point(), 13);
/// ```
#[derive(Clone, Debug)]
pub struct OffsetTracker {
    /// Handed-out offsets in ascending order, with whether each is finished; the front is
    /// always unfinished.
    pending: VecDeque<(i64, bool)>,
    /// One past the last offset handed out (or the start offset).
    next: i64,
    in_flight: usize,
}

impl OffsetTracker {
    /// A tracker for a partition read from `start`.
    pub fn new(start: i64) -> Self {
        Self {
            pending: VecDeque::new(),
            next: start,
            in_flight: 0,
        }
    }

    /// Records that `offset` was handed out. Offsets must be tracked in ascending order; gaps
    /// (compacted or transactional offsets) are fine.
    pub fn track(&mut self, offset: i64) {
        debug_assert!(offset >= self.next, "offsets tracked out of order");
        self.pending.push_back((offset, false));
        self.next = offset + 1;
        self.in_flight += 1;
    }

    /// Records that `offset` finished. Returns whether the commit point moved. An offset that
    /// was not handed out, or finished already, changes nothing.
    pub fn complete(&mut self, offset: i64) -> bool {
        match self.pending.front() {
            Some(&(front, _)) if front == offset => {
                self.pending.pop_front();
                self.in_flight -= 1;
                while let Some(&(_, true)) = self.pending.front() {
                    self.pending.pop_front();
                }
                true
            }
            Some(_) => {
                if let Ok(i) = self.pending.binary_search_by_key(&offset, |&(o, _)| o) {
                    if !self.pending[i].1 {
                        self.pending[i].1 = true;
                        self.in_flight -= 1;
                    }
                }
                false
            }
            None => false,
        }
    }

    /// The offset to commit: everything below it is finished.
    pub fn commit_point(&self) -> i64 {
        self.pending.front().map_or(self.next, |&(o, _)| o)
    }

    /// One past the last offset handed out (the start offset before any).
    pub fn next(&self) -> i64 {
        self.next
    }

    /// How many handed-out offsets are not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_contiguous_offsets() {
        let mut t = OffsetTracker::new(0);
        for o in 0..5 {
            t.track(o);
        }
        assert!(!t.complete(3));
        assert!(!t.complete(1));
        assert_eq!(t.commit_point(), 0);
        assert!(t.complete(0));
        assert_eq!(t.commit_point(), 2);
        assert!(t.complete(2));
        assert_eq!(t.commit_point(), 4);
        assert_eq!(t.in_flight(), 1);
        assert!(t.complete(4));
        assert_eq!(t.commit_point(), 5);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn gaps_in_offsets_are_skipped() {
        let mut t = OffsetTracker::new(0);
        t.track(2);
        t.track(7);
        assert_eq!(t.commit_point(), 2);
        t.complete(7);
        assert_eq!(t.commit_point(), 2);
        t.complete(2);
        assert_eq!(t.commit_point(), 8);
    }

    #[test]
    fn unknown_and_repeated_completions_change_nothing() {
        let mut t = OffsetTracker::new(0);
        t.track(0);
        t.track(1);
        assert!(!t.complete(9));
        t.complete(1);
        t.complete(1);
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.commit_point(), 0);
    }
}
