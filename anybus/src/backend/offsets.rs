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
    /// Handed-out offsets in ascending order, with how far each got; the front is never
    /// finished.
    pending: VecDeque<(i64, State)>,
    /// One past the last offset handed out (or the start offset).
    next: i64,
    in_flight: usize,
    abandoned: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Handed out; its work has not started (or the backend does not say when work starts).
    Fetched,
    /// Its work started ([`OffsetTracker::start`]).
    Running,
    Finished,
    /// Given up before it started: not in flight, not finished.
    Abandoned,
}

impl OffsetTracker {
    /// A tracker for a partition read from `start`.
    pub fn new(start: i64) -> Self {
        Self {
            pending: VecDeque::new(),
            next: start,
            in_flight: 0,
            abandoned: 0,
        }
    }

    /// Records that `offset` was handed out. Offsets must be tracked in ascending order; gaps
    /// (compacted or transactional offsets) are fine.
    pub fn track(&mut self, offset: i64) {
        debug_assert!(offset >= self.next, "offsets tracked out of order");
        self.pending.push_back((offset, State::Fetched));
        self.next = offset + 1;
        self.in_flight += 1;
    }

    fn find(&self, offset: i64) -> Option<usize> {
        match self.pending.front() {
            Some(&(front, _)) if front == offset => Some(0),
            _ => self.pending.binary_search_by_key(&offset, |&(o, _)| o).ok(),
        }
    }

    /// Records that `offset` finished. Returns whether the commit point moved. An offset that
    /// was not handed out, or finished already, changes nothing.
    pub fn complete(&mut self, offset: i64) -> bool {
        let Some(i) = self.find(offset) else {
            return false;
        };
        match self.pending[i].1 {
            State::Finished => return false,
            State::Fetched | State::Running => self.in_flight -= 1,
            State::Abandoned => self.abandoned -= 1,
        }
        self.pending[i].1 = State::Finished;
        if i > 0 {
            return false;
        }
        while let Some(&(_, State::Finished)) = self.pending.front() {
            self.pending.pop_front();
        }
        true
    }

    /// Records that `offset` will not be finished after all: it was given up before it
    /// started, because its partition is being handed over. It no longer counts as in flight,
    /// and the commit point never passes it, so whoever reads the partition next gets it.
    pub fn abandon(&mut self, offset: i64) {
        if let Some(i) = self.find(offset) {
            if matches!(self.pending[i].1, State::Fetched | State::Running) {
                self.pending[i].1 = State::Abandoned;
                self.in_flight -= 1;
                self.abandoned += 1;
            }
        }
    }

    /// Records that the offsets from [`OffsetTracker::next`] up to `offset` will never be handed
    /// out: the broker no longer has them (its retention dropped them). With nothing in
    /// flight, the commit point moves on to `offset`; what is in flight keeps it where it is
    /// until it finishes. An `offset` at or below `next` changes nothing, so the commit point
    /// never goes back.
    pub fn skip_to(&mut self, offset: i64) {
        self.next = self.next.max(offset);
    }

    /// Records that the work of `offset` started: [`OffsetTracker::abandon_unstarted`] no
    /// longer gives it up. An offset not handed out, or not waiting to start, changes nothing.
    pub fn start(&mut self, offset: i64) {
        if let Some(i) = self.find(offset) {
            if self.pending[i].1 == State::Fetched {
                self.pending[i].1 = State::Running;
            }
        }
    }

    /// Gives up every offset handed out whose work has not started ([`OffsetTracker::start`]),
    /// as [`OffsetTracker::abandon`] does one: a partition being handed over then waits only
    /// for the work that runs. Returns how many were given up.
    pub fn abandon_unstarted(&mut self) -> usize {
        let mut given_up = 0;
        for (_, state) in self.pending.iter_mut() {
            if *state == State::Fetched {
                *state = State::Abandoned;
                given_up += 1;
            }
        }
        self.in_flight -= given_up;
        self.abandoned += given_up;
        given_up
    }

    /// The offset to commit: everything below it is finished.
    pub fn commit_point(&self) -> i64 {
        self.pending.front().map_or(self.next, |&(o, _)| o)
    }

    /// One past the last offset handed out (the start offset before any).
    pub fn next(&self) -> i64 {
        self.next
    }

    /// How many handed-out offsets are in flight: neither finished nor abandoned.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// How many handed-out offsets were abandoned (and are not finished).
    pub fn abandoned(&self) -> usize {
        self.abandoned
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
    fn skipping_dropped_offsets_moves_the_commit_point_only_past_finished_work() {
        let mut t = OffsetTracker::new(0);
        t.track(0);
        t.track(1);
        t.skip_to(100);
        assert_eq!(t.commit_point(), 0, "0 and 1 still run");
        t.track(100);
        assert!(t.complete(0));
        assert!(t.complete(1));
        assert_eq!(
            t.commit_point(),
            100,
            "100 runs; nothing between was handed out"
        );
        t.skip_to(50);
        assert_eq!(t.next(), 101, "never back");
        assert!(t.complete(100));
        let mut idle = OffsetTracker::new(5);
        idle.skip_to(9);
        assert_eq!((idle.commit_point(), idle.next()), (9, 9));
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

    #[test]
    fn an_abandoned_offset_holds_the_commit_point_but_is_not_in_flight() {
        let mut t = OffsetTracker::new(0);
        for o in 0..4 {
            t.track(o);
        }
        t.complete(0);
        t.abandon(1);
        t.abandon(1);
        assert_eq!((t.in_flight(), t.abandoned()), (2, 1));
        t.complete(2);
        t.complete(3);
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.commit_point(), 1, "never past the abandoned offset");
        t.abandon(3);
        assert_eq!(t.abandoned(), 1, "a finished offset is not abandoned");
        // Should an abandoned offset finish anyway, it counts as finished.
        assert!(t.complete(1));
        assert_eq!((t.commit_point(), t.abandoned()), (4, 0));
    }

    #[test]
    fn abandoning_the_unstarted_keeps_running_work_in_flight() {
        let mut t = OffsetTracker::new(0);
        for o in 0..4 {
            t.track(o);
        }
        t.start(1);
        t.complete(0);
        assert_eq!(t.abandon_unstarted(), 2, "2 and 3 never started");
        assert_eq!((t.in_flight(), t.abandoned()), (1, 2));
        t.start(2);
        assert_eq!(t.in_flight(), 1, "an abandoned offset does not start again");
        t.complete(1);
        assert_eq!(t.commit_point(), 2, "never past what was given up");
    }
}
