//! A backend wrapper that wakes a [`TestApp`](super::TestApp)'s waits after every confirmed
//! publish and every settlement, so that they look again instead of sleeping.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::backend::{
    Backend, BackendError, Consumer, ConsumerConfig, Delivery, PublishError, Receipt, Settler,
    TopicSpec,
};
use crate::handler::BoxFuture;
use crate::message::{Message, Origin};

/// Wraps the app's backend. The runtime counts an outcome (handled, dead-lettered) before it
/// acknowledges the delivery, and a broker holds a published message before it confirms it, so
/// a look after the wake-up sees what woke it.
pub(crate) struct Observed {
    inner: Arc<dyn Backend>,
    changed: Arc<Notify>,
}

impl Observed {
    pub(crate) fn new(inner: Arc<dyn Backend>, changed: Arc<Notify>) -> Self {
        Self { inner, changed }
    }
}

impl Backend for Observed {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn declare<'a>(&'a self, topics: &'a [TopicSpec]) -> BoxFuture<'a, Result<(), BackendError>> {
        self.inner.declare(topics)
    }

    fn consume(
        &self,
        config: ConsumerConfig,
    ) -> BoxFuture<'_, Result<Box<dyn Consumer>, BackendError>> {
        Box::pin(async move {
            let inner = self.inner.consume(config).await?;
            Ok(Box::new(ObservedConsumer {
                inner,
                changed: Arc::clone(&self.changed),
            }) as Box<dyn Consumer>)
        })
    }

    fn publish(&self, message: Message) -> BoxFuture<'_, Result<Origin, PublishError>> {
        Box::pin(async move {
            let published = self.inner.publish(message).await;
            self.changed.notify_waiters();
            published
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.inner.close()
    }

    fn delete<'a>(&'a self, topics: &'a [String]) -> BoxFuture<'a, Result<(), BackendError>> {
        self.inner.delete(topics)
    }
}

struct ObservedConsumer {
    inner: Box<dyn Consumer>,
    changed: Arc<Notify>,
}

impl Consumer for ObservedConsumer {
    fn poll<'a>(
        &'a mut self,
        out: &'a mut Vec<Delivery>,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        self.inner.poll(out)
    }

    fn settler(&self) -> Arc<dyn Settler> {
        Arc::new(ObservedSettler {
            inner: self.inner.settler(),
            changed: Arc::clone(&self.changed),
        })
    }

    fn pause(&mut self, slot: u32) {
        self.inner.pause(slot);
    }

    fn resume(&mut self, slot: u32) {
        self.inner.resume(slot);
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, Result<(), BackendError>> {
        self.inner.close()
    }
}

struct ObservedSettler {
    inner: Arc<dyn Settler>,
    changed: Arc<Notify>,
}

impl Settler for ObservedSettler {
    fn is_current(&self, receipt: &Receipt) -> bool {
        self.inner.is_current(receipt)
    }

    fn try_start(&self, receipt: &Receipt) -> bool {
        self.inner.try_start(receipt)
    }

    fn stopped<'a>(&'a self, receipt: &'a Receipt) -> BoxFuture<'a, ()> {
        self.inner.stopped(receipt)
    }

    fn ack(&self, receipt: &Receipt) {
        self.inner.ack(receipt);
        self.changed.notify_waiters();
    }

    fn nack(&self, receipt: &Receipt) {
        self.inner.nack(receipt);
        self.changed.notify_waiters();
    }
}
