//! The bookkeeping of a Kafka consumer, apart from any I/O: which partitions it owns under
//! which generation, what is in flight, what may be committed, where to seek after a nack, and
//! which partitions the runtime holds back.
//!
//! Every assignment of a partition gets a fresh generation; a receipt from an older one is
//! stale. The commit point of a partition is the highest contiguous completed offset + 1, as the
//! [`OffsetTracker`] keeps it. A commit point counts as committed only once the broker said so
//! ([`PartitionTable::commit_answered`]); until then it is committed again on revoke and close.

use std::sync::Arc;

use crate::backend::offsets::OffsetTracker;
use crate::backend::Receipt;
use crate::message::RecordIds;
use crate::observe::TopicPartition;

use self::owners::Owners;

mod owners;

/// An owned partition.
#[derive(Debug)]
struct Owned {
    generation: u64,
    /// Created at the first message read under this generation.
    tracker: Option<OffsetTracker>,
    /// The offset the broker confirmed as committed, so that unchanged partitions are skipped.
    committed: Option<i64>,
    /// The offset of the last commit sent and not answered yet.
    committing: Option<i64>,
    /// Asked back by the group: draining, then handed over.
    revoking: bool,
    /// Rewound by a nack: messages read before the seek is applied are dropped.
    seek: Option<SeekState>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SeekState {
    /// The poll thread has not sought yet (or its seek failed, and it must seek again).
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

/// A partition this consumer has met, owned or not: its slot index is stable for the life of
/// the consumer.
#[derive(Debug)]
struct Slot {
    topic: Arc<str>,
    partition: i32,
    ids: RecordIds,
    /// Paused by the runtime ([`PartitionTable::hold`]); kept across a revoke, so that the
    /// partition stays paused when it is assigned again.
    held: bool,
}

/// What the consumer owns and how far it got.
#[derive(Debug, Default)]
pub(super) struct PartitionTable {
    /// Indexed by slot. A consumer owns few partitions, so a scan beats a map here.
    slots: Vec<Slot>,
    owned: Owners,
    next_generation: u64,
    /// Fetching is paused for the whole assignment (the runtime's channel is full).
    fetch_paused: bool,
}

impl PartitionTable {
    fn slot(&mut self, topic: &str, partition: i32) -> u32 {
        self.find(topic, partition).unwrap_or_else(|| {
            self.slots.push(Slot {
                topic: Arc::from(topic),
                partition,
                ids: RecordIds::new(topic),
                held: false,
            });
            self.slots.len() as u32 - 1
        })
    }

    fn find(&self, topic: &str, partition: i32) -> Option<u32> {
        self.slots
            .iter()
            .position(|s| s.partition == partition && &*s.topic == topic)
            .map(|i| i as u32)
    }

    fn owned_mut(&mut self, topic: &str, partition: i32) -> Option<&mut Owned> {
        let slot = self.find(topic, partition)?;
        self.owned.get_mut(&slot)
    }

    fn name(&self, slot: u32) -> (Arc<str>, i32) {
        let s = &self.slots[slot as usize];
        (Arc::clone(&s.topic), s.partition)
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
                committing: None,
                revoking: false,
                seek: None,
            },
        );
    }

    /// Stops handing out work of a partition that is being taken away, and gives up what was
    /// handed out but has not started (in the poll thread's hands, the channel or the runtime's
    /// buffers): the drain waits only for work that runs. `true` when the partition was owned
    /// and not being taken away already.
    pub(super) fn begin_revoke(&mut self, topic: &str, partition: i32) -> bool {
        match self.owned_mut(topic, partition) {
            Some(owned) if !owned.revoking => {
                owned.revoking = true;
                if let Some(tracker) = owned.tracker.as_mut() {
                    tracker.abandon_unstarted();
                }
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

    /// Gives up a partition; returns the offset to commit for it, unless the broker confirmed
    /// that one already.
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
        let s = &self.slots[slot as usize];
        Some((
            Receipt::new(slot, offset, owned.generation),
            Arc::clone(&s.topic),
            s.ids,
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
    /// partition is not being revoked; a revoke waits for it from then on. A delivery of a
    /// revoking partition is given up instead: the drain no longer waits for it, and the
    /// commit point stays below it.
    pub(super) fn try_start(&mut self, receipt: &Receipt) -> bool {
        // One lookup: this runs for every delivery.
        let Some(owned) = self.live(receipt) else {
            return false;
        };
        if owned.seek.is_some() {
            return false;
        }
        match (owned.tracker.as_mut(), owned.revoking) {
            (Some(tracker), true) => {
                tracker.abandon(receipt.offset);
                false
            }
            (Some(tracker), false) => {
                tracker.start(receipt.offset);
                true
            }
            (None, revoking) => !revoking,
        }
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
                let s = &self.slots[slot as usize];
                seeks.push(Seek {
                    topic: Arc::clone(&s.topic),
                    partition: s.partition,
                    offset,
                });
            }
        }
        seeks
    }

    /// A seek from [`PartitionTable::take_seeks`] failed: librdkafka goes on fetching from
    /// where it was, past messages that were never handled. Everything read of the partition
    /// is dropped (and nothing of it committed) until a seek succeeds: the next
    /// [`PartitionTable::take_seeks`] asks for it again.
    pub(super) fn seek_failed(&mut self, seek: &Seek) {
        if let Some(owned) = self.owned_mut(&seek.topic, seek.partition) {
            if owned.seek == Some(SeekState::From(seek.offset)) {
                owned.seek = Some(SeekState::Pending(seek.offset));
            }
        }
    }

    /// Commit points that are neither confirmed nor being committed, marked as being
    /// committed: a commit that failed is taken again.
    pub(super) fn take_commits(&mut self) -> Vec<(Arc<str>, i32, i64)> {
        self.take_where(|owned, point| owned.committing != Some(point))
    }

    /// Every commit point the broker has not confirmed, sent or not: what closing commits.
    pub(super) fn take_unconfirmed(&mut self) -> Vec<(Arc<str>, i32, i64)> {
        self.take_where(|_, _| true)
    }

    fn take_where(&mut self, also: impl Fn(&Owned, i64) -> bool) -> Vec<(Arc<str>, i32, i64)> {
        let mut commits = Vec::new();
        for (slot, owned) in self.owned.iter_mut() {
            let Some(point) = owned.tracker.as_ref().map(OffsetTracker::commit_point) else {
                continue;
            };
            if owned.committed != Some(point) && also(owned, point) {
                owned.committing = Some(point);
                let s = &self.slots[slot as usize];
                commits.push((Arc::clone(&s.topic), s.partition, point));
            }
        }
        commits
    }

    /// The broker's answer to a commit of `offset`: on success it is the partition's
    /// committed offset; on failure the next [`PartitionTable::take_commits`] takes the
    /// partition's commit point again. An answer to an older commit than the last one sent
    /// changes nothing: the last one's answer is still to come.
    pub(super) fn commit_answered(&mut self, topic: &str, partition: i32, offset: i64, ok: bool) {
        let Some(owned) = self.owned_mut(topic, partition) else {
            return;
        };
        if owned.committing != Some(offset) {
            return;
        }
        owned.committing = None;
        if ok {
            owned.committed = Some(offset);
        }
    }

    /// The runtime holds the partition of `slot` back; returns it when this consumer owns it,
    /// so that its fetching is paused now.
    pub(super) fn hold(&mut self, slot: u32) -> Option<(Arc<str>, i32)> {
        self.slots.get_mut(slot as usize)?.held = true;
        self.owned.get(&slot).map(|_| self.name(slot))
    }

    /// The runtime lets the partition of `slot` go on; returns it when its fetching resumes
    /// now: owned, and fetching not paused for the whole assignment.
    pub(super) fn release(&mut self, slot: u32) -> Option<(Arc<str>, i32)> {
        let s = self.slots.get_mut(slot as usize)?;
        let was_held = std::mem::replace(&mut s.held, false);
        (was_held && !self.fetch_paused && self.owned.get(&slot).is_some()).then(|| self.name(slot))
    }

    /// Records whether fetching is paused for the whole assignment.
    pub(super) fn set_fetch_paused(&mut self, paused: bool) {
        self.fetch_paused = paused;
    }

    /// Whether fetching of the partition must be paused: the runtime holds it back, or
    /// fetching is paused for the whole assignment.
    pub(super) fn is_paused(&self, topic: &str, partition: i32) -> bool {
        self.fetch_paused
            || self
                .find(topic, partition)
                .is_some_and(|slot| self.slots[slot as usize].held)
    }

    /// The partitions owned, sorted.
    pub(super) fn assignment(&self) -> Vec<TopicPartition> {
        let mut all: Vec<TopicPartition> = self
            .owned
            .keys()
            .map(|slot| {
                let (topic, partition) = self.name(slot);
                TopicPartition { topic, partition }
            })
            .collect();
        all.sort();
        all
    }
}

#[cfg(test)]
mod tests;
