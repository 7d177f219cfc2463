//! What happens to each delivery, from the broker to the acknowledgement.
//!
//! [`ordering`] decides what may run at once and feeds deliveries to [`Worker::process`], which
//! skips deliveries whose partition moved on, opens the delivery's span, runs the handler
//! (which decodes the payload first), answers requests, and settles: ack on success and on a
//! permanent failure (logged with the message's origin), nack on a transient one so that the
//! broker delivers it again.

pub(crate) mod ordering;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::Instrument;

use crate::backend::{Delivery, Settler};
use crate::context::{Context, StateMap};
use crate::error::FailureKind;
use crate::handler::{Handler, Outcome};
use crate::message::header;
use crate::observe::{delivery_span, SubscriptionStats};
use crate::publish::Publisher;

/// Everything needed to handle one subscription's deliveries; shared by its lanes.
pub(crate) struct Worker {
    pub(crate) name: Arc<str>,
    pub(crate) group: Arc<str>,
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) settler: Arc<dyn Settler>,
    pub(crate) publisher: Publisher,
    pub(crate) state: Arc<StateMap>,
    pub(crate) stats: Arc<SubscriptionStats>,
}

impl Worker {
    /// Handles one delivery with `call` (the handler) and settles it.
    pub(crate) async fn process<Fut>(&self, delivery: Delivery, call: &impl Fn(Context) -> Fut)
    where
        Fut: Future<Output = Outcome>,
    {
        let Delivery { message, receipt } = delivery;
        if !self.settler.is_current(&receipt) {
            SubscriptionStats::count(&self.stats.skipped_stale);
            return;
        }
        let span = delivery_span(&message, &self.group, &self.name);
        let attempt = message
            .headers()
            .get_str(header::ATTEMPT)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1);
        let ctx = Context::new(
            Arc::clone(&message),
            Arc::clone(&self.group),
            attempt,
            self.publisher.clone(),
            Arc::clone(&self.state),
        );
        let outcome = call(ctx).instrument(span.clone()).await;
        match outcome {
            Outcome::Done { reply } => {
                if let Some(reply) = reply {
                    self.answer(&message, Ok(reply)).instrument(span).await;
                }
                SubscriptionStats::count(&self.stats.handled);
                self.settler.ack(&receipt);
            }
            Outcome::Failed(error) if error.kind() == FailureKind::Transient => {
                span.in_scope(|| {
                    tracing::warn!(origin = %message.origin(), %error, "handler failed; the message will be delivered again");
                });
                SubscriptionStats::count(&self.stats.transient_failures);
                self.settler.nack(&receipt);
            }
            Outcome::Failed(error) => {
                span.in_scope(|| {
                    tracing::error!(
                        origin = %message.origin(),
                        key = ?message.key(),
                        kind = error.kind().as_str(),
                        %error,
                        "message cannot be handled; it is skipped",
                    );
                });
                if error.kind() == FailureKind::Decode {
                    SubscriptionStats::count(&self.stats.decode_failures);
                }
                SubscriptionStats::count(&self.stats.permanent_failures);
                self.answer(&message, Err(error.to_string()))
                    .instrument(span)
                    .await;
                self.settler.ack(&receipt);
            }
        }
    }

    async fn answer(&self, request: &crate::Message, answer: Result<bytes::Bytes, String>) {
        if let Err(error) = self.publisher.answer(request, answer).await {
            tracing::warn!(%error, "could not send the answer to a request");
        }
    }
}

/// Where one lane or pool worker takes its deliveries from.
enum Source {
    Lane(mpsc::Receiver<Delivery>),
    Pool(async_channel::Receiver<Delivery>),
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
        stopping: Arc<AtomicBool>,
    ) -> Self {
        Self {
            worker,
            source: Source::Lane(rx),
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

    /// Handles deliveries with `call` until the source closes or the subscription stops;
    /// what was not started then stays unacknowledged and is delivered again.
    pub(crate) async fn run<Fut>(mut self, call: impl Fn(Context) -> Fut)
    where
        Fut: Future<Output = Outcome>,
    {
        loop {
            let next = match &mut self.source {
                Source::Lane(rx) => rx.recv().await,
                Source::Pool(rx) => rx.recv().await.ok(),
            };
            let Some(delivery) = next else { break };
            if self.stopping.load(AtomicOrdering::Acquire) {
                break;
            }
            self.worker.process(delivery, &call).await;
        }
    }
}
