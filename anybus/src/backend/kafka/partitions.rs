//! The bookkeeping of a Kafka consumer, apart from any I/O: which partitions it owns under
//! which generation, what is in flight, what may be committed, and where to seek after a nack.
//!
//! Every assignment of a partition gets a fresh generation; a receipt from an older one is
//! stale. The commit point of a partition is the highest contiguous completed offset + 1, as the
//! [`OffsetTracker`] keeps it.

use std::sync::Arc;

use crate::backend::offsets::OffsetTracker;
use crate::backend::Receipt;
use crate::message::RecordIds;
use crate::observe::TopicPartition;

/// An owned partition.
#[derive(Debug)]
struct Owned {
    generation: u64,
    /// Created at the first message read under this generation.
    tracker: Option<OffsetTracker>,
    /// The offset last committed (or about to be), so that unchanged partitions are skipped.
    committed: Option<i64>,
    /// Asked back by the group: draining, then handed over.
    revoking: bool,
    /// Rewound by a nack: messages read before the seek is applied are dropped.
    seek: Option<SeekState>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SeekState {
    /// The poll thread has not sought yet.
    Pending(i64),
    /// Sought; only this offset or later is accepted.
    From(i64),
}

/// A seek the poll thread must perform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Seek {
    pub(super) topic: Arc<str>,
    pub(super) partition: i32,
    pub(super) offset: i64,
}

/// What the consumer owns and how far it got.
#[derive(Debug, Default)]
pub(super) struct PartitionTable {
    /// Slot ids are stable for the life of the consumer: index into this list. A consumer owns
    /// few partitions, so a scan beats a map here.
    slots: Vec<(Arc<str>, i32, RecordIds)>,
    owned: Owners,
    next_generation: u64,
}

/// The owned partitions by slot: a slot's index into a list, since slots are dense and every
/// message looks its partition up here (a hash map's hashing showed in profiles).
#[derive(Debug, Default)]
struct Owners(Vec<Option<Owned>>);

impl Owners {
    fn insert(&mut self, slot: u32, owned: Owned) {
        let i = slot as usize;
        if self.0.len() <= i {
            self.0.resize_with(i + 1, || None);
        }
        self.0[i] = Some(owned);
    }

    fn get(&self, slot: &u32) -> Option<&Owned> {
        self.0.get(*slot as usize)?.as_ref()
    }

    fn get_mut(&mut self, slot: &u32) -> Option<&mut Owned> {
        self.0.get_mut(*slot as usize)?.as_mut()
    }

    fn remove(&mut self, slot: &u32) -> Option<Owned> {
        self.0.get_mut(*slot as usize)?.take()
    }

    fn values(&self) -> impl Iterator<Item = &Owned> {
        self.0.iter().flatten()
    }

    fn keys(&self) -> impl Iterator<Item = u32> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, o)| o.is_some())
            .map(|(i, _)| i as u32)
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (u32, &mut Owned)> {
        self.0
            .iter_mut()
            .enumerate()
            .filter_map(|(i, o)| Some((i as u32, o.as_mut()?)))
    }
}

impl PartitionTable {
    fn slot(&mut self, topic: &str, partition: i32) -> u32 {
        self.find(topic, partition).unwrap_or_else(|| {
            self.slots
                .push((Arc::from(topic), partition, RecordIds::new(topic)));
            self.slots.len() as u32 - 1
        })
    }

    fn find(&self, topic: &str, partition: i32) -> Option<u32> {
        self.slots
            .iter()
            .position(|(t, p, _)| *p == partition && &**t == topic)
            .map(|i| i as u32)
    }

    /// Takes on a partition under a new generation.
    pub(super) fn assign(&mut self, topic: &str, partition: i32) {
        let slot = self.slot(topic, partition);
        self.next_generation += 1;
        self.owned.insert(
            slot,
            Owned {
                generation: self.next_generation,
                tracker: None,
                committed: None,
                revoking: false,
                seek: None,
            },
        );
    }

    /// Stops handing out work of a partition that is being taken away; `true` when it was
    /// owned and not being taken away already.
    pub(super) fn begin_revoke(&mut self, topic: &str, partition: i32) -> bool {
        match self
            .find(topic, partition)
            .and_then(|slot| self.owned.get_mut(&slot))
        {
            Some(owned) if !owned.revoking => {
                owned.revoking = true;
                true
            }
            _ => false,
        }
    }

    /// Work in flight on the partitions being revoked.
    pub(super) fn revoking_in_flight(&self) -> usize {
        self.owned
            .values()
            .filter(|o| o.revoking)
            .map(|o| o.tracker.as_ref().map_or(0, OffsetTracker::in_flight))
            .sum()
    }

    /// Gives up a partition; returns the offset to commit for it, if there is one to commit.
    pub(super) fn finish_revoke(&mut self, topic: &str, partition: i32) -> Option<i64> {
        let slot = self.find(topic, partition)?;
        let owned = self.owned.remove(&slot)?;
        let point = owned.tracker.as_ref()?.commit_point();
        (owned.committed != Some(point)).then_some(point)
    }

    /// Whether any partition is being revoked.
    pub(super) fn any_revoking(&self) -> bool {
        self.owned.values().any(|o| o.revoking)
    }

    /// Records a fetched message; returns its receipt, the shared topic name and the topic's
    /// ids for records without one, or `None` when the message must be dropped (partition not
    /// owned, or read before a pending seek took effect).
    pub(super) fn track(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Option<(Receipt, Arc<str>, RecordIds)> {
        let slot = self.find(topic, partition)?;
        let owned = self.owned.get_mut(&slot)?;
        match owned.seek {
            Some(SeekState::Pending(_)) => return None,
            Some(SeekState::From(from)) if offset < from => return None,
            Some(SeekState::From(_)) => owned.seek = None,
            None => {}
        }
        let tracker = owned
            .tracker
            .get_or_insert_with(|| OffsetTracker::new(offset));
        if offset < tracker.next() {
            // Already handed out under this generation: a duplicate fetch.
            return None;
        }
        tracker.track(offset);
        let (topic, _, ids) = &self.slots[slot as usize];
        Some((
            Receipt::new(slot, offset, owned.generation),
            Arc::clone(topic),
            *ids,
        ))
    }

    fn live(&mut self, receipt: &Receipt) -> Option<&mut Owned> {
        self.owned
            .get_mut(&receipt.slot)
            .filter(|o| o.generation == receipt.generation)
    }

    /// Whether the receipt's generation is live.
    pub(super) fn is_current(&self, receipt: &Receipt) -> bool {
        self.owned
            .get(&receipt.slot)
            .is_some_and(|o| o.generation == receipt.generation && o.seek.is_none())
    }

    /// Whether the receipt's work may start: its generation is live and its partition is not
    /// being revoked.
    pub(super) fn may_start(&self, receipt: &Receipt) -> bool {
        self.is_current(receipt)
            && self
                .owned
                .get(&receipt.slot)
                .is_some_and(|owned| !owned.revoking)
    }

    /// Claims the start of the receipt's work: `true` when its generation is live and its
    /// partition is not being revoked. A delivery of a revoking partition is given up instead:
    /// the drain no longer waits for it, and the commit point stays below it.
    pub(super) fn try_start(&mut self, receipt: &Receipt) -> bool {
        if self.may_start(receipt) {
            return true;
        }
        if let Some(tracker) = self
            .live(receipt)
            .filter(|owned| owned.revoking)
            .and_then(|owned| owned.tracker.as_mut())
        {
            tracker.abandon(receipt.offset);
        }
        false
    }

    /// Records a finished message. `Err(())` when the receipt is stale.
    pub(super) fn complete(&mut self, receipt: &Receipt) -> Result<(), ()> {
        let owned = self.live(receipt).ok_or(())?;
        if let Some(tracker) = owned.tracker.as_mut() {
            tracker.complete(receipt.offset);
        }
        Ok(())
    }

    /// Rewinds the receipt's partition to its first unfinished offset under a new generation;
    /// the returned seek must be performed by the poll thread. `Err(())` when stale.
    pub(super) fn rewind(&mut self, receipt: &Receipt) -> Result<(), ()> {
        self.next_generation += 1;
        let generation = self.next_generation;
        let owned = self.live(receipt).ok_or(())?;
        let Some(point) = owned.tracker.as_ref().map(OffsetTracker::commit_point) else {
            return Ok(());
        };
        owned.generation = generation;
        owned.tracker = None;
        owned.seek = Some(SeekState::Pending(point));
        Ok(())
    }

    /// Seeks that nacks asked for and the poll thread has not performed; marks them performed.
    pub(super) fn take_seeks(&mut self) -> Vec<Seek> {
        let mut seeks = Vec::new();
        for (slot, owned) in self.owned.iter_mut() {
            if let Some(SeekState::Pending(offset)) = owned.seek {
                owned.seek = Some(SeekState::From(offset));
                let (topic, partition, _) = &self.slots[slot as usize];
                seeks.push(Seek {
                    topic: Arc::clone(topic),
                    partition: *partition,
                    offset,
                });
            }
        }
        seeks
    }

    /// Commit points that moved since they were last taken, marked as committed.
    pub(super) fn take_commits(&mut self) -> Vec<(Arc<str>, i32, i64)> {
        let mut commits = Vec::new();
        for (slot, owned) in self.owned.iter_mut() {
            let Some(point) = owned.tracker.as_ref().map(OffsetTracker::commit_point) else {
                continue;
            };
            if owned.committed != Some(point) {
                owned.committed = Some(point);
                let (topic, partition, _) = &self.slots[slot as usize];
                commits.push((Arc::clone(topic), *partition, point));
            }
        }
        commits
    }

    /// The partitions owned, sorted.
    pub(super) fn assignment(&self) -> Vec<TopicPartition> {
        let mut all: Vec<TopicPartition> = self
            .owned
            .keys()
            .map(|slot| {
                let (topic, partition, _) = &self.slots[slot as usize];
                TopicPartition {
                    topic: Arc::clone(topic),
                    partition: *partition,
                }
            })
            .collect();
        all.sort();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_never_pass_an_unfinished_offset() {
        let mut t = PartitionTable::default();
        t.assign("t", 0);
        let r: Vec<Receipt> = (10..14).map(|o| t.track("t", 0, o).unwrap().0).collect();
        t.complete(&r[2]).unwrap();
        t.complete(&r[1]).unwrap();
        assert_eq!(t.take_commits(), vec![(Arc::from("t"), 0, 10)]);
        t.complete(&r[0]).unwrap();
        assert_eq!(t.take_commits(), vec![(Arc::from("t"), 0, 13)]);
        assert!(t.take_commits().is_empty(), "nothing moved");
    }

    #[test]
    fn a_stale_receipt_after_reassignment_changes_nothing() {
        let mut t = PartitionTable::default();
        t.assign("t", 0);
        let old = t.track("t", 0, 0).unwrap().0;
        t.begin_revoke("t", 0);
        assert_eq!(t.revoking_in_flight(), 1);
        assert_eq!(t.finish_revoke("t", 0), Some(0));
        t.assign("t", 0);
        assert!(!t.is_current(&old));
        assert_eq!(t.complete(&old), Err(()));
        let fresh = t.track("t", 0, 0).unwrap().0;
        assert!(t.is_current(&fresh));
        assert_ne!(fresh.generation(), old.generation());
    }

    #[test]
    fn a_rewind_drops_reads_until_the_seek_took_effect() {
        let mut t = PartitionTable::default();
        t.assign("t", 0);
        let r: Vec<Receipt> = (0..3).map(|o| t.track("t", 0, o).unwrap().0).collect();
        t.complete(&r[0]).unwrap();
        t.rewind(&r[1]).unwrap();
        assert!(!t.is_current(&r[2]), "work read before the rewind is stale");
        assert!(t.track("t", 0, 3).is_none(), "prefetched before the seek");
        assert_eq!(
            t.take_seeks(),
            vec![Seek {
                topic: Arc::from("t"),
                partition: 0,
                offset: 1
            }]
        );
        assert!(t.track("t", 0, 0).is_none(), "before the seek target");
        let again = t.track("t", 0, 1).unwrap().0;
        assert_eq!(again.offset, 1);
        assert!(t.is_current(&again));
    }

    #[test]
    fn assignment_lists_owned_partitions() {
        let mut t = PartitionTable::default();
        t.assign("b", 1);
        t.assign("a", 0);
        let names: Vec<(String, i32)> = t
            .assignment()
            .into_iter()
            .map(|tp| (tp.topic.to_string(), tp.partition))
            .collect();
        assert_eq!(names, [("a".into(), 0), ("b".into(), 1)]);
    }

    #[test]
    fn a_revoke_gives_up_work_not_started_and_commits_below_it() {
        let mut t = PartitionTable::default();
        t.assign("t", 0);
        let r: Vec<Receipt> = (0..4).map(|o| t.track("t", 0, o).unwrap().0).collect();
        t.complete(&r[0]).unwrap();
        assert!(t.try_start(&r[1]), "started before the revoke");
        t.begin_revoke("t", 0);
        assert_eq!(t.revoking_in_flight(), 3);
        assert!(!t.try_start(&r[2]), "no new work on a revoking partition");
        assert!(t.is_current(&r[1]), "work running on it may still finish");
        assert_eq!(t.revoking_in_flight(), 2, "given up: no longer waited for");
        t.complete(&r[1]).unwrap();
        assert!(!t.try_start(&r[3]));
        assert_eq!(
            t.revoking_in_flight(),
            0,
            "the drain waits for nothing more"
        );
        assert_eq!(
            t.finish_revoke("t", 0),
            Some(2),
            "the next owner starts at the first given up"
        );
    }
}
