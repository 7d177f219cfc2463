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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::Worker;
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
    Lanes(HashMap<u32, mpsc::Sender<Delivery>>),
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
                    let (rx, worker, stopping) =
                        (rx.clone(), Arc::clone(&self.worker), Arc::clone(&stopping));
                    tasks.spawn(async move {
                        while let Ok(delivery) = rx.recv().await {
                            if stopping.load(AtomicOrdering::Acquire) {
                                break;
                            }
                            worker.process(delivery).await;
                        }
                    });
                }
                Router::Pool(tx)
            }
            // Key ordering is refused when the app starts, until its lanes exist.
            Ordering::Partition | Ordering::Key => Router::Lanes(HashMap::new()),
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
                let sent = match &mut router {
                    Router::Pool(tx) => tokio::select! {
                        biased;
                        _ = stop.changed() => false,
                        sent = tx.send(delivery) => sent.is_ok(),
                    },
                    Router::Lanes(lanes) => {
                        let lane = lanes.entry(delivery.receipt.slot).or_insert_with(|| {
                            spawn_lane(&mut tasks, Arc::clone(&self.worker), Arc::clone(&stopping))
                        });
                        tokio::select! {
                            biased;
                            _ = stop.changed() => false,
                            sent = lane.send(delivery) => sent.is_ok(),
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
    let (tx, mut rx) = mpsc::channel::<Delivery>(LANE_CAPACITY);
    tasks.spawn(async move {
        while let Some(delivery) = rx.recv().await {
            if stopping.load(AtomicOrdering::Acquire) {
                break;
            }
            worker.process(delivery).await;
        }
    });
    tx
}
