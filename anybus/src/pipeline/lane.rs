//! One lane (or pool worker) of a subscription, from the handler's side: where it takes its
//! deliveries from, and the loop that hands each to [`Worker::process`](super::Worker).

use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;

use tokio::sync::mpsc;

use std::future::Future;

use super::{lanes, Worker};
use crate::backend::Delivery;
use crate::context::Context;
use crate::handler::Outcome;

/// Where one lane or pool worker takes its deliveries from.
enum Source {
    /// A partition's lane, and how it tells the dispatch loop it took a delivery.
    Lane(mpsc::Receiver<Delivery>, lanes::Room),
    Pool(async_channel::Receiver<Delivery>),
    /// A pool worker under key ordering: reports each finished key back to the dispatch loop,
    /// which starts the next delivery of that key.
    Keyed {
        rx: async_channel::Receiver<(u64, Delivery)>,
        finished: mpsc::UnboundedSender<u64>,
    },
}

/// One lane (or pool worker) of a subscription: handles its deliveries one at a time until
/// its source closes or the subscription stops. Run by [`Handler::serve`], so that the
/// handler's future is awaited in place, not boxed per delivery.
#[doc(hidden)]
pub struct Lane {
    worker: Arc<Worker>,
    source: Source,
    stopping: Arc<AtomicBool>,
}

impl Lane {
    pub(crate) fn of_partition(
        worker: Arc<Worker>,
        rx: mpsc::Receiver<Delivery>,
        room: lanes::Room,
        stopping: Arc<AtomicBool>,
    ) -> Self {
        Self {
            worker,
            source: Source::Lane(rx, room),
            stopping,
        }
    }

    pub(crate) fn of_pool(
        worker: Arc<Worker>,
        rx: async_channel::Receiver<Delivery>,
        stopping: Arc<AtomicBool>,
    ) -> Self {
        Self {
            worker,
            source: Source::Pool(rx),
            stopping,
        }
    }

    pub(crate) fn of_keys(
        worker: Arc<Worker>,
        rx: async_channel::Receiver<(u64, Delivery)>,
        finished: mpsc::UnboundedSender<u64>,
        stopping: Arc<AtomicBool>,
    ) -> Self {
        Self {
            worker,
            source: Source::Keyed { rx, finished },
            stopping,
        }
    }

    /// Handles deliveries with `call` until the source closes or the subscription stops;
    /// what was not started then stays unacknowledged and is delivered again.
    pub(crate) async fn run<Fut>(mut self, call: impl Fn(Context) -> Fut)
    where
        Fut: Future<Output = Outcome>,
    {
        loop {
            let (next, key) = match &mut self.source {
                Source::Lane(rx, room) => {
                    let next = rx.recv().await;
                    room.took_one(rx.len());
                    (next, None)
                }
                Source::Pool(rx) => (rx.recv().await.ok(), None),
                Source::Keyed { rx, .. } => match rx.recv().await {
                    Ok((key, delivery)) => (Some(delivery), Some(key)),
                    Err(_) => (None, None),
                },
            };
            let Some(delivery) = next else { break };
            if self.stopping.load(AtomicOrdering::Acquire) {
                break;
            }
            self.worker.process(delivery, &call).await;
            if let (Some(key), Source::Keyed { finished, .. }) = (key, &self.source) {
                if finished.send(key).is_err() {
                    break;
                }
            }
        }
    }
}
