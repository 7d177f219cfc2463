//! Per-partition lanes and their backpressure: a full lane holds back only its own partition.
//!
//! A lane is a task fed by a bounded channel with the deliveries of one partition (its
//! receipt slot). Under partition ordering every partition has one, and the lane runs the
//! handler. Under the other orderings only the group's retry partitions have one, a delay lane:
//! it holds each retry copy until it is due, then hands it back to the dispatch loop, so that a
//! waiting copy holds no worker.
//!
//! When a lane's channel is full, the dispatch loop does not wait for it, which would stop every
//! other partition too: it keeps the delivery, and whatever else comes for that partition, in
//! the lane's overflow, in order. The lane tells the loop once half its channel is free while
//! the overflow waits, and the loop moves the overflow in.
//!
//! Once an overflow holds [`OVERFLOW_BEFORE_PAUSE`], the loop stops polling: a lane that is
//! merely busy (a fast handler behind a faster fetch) makes room within moments, and polling
//! goes on, with nothing fetched again. A lane that makes no room for [`HOLD_BEFORE_PAUSE`] is
//! slow: the loop pauses its partition at the backend ([`Consumer::pause`]) and polls again for
//! the others, and resumes the partition once its overflow is empty. The overflow holds at most
//! what the backend had fetched before the pause took effect.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::backend::{Consumer, Delivery};
use crate::observe::SubscriptionStats;

/// Deliveries a lane buffers before its partition overflows.
pub(super) const LANE_CAPACITY: usize = 128;

/// Deliveries a lane's overflow holds before its partition is paused. Pausing is not free (a
/// Kafka consumer drops what it prefetched for the partition and fetches it again on resume),
/// so a lane that is only briefly full is not paused; one that stays full is, and its
/// partition then holds at most this, the lane, and what was on its way.
pub(super) const OVERFLOW_BEFORE_PAUSE: usize = 4 * LANE_CAPACITY;

/// How long the loop stops polling for a lane whose overflow is full before it pauses the
/// lane's partition and polls again for the others: long enough for a busy lane to make room
/// (a fast handler takes half a lane in well under a millisecond), short enough that a slow
/// partition holds the others back only this long.
pub(super) const HOLD_BEFORE_PAUSE: Duration = Duration::from_millis(50);

/// The dispatch loop's side of one lane.
struct LaneTx {
    slot: u32,
    tx: mpsc::Sender<Delivery>,
    /// Deliveries that found the lane full, in order: the partition is paused while any wait.
    overflow: VecDeque<Delivery>,
    /// Set while the overflow waits: the lane reports on `room` when it takes a delivery.
    wants_room: Arc<AtomicBool>,
    /// Since when the overflow is full and the loop does not poll for it, while the partition
    /// is not paused.
    full_since: Option<Instant>,
    /// Whether the loop paused the partition ([`HOLD_BEFORE_PAUSE`]).
    paused: bool,
}

/// The lane side of the room signal: how a lane tells the loop it took a delivery.
pub(crate) struct Room {
    slot: u32,
    wants: Arc<AtomicBool>,
    room: mpsc::UnboundedSender<u32>,
}

impl Room {
    /// The lane took a delivery from its channel, which still holds `left`: if the loop waits
    /// for room, say so once half the channel is free, so that it moves a run of deliveries in
    /// at once rather than waking for each. One relaxed load per delivery while nobody waits.
    pub(crate) fn took_one(&self, left: usize) {
        if left <= LANE_CAPACITY / 2
            && self.wants.load(AtomicOrdering::Relaxed)
            && self.wants.swap(false, AtomicOrdering::AcqRel)
        {
            let _ = self.room.send(self.slot);
        }
    }
}

/// The lanes of one subscription member, by slot.
pub(super) struct Lanes {
    /// A member owns a handful of partitions, so a scan beats hashing the slot of every
    /// delivery.
    lanes: Vec<LaneTx>,
    room_tx: mpsc::UnboundedSender<u32>,
    room_rx: mpsc::UnboundedReceiver<u32>,
    stats: Arc<SubscriptionStats>,
}

/// A lane is gone: its task ended, so the subscription cannot go on.
#[derive(Debug)]
pub(super) struct LaneGone;

impl Lanes {
    pub(super) fn new(stats: Arc<SubscriptionStats>) -> Self {
        let (room_tx, room_rx) = mpsc::unbounded_channel();
        Self {
            lanes: Vec::new(),
            room_tx,
            room_rx,
            stats,
        }
    }

    /// Hands `delivery` to its slot's lane, starting one with `start` (given the lane's
    /// receiving end and its room signal) for a slot seen for the first time. A full lane keeps
    /// the delivery in its overflow; a lane with an overflow keeps every later delivery there
    /// too, so the partition's order holds.
    pub(super) fn route(
        &mut self,
        delivery: Delivery,
        start: impl FnOnce(mpsc::Receiver<Delivery>, Room),
    ) -> Result<(), LaneGone> {
        let slot = delivery.receipt.slot;
        let i = match self.lanes.iter().position(|lane| lane.slot == slot) {
            Some(i) => i,
            None => {
                let (tx, rx) = mpsc::channel(LANE_CAPACITY);
                let wants_room = Arc::new(AtomicBool::new(false));
                start(
                    rx,
                    Room {
                        slot,
                        wants: Arc::clone(&wants_room),
                        room: self.room_tx.clone(),
                    },
                );
                self.lanes.push(LaneTx {
                    slot,
                    tx,
                    overflow: VecDeque::new(),
                    wants_room,
                    full_since: None,
                    paused: false,
                });
                self.lanes.len() - 1
            }
        };
        let lane = &mut self.lanes[i];
        if !lane.overflow.is_empty() {
            lane.overflow.push_back(delivery);
            if lane.overflow.len() >= OVERFLOW_BEFORE_PAUSE
                && !lane.paused
                && lane.full_since.is_none()
            {
                lane.full_since = Some(Instant::now());
            }
            return Ok(());
        }
        match lane.tx.try_send(delivery) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(LaneGone),
            Err(mpsc::error::TrySendError::Full(delivery)) => {
                lane.overflow.push_back(delivery);
                lane.wants_room.store(true, AtomicOrdering::Release);
                Ok(())
            }
        }
    }

    /// Until when the loop holds off polling for a full overflow (see the module docs); `None`
    /// when no overflow is full, or each full one's partition is paused.
    pub(super) fn hold(&self) -> Option<Instant> {
        self.lanes
            .iter()
            .filter_map(|lane| lane.full_since)
            .min()
            .map(|since| since + HOLD_BEFORE_PAUSE)
    }

    /// Pauses the partition of each lane whose overflow has been full for
    /// [`HOLD_BEFORE_PAUSE`]: it is slow, and the others must not wait for it.
    pub(super) fn pause_slow(&mut self, consumer: &mut dyn Consumer) {
        let now = Instant::now();
        for lane in &mut self.lanes {
            if lane
                .full_since
                .is_some_and(|since| now >= since + HOLD_BEFORE_PAUSE)
            {
                lane.full_since = None;
                lane.paused = true;
                consumer.pause(lane.slot);
                SubscriptionStats::count(&self.stats.lane_pauses);
            }
        }
    }

    /// The next slot whose lane took a delivery while its overflow waited.
    pub(super) async fn next_room(&mut self) -> Option<u32> {
        self.room_rx.recv().await
    }

    /// `slot`'s lane has room: moves its overflow in while there is room, and resumes the slot
    /// once the overflow is empty.
    pub(super) fn refill(
        &mut self,
        slot: u32,
        consumer: &mut dyn Consumer,
    ) -> Result<(), LaneGone> {
        let Some(lane) = self.lanes.iter_mut().find(|lane| lane.slot == slot) else {
            return Ok(());
        };
        while let Some(delivery) = lane.overflow.pop_front() {
            match lane.tx.try_send(delivery) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(LaneGone),
                Err(mpsc::error::TrySendError::Full(delivery)) => {
                    lane.overflow.push_front(delivery);
                    lane.wants_room.store(true, AtomicOrdering::Release);
                    if lane.overflow.len() < OVERFLOW_BEFORE_PAUSE {
                        // It made room: polling goes on.
                        lane.full_since = None;
                    }
                    return Ok(());
                }
            }
        }
        lane.full_since = None;
        if std::mem::take(&mut lane.paused) {
            consumer.resume(slot);
        }
        Ok(())
    }
}
