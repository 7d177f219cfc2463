//! What may run at once: one lane per partition, one delivery per key, or a pool of
//! `concurrency` workers.
//!
//! The dispatch loop polls the consumer and routes each delivery. Under
//! [`Ordering::Partition`] every partition (RabbitMQ: the queue) has a lane (see [`lanes`]), a
//! task that handles its deliveries one after another. A full lane holds back only its own
//! partition: the loop pauses that partition and goes on with the others. Under
//! [`Ordering::None`], `concurrency` workers take deliveries from one shared queue; a full queue
//! means every worker is busy, and the loop waits.
//!
//! Under [`Ordering::Key`], `concurrency` workers take deliveries whose key is idle; the loop
//! keeps the rest of each key in [`KeyQueues`] and starts the next of a key when a worker
//! reports the previous one finished. The key is the partition plus the message key, so a key's
//! deliveries run in offset order; keyless deliveries of a partition share one key and so run
//! in partition order. The loop polls only while a whole batch fits under `max_buffered`
//! deliveries admitted and not finished, so that cap holds exactly, and one hot key cannot grow
//! the buffer.
//!
//! Under both pool orderings, the deliveries of the group's retry partitions go through a delay
//! lane, which holds each retry copy until it is due and then hands it back to the loop: a
//! waiting copy holds no worker, and fresh work runs at full concurrency meanwhile.
//!
//! On shutdown the loop stops polling, lanes finish the handler they are running and skip what
//! they had not started (it was not acknowledged, so it is delivered again), and the consumer
//! commits and leaves its group. A lane or worker that ends before that ends the subscription
//! with [`BackendError::Stopped`]: a subscription never stops consuming silently.
//!
//! [`lanes`]: super::lanes

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::keys::KeyQueues;
use super::lanes::{Lanes, Room, LANE_CAPACITY};
use super::{Lane, Worker};
use crate::backend::{BackendError, Consumer, Delivery};
use crate::subscription::{Ordering, RetryMode};

/// How one subscription member is run.
pub(crate) struct Dispatch {
    pub(crate) worker: Arc<Worker>,
    pub(crate) ordering: Ordering,
    pub(crate) concurrency: usize,
    /// The most deliveries one poll of the consumer returns.
    pub(crate) batch: usize,
    pub(crate) drain_timeout: Duration,
    /// Under key ordering, the most deliveries admitted and not finished.
    pub(crate) max_buffered: usize,
}

/// The dispatch loop's side of key ordering.
struct Keyed {
    queues: KeyQueues<Delivery>,
    /// Deliveries whose key is idle, to the workers. Unbounded, but never longer than
    /// `max_buffered`.
    ready: async_channel::Sender<(u64, Delivery)>,
    /// Keys whose delivery a worker finished.
    finished: mpsc::UnboundedReceiver<u64>,
    hasher: RandomState,
}

impl Keyed {
    /// Admits a delivery; `false` when the workers are gone.
    fn admit(&mut self, delivery: Delivery) -> bool {
        // A collision of two keys only makes them wait for each other: order is still kept.
        let key = self.hasher.hash_one((
            delivery.receipt.slot,
            delivery.message.key().map(|k| &k[..]),
        ));
        match self.queues.push(key, delivery) {
            Some(start) => self.ready.try_send((key, start)).is_ok(),
            None => true,
        }
    }

    /// A worker finished `key`: starts what waits behind it, and whatever else finished
    /// meanwhile. `false` when the workers are gone.
    fn finish(&mut self, mut key: u64) -> bool {
        loop {
            if let Some(next) = self.queues.finish(key) {
                if self.ready.try_send((key, next)).is_err() {
                    return false;
                }
            }
            match self.finished.try_recv() {
                Ok(more) => key = more,
                Err(_) => return true,
            }
        }
    }
}

/// The next key a worker finished; never resolves without key ordering.
async fn next_finished(keyed: &mut Option<Keyed>) -> Option<u64> {
    match keyed {
        Some(keyed) => keyed.finished.recv().await,
        None => std::future::pending().await,
    }
}

/// Which slots carry the group's retry copies, learned from the first delivery of each: under
/// the pool orderings their deliveries go through a delay lane.
#[derive(Default)]
struct RetrySlots {
    known: Vec<(u32, bool)>,
}

impl RetrySlots {
    fn is_retry(&mut self, delivery: &Delivery, worker: &Worker) -> bool {
        let slot = delivery.receipt.slot;
        if let Some(&(_, retry)) = self.known.iter().find(|(s, _)| *s == slot) {
            return retry;
        }
        let topic = delivery.message.topic();
        let retry = worker.retry_topics.iter().any(|t| t == topic)
            || super::redeliver::RetryCopy::of(&delivery.message, &worker.group).is_some();
        self.known.push((slot, retry));
        retry
    }
}

impl Dispatch {
    /// Polls, routes and handles until `stop` turns true, then drains and closes the consumer.
    pub(crate) async fn run(
        self,
        mut consumer: Box<dyn Consumer>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), BackendError> {
        let stopping = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        let mut pool = None;
        let mut keyed = None;
        match self.ordering {
            Ordering::None => {
                let (tx, rx) = async_channel::bounded(self.concurrency.max(1));
                for _ in 0..self.concurrency.max(1) {
                    let lane =
                        Lane::of_pool(Arc::clone(&self.worker), rx.clone(), Arc::clone(&stopping));
                    tasks.spawn(Arc::clone(&self.worker.handler).serve(lane));
                }
                pool = Some(tx);
            }
            Ordering::Key => {
                let (ready, rx) = async_channel::unbounded();
                let (done, finished) = mpsc::unbounded_channel();
                for _ in 0..self.concurrency.max(1) {
                    let lane = Lane::of_keys(
                        Arc::clone(&self.worker),
                        rx.clone(),
                        done.clone(),
                        Arc::clone(&stopping),
                    );
                    tasks.spawn(Arc::clone(&self.worker.handler).serve(lane));
                }
                keyed = Some(Keyed {
                    queues: KeyQueues::default(),
                    ready,
                    finished,
                    hasher: RandomState::new(),
                });
            }
            Ordering::Partition => {}
        }
        // Partition ordering: a handler lane per partition. The others: a delay lane per retry
        // partition, which hands copies back here, through `due`, once they are due.
        let mut lanes = Lanes::new(Arc::clone(&self.worker.stats));
        let delays =
            self.ordering != Ordering::Partition && self.worker.retry.mode == RetryMode::Redeliver;
        let mut retry_slots = RetrySlots::default();
        let (due_tx, mut due_rx) = mpsc::channel::<Delivery>(LANE_CAPACITY);
        let max_buffered = self.max_buffered.max(self.concurrency).max(1);
        // A poll is admitted whole, so under key ordering the loop polls only while a whole
        // batch still fits under `max_buffered`: the cap then holds exactly.
        let batch_room = self.batch.clamp(1, max_buffered);

        let mut batch = Vec::with_capacity(self.batch);
        let mut result = Ok(());
        'poll: while !*stop.borrow() {
            let (room, due_room) = match &keyed {
                Some(keyed) => {
                    let held = keyed.queues.len();
                    let room = held + batch_room <= max_buffered;
                    self.worker.stats.report_held_back(!room);
                    (room, held < max_buffered)
                }
                None => (true, true),
            };
            // A full lane overflow holds off polling for a moment, then has its partition paused.
            let hold = lanes.hold();
            let room = room && hold.is_none();
            let mut from_delay = false;
            // Every consumer's poll is cancel-safe: losing the race to another branch loses no
            // delivery.
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                Some(key) = next_finished(&mut keyed) => {
                    if !keyed.as_mut().is_some_and(|keyed| keyed.finish(key)) {
                        break;
                    }
                    continue;
                }
                // Lanes and workers end only when told to: one that ends now took its
                // partition (or a worker slot) with it.
                Some(ended) = tasks.join_next(), if !tasks.is_empty() => {
                    result = Err(lane_ended(ended));
                    break;
                }
                Some(slot) = lanes.next_room() => {
                    if lanes.refill(slot, &mut *consumer).is_err() {
                        result = Err(gone());
                        break;
                    }
                    continue;
                }
                () = tokio::time::sleep_until(hold.unwrap_or_else(tokio::time::Instant::now)), if hold.is_some() => {
                    lanes.pause_slow(&mut *consumer);
                    continue;
                }
                Some(delivery) = due_rx.recv(), if due_room => {
                    batch.push(delivery);
                    from_delay = true;
                }
                polled = consumer.poll(&mut batch), if room => {
                    if let Err(e) = polled {
                        result = Err(e);
                        break;
                    }
                }
            }
            for delivery in batch.drain(..) {
                let routed = if self.ordering == Ordering::Partition {
                    lanes
                        .route(delivery, |rx, room| {
                            let lane = Lane::of_partition(
                                Arc::clone(&self.worker),
                                rx,
                                room,
                                Arc::clone(&stopping),
                            );
                            tasks.spawn(Arc::clone(&self.worker.handler).serve(lane));
                        })
                        .is_ok()
                } else if delays && !from_delay && retry_slots.is_retry(&delivery, &self.worker) {
                    lanes
                        .route(delivery, |rx, room| {
                            tasks.spawn(delay_lane(
                                Arc::clone(&self.worker),
                                rx,
                                room,
                                due_tx.clone(),
                                Arc::clone(&stopping),
                            ));
                        })
                        .is_ok()
                } else if let Some(keyed) = &mut keyed {
                    keyed.admit(delivery)
                } else if let Some(pool) = &pool {
                    // The common case, room in the queue, costs no select; only a full queue
                    // (every worker busy) waits, and then also for the stop signal.
                    match pool.try_send(delivery) {
                        Ok(()) => true,
                        Err(async_channel::TrySendError::Closed(_)) => false,
                        Err(async_channel::TrySendError::Full(delivery)) => tokio::select! {
                            biased;
                            _ = stop.changed() => false,
                            sent = pool.send(delivery) => sent.is_ok(),
                        },
                    }
                } else {
                    false
                };
                if !routed {
                    // Stopping: what was not routed stays unacknowledged and is delivered
                    // again.
                    if !*stop.borrow() {
                        result = Err(gone());
                    }
                    break 'poll;
                }
            }
            if let Some(keyed) = &keyed {
                let held = keyed.queues.len() as u64;
                self.worker
                    .stats
                    .peak_buffered
                    .fetch_max(held, AtomicOrdering::Relaxed);
            }
        }

        stopping.store(true, AtomicOrdering::Release);
        // What waits in lanes, overflows and queues was not started: unacknowledged, it is
        // delivered again.
        drop((lanes, pool, keyed, due_rx));
        let drained = tokio::time::timeout(self.drain_timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                subscription = &*self.worker.name,
                timeout = ?self.drain_timeout,
                "in-flight handlers did not finish within the drain timeout; their messages will be delivered again"
            );
            tasks.abort_all();
        }
        let closed = consumer.close().await;
        result.and(closed)
    }
}

/// A retry partition's delay lane (pool orderings): holds each copy until it is due, without
/// holding a worker, then hands it back to the dispatch loop through `due`. A copy whose
/// partition is handed over, or whose app shuts down, while it waits is given up.
async fn delay_lane(
    worker: Arc<Worker>,
    mut rx: mpsc::Receiver<Delivery>,
    room: Room,
    due: mpsc::Sender<Delivery>,
    stopping: Arc<AtomicBool>,
) {
    while let Some(delivery) = rx.recv().await {
        room.took_one(rx.len());
        if stopping.load(AtomicOrdering::Acquire) {
            break;
        }
        if let Some(wait) = worker.due_wait(&delivery.message) {
            worker.wait(&delivery.receipt, wait).await;
            if !worker.goes_on(&delivery.receipt) {
                continue;
            }
        }
        if due.send(delivery).await.is_err() {
            break;
        }
    }
}

/// The subscription's lanes or workers are gone while it was not stopping.
fn gone() -> BackendError {
    BackendError::Stopped {
        reason: "its lanes or workers are gone".into(),
    }
}

/// Why the subscription stops when one of its lanes or workers ended on its own.
fn lane_ended(ended: Result<(), tokio::task::JoinError>) -> BackendError {
    let reason = match ended {
        Ok(()) => "a lane ended before shutdown".to_owned(),
        Err(join) if join.is_panic() => {
            format!(
                "a lane panicked: {}",
                super::panics::panic_message(&*join.into_panic())
            )
        }
        Err(join) => format!("a lane failed: {join}"),
    };
    tracing::error!(%reason, "a lane of the subscription ended; the subscription stops");
    BackendError::Stopped { reason }
}
