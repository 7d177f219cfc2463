//! What may run at once: one lane per partition, or a pool of `concurrency` workers.
//!
//! The dispatch loop polls the consumer and routes each delivery. Under
//! [`Ordering::Partition`] every partition (RabbitMQ: the queue) has a lane, a task that handles
//! its deliveries one after another. Under [`Ordering::None`], `concurrency` workers take
//! deliveries from one shared queue. Lanes and the queue are bounded, so a slow handler stops
//! the loop from polling: the broker holds what is not in flight.
//!
//! On shutdown the loop stops polling, lanes finish the handler they are running and skip what
//! they had not started (it was not acknowledged, so it is delivered again), and the consumer
//! commits and leaves its group.

use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::{Lane, Worker};
use crate::backend::{BackendError, Consumer, Delivery};
use crate::subscription::Ordering;

/// Deliveries a lane buffers before the dispatch loop waits.
const LANE_CAPACITY: usize = 128;

/// How one subscription member is run.
pub(crate) struct Dispatch {
    pub(crate) worker: Arc<Worker>,
    pub(crate) ordering: Ordering,
    pub(crate) concurrency: usize,
    pub(crate) batch: usize,
    pub(crate) drain_timeout: Duration,
}

enum Router {
    /// One lane per slot. A member owns a handful of partitions, so a scan beats hashing the
    /// slot of every delivery.
    Lanes(Vec<(u32, mpsc::Sender<Delivery>)>),
    Pool(async_channel::Sender<Delivery>),
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
            // Key ordering is refused when the app starts, until its lanes exist.
            Ordering::Partition | Ordering::Key => Router::Lanes(Vec::new()),
        };

        let mut batch = Vec::with_capacity(self.batch);
        let mut result = Ok(());
        'poll: while !*stop.borrow() {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                polled = consumer.poll(&mut batch) => {
                    if let Err(e) = polled {
                        result = Err(e);
                        break;
                    }
                }
            }
            for delivery in batch.drain(..) {
                // The common case, room in the lane, costs no select; only a full lane waits,
                // and then also for the stop signal.
                let sent = match &mut router {
                    Router::Pool(tx) => match tx.try_send(delivery) {
                        Ok(()) => true,
                        Err(async_channel::TrySendError::Closed(_)) => false,
                        Err(async_channel::TrySendError::Full(delivery)) => tokio::select! {
                            biased;
                            _ = stop.changed() => false,
                            sent = tx.send(delivery) => sent.is_ok(),
                        },
                    },
                    Router::Lanes(lanes) => {
                        let slot = delivery.receipt.slot;
                        let i = match lanes.iter().position(|(s, _)| *s == slot) {
                            Some(i) => i,
                            None => {
                                let lane = spawn_lane(
                                    &mut tasks,
                                    Arc::clone(&self.worker),
                                    Arc::clone(&stopping),
                                );
                                lanes.push((slot, lane));
                                lanes.len() - 1
                            }
                        };
                        let lane = &lanes[i].1;
                        match lane.try_send(delivery) {
                            Ok(()) => true,
                            Err(mpsc::error::TrySendError::Closed(_)) => false,
                            Err(mpsc::error::TrySendError::Full(delivery)) => tokio::select! {
                                biased;
                                _ = stop.changed() => false,
                                sent = lane.send(delivery) => sent.is_ok(),
                            },
                        }
                    }
                };
                if !sent {
                    // Stopping: what was not routed stays unacknowledged and is delivered again.
                    break 'poll;
                }
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
}

fn spawn_lane(
    tasks: &mut JoinSet<()>,
    worker: Arc<Worker>,
    stopping: Arc<AtomicBool>,
) -> mpsc::Sender<Delivery> {
    let (tx, rx) = mpsc::channel::<Delivery>(LANE_CAPACITY);
    let handler = Arc::clone(&worker.handler);
    tasks.spawn(handler.serve(Lane::of_partition(worker, rx, stopping)));
    tx
}
