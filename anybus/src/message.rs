//! A message as anybus sees it: key, headers, payload bytes and where it came from.
//!
//! The same type travels both ways. A handler receives a [`Message`] whose [`Origin`] says which
//! topic, partition and offset (or RabbitMQ delivery tag) it was read from; a publisher builds one
//! with [`Message::new`] and the backend fills in the partition and offset it was written to.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use uuid::Uuid;

/// Header names that anybus writes itself. Users may read them; they should not set them.
pub mod header {
    /// The unique id of a published message (UUID v7), the default deduplication key.
    pub const MESSAGE_ID: &str = "anybus-message-id";
    /// Where the answer to a request goes. On RabbitMQ also the AMQP `reply-to` property;
    /// a request of another AMQP client has `amqp-queue:{its reply-to queue}` here.
    pub const REPLY_TO: &str = "anybus-reply-to";
    /// Ties an answer to its request. On RabbitMQ also the AMQP `correlation-id` property.
    pub const CORRELATION_ID: &str = "anybus-correlation-id";
    /// Set on an answer when the handler of the request failed; the value is the error message.
    pub const ERROR: &str = "anybus-error";
    /// Set (to `true`) on the answer to a request that a deduplicating subscription had handled
    /// before: the request's effect stands, its answer was not kept.
    pub const DUPLICATE: &str = "anybus-duplicate";
    /// The media type of the payload, from the codec that wrote it (`application/json` for
    /// [`Json`](crate::codec::Json), `application/octet-stream` for [`Raw`](crate::codec::Raw)).
    /// The name is the CloudEvents Kafka binding's; on RabbitMQ it is the AMQP `content-type`
    /// property.
    pub const CONTENT_TYPE: &str = "content-type";
    /// The delivery attempt anybus counts itself (1 for the first delivery).
    pub const ATTEMPT: &str = "anybus-attempt";

    /// On a redeliver-later retry copy: when it is due, in milliseconds since the Unix epoch.
    pub const RETRY_DUE_MS: &str = "anybus-retry-due-ms";
    /// On a redeliver-later retry copy: the topic the message was first consumed from.
    pub const RETRY_TOPIC: &str = "anybus-retry-topic";
    /// On a redeliver-later retry copy: when its first attempt failed, in milliseconds since the
    /// Unix epoch.
    pub const RETRY_FIRST_FAILURE_MS: &str = "anybus-retry-first-failure-ms";

    /// On a dead letter: why it is one, `decode`, `permanent` or `attempts-exhausted`.
    pub const DLQ_REASON: &str = "anybus-dlq-reason";
    /// On a dead letter: the last error's message, cut to at most 1,024 bytes.
    pub const DLQ_ERROR: &str = "anybus-dlq-error";
    /// On a dead letter: the Rust type of the last error's source (`std::io::error::Error`).
    pub const DLQ_ERROR_TYPE: &str = "anybus-dlq-error-type";
    /// On a dead letter: the topic the message was consumed from.
    pub const DLQ_TOPIC: &str = "anybus-dlq-topic";
    /// On a dead letter: the partition it was consumed from, where the broker has partitions.
    pub const DLQ_PARTITION: &str = "anybus-dlq-partition";
    /// On a dead letter: its offset in that partition, where the broker has offsets.
    pub const DLQ_OFFSET: &str = "anybus-dlq-offset";
    /// On a dead letter: the message key, when it had one (the dead letter keeps the key too).
    pub const DLQ_KEY: &str = "anybus-dlq-key";
    /// On a dead letter: the consumer group that gave up on it.
    pub const DLQ_GROUP: &str = "anybus-dlq-group";
    /// On a dead letter: how many attempts were made.
    pub const DLQ_ATTEMPTS: &str = "anybus-dlq-attempts";
    /// On a dead letter: when its first attempt failed, in milliseconds since the Unix epoch.
    pub const DLQ_FIRST_FAILURE_MS: &str = "anybus-dlq-first-failure-ms";
    /// On a dead letter: when it was dead-lettered, in milliseconds since the Unix epoch.
    pub const DLQ_DEAD_LETTERED_MS: &str = "anybus-dlq-dead-lettered-ms";
}

/// The unique id every published message carries (a UUID v7, so ids sort by creation time).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(Uuid);

impl MessageId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The id as a UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// Parses the text form written in the [`header::MESSAGE_ID`] header.
    pub fn parse(text: &str) -> Option<Self> {
        Uuid::try_parse(text).ok().map(Self)
    }

    /// The id of a message whose producer (not anybus) gave it an id that is not a UUID in
    /// anybus's text form, for example a RabbitMQ `message-id` of `order-17`: the name-based
    /// UUID v5 of that text in the namespace [`MessageId::FOREIGN_NAMESPACE`], so every
    /// delivery of the message, and every message with the same id text, has the same id, and
    /// anyone can compute it with any UUID library.
    pub fn of_foreign(text: &str) -> Self {
        Self(Uuid::new_v5(&Self::FOREIGN_NAMESPACE, text.as_bytes()))
    }

    /// The namespace of [`MessageId::of_foreign`]. Pinned: ids live on in dedup stores.
    pub const FOREIGN_NAMESPACE: Uuid = uuid::uuid!("e50f8d88-d6c6-403d-94ae-4fd0581c73fb");

    /// The id of a message that came with none and whose place gives none either (a RabbitMQ
    /// message without `message-id`): the nil UUID, the same on every delivery. Deduplicating by
    /// message id refuses it as a missing key.
    pub const fn missing() -> Self {
        Self(Uuid::nil())
    }

    /// Whether this is [`MessageId::missing`]: the message came without an id.
    pub fn is_missing(&self) -> bool {
        self.0.is_nil()
    }

    /// The id of a record that came without one (from a producer other than anybus), made
    /// from where it is stored, so every delivery of the record has the same id: a UUID v8 of
    /// an FNV-1a hash of the topic and the record's timestamp (8 bytes), the partition (2
    /// bytes) and the offset (6 bytes). Exact for partitions below 16,384 and offsets below
    /// 2⁴⁸. The timestamp keeps a topic that was deleted and created again from giving its new
    /// records the ids of the old ones at the same offsets.
    pub fn of_record(topic: &str, partition: i32, offset: i64, timestamp_ms: Option<i64>) -> Self {
        RecordIds::new(topic).id(partition, offset, timestamp_ms)
    }
}

/// [`MessageId::of_record`] for one topic, with the topic's part of the hash computed once: a
/// consumer makes an id per record of another producer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordIds(u64);

impl RecordIds {
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

    pub(crate) fn new(topic: &str) -> Self {
        Self(
            topic
                .bytes()
                .chain([0])
                .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(Self::FNV_PRIME)
                }),
        )
    }

    /// The id of the record at `offset` of `partition` of this topic.
    pub(crate) fn id(self, partition: i32, offset: i64, timestamp_ms: Option<i64>) -> MessageId {
        let hash = timestamp_ms
            .unwrap_or(-1)
            .to_be_bytes()
            .into_iter()
            .fold(self.0, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(Self::FNV_PRIME)
            });
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&hash.to_be_bytes());
        bytes[8..10].copy_from_slice(&(partition as u16).to_be_bytes());
        bytes[10..].copy_from_slice(&offset.to_be_bytes()[2..]);
        MessageId(uuid::Builder::from_custom_bytes(bytes).into_uuid())
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.0)
    }
}

/// Ordered message headers. Names may repeat (Kafka allows it); [`Headers::get`] returns the
/// last value of a name, as most clients do.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, Bytes)>);

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Self(Vec::new())
    }

    /// Appends a header, keeping any earlier one of the same name.
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<Bytes>) {
        self.0.push((name.into(), value.into()));
    }

    /// Replaces every header of this name by one with `value`.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<Bytes>) {
        let name = name.into();
        self.0.retain(|(n, _)| *n != name);
        self.0.push((name, value.into()));
    }

    /// Removes every header of this name.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| n != name);
    }

    /// The last value of `name`.
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.0.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The last value of `name`, if it is UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// All headers in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(n, v)| (n, String::from_utf8_lossy(v).into_owned())),
            )
            .finish()
    }
}

impl<N: Into<String>, V: Into<Bytes>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
        )
    }
}

/// Where a message was read from, or is going to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The topic (Kafka, memory) or the topic the event was published to (RabbitMQ).
    pub topic: Arc<str>,
    /// The partition, where the broker has partitions.
    pub partition: Option<i32>,
    /// The offset within the partition, where the broker has offsets.
    pub offset: Option<i64>,
    /// The RabbitMQ delivery tag, on RabbitMQ.
    pub delivery_tag: Option<u64>,
    /// When the broker says the message was created, in milliseconds since the Unix epoch.
    pub timestamp_ms: Option<i64>,
}

impl Origin {
    /// An origin naming only the topic: what a message has before it is published.
    pub fn topic(topic: impl Into<Arc<str>>) -> Self {
        Self {
            topic: topic.into(),
            partition: None,
            offset: None,
            delivery_tag: None,
            timestamp_ms: None,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.topic)?;
        if let Some(p) = self.partition {
            write!(f, "[{p}]")?;
        }
        if let Some(o) = self.offset {
            write!(f, "@{o}")?;
        }
        if let Some(t) = self.delivery_tag {
            write!(f, "#{t}")?;
        }
        Ok(())
    }
}

/// One message: key, headers, payload and origin, plus the id anybus gives every message.
///
/// Cloning is cheap: the key and payload are reference-counted [`Bytes`].
///
/// ```
/// use anybus::Message;
/// let msg = Message::new("orders.created", r#"{"order_id":7}"#).with_key("7");
/// assert_eq!(msg.key().map(|k| &k[..]), Some(&b"7"[..]));
/// assert_eq!(&msg.origin().topic[..], "orders.created");
/// ```
#[derive(Clone, Debug)]
pub struct Message {
    id: MessageId,
    key: Option<Bytes>,
    headers: Headers,
    payload: Bytes,
    origin: Origin,
}

impl Message {
    /// A message for `topic` with a fresh id, no key and no headers.
    pub fn new(topic: impl Into<Arc<str>>, payload: impl Into<Bytes>) -> Self {
        Self {
            id: MessageId::new(),
            key: None,
            headers: Headers::new(),
            payload: payload.into(),
            origin: Origin::topic(topic),
        }
    }

    /// A message as a backend received it: every part given, nothing generated.
    pub fn from_parts(
        id: MessageId,
        key: Option<Bytes>,
        headers: Headers,
        payload: Bytes,
        origin: Origin,
    ) -> Self {
        Self {
            id,
            key,
            headers,
            payload,
            origin,
        }
    }

    /// Sets the key, which picks the partition and, with key ordering, the lane.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the headers.
    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// Keeps an existing id (a replay or a message read back from a broker header).
    pub fn with_id(mut self, id: MessageId) -> Self {
        self.id = id;
        self
    }

    /// Sets where the message was read from; used by backends.
    pub fn with_origin(mut self, origin: Origin) -> Self {
        self.origin = origin;
        self
    }

    /// The message id.
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// The key, if any.
    pub fn key(&self) -> Option<&Bytes> {
        self.key.as_ref()
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The headers, to change before publishing.
    pub fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }

    /// The payload bytes.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Where the message came from (or goes to, before it is published).
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The topic: shorthand for `origin().topic`.
    pub fn topic(&self) -> &str {
        &self.origin.topic
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_returns_the_last_value_of_a_repeated_header() {
        let mut h = Headers::new();
        h.append("a", "1");
        h.append("a", "2");
        assert_eq!(h.get_str("a"), Some("2"));
        assert_eq!(h.len(), 2);
        h.insert("a", "3");
        assert_eq!(h.len(), 1);
        assert_eq!(h.get_str("a"), Some("3"));
    }

    #[test]
    fn message_ids_are_unique_and_parse_back() {
        let a = MessageId::new();
        let b = MessageId::new();
        assert_ne!(a, b);
        assert_eq!(MessageId::parse(&a.to_string()), Some(a));
    }

    #[test]
    fn a_foreign_id_is_the_same_for_the_same_text_alone() {
        let id = MessageId::of_foreign("order-17");
        assert_eq!(id, MessageId::of_foreign("order-17"));
        assert_eq!(id.as_uuid().get_version_num(), 5);
        // Pinned (ids live on in dedup stores), and what Python's
        // `uuid.uuid5(UUID("e50f8d88-…"), "order-17")` computes.
        assert_eq!(id.to_string(), "7a6758f0-3d8e-5dc9-b4fc-e2e24216b64d");
        assert_ne!(id, MessageId::of_foreign("order-18"));
        assert_ne!(id, MessageId::of_foreign("Order-17"));
        assert!(!id.is_missing() && MessageId::missing().is_missing());
        assert!(!MessageId::new().is_missing());
    }

    #[test]
    fn a_record_id_depends_on_topic_partition_offset_and_timestamp_alone() {
        let at = Some(1_700_000_000_000);
        let id = MessageId::of_record("orders", 3, 1_234, at);
        assert_eq!(id, MessageId::of_record("orders", 3, 1_234, at));
        assert_eq!(id.as_uuid().get_version_num(), 8);
        // Pinned: ids live on in dedup stores, so a new version must compute the same ones.
        assert_eq!(id.to_string(), "7b25201f-3a89-898c-8003-0000000004d2");
        let others = [
            MessageId::of_record("orders", 3, 1_235, at),
            MessageId::of_record("orders", 4, 1_234, at),
            MessageId::of_record("payments", 3, 1_234, at),
            MessageId::of_record("orders", 3, 1_234 + (1 << 40), at),
            MessageId::of_record("orders", 3 + (1 << 13), 1_234, at),
            MessageId::of_record("orders", 3, 1_234, Some(1_700_000_000_001)),
            MessageId::of_record("orders", 3, 1_234, None),
        ];
        for other in others {
            assert_ne!(id, other);
        }
    }
}
