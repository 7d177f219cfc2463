//! Publishing events, and asking questions over the broker (request/reply).
//!
//! Every message carries a fresh [`MessageId`](crate::MessageId). A publish resolves once the
//! broker confirmed the message. A request is an event with two extra headers, where to answer
//! ([`header::REPLY_TO`]: a reply topic private to this app instance) and a correlation id; the
//! handler's return value is the answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::backend::{Backend, PublishError};
use crate::codec::{Codec, DecodeError, Json};
use crate::message::{header, Headers, Message, MessageId, Origin};

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The request could not be published.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// No answer came in time.
    #[error("no answer to the request on `{topic}` within {timeout:?}")]
    Timeout {
        /// Where the request went.
        topic: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// The handler of the request failed.
    #[error("the handler of the request on `{topic}` failed: {error}")]
    Remote {
        /// Where the request went.
        topic: String,
        /// The handler's error message.
        error: String,
    },
    /// The answer did not decode.
    #[error("the answer to the request on `{topic}` did not decode: {source}")]
    Decode {
        /// Where the request went.
        topic: String,
        /// The decoder's error.
        source: DecodeError,
    },
    /// The app shut down while waiting.
    #[error("the app shut down before the answer to the request on `{topic}` came")]
    Closed {
        /// Where the request went.
        topic: String,
    },
}

/// Requests waiting for their answer, by correlation id.
pub(crate) struct Replies {
    topic: String,
    pending: Mutex<HashMap<String, oneshot::Sender<Arc<Message>>>>,
}

impl Replies {
    pub(crate) fn new(topic: String) -> Self {
        Self {
            topic,
            pending: Mutex::default(),
        }
    }

    pub(crate) fn topic(&self) -> &str {
        &self.topic
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Arc<Message>>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands an answer to whoever waits for it; an answer nobody waits for (it timed out) is
    /// dropped.
    pub(crate) fn resolve(&self, answer: Arc<Message>) {
        let Some(id) = answer.headers().get_str(header::CORRELATION_ID) else {
            tracing::warn!(
                topic = answer.topic(),
                "an answer without a correlation id was dropped"
            );
            return;
        };
        if let Some(waiter) = self.lock().remove(id) {
            let _ = waiter.send(answer);
        }
    }
}

/// Publishes events and sends requests. Cheap to clone; take it as a handler argument to emit
/// follow-up events.
#[derive(Clone)]
pub struct Publisher {
    backend: Arc<dyn Backend>,
    replies: Arc<Replies>,
}

impl Publisher {
    pub(crate) fn new(backend: Arc<dyn Backend>, replies: Arc<Replies>) -> Self {
        Self { backend, replies }
    }

    /// Publishes `event` as JSON to `topic`, without a key.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        event: &T,
    ) -> Result<Origin, PublishError> {
        self.send(Message::new(topic, Json::encode(event)?)).await
    }

    /// Publishes `event` as JSON to `topic` with `key`, which picks the partition: events with
    /// the same key stay in order.
    pub async fn publish_keyed<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        key: impl Into<Bytes>,
        event: &T,
    ) -> Result<Origin, PublishError> {
        self.send(Message::new(topic, Json::encode(event)?).with_key(key))
            .await
    }

    /// Publishes a message as it is (any codec, any headers); resolves when the broker confirmed
    /// it, with where it landed.
    pub async fn send(&self, message: Message) -> Result<Origin, PublishError> {
        self.backend.publish(message).await
    }

    /// Sends `request` as JSON to `topic` and waits up to `timeout` for the answer of the handler
    /// that consumes it.
    pub async fn request<Req, Resp>(
        &self,
        topic: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RequestError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let payload = Json::encode(request).map_err(PublishError::from)?;
        let correlation = MessageId::new().to_string();
        let mut headers = Headers::new();
        headers.append(header::REPLY_TO, self.replies.topic().to_owned());
        headers.append(header::CORRELATION_ID, correlation.clone());
        let (tx, rx) = oneshot::channel();
        self.replies.lock().insert(correlation.clone(), tx);
        let forget = || {
            self.replies.lock().remove(&correlation);
        };
        if let Err(e) = self
            .send(Message::new(topic, payload).with_headers(headers))
            .await
        {
            forget();
            return Err(e.into());
        }
        let answer = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => {
                return Err(RequestError::Closed {
                    topic: topic.to_owned(),
                })
            }
            Err(_) => {
                forget();
                return Err(RequestError::Timeout {
                    topic: topic.to_owned(),
                    timeout,
                });
            }
        };
        if let Some(error) = answer.headers().get(header::ERROR) {
            return Err(RequestError::Remote {
                topic: topic.to_owned(),
                error: String::from_utf8_lossy(error).into_owned(),
            });
        }
        Json::decode(answer.payload()).map_err(|source| RequestError::Decode {
            topic: topic.to_owned(),
            source,
        })
    }

    /// Sends the answer to a request, or the error its handler failed with.
    pub(crate) async fn answer(
        &self,
        request: &Message,
        answer: Result<Bytes, String>,
    ) -> Result<(), PublishError> {
        let (Some(to), Some(id)) = (
            request.headers().get_str(header::REPLY_TO),
            request.headers().get(header::CORRELATION_ID),
        ) else {
            return Ok(());
        };
        let mut headers = Headers::new();
        headers.append(header::CORRELATION_ID, id.clone());
        let payload = match answer {
            Ok(payload) => payload,
            Err(error) => {
                headers.append(header::ERROR, error);
                Bytes::new()
            }
        };
        self.send(Message::new(to, payload).with_headers(headers))
            .await
            .map(drop)
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("backend", &self.backend.name())
            .finish_non_exhaustive()
    }
}
