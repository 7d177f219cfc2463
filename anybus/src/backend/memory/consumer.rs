//! One member of a memory consumer group: reads its partitions, tracks what is in flight, and
//! settles deliveries against the generation of the assignment that produced them.

use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::group::{MemberId, TopicGroup};
use crate::backend::offsets::OffsetTracker;
use crate::backend::{BackendError, Consumer, Delivery, Receipt, Settler};
use crate::handler::BoxFuture;
use crate::observe::{SubscriptionStats, TopicPartition};

/// A partition this member owns.
struct Slot {
    /// `group index << 16 | partition`: what receipts carry.
    key: u32,
    group: usize,
    partition: usize,
    generation: u64,
    /// The next offset to read.
    position: i64,
    tracker: OffsetTracker,
    /// Set when the group asked for the partition back: no more reads, hand over when drained
    /// or at this instant.
    revoke_deadline: Option<Instant>,
}

struct MemberState {
    slots: Vec<Slot>,
    /// The version of each topic group's assignment last looked at.
    synced: Vec<u64>,
    closed: bool,
    /// Slots were added or removed since the assignment was last reported.
    reassigned: bool,
    /// Slot keys the runtime paused ([`Consumer::pause`]): not read until resumed. Kept apart
    /// from the slots, so that a pause outlives a handover and comes back with the partition.
    paused: Vec<u32>,
}

/// The part of a member that workers settle through.
pub(super) struct Member {
    id: MemberId,
    groups: Vec<Arc<TopicGroup>>,
    state: Mutex<MemberState>,
    notify: Arc<Notify>,
    stats: Arc<SubscriptionStats>,
    drain_timeout: Duration,
}

impl Member {
    fn lock(&self) -> MutexGuard<'_, MemberState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes on partitions assigned to us and notices partitions asked back.
    fn sync(&self, st: &mut MemberState, now: Instant) {
        for (gi, group) in self.groups.iter().enumerate() {
            let version = group.version();
            if st.synced[gi] == version {
                continue;
            }
            st.synced[gi] = version;
            let mut a = group.lock();
            for p in 0..a.owner.len() {
                let key = slot_key(gi, p);
                let owned = a.owner[p] == Some(self.id);
                let wanted = a.target[p] == Some(self.id);
                match (owned, st.slots.iter().position(|s| s.key == key)) {
                    (true, None) => {
                        let position = group.committed(p);
                        st.slots.push(Slot {
                            key,
                            group: gi,
                            partition: p,
                            generation: a.generation[p],
                            position,
                            tracker: OffsetTracker::new(position),
                            // Owned but already promised to another member: give it up as
                            // soon as it is drained, which it is.
                            revoke_deadline: (!wanted).then_some(now),
                        });
                        st.reassigned = true;
                    }
                    (true, Some(i)) => {
                        let slot = &mut st.slots[i];
                        slot.revoke_deadline = match (wanted, slot.revoke_deadline) {
                            (true, _) => None,
                            (false, None) => {
                                SubscriptionStats::count(&self.stats.handovers);
                                // Work waiting to go on looks whether it still may.
                                self.notify.notify_waiters();
                                Some(now + self.drain_timeout)
                            }
                            (false, deadline) => deadline,
                        };
                        if slot.revoke_deadline.is_none() && slot.tracker.abandoned() > 0 {
                            // Kept after all, but what was given up meanwhile must be read
                            // again: from the first unfinished message, under a new generation
                            // (as after a nack; what still runs is handled again, as after a
                            // rebalance on Kafka).
                            // (`group.rewind`, with the lock held here.)
                            a.generation[p] += 1;
                            slot.generation = a.generation[p];
                            slot.position = slot.tracker.commit_point();
                            slot.tracker = OffsetTracker::new(slot.position);
                        }
                    }
                    (false, Some(i)) => {
                        st.slots.swap_remove(i);
                        st.reassigned = true;
                    }
                    (false, None) => {}
                }
            }
        }
    }

    /// Hands over partitions asked back whose work is done or whose drain time is up; returns
    /// the earliest deadline still pending.
    fn release_drained(&self, st: &mut MemberState, now: Instant) -> Option<Instant> {
        let mut next = None::<Instant>;
        let mut i = 0;
        while i < st.slots.len() {
            let slot = &st.slots[i];
            match slot.revoke_deadline {
                Some(deadline) if slot.tracker.in_flight() == 0 || now >= deadline => {
                    let group = &self.groups[slot.group];
                    if slot.tracker.in_flight() > 0 {
                        tracing::warn!(
                            topic = &*group.topic.name,
                            partition = slot.partition,
                            in_flight = slot.tracker.in_flight(),
                            "drain timed out; handing the partition over with work unfinished"
                        );
                    }
                    group.commit_and_trim(slot.partition, slot.tracker.commit_point());
                    group.release(self.id, slot.partition);
                    st.slots.swap_remove(i);
                    st.reassigned = true;
                    self.notify.notify_waiters();
                }
                Some(deadline) => {
                    next = Some(next.map_or(deadline, |n| n.min(deadline)));
                    i += 1;
                }
                None => i += 1,
            }
        }
        next
    }

    /// Reads up to `batch` deliveries in all, from the partitions not being handed over,
    /// starting at a rotating partition so that none starves.
    fn fetch(&self, st: &mut MemberState, out: &mut Vec<Delivery>, batch: usize, rotate: usize) {
        let n = st.slots.len();
        for i in 0..n {
            let budget = batch.saturating_sub(out.len());
            if budget == 0 {
                break;
            }
            let slot = &mut st.slots[(rotate + i) % n];
            if slot.revoke_deadline.is_some() || st.paused.contains(&slot.key) {
                continue;
            }
            let group = &self.groups[slot.group];
            let log = &group.topic.partitions[slot.partition];
            let (key, generation) = (slot.key, slot.generation);
            let tracker = &mut slot.tracker;
            let mut read = 0;
            let start = log.read(slot.position, budget, |offset, message| {
                tracker.track(offset);
                out.push(Delivery {
                    message: Arc::clone(message),
                    receipt: Receipt::new(key, offset, generation),
                });
                read += 1;
            });
            if start > slot.position {
                skipped_by_retention(group, slot, start);
            }
            slot.position = start + read;
        }
    }

    /// The slot a receipt belongs to, if its generation is still live.
    fn live_slot<'a>(st: &'a mut MemberState, receipt: &Receipt) -> Option<&'a mut Slot> {
        st.slots
            .iter_mut()
            .find(|s| s.key == receipt.slot && s.generation == receipt.generation)
    }

    /// Tells the runtime which partitions this member owns, when that changed.
    fn report_assignment(&self, st: &mut MemberState) {
        if !std::mem::take(&mut st.reassigned) {
            return;
        }
        let mut owned: Vec<TopicPartition> = st
            .slots
            .iter()
            .map(|s| TopicPartition {
                topic: Arc::clone(&self.groups[s.group].topic.name),
                partition: s.partition as i32,
            })
            .collect();
        owned.sort();
        self.stats.report_assignment(owned);
    }
}

/// Moves `slot` on to `base`, the first retained message, past messages the partition's bounds
/// dropped before they were read (or read again), as Kafka's `auto.offset.reset=earliest`
/// would; says so, since they are not delivered.
fn skipped_by_retention(group: &TopicGroup, slot: &mut Slot, base: i64) {
    tracing::warn!(
        topic = &*group.topic.name,
        partition = slot.partition,
        group = &*group.name,
        skipped = base - slot.position,
        from = slot.position,
        to = base,
        "messages were dropped by the memory broker's retention bounds before the group read them; \
         continuing from the first retained message"
    );
    // What is still in flight below keeps the commit point where it is until it finishes.
    slot.tracker.skip_to(base);
}

fn slot_key(group: usize, partition: usize) -> u32 {
    ((group as u32) << 16) | partition as u32
}

impl Settler for Member {
    fn is_current(&self, receipt: &Receipt) -> bool {
        Self::live_slot(&mut self.lock(), receipt).is_some()
    }

    fn stopped<'a>(&'a self, receipt: &'a Receipt) -> BoxFuture<'a, ()> {
        Box::pin(crate::backend::once(&self.notify, move || {
            Self::live_slot(&mut self.lock(), receipt).is_none_or(|s| s.revoke_deadline.is_some())
        }))
    }

    fn try_start(&self, receipt: &Receipt) -> bool {
        let mut st = self.lock();
        let Some(slot) = Self::live_slot(&mut st, receipt) else {
            return false;
        };
        if slot.revoke_deadline.is_none() {
            return true;
        }
        slot.tracker.abandon(receipt.offset);
        if slot.tracker.in_flight() == 0 {
            self.notify.notify_waiters();
        }
        false
    }

    fn ack(&self, receipt: &Receipt) {
        let mut st = self.lock();
        let Some(slot) = Self::live_slot(&mut st, receipt) else {
            drop(st);
            return self.stats.count_stale(receipt, "ack");
        };
        if slot.tracker.complete(receipt.offset) {
            self.groups[slot.group].commit(slot.partition, slot.tracker.commit_point());
        }
        if slot.revoke_deadline.is_some() && slot.tracker.in_flight() == 0 {
            self.notify.notify_waiters();
        }
    }

    fn nack(&self, receipt: &Receipt) {
        let mut st = self.lock();
        let Some(slot) = Self::live_slot(&mut st, receipt) else {
            drop(st);
            return self.stats.count_stale(receipt, "nack");
        };
        // Like a Kafka consumer that seeks back to its committed offset: read again from the
        // first unfinished message under a new generation, so that work still in flight from
        // the old read is skipped and its settlements dropped.
        let group = &self.groups[slot.group];
        slot.generation = group.rewind(slot.partition);
        slot.position = slot.tracker.commit_point();
        slot.tracker = OffsetTracker::new(slot.position);
        self.stats
            .redeliveries
            .fetch_add(1, AtomicOrdering::Relaxed);
        drop(st);
        self.notify.notify_waiters();
    }
}

/// A [`Consumer`] on the memory broker.
pub(super) struct MemoryConsumer {
    member: Arc<Member>,
    batch: usize,
    rotate: usize,
}

impl MemoryConsumer {
    pub(super) fn join(
        id: MemberId,
        groups: Vec<Arc<TopicGroup>>,
        notify: Arc<Notify>,
        stats: Arc<SubscriptionStats>,
        batch: usize,
        drain_timeout: Duration,
    ) -> Self {
        let member = Arc::new(Member {
            id,
            state: Mutex::new(MemberState {
                slots: Vec::new(),
                synced: vec![u64::MAX; groups.len()],
                closed: false,
                reassigned: false,
                paused: Vec::new(),
            }),
            groups,
            notify,
            stats,
            drain_timeout,
        });
        for group in &member.groups {
            group.join(id);
        }
        member.notify.notify_waiters();
        Self {
            member,
            batch: batch.max(1),
            rotate: 0,
        }
    }

    async fn next(&mut self, out: &mut Vec<Delivery>) -> Result<(), BackendError> {
        loop {
            let notified = self.member.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let deadline = {
                let now = Instant::now();
                let mut st = self.member.lock();
                if st.closed {
                    return Err(BackendError::Closed { backend: "memory" });
                }
                if self.member.groups.iter().any(|g| g.is_disconnected()) {
                    return Err(BackendError::Broker {
                        backend: "memory",
                        reason: "the consumer group was disconnected (MemoryBroker::disconnect)"
                            .into(),
                    });
                }
                self.member.sync(&mut st, now);
                let deadline = self.member.release_drained(&mut st, now);
                self.member.report_assignment(&mut st);
                self.rotate = self.rotate.wrapping_add(1);
                self.member.fetch(&mut st, out, self.batch, self.rotate);
                deadline
            };
            if !out.is_empty() {
                return Ok(());
            }
            match deadline {
                Some(deadline) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(deadline) => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}

impl Consumer for MemoryConsumer {
    fn poll<'a>(
        &'a mut self,
        out: &'a mut Vec<Delivery>,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(self.next(out))
    }

    fn settler(&self) -> Arc<dyn Settler> {
        Arc::clone(&self.member) as Arc<dyn Settler>
    }

    fn pause(&mut self, slot: u32) {
        let mut st = self.member.lock();
        if !st.paused.contains(&slot) {
            st.paused.push(slot);
        }
    }

    fn resume(&mut self, slot: u32) {
        // The next poll reads it; nothing waits to be woken, since the runtime resumes between
        // polls.
        self.member.lock().paused.retain(|s| *s != slot);
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, Result<(), BackendError>> {
        let member = Arc::clone(&self.member);
        Box::pin(async move {
            {
                let mut st = member.lock();
                for slot in st.slots.drain(..) {
                    member.groups[slot.group]
                        .commit_and_trim(slot.partition, slot.tracker.commit_point());
                }
                st.closed = true;
                st.reassigned = true;
                member.report_assignment(&mut st);
            }
            for group in &member.groups {
                group.leave(member.id);
            }
            member.notify.notify_waiters();
            Ok(())
        })
    }
}
