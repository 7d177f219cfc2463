//! Publishing events, and asking questions over the broker (request/reply).
//!
//! Every message carries a fresh [`MessageId`](crate::MessageId). A publish resolves once the
//! broker confirmed the message. A request is an event with two extra headers, where to answer
//! ([`header::REPLY_TO`]: a reply topic private to this app instance) and a correlation id; the
//! handler's return value is the answer. On RabbitMQ these are also the AMQP `reply-to` and
//! `correlation-id` properties, so that other AMQP clients can answer an anybus request, and
//! ask an anybus subscription, the way AMQP RPC works (see `backend::rabbitmq::properties`,
//! feature `rabbitmq`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::backend::{Backend, PublishError};
use crate::codec::{Codec, DecodeError, Json, Raw};
use crate::handler::Reply;
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
    /// The request was a duplicate: a deduplicating subscription had handled a request with
    /// its dedup key before (a retry of a request whose answer was lost, say). Its effect stands;
    /// its answer was not kept, so it cannot be given again.
    #[error("the request on `{topic}` was handled before (a duplicate, refused by the subscription's dedup); its answer was not kept")]
    Duplicate {
        /// Where the request went.
        topic: String,
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

    /// Registers a request waiting for the answer with `correlation`; dropping the returned
    /// guard forgets it.
    fn wait(self: &Arc<Self>, correlation: String) -> Waiting {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(correlation.clone(), tx);
        Waiting {
            replies: Arc::clone(self),
            correlation,
            rx,
        }
    }

    /// How many requests wait for an answer.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.lock().len()
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

/// A request waiting for its answer: removes its slot when dropped, however the wait ended
/// (answered, timed out, or the caller's future dropped).
struct Waiting {
    replies: Arc<Replies>,
    correlation: String,
    rx: oneshot::Receiver<Arc<Message>>,
}

impl Waiting {
    /// The answer, or `None` when the app shut down first.
    async fn answer(mut self) -> Option<Arc<Message>> {
        (&mut self.rx).await.ok()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.replies.lock().remove(&self.correlation);
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
        self.send(encoded::<Json, T>(topic, event)?).await
    }

    /// Publishes `event` as JSON to `topic` with `key`, which picks the partition: events with
    /// the same key stay in order.
    pub async fn publish_keyed<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        key: impl Into<Bytes>,
        event: &T,
    ) -> Result<Origin, PublishError> {
        self.send(encoded::<Json, T>(topic, event)?.with_key(key))
            .await
    }

    /// Publishes a message as it is (any codec, any headers); resolves when the broker confirmed
    /// it, with where it landed.
    pub async fn send(&self, message: Message) -> Result<Origin, PublishError> {
        self.backend.publish(message).await
    }

    /// Sends `request` as JSON to `topic` and waits up to `timeout` for the answer of the handler
    /// that consumes it. The answer is decoded with the codec named by its
    /// [`content-type`](header::CONTENT_TYPE): JSON, or the raw bytes (`Resp` then accepts a
    /// byte string, as [`Raw`] decodes). Use [`request_with`](Self::request_with) for a
    /// codec of your own.
    ///
    /// Dropping the returned future (a `select!`, a `timeout`) forgets the request: an answer
    /// that comes later is dropped.
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
        self.request_with::<Json, Req, Resp>(topic, request, timeout)
            .await
    }

    /// [`request`](Self::request) with codec `C`: the request is encoded with `C`, and the
    /// answer is decoded with `C` when its content type is `C`'s (or it has none), with JSON or
    /// raw bytes when it says so, and is a [`RequestError::Decode`] naming the content type
    /// otherwise.
    pub async fn request_with<C, Req, Resp>(
        &self,
        topic: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RequestError>
    where
        C: Codec,
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let mut message = encoded::<C, Req>(topic, request)?;
        let correlation = MessageId::new().to_string();
        let headers = message.headers_mut();
        headers.append(header::REPLY_TO, self.replies.topic().to_owned());
        headers.append(header::CORRELATION_ID, correlation.clone());
        let waiting = self.replies.wait(correlation);
        self.send(message).await?;
        let answer = match tokio::time::timeout(timeout, waiting.answer()).await {
            Ok(Some(answer)) => answer,
            Ok(None) => {
                return Err(RequestError::Closed {
                    topic: topic.to_owned(),
                })
            }
            Err(_) => {
                return Err(RequestError::Timeout {
                    topic: topic.to_owned(),
                    timeout,
                })
            }
        };
        let headers = answer.headers();
        if headers.get_str(header::DUPLICATE) == Some("true") {
            return Err(RequestError::Duplicate {
                topic: topic.to_owned(),
            });
        }
        if let Some(error) = headers.get(header::ERROR) {
            return Err(RequestError::Remote {
                topic: topic.to_owned(),
                error: String::from_utf8_lossy(error).into_owned(),
            });
        }
        decode_answer::<C, Resp>(&answer).map_err(|source| RequestError::Decode {
            topic: topic.to_owned(),
            source,
        })
    }

    /// Sends the answer to a request: its handler's value, the error it failed with, or word
    /// that it was handled before. The answer carries the request's correlation id; a request
    /// without one (another AMQP client may ask so, with a reply queue per request) is
    /// answered without one.
    pub(crate) async fn answer(
        &self,
        request: &Message,
        answer: Answer,
    ) -> Result<(), PublishError> {
        let Some(to) = request.headers().get_str(header::REPLY_TO) else {
            return Ok(());
        };
        let mut headers = Headers::new();
        if let Some(id) = request.headers().get(header::CORRELATION_ID) {
            headers.append(header::CORRELATION_ID, id.clone());
        }
        let payload = match answer {
            Answer::Value(reply) => {
                headers.append(header::CONTENT_TYPE, reply.content_type);
                reply.payload
            }
            Answer::Failed(error) => {
                headers.append(header::ERROR, error);
                Bytes::new()
            }
            Answer::Duplicate => {
                headers.append(header::DUPLICATE, "true");
                headers.append(
                    header::ERROR,
                    "the request was handled before (a duplicate); its answer was not kept",
                );
                Bytes::new()
            }
        };
        self.send(Message::new(to, payload).with_headers(headers))
            .await
            .map(drop)
    }
}

/// What a handled request is answered with.
pub(crate) enum Answer {
    /// The handler's encoded value.
    Value(Reply),
    /// The handler's error message.
    Failed(String),
    /// The request was a duplicate of one handled before, whose answer was not kept.
    Duplicate,
}

/// `value` encoded with `C` as a message to `topic`, with `C`'s content type.
fn encoded<C: Codec, T: Serialize + ?Sized>(
    topic: &str,
    value: &T,
) -> Result<Message, PublishError> {
    let mut headers = Headers::new();
    headers.append(header::CONTENT_TYPE, C::CONTENT_TYPE);
    Ok(Message::new(topic, C::encode(value)?).with_headers(headers))
}

/// Decodes an answer with the codec its content type names (`C` when it names none). Only the
/// media type counts, in any case: `application/json; charset=utf-8` is JSON.
fn decode_answer<C: Codec, T: DeserializeOwned>(answer: &Message) -> Result<T, DecodeError> {
    let media = answer
        .headers()
        .get_str(header::CONTENT_TYPE)
        .map(|t| t.split(';').next().unwrap_or(t).trim());
    let is = |codec: &str| media.is_some_and(|m| m.eq_ignore_ascii_case(codec));
    match media {
        None => C::decode(answer.payload()),
        Some(_) if is(C::CONTENT_TYPE) => C::decode(answer.payload()),
        Some(_) if is(Json::CONTENT_TYPE) => Json::decode(answer.payload()),
        Some(_) if is(Raw::CONTENT_TYPE) => Raw::decode(answer.payload()),
        Some(other) => Err(DecodeError {
            codec: C::NAME,
            target: std::any::type_name::<T>(),
            reason: format!(
                "the answer's content type is `{other}`, which is not {}'s `{}`: use `request_with` with its codec",
                C::NAME,
                C::CONTENT_TYPE
            ),
        }),
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("backend", &self.backend.name())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::decode_answer;
    use crate::codec::Json;
    use crate::message::{header, Headers, Message};
    use crate::App;

    fn answer(content_type: &str, payload: &'static str) -> Message {
        let mut headers = Headers::new();
        headers.append(header::CONTENT_TYPE, content_type.to_owned());
        Message::new("replies", payload).with_headers(headers)
    }

    #[test]
    fn an_answer_is_decoded_by_its_media_type() {
        let json: u32 = decode_answer::<Json, _>(&answer("Application/JSON; charset=utf-8", "7"))
            .expect("json, whatever its parameters");
        assert_eq!(json, 7);
        let raw: String = decode_answer::<Json, _>(&answer("application/octet-stream", "7 apples"))
            .expect("raw bytes");
        assert_eq!(raw, "7 apples");
        let err = decode_answer::<Json, u32>(&answer("application/x-protobuf", "\x08\x07"))
            .expect_err("a codec it does not know");
        assert!(err.reason.contains("application/x-protobuf"), "{err}");
    }

    /// A request whose caller stops waiting (here: an outer timeout drops the future) leaves no
    /// slot behind in the app's table of waiting requests.
    #[tokio::test]
    async fn a_dropped_request_leaves_no_slot_behind() {
        let app = App::builder().connect("memory://").await.expect("memory");
        let publisher = app.publisher();
        for _ in 0..3 {
            let asked = publisher.request::<_, u32>("nobody-answers", &1, Duration::from_secs(60));
            assert!(
                tokio::time::timeout(Duration::from_millis(20), asked)
                    .await
                    .is_err(),
                "nobody answers"
            );
        }
        tokio::select! {
            _ = publisher.request::<_, u32>("nobody-answers", &1, Duration::from_secs(60)) => {
                panic!("nobody answers")
            }
            () = tokio::task::yield_now() => {}
        }
        assert_eq!(
            publisher.replies.waiting(),
            0,
            "a dropped request kept its slot"
        );
        let timed_out = publisher
            .request::<_, u32>("nobody-answers", &1, Duration::from_millis(10))
            .await;
        assert!(timed_out.is_err());
        assert_eq!(
            publisher.replies.waiting(),
            0,
            "a timed-out request kept its slot"
        );
        app.shutdown().await.expect("shutdown");
    }
}
