//! Consumer groups of the memory broker: who owns which partition of a topic, and from where
//! the group reads it.
//!
//! A group is kept per topic. Partitions are spread round-robin over the members in the order
//! they joined. When membership changes, a partition whose owner changes is not moved at once:
//! its current owner is asked to give it up, stops reading it, drains the work it has in flight
//! (up to its drain timeout), and then hands it over at the committed offset with a new
//! generation. A member that leaves hands over everything at once.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::log::Topic;

pub(super) type MemberId = u64;

/// One consumer group's view of one topic.
pub(super) struct TopicGroup {
    /// The group's name, for logs.
    pub(super) name: Arc<str>,
    pub(super) topic: Arc<Topic>,
    /// Bumped whenever ownership changes, so members know to look.
    version: AtomicU64,
    /// The next offset the group reads, per partition; shared with the topic, which keeps what
    /// any group has yet to read.
    committed: Arc<[AtomicI64]>,
    state: Mutex<Assignment>,
    /// Set by [`MemoryBroker::disconnect`](super::MemoryBroker::disconnect): the members' polls
    /// fail.
    disconnected: std::sync::atomic::AtomicBool,
}

/// Ownership of the partitions.
pub(super) struct Assignment {
    members: Vec<MemberId>,
    /// Who owns each partition now.
    pub(super) owner: Vec<Option<MemberId>>,
    /// Who should own it once its owner lets go.
    pub(super) target: Vec<Option<MemberId>>,
    /// Bumped each time a partition changes hands or is rewound.
    pub(super) generation: Vec<u64>,
}

impl TopicGroup {
    /// The group `name` of `topic`, which reads from the first retained message of each
    /// partition.
    pub(super) fn new(name: &str, topic: Arc<Topic>) -> Self {
        let n = topic.partitions.len();
        Self {
            name: Arc::from(name),
            committed: topic.add_reader(),
            topic,
            version: AtomicU64::new(0),
            state: Mutex::new(Assignment {
                members: Vec::new(),
                owner: vec![None; n],
                target: vec![None; n],
                generation: vec![0; n],
            }),
            disconnected: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Cuts the group's members off: their polls fail from now on.
    pub(super) fn disconnect(&self) {
        self.disconnected.store(true, Ordering::Release);
    }

    /// Whether [`TopicGroup::disconnect`] was called.
    pub(super) fn is_disconnected(&self) -> bool {
        self.disconnected.load(Ordering::Acquire)
    }

    pub(super) fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub(super) fn committed(&self, partition: usize) -> i64 {
        self.committed[partition].load(Ordering::Acquire)
    }

    /// Commits after an ack; what every group has consumed is dropped now and then.
    pub(super) fn commit(&self, partition: usize, offset: i64) {
        self.committed[partition].store(offset, Ordering::Release);
        self.topic.consumed(partition, offset, false);
    }

    /// Commits as a member lets go of `partition`, and drops at once what every group has
    /// consumed: nothing may come to look for a while.
    pub(super) fn commit_and_trim(&self, partition: usize, offset: i64) {
        self.committed[partition].store(offset, Ordering::Release);
        self.topic.consumed(partition, offset, true);
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Assignment> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn bump_version(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// Adds a member and rebalances.
    pub(super) fn join(&self, member: MemberId) {
        let mut a = self.lock();
        a.members.push(member);
        a.rebalance();
        drop(a);
        self.bump_version();
    }

    /// Removes a member, frees its partitions (their committed offsets stay) and rebalances.
    pub(super) fn leave(&self, member: MemberId) {
        let mut a = self.lock();
        a.members.retain(|m| *m != member);
        for p in 0..a.owner.len() {
            if a.owner[p] == Some(member) {
                a.owner[p] = None;
                a.generation[p] += 1;
            }
        }
        a.rebalance();
        drop(a);
        self.bump_version();
    }

    /// `member` gives up `partition` to its target owner.
    pub(super) fn release(&self, member: MemberId, partition: usize) {
        let mut a = self.lock();
        if a.owner[partition] == Some(member) {
            a.generation[partition] += 1;
            a.owner[partition] = a.target[partition];
        }
        drop(a);
        self.bump_version();
    }

    /// Starts `partition` over from its committed offset under a new generation; returns it.
    pub(super) fn rewind(&self, partition: usize) -> u64 {
        let mut a = self.lock();
        a.generation[partition] += 1;
        a.generation[partition]
    }
}

impl Assignment {
    /// Spreads partitions over members round-robin; free partitions go to their target at once.
    fn rebalance(&mut self) {
        for p in 0..self.target.len() {
            self.target[p] = if self.members.is_empty() {
                None
            } else {
                Some(self.members[p % self.members.len()])
            };
            if self.owner[p].is_none() {
                self.owner[p] = self.target[p];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::retention::Retention;
    use super::*;

    fn group(partitions: u32) -> TopicGroup {
        TopicGroup::new(
            "g",
            Arc::new(Topic::new("t", partitions, Retention::default())),
        )
    }

    #[test]
    fn a_joining_member_gets_partitions_only_after_release() {
        let g = group(4);
        g.join(1);
        assert_eq!(g.lock().owner, vec![Some(1); 4]);
        g.join(2);
        {
            let a = g.lock();
            assert_eq!(a.owner, vec![Some(1); 4], "nothing moves before release");
            assert_eq!(a.target, vec![Some(1), Some(2), Some(1), Some(2)]);
        }
        g.release(1, 1);
        let a = g.lock();
        assert_eq!(a.owner[1], Some(2));
        assert_eq!(a.generation[1], 1);
    }

    #[test]
    fn a_leaving_member_hands_everything_over() {
        let g = group(2);
        g.join(1);
        g.join(2);
        g.release(1, 1);
        g.leave(1);
        let a = g.lock();
        assert_eq!(a.owner, vec![Some(2), Some(2)]);
        assert_eq!(a.generation, vec![1, 1]);
    }
}
