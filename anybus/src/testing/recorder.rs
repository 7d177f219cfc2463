//! A publisher that keeps what is published instead of sending it, for handlers called directly.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::de::DeserializeOwned;

use crate::backend::{Backend, BackendError, Consumer, ConsumerConfig, PublishError, TopicSpec};
use crate::codec::{Codec, DecodeError, Json};
use crate::handler::BoxFuture;
use crate::message::{Message, Origin};
use crate::publish::{Publisher, Replies};
use crate::testing::context::{context, ContextBuilder};

/// Keeps every message published through its [`Recorder::publisher`], in publish order, for a
/// unit test to look at after calling a handler directly. Nothing reaches a broker; each publish
/// is confirmed at once, at the next offset of partition 0 of its topic. Cheap to clone (clones
/// share the record).
///
/// A request sent through it ([`Publisher::request`]) is recorded and then times out: nothing
/// answers it.
///
/// ```
/// use anybus::testing::Recorder;
/// use anybus::{HandlerError, Publisher};
///
/// async fn confirm(order_id: String, publisher: Publisher) -> Result<(), HandlerError> {
///     publisher.publish_keyed("orders.confirmed", order_id.clone(), &order_id).await?;
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let recorder = Recorder::new();
/// confirm("o-1".into(), recorder.publisher()).await.unwrap();
/// let confirmed: Vec<String> = recorder.events("orders.confirmed").unwrap();
/// assert_eq!(confirmed, ["o-1"]);
/// assert_eq!(recorder.messages()[0].key().map(|k| &k[..]), Some(&b"o-1"[..]));
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    published: Arc<Mutex<Vec<Message>>>,
}

impl Recorder {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// A publisher whose messages land in this record.
    pub fn publisher(&self) -> Publisher {
        let backend = Arc::new(RecordingBackend {
            published: Arc::clone(&self.published),
        });
        Publisher::new(
            backend,
            Arc::new(Replies::new("anybus-testing.replies".into())),
        )
    }

    /// A [`context`] whose publisher is this record's.
    pub fn context(&self, topic: &str) -> ContextBuilder {
        context(topic).publisher(self.publisher())
    }

    /// Every message published so far, in publish order, with the origin it was confirmed at.
    pub fn messages(&self) -> Vec<Message> {
        self.lock().clone()
    }

    /// The messages published to `topic`, in publish order.
    pub fn messages_on(&self, topic: &str) -> Vec<Message> {
        self.lock()
            .iter()
            .filter(|m| m.topic() == topic)
            .cloned()
            .collect()
    }

    /// The payloads published to `topic`, decoded from JSON (what
    /// [`Publisher::publish`] writes), in publish order.
    pub fn events<T: DeserializeOwned>(&self, topic: &str) -> Result<Vec<T>, DecodeError> {
        self.messages_on(topic)
            .iter()
            .map(|m| Json::decode(m.payload()))
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Message>> {
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The backend behind a recorder's publisher: it publishes into the record and consumes nothing.
struct RecordingBackend {
    published: Arc<Mutex<Vec<Message>>>,
}

impl Backend for RecordingBackend {
    fn name(&self) -> &'static str {
        "recorder"
    }

    fn declare<'a>(&'a self, _topics: &'a [TopicSpec]) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn consume(
        &self,
        _config: ConsumerConfig,
    ) -> BoxFuture<'_, Result<Box<dyn Consumer>, BackendError>> {
        Box::pin(std::future::ready(Err(BackendError::Broker {
            backend: "recorder",
            reason: "a recorder only records what is published; it has nothing to consume".into(),
        })))
    }

    fn publish(&self, message: Message) -> BoxFuture<'_, Result<Origin, PublishError>> {
        let mut published = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let offset = published
            .iter()
            .filter(|m| m.topic() == message.topic())
            .count();
        let origin = Origin {
            partition: Some(0),
            offset: Some(i64::try_from(offset).unwrap_or(i64::MAX)),
            ..Origin::topic(message.origin().topic.clone())
        };
        published.push(message.with_origin(origin.clone()));
        Box::pin(std::future::ready(Ok(origin)))
    }
}
