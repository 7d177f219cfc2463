//! The seam between the runtime and a broker.
//!
//! A [`Backend`] connects to one broker, declares topics, opens consumers and publishes with the
//! broker's confirmation. It knows nothing of handlers, codecs, retries or deduplication: the
//! runtime reads [`Delivery`]s from a [`Consumer`] and settles each through its [`Settler`].
//!
//! Every delivery carries a [`Receipt`] stamped with the generation of the partition assignment
//! (Kafka, memory) or channel (RabbitMQ) that produced it. When a partition moves to another
//! member, or a channel dies, the generation changes: a settlement with an older stamp is
//! dropped and counted, never applied, and [`Settler::is_current`] lets the runtime skip work
//! that is no longer its own.

#[cfg(feature = "kafka")]
pub mod kafka;
pub mod memory;
pub mod offsets;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;

use std::sync::Arc;
use std::time::Duration;

use crate::handler::BoxFuture;
use crate::message::{Message, Origin};
use crate::observe::SubscriptionStats;
use crate::url::{BrokerUrl, ConnectError};

/// Why a backend operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The backend was closed.
    #[error("the {backend} backend is closed")]
    Closed {
        /// Which backend.
        backend: &'static str,
    },
    /// A topic could not be declared.
    #[error("cannot declare topic `{topic}`: {reason}")]
    Declare {
        /// The topic.
        topic: String,
        /// What the broker said.
        reason: String,
    },
    /// The broker failed an operation.
    #[error("{backend} broker error: {reason}")]
    Broker {
        /// Which backend.
        backend: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// The runtime stopped consuming for a subscription before it was told to shut down: a
    /// lane or worker task ended.
    #[error("it stopped consuming: {reason}")]
    Stopped {
        /// What ended, and how.
        reason: String,
    },
}

/// Why a publish was not confirmed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The value could not be encoded.
    #[error(transparent)]
    Encode(#[from] crate::codec::EncodeError),
    /// The broker refused or lost the message.
    #[error("publish to `{topic}` failed: {reason}")]
    Rejected {
        /// The destination.
        topic: String,
        /// What the broker said.
        reason: String,
    },
    /// The backend was closed.
    #[error("cannot publish to `{topic}`: the backend is closed")]
    Closed {
        /// The destination.
        topic: String,
    },
}

/// A topic and how many partitions to create it with if it does not exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    /// The topic name.
    pub name: String,
    /// Partitions for a new topic; `None` leaves it to the backend's default.
    pub partitions: Option<u32>,
    /// A consumer group that must get every message published to the topic from now on, even
    /// before any member of it starts: RabbitMQ declares the group's queue now, the memory
    /// broker registers the group, so that retention keeps what it has yet to read. (Kafka
    /// keeps messages by size and age whoever read them, and a new group reads from the start.)
    pub keep_for: Option<String>,
}

/// What a consumer is opened for.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// The consumer group.
    pub group: String,
    /// The topics.
    pub topics: Vec<String>,
    /// The most deliveries one [`Consumer::poll`] may return.
    pub batch: usize,
    /// How many unacknowledged deliveries the broker may hand this member at once, where the
    /// broker has such a window (RabbitMQ's `basic.qos`): twice the subscription's
    /// concurrency, so the next deliveries are on their way while the current ones run; under
    /// key ordering at least the app's `max_buffered`.
    pub prefetch: usize,
    /// How long a revoked partition's in-flight work may take to finish before it is handed over
    /// anyway.
    pub drain_timeout: Duration,
    /// Counters the backend updates (stale settlements).
    pub stats: Arc<SubscriptionStats>,
    /// Topics (among `topics`) whose messages may be published with a due time
    /// ([`header::RETRY_DUE_MS`](crate::header::RETRY_DUE_MS)): redeliver-later retry topics.
    /// A backend that can hold a message until it is due (RabbitMQ: a wait queue with a
    /// per-message TTL) prepares that; the others deliver at once and the runtime waits.
    pub delayed: Vec<String>,
}

/// Identifies one delivery to the backend that produced it. Opaque to the runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub(crate) slot: u32,
    pub(crate) offset: i64,
    pub(crate) generation: u64,
}

impl Receipt {
    /// A receipt; `slot` and `offset` mean what the backend wants them to mean.
    pub fn new(slot: u32, offset: i64, generation: u64) -> Self {
        Self {
            slot,
            offset,
            generation,
        }
    }

    /// The generation of the assignment or channel that produced the delivery.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The backend's slot of the delivery's partition (or queue): what
    /// [`Consumer::pause`] and [`Consumer::resume`] take.
    pub fn slot(&self) -> u32 {
        self.slot
    }
}

/// One received message and the receipt to settle it with.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The message, with its origin filled in.
    pub message: Arc<Message>,
    /// How to settle it.
    pub receipt: Receipt,
}

/// A connection to one broker.
pub trait Backend: Send + Sync + 'static {
    /// `memory`, `kafka` or `rabbitmq`.
    fn name(&self) -> &'static str;

    /// Creates the topics that do not exist yet; existing ones are left as they are.
    fn declare<'a>(&'a self, topics: &'a [TopicSpec]) -> BoxFuture<'a, Result<(), BackendError>>;

    /// Joins `config.group` as a new member and starts consuming.
    fn consume(
        &self,
        config: ConsumerConfig,
    ) -> BoxFuture<'_, Result<Box<dyn Consumer>, BackendError>>;

    /// Publishes one message and resolves when the broker has confirmed it, with where it landed.
    fn publish(&self, message: Message) -> BoxFuture<'_, Result<Origin, PublishError>>;

    /// Closes the connection to the broker: the app calls it last when it shuts down, so that
    /// the broker sees a clean close even if the process exits right after. Resolves once the
    /// connection is closed, or closing was given up on. Backends without a connection of
    /// their own to close keep the default, which does nothing.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Deletes topics this app created for itself alone (its reply topic), when it shuts down.
    /// Backends whose private destinations vanish on their own keep the default, which does
    /// nothing.
    fn delete<'a>(&'a self, topics: &'a [String]) -> BoxFuture<'a, Result<(), BackendError>> {
        let _ = topics;
        Box::pin(std::future::ready(Ok(())))
    }
}

/// One member of a consumer group.
pub trait Consumer: Send {
    /// Waits until there is at least one delivery and appends up to `batch` of them to `out`.
    ///
    /// Must be cancel-safe: the runtime drops the future when something else needs its
    /// attention first, and a delivery must not be lost then.
    fn poll<'a>(
        &'a mut self,
        out: &'a mut Vec<Delivery>,
    ) -> BoxFuture<'a, Result<(), BackendError>>;

    /// The handle that settles this consumer's deliveries; shared with the workers.
    fn settler(&self) -> Arc<dyn Settler>;

    /// Stops fetching the partition (RabbitMQ: queue) whose deliveries carry receipt slot
    /// `slot`, until [`Consumer::resume`]: the runtime holds as many of its deliveries as it
    /// may, and the partition must wait without holding back the others. Deliveries of it
    /// fetched already may still arrive; the backend keeps that bounded (a paused partition
    /// stays paused across a rebalance that keeps it). By default nothing, for a backend whose
    /// broker bounds the unacknowledged deliveries of each partition (RabbitMQ's prefetch).
    fn pause(&mut self, slot: u32) {
        let _ = slot;
    }

    /// Fetches the partition of `slot` again after [`Consumer::pause`], from the first
    /// delivery not yet returned. Resuming a partition that is not paused does nothing.
    fn resume(&mut self, slot: u32) {
        let _ = slot;
    }

    /// Commits what is complete and leaves the group. In-flight work should be drained first.
    fn close(self: Box<Self>) -> BoxFuture<'static, Result<(), BackendError>>;
}

/// Settles deliveries: acknowledges them, or asks for them again.
pub trait Settler: Send + Sync {
    /// Whether the receipt's generation is still the live one: if not, its work belongs to
    /// another member now and should be skipped.
    fn is_current(&self, receipt: &Receipt) -> bool;

    /// Claims the start of the receipt's work, its first attempt or another one: `true` when
    /// its generation is live and its partition is not being handed over to another member.
    /// When the partition is being handed over, the backend gives the delivery up in the same
    /// step: it no longer counts as in flight (the handover need not wait for it), and, never
    /// acknowledged, it goes to whoever reads the partition next. By default
    /// [`Settler::is_current`], for backends whose partitions are not handed over.
    fn try_start(&self, receipt: &Receipt) -> bool {
        self.is_current(receipt)
    }

    /// Resolves once the receipt's work may no longer start ([`Settler::try_start`] would
    /// refuse it): its partition is being handed over, or moved on. The runtime waits for it
    /// beside a retry's backoff, so that a handover does not wait for the backoff to end. By
    /// default it never resolves, for backends whose partitions are not handed over.
    fn stopped<'a>(&'a self, receipt: &'a Receipt) -> BoxFuture<'a, ()> {
        let _ = receipt;
        Box::pin(std::future::pending())
    }

    /// The message is done: it may be committed. A stale receipt is dropped and counted.
    fn ack(&self, receipt: &Receipt);

    /// The message failed and must be delivered again. A stale receipt is dropped and counted.
    fn nack(&self, receipt: &Receipt);
}

/// Resolves once `done` holds, looking again each time `changed` is notified. The wait is
/// registered before each look, so a change between the look and the wait is not missed. The
/// Kafka and memory settlers answer [`Settler::stopped`] with it.
pub(crate) async fn once(changed: &tokio::sync::Notify, mut done: impl FnMut() -> bool) {
    loop {
        let notified = changed.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        if done() {
            return;
        }
        notified.await;
    }
}

/// Connects to the broker the URL names.
pub(crate) async fn connect(url: &BrokerUrl) -> Result<Arc<dyn Backend>, ConnectError> {
    match url.scheme() {
        "memory" => Ok(Arc::new(memory::MemoryBackend::connect(url)?)),
        #[cfg(feature = "kafka")]
        "kafka" => Ok(Arc::new(kafka::KafkaBackend::connect(url).await?)),
        #[cfg(not(feature = "kafka"))]
        "kafka" => Err(ConnectError::FeatureDisabled {
            scheme: url.scheme().to_owned(),
            feature: "kafka",
        }),
        #[cfg(feature = "rabbitmq")]
        "amqp" | "amqps" => Ok(Arc::new(rabbitmq::RabbitBackend::connect(url).await?)),
        #[cfg(not(feature = "rabbitmq"))]
        "amqp" | "amqps" => Err(ConnectError::FeatureDisabled {
            scheme: url.scheme().to_owned(),
            feature: "rabbitmq",
        }),
        other => Err(ConnectError::UnknownScheme {
            scheme: other.to_owned(),
            url: url.to_string(),
        }),
    }
}
