//! What may run at once: one lane per partition, one delivery per key, or a pool of
//! `concurrency` workers.
//!
//! The dispatch loop polls the consumer and routes each delivery. Under
//! [`Ordering::Partition`] every partition (RabbitMQ: the queue) has a lane, a task that handles
//! its deliveries one after another. Under [`Ordering::None`], `concurrency` workers take
//! deliveries from one shared queue. Lanes and the queue are bounded, so a slow handler stops
//! the loop from polling: the broker holds what is not in flight.
//!
//! Under [`Ordering::Key`], `concurrency` workers take deliveries whose key is idle; the loop
//! keeps the rest of each key in [`KeyQueues`] and starts the next of a key when a worker
//! reports the previous one finished. The key is the partition plus the message key, so a key's
//! deliveries run in offset order; keyless deliveries of a partition share one key and so run
//! in partition order. Once `max_buffered` deliveries are admitted and not finished, the loop
//! stops polling until workers finish some (so at most `max_buffered` plus one poll's batch are
//! held), and one hot key cannot grow the buffer.
//!
//! On shutdown the loop stops polling, lanes finish the handler they are running and skip what
//! they had not started (it was not acknowledged, so it is delivered again), and the consumer
//! commits and leaves its group.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::keys::KeyQueues;
use super::{Lane, Worker};
use crate::backend::{BackendError, Consumer, Delivery};
use crate::subscription::Ordering;

/// Deliveries a lane buffers before the dispatch loop waits.
const LANE_CAPACITY: usize = 128;

/// The dispatch loop's side of a partition's lane.
struct LaneTx {
    slot: u32,
    tx: mpsc::Sender<Delivery>,
}

/// How one subscription member is run.
pub(crate) struct Dispatch {
    pub(crate) worker: Arc<Worker>,
    pub(crate) ordering: Ordering,
    pub(crate) concurrency: usize,
    pub(crate) batch: usize,
    pub(crate) drain_timeout: Duration,
    /// Under key ordering, the most deliveries admitted and not finished.
    pub(crate) max_buffered: usize,
}

enum Router {
    /// One lane per slot. A member owns a handful of partitions, so a scan beats hashing the
    /// slot of every delivery.
    Lanes(Vec<LaneTx>),
    Pool(async_channel::Sender<Delivery>),
    Keys(Keyed),
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

/// The next key a worker finished; never resolves for the other orderings.
async fn next_finished(router: &mut Router) -> Option<u64> {
    match router {
        Router::Keys(keyed) => keyed.finished.recv().await,
        _ => std::future::pending().await,
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
        let mut router = match self.ordering {
            Ordering::None => {
                let (tx, rx) = async_channel::bounded(self.concurrency.max(1));
                for _ in 0..self.concurrency.max(1) {
                    let lane =
                        Lane::of_pool(Arc::clone(&self.worker), rx.clone(), Arc::clone(&stopping));
                    tasks.spawn(Arc::clone(&self.worker.handler).serve(lane));
                }
                Router::Pool(tx)
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
                Router::Keys(Keyed {
                    queues: KeyQueues::default(),
                    ready,
                    finished,
                    hasher: RandomState::new(),
                })
            }
            Ordering::Partition => Router::Lanes(Vec::new()),
        };
        let max_buffered = self.max_buffered.max(self.concurrency).max(1);

        let mut batch = Vec::with_capacity(self.batch);
        let mut result = Ok(());
        'poll: while !*stop.borrow() {
            let room = match &router {
                Router::Keys(keyed) => {
                    let room = keyed.queues.len() < max_buffered;
                    self.worker.stats.report_held_back(!room);
                    room
                }
                _ => true,
            };
            // Every consumer's poll is cancel-safe: losing the race to a finished key loses no
            // delivery.
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                Some(key) = next_finished(&mut router) => {
                    if let Router::Keys(keyed) = &mut router {
                        if !keyed.finish(key) {
                            break;
                        }
                    }
                    continue;
                }
                polled = consumer.poll(&mut batch), if room => {
                    if let Err(e) = polled {
                        result = Err(e);
                        break;
                    }
                }
            }
            let routed = match &mut router {
                Router::Lanes(lanes) => {
                    self.to_lanes(lanes, &mut batch, &mut tasks, &stopping, &mut stop)
                        .await
                }
                Router::Keys(keyed) => batch.drain(..).all(|delivery| keyed.admit(delivery)),
                Router::Pool(tx) => {
                    let mut sent = true;
                    for delivery in batch.drain(..) {
                        // The common case, room in the queue, costs no select; only a full
                        // queue waits, and then also for the stop signal.
                        sent = match tx.try_send(delivery) {
                            Ok(()) => true,
                            Err(async_channel::TrySendError::Closed(_)) => false,
                            Err(async_channel::TrySendError::Full(delivery)) => tokio::select! {
                                biased;
                                _ = stop.changed() => false,
                                sent = tx.send(delivery) => sent.is_ok(),
                            },
                        };
                        if !sent {
                            break;
                        }
                    }
                    sent
                }
            };
            if !routed {
                // Stopping: what was not routed stays unacknowledged and is delivered again.
                break 'poll;
            }
            if let Router::Keys(keyed) = &router {
                let held = keyed.queues.len() as u64;
                self.worker
                    .stats
                    .peak_buffered
                    .fetch_max(held, AtomicOrdering::Relaxed);
            }
        }

        stopping.store(true, AtomicOrdering::Release);
        drop(router);
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

    /// Hands `batch` to the lanes of its partitions, starting a lane for a partition seen for
    /// the first time. The common case, room in the lane, costs no select; a full lane is
    /// waited for, and then also the stop signal. `false` when stopping.
    async fn to_lanes(
        &self,
        lanes: &mut Vec<LaneTx>,
        batch: &mut Vec<Delivery>,
        tasks: &mut JoinSet<()>,
        stopping: &Arc<AtomicBool>,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        for delivery in batch.drain(..) {
            let slot = delivery.receipt.slot;
            let i = match lanes.iter().position(|lane| lane.slot == slot) {
                Some(i) => i,
                None => {
                    let lane =
                        spawn_lane(slot, tasks, Arc::clone(&self.worker), Arc::clone(stopping));
                    lanes.push(lane);
                    lanes.len() - 1
                }
            };
            let lane = &lanes[i].tx;
            let sent = match lane.try_send(delivery) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Closed(_)) => false,
                Err(mpsc::error::TrySendError::Full(delivery)) => tokio::select! {
                    biased;
                    _ = stop.changed() => false,
                    sent = lane.send(delivery) => sent.is_ok(),
                },
            };
            if !sent {
                return false;
            }
        }
        true
    }
}

fn spawn_lane(
    slot: u32,
    tasks: &mut JoinSet<()>,
    worker: Arc<Worker>,
    stopping: Arc<AtomicBool>,
) -> LaneTx {
    let (tx, rx) = mpsc::channel(LANE_CAPACITY);
    let handler = Arc::clone(&worker.handler);
    tasks.spawn(handler.serve(Lane::of_partition(worker, rx, stopping)));
    LaneTx { slot, tx }
}
