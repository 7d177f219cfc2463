//! How a [`Message`] travels as an AMQP message, and back.
//!
//! - The topic is the routing key on the events exchange. A topic `amqp-queue:{name}`
//!   ([`QUEUE_TOPIC_PREFIX`]) is instead published through the default exchange straight into
//!   the queue `{name}`: it is how the answer to a request of another AMQP client reaches the
//!   queue that client named in `reply_to`.
//! - The message id is the AMQP `message-id` property (the UUID's text). A `message-id` that
//!   another producer wrote in any other form (`order-17`) is kept: the message's id is
//!   [`MessageId::of_foreign`] of it, the same on every delivery, and the text itself is the
//!   header [`FOREIGN_ID_HEADER`], from which a dead letter, retry copy or replay of the
//!   message is sent with that `message-id` again. A message without `message-id` has the id
//!   [`MessageId::missing`] (so deduplicating by message id refuses it, naming the cause) and is
//!   sent on without one.
//! - The key, which AMQP has no place for, is the header [`KEY_HEADER`].
//! - The header [`content-type`](header::CONTENT_TYPE) (the codec's media type) is the AMQP
//!   `content-type` property, and a header [`content-encoding`](CONTENT_ENCODING_HEADER) the
//!   `content-encoding` property; neither is also a header of the AMQP table. (A value that is
//!   not UTF-8 or longer than 255 bytes stays a header.)
//! - Request/reply speaks AMQP RPC: the [correlation id](header::CORRELATION_ID) is also the
//!   `correlation-id` property, and a request's `reply-to` property names the queue of the
//!   app's reply topic ([`reply_queue`]), which any client reaches through the default
//!   exchange with that name as routing key. The anybus headers stay too, so that anybus apps
//!   of earlier versions answer and match as before. A delivery with `reply-to` or
//!   `correlation-id` properties but not the anybus headers (a request or an answer of another
//!   client) gets the headers from them: `reply-to` `Q` becomes the reply-to header
//!   `amqp-queue:Q`, so that the answer goes to queue `Q`, with the request's correlation id.
//! - Other headers are the AMQP header table, each value a byte string. A name given more than
//!   once becomes an array of its values, in order; AMQP tables order names by themselves, so
//!   the order between different names is not kept.
//! - Messages are persistent (`delivery-mode` 2) and carry the publish time (`timestamp`).
//!
//! Headers written by other AMQP clients are read whatever their type, none dropped: strings
//! and byte arrays as their bytes; integers, floats, timestamps and booleans as their text; a
//! decimal as its exact signed decimal text (`1.50`, `-2.5`); void as an empty value; an array
//! as the header repeated per element; a nested table as JSON text, names in byte order
//! (`{"a":1,"inner":{"none":null}}`). Such a header is sent on as that text.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

use super::field_values::{header_values, scalar};
use super::naming::reply_queue;
use crate::message::{header, Headers, Message, MessageId, Origin};

/// The header that carries a message's key.
pub const KEY_HEADER: &str = "anybus-key";

/// The header that carries a foreign `message-id` that is not a UUID, as it came (see the module
/// docs). On a message with such a `message-id`, a header of that name in the AMQP table is
/// replaced by it.
pub const FOREIGN_ID_HEADER: &str = "anybus-amqp-message-id";

/// The header that is the AMQP `content-encoding` property (anybus writes none itself).
pub const CONTENT_ENCODING_HEADER: &str = "content-encoding";

/// A topic that starts with it names a queue, `amqp-queue:{queue}`, into which the message is
/// published through the default exchange: the reply-to header of a request of another AMQP
/// client, whose `reply-to` property names its queue (see the module docs).
pub const QUEUE_TOPIC_PREFIX: &str = "amqp-queue:";

/// `delivery-mode` of a message the broker writes to disk.
const PERSISTENT: u8 = 2;

/// A message ready for `basic.publish`.
pub(super) struct Outgoing {
    /// The topic, as routing key; or the queue, for a topic that names one.
    pub(super) routing_key: ShortString,
    /// Whether `routing_key` names a queue, reached through the default exchange.
    pub(super) to_queue: bool,
    /// Id, headers, persistence and time.
    pub(super) properties: BasicProperties,
}

/// Why a message cannot be sent over AMQP.
#[derive(Debug, thiserror::Error)]
pub(super) enum Unsendable {
    #[error("the topic is longer than the 255 bytes an AMQP routing key may have")]
    TopicTooLong,
    #[error("header name `{0}…` is longer than the 255 bytes AMQP allows")]
    HeaderNameTooLong(String),
}

/// The routing key and properties of `message`.
pub(super) fn outgoing(message: &Message) -> Result<Outgoing, Unsendable> {
    let (target, to_queue) = match message.topic().strip_prefix(QUEUE_TOPIC_PREFIX) {
        Some(queue) => (queue, true),
        None => (message.topic(), false),
    };
    let routing_key = ShortString::try_new(target).map_err(|_| Unsendable::TopicTooLong)?;
    let mut properties = BasicProperties::default().with_delivery_mode(PERSISTENT);
    let headers = message.headers();
    let content_type = property_text(headers, header::CONTENT_TYPE);
    if let Some(value) = &content_type {
        properties = properties.with_content_type(value.clone());
    }
    let content_encoding = property_text(headers, CONTENT_ENCODING_HEADER);
    if let Some(value) = &content_encoding {
        properties = properties.with_content_encoding(value.clone());
    }
    if let Some(id) = property_text(headers, header::CORRELATION_ID) {
        properties = properties.with_correlation_id(id);
    }
    let reply_to = headers.get_str(header::REPLY_TO);
    let foreign_reply_to = reply_to.and_then(|to| to.strip_prefix(QUEUE_TOPIC_PREFIX));
    let queue = match (reply_to, foreign_reply_to) {
        (_, Some(queue)) => Some(queue.to_owned()),
        (Some(topic), None) if crate::names::is_reply_topic(topic) => Some(reply_queue(topic)),
        _ => None,
    };
    // A topic too long for a queue's name had no queue declared: nothing to name.
    if let Some(queue) = queue.and_then(|q| ShortString::try_new(q).ok()) {
        properties = properties.with_reply_to(queue);
    }
    let mut table = FieldTable::default();
    if let Some(key) = message.key() {
        table.insert(KEY_HEADER.into(), bytes_value(key));
    }
    let foreign_id = foreign_id(message);
    for (name, value) in headers.iter() {
        let as_property = match name {
            FOREIGN_ID_HEADER => foreign_id.is_some(),
            header::CONTENT_TYPE => content_type.is_some(),
            CONTENT_ENCODING_HEADER => content_encoding.is_some(),
            header::REPLY_TO => foreign_reply_to.is_some(),
            _ => false,
        };
        if as_property {
            continue;
        }
        let name = ShortString::try_new(name)
            .map_err(|_| Unsendable::HeaderNameTooLong(name.chars().take(32).collect()))?;
        let value = bytes_value(value);
        let merged = match table.inner().get(&name) {
            None => value,
            Some(AMQPValue::FieldArray(values)) => {
                let mut values = values.clone();
                values.push(value);
                AMQPValue::FieldArray(values)
            }
            Some(first) => AMQPValue::FieldArray(FieldArray::from(vec![first.clone(), value])),
        };
        table.insert(name, merged);
    }
    properties = properties.with_headers(table);
    if let Some(original) = foreign_id {
        properties = properties.with_message_id(original);
    } else if !message.id().is_missing() {
        // A UUID's text is 36 bytes: always a valid short string.
        properties = properties.with_message_id(message.id().to_string().into());
    }
    if let Ok(now) = SystemTime::now().duration_since(UNIX_EPOCH) {
        properties = properties.with_timestamp(now.as_secs());
    }
    Ok(Outgoing {
        routing_key,
        to_queue,
        properties,
    })
}

/// The value of header `name` as the text of an AMQP property: its only value, if that is
/// UTF-8 and at most 255 bytes (else the header stays in the table, where anything fits).
fn property_text(headers: &Headers, name: &str) -> Option<ShortString> {
    let mut values = headers.iter().filter(|(n, _)| *n == name);
    let (_, value) = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let text = std::str::from_utf8(value).ok()?;
    ShortString::try_new(text).ok()
}

/// The foreign `message-id` that `message`'s id was made from, when the header that carries it
/// says so truly: a header that does not give back the message's id is sent as a header.
fn foreign_id(message: &Message) -> Option<ShortString> {
    let text = message.headers().get_str(FOREIGN_ID_HEADER)?;
    if MessageId::of_foreign(text) != message.id() {
        return None;
    }
    ShortString::try_new(text).ok()
}

/// The id of a delivery: its `message-id` if that is a UUID in anybus's own text form, else one
/// made from the `message-id` as it is (which `headers` then keeps), else missing.
fn incoming_id(properties: &BasicProperties, headers: &mut Headers) -> MessageId {
    let Some(text) = properties.message_id().as_ref().map(|id| id.as_str()) else {
        return MessageId::missing();
    };
    if text.is_empty() {
        return MessageId::missing();
    }
    let mut own = uuid::Uuid::encode_buffer();
    match MessageId::parse(text) {
        Some(id) if id.as_uuid().hyphenated().encode_lower(&mut own) == text => id,
        _ => {
            headers.insert(FOREIGN_ID_HEADER, Bytes::copy_from_slice(text.as_bytes()));
            MessageId::of_foreign(text)
        }
    }
}

/// The message a delivery carries, its origin saying topic and delivery tag.
pub(super) fn incoming(
    topic: Arc<str>,
    delivery_tag: u64,
    properties: &BasicProperties,
    payload: Vec<u8>,
) -> Message {
    let mut headers = Headers::new();
    let mut key = None;
    if let Some(table) = properties.headers() {
        for (name, value) in table.inner() {
            if name.as_str() == KEY_HEADER {
                key = Some(scalar(value));
                continue;
            }
            let mut values = Vec::new();
            header_values(value, &mut values);
            for v in values {
                headers.append(name.as_str(), v);
            }
        }
    }
    let id = incoming_id(properties, &mut headers);
    amqp_properties(properties, &mut headers);
    let mut origin = Origin::topic(topic);
    origin.delivery_tag = Some(delivery_tag);
    origin.timestamp_ms = properties
        .timestamp()
        .and_then(|secs| i64::try_from(secs).ok())
        .map(|secs| secs.saturating_mul(1000));
    Message::from_parts(id, key, headers, Bytes::from(payload), origin)
}

/// Adds the headers that stand for the AMQP properties of a delivery, where the table has no
/// such header already (an anybus header wins: it is what anybus wrote).
fn amqp_properties(properties: &BasicProperties, headers: &mut Headers) {
    let mut add = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            if headers.get(name).is_none() {
                headers.append(name, value);
            }
        }
    };
    let text = |value: &Option<ShortString>| value.as_ref().map(|v| v.as_str().to_owned());
    add(header::CONTENT_TYPE, text(properties.content_type()));
    add(CONTENT_ENCODING_HEADER, text(properties.content_encoding()));
    add(header::CORRELATION_ID, text(properties.correlation_id()));
    let reply_to = properties.reply_to().as_ref().map(|q| q.as_str());
    add(
        header::REPLY_TO,
        reply_to
            .filter(|q| !q.is_empty())
            .map(|q| format!("{QUEUE_TOPIC_PREFIX}{q}")),
    );
}

fn bytes_value(bytes: &Bytes) -> AMQPValue {
    AMQPValue::LongString(LongString::from(bytes.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(message: &Message) -> Message {
        let out = outgoing(message).unwrap();
        assert_eq!(out.routing_key.as_str(), message.topic());
        let topic: Arc<str> = Arc::from(out.routing_key.as_str());
        incoming(topic, 7, &out.properties, message.payload().to_vec())
    }

    #[test]
    fn id_key_headers_and_payload_survive() {
        let mut headers = Headers::new();
        headers.append("trace", "abc");
        headers.append("binary", Bytes::from_static(&[0, 159, 255]));
        let sent = Message::new("orders.created", "{}")
            .with_key(Bytes::from_static(&[1, 2, 255]))
            .with_headers(headers.clone());
        let got = round_trip(&sent);
        assert_eq!(got.id(), sent.id());
        assert_eq!(got.key(), sent.key());
        assert_eq!(got.payload(), sent.payload());
        for (name, value) in headers.iter() {
            assert_eq!(got.headers().get(name), Some(value));
        }
        assert_eq!(
            got.headers().get(KEY_HEADER),
            None,
            "the key is not a header"
        );
        assert_eq!(got.origin().delivery_tag, Some(7));
        assert_eq!(got.origin().partition, None);
        assert!(got.origin().timestamp_ms.is_some());
    }

    #[test]
    fn a_repeated_header_keeps_its_values_in_order() {
        let mut headers = Headers::new();
        headers.append("hop", "a");
        headers.append("other", "x");
        headers.append("hop", "b");
        headers.append("hop", "c");
        let got = round_trip(&Message::new("t", "").with_headers(headers));
        let hops: Vec<&[u8]> = got
            .headers()
            .iter()
            .filter(|(n, _)| *n == "hop")
            .map(|(_, v)| &v[..])
            .collect();
        assert_eq!(hops, [&b"a"[..], b"b", b"c"]);
        assert_eq!(got.headers().get_str("hop"), Some("c"));
        assert_eq!(got.headers().get_str("other"), Some("x"));
    }

    #[test]
    fn messages_are_persistent() {
        let out = outgoing(&Message::new("t", "x")).unwrap();
        assert_eq!(*out.properties.delivery_mode(), Some(PERSISTENT));
    }

    #[test]
    fn foreign_header_types_are_read_as_text() {
        let mut table = FieldTable::default();
        table.insert("n".into(), AMQPValue::LongLongInt(-5));
        table.insert("flag".into(), AMQPValue::Boolean(true));
        table.insert(
            "nested".into(),
            AMQPValue::FieldTable(FieldTable::default()),
        );
        let properties = BasicProperties::default()
            .with_headers(table)
            .with_message_id("not-a-uuid".into());
        let got = incoming(Arc::from("t"), 1, &properties, b"x".to_vec());
        assert_eq!(got.headers().get_str("n"), Some("-5"));
        assert_eq!(got.headers().get_str("flag"), Some("true"));
        assert_eq!(got.headers().get_str("nested"), Some("{}"), "kept as JSON");
        assert_eq!(got.key(), None);
    }

    fn property(value: &Option<ShortString>) -> Option<&str> {
        value.as_ref().map(|v| v.as_str())
    }

    fn table(out: &Outgoing) -> FieldTable {
        out.properties.headers().clone().unwrap_or_default()
    }

    #[test]
    fn content_type_and_encoding_are_properties_not_headers() {
        let mut headers = Headers::new();
        headers.append(header::CONTENT_TYPE, "application/json");
        headers.append(CONTENT_ENCODING_HEADER, "gzip");
        let sent = Message::new("t", "{}").with_headers(headers);
        let out = outgoing(&sent).unwrap();
        assert_eq!(
            property(out.properties.content_type()),
            Some("application/json")
        );
        assert_eq!(property(out.properties.content_encoding()), Some("gzip"));
        let table = table(&out);
        assert!(
            !table.inner().contains_key(header::CONTENT_TYPE),
            "{table:?}"
        );
        assert!(
            !table.inner().contains_key(CONTENT_ENCODING_HEADER),
            "{table:?}"
        );
        let got = delivered(&out.properties);
        assert_eq!(
            got.headers().get_str(header::CONTENT_TYPE),
            Some("application/json")
        );
        assert_eq!(got.headers().get_str(CONTENT_ENCODING_HEADER), Some("gzip"));
        assert_eq!(got.headers().len(), 2, "{:?}", got.headers());
    }

    #[test]
    fn a_content_type_no_property_can_hold_stays_a_header() {
        let mut headers = Headers::new();
        headers.append(header::CONTENT_TYPE, "x".repeat(256));
        headers.append(CONTENT_ENCODING_HEADER, Bytes::from_static(&[0xff]));
        let out = outgoing(&Message::new("t", "").with_headers(headers.clone())).unwrap();
        assert_eq!(*out.properties.content_type(), None);
        assert_eq!(*out.properties.content_encoding(), None);
        let got = delivered(&out.properties);
        for (name, value) in headers.iter() {
            assert_eq!(got.headers().get(name), Some(value));
        }
    }

    #[test]
    fn a_request_names_its_reply_queue_and_correlation_id_as_amqp_does() {
        let reply_topic = format!("{}0190", crate::names::REPLY_TOPIC_PREFIX);
        let mut headers = Headers::new();
        headers.append(header::REPLY_TO, reply_topic.clone());
        headers.append(header::CORRELATION_ID, "c-1");
        let out = outgoing(&Message::new("register", "{}").with_headers(headers)).unwrap();
        assert!(!out.to_queue);
        let queue = reply_queue(&reply_topic);
        assert_eq!(property(out.properties.reply_to()), Some(queue.as_str()));
        assert_eq!(property(out.properties.correlation_id()), Some("c-1"));
        // The headers stay, for anybus apps of earlier versions, and win when read back.
        let got = delivered(&out.properties);
        assert_eq!(
            got.headers().get_str(header::REPLY_TO),
            Some(reply_topic.as_str())
        );
        assert_eq!(got.headers().get_str(header::CORRELATION_ID), Some("c-1"));
        assert_eq!(got.headers().len(), 2, "{:?}", got.headers());
    }

    #[test]
    fn a_reply_to_that_is_no_reply_topic_names_no_queue() {
        let mut headers = Headers::new();
        headers.append(header::REPLY_TO, "somewhere.else");
        let out = outgoing(&Message::new("t", "").with_headers(headers)).unwrap();
        assert_eq!(*out.properties.reply_to(), None);
        let got = delivered(&out.properties);
        assert_eq!(
            got.headers().get_str(header::REPLY_TO),
            Some("somewhere.else")
        );
    }

    #[test]
    fn a_foreign_request_is_answered_into_its_reply_to_queue() {
        let properties = BasicProperties::default()
            .with_reply_to("amq.gen-1".into())
            .with_correlation_id("c-9".into())
            .with_content_type("application/json".into());
        let request = delivered(&properties);
        let to = request.headers().get_str(header::REPLY_TO);
        assert_eq!(to, Some("amqp-queue:amq.gen-1"));
        assert_eq!(
            request.headers().get_str(header::CORRELATION_ID),
            Some("c-9")
        );

        // What `Publisher::answer` makes of it.
        let mut headers = Headers::new();
        headers.append(header::CORRELATION_ID, "c-9");
        headers.append(header::CONTENT_TYPE, "application/json");
        let answer = Message::new(to.unwrap(), "{}").with_headers(headers);
        let out = outgoing(&answer).unwrap();
        assert!(out.to_queue);
        assert_eq!(out.routing_key.as_str(), "amq.gen-1");
        assert_eq!(property(out.properties.correlation_id()), Some("c-9"));
        assert_eq!(
            property(out.properties.content_type()),
            Some("application/json")
        );

        // A retry copy or dead letter of the request goes out as it came.
        let again = outgoing(&request).unwrap();
        assert!(!again.to_queue);
        assert_eq!(property(again.properties.reply_to()), Some("amq.gen-1"));
        assert!(!table(&again).inner().contains_key(header::REPLY_TO));
        let redelivered = delivered(&again.properties);
        assert_eq!(redelivered.headers().get_str(header::REPLY_TO), to);
    }

    #[test]
    fn a_foreign_answer_with_only_a_correlation_id_property_is_matched() {
        let properties = BasicProperties::default().with_correlation_id("c-3".into());
        let answer = delivered(&properties);
        assert_eq!(
            answer.headers().get_str(header::CORRELATION_ID),
            Some("c-3")
        );
        assert_eq!(answer.headers().get(header::REPLY_TO), None);
    }

    fn delivered(properties: &BasicProperties) -> Message {
        incoming(Arc::from("t"), 1, properties, b"x".to_vec())
    }

    #[test]
    fn a_foreign_message_id_of_any_form_is_kept_on_every_delivery() {
        let uppercase = MessageId::new().to_string().to_uppercase();
        for text in ["order-17", uppercase.as_str()] {
            let properties = BasicProperties::default().with_message_id(text.into());
            let (first, again) = (delivered(&properties), delivered(&properties));
            assert_eq!(first.id(), MessageId::of_foreign(text));
            assert_eq!(again.id(), first.id());
            assert_eq!(first.headers().get_str(FOREIGN_ID_HEADER), Some(text));

            // A dead letter, retry copy or replay goes out with the `message-id` it came with.
            let out = outgoing(&first).unwrap();
            assert_eq!(
                out.properties.message_id().as_ref().map(|id| id.as_str()),
                Some(text)
            );
            let table = out.properties.headers().clone().unwrap_or_default();
            assert!(!table.inner().contains_key(FOREIGN_ID_HEADER), "{table:?}");
            assert_eq!(delivered(&out.properties).id(), first.id());
        }
    }

    #[test]
    fn a_header_that_does_not_give_back_the_id_is_only_a_header() {
        let mut headers = Headers::new();
        headers.append(FOREIGN_ID_HEADER, "order-17");
        let own = Message::new("t", "").with_headers(headers);
        let out = outgoing(&own).unwrap();
        let sent = own.id().to_string();
        assert_eq!(
            out.properties.message_id().as_ref().map(|id| id.as_str()),
            Some(sent.as_str())
        );
        let got = delivered(&out.properties);
        assert_eq!(got.id(), own.id());
        assert_eq!(got.headers().get_str(FOREIGN_ID_HEADER), Some("order-17"));
    }

    #[test]
    fn a_message_without_an_id_is_missing_one_on_every_delivery() {
        for properties in [
            BasicProperties::default(),
            BasicProperties::default().with_message_id("".into()),
        ] {
            let (first, again) = (delivered(&properties), delivered(&properties));
            assert!(first.id().is_missing(), "{:?}", first.id());
            assert_eq!(again.id(), first.id());
            assert_eq!(first.headers().get(FOREIGN_ID_HEADER), None);
            let out = outgoing(&first).unwrap();
            assert_eq!(*out.properties.message_id(), None, "sent on without one");
        }
    }

    #[test]
    fn overlong_names_are_refused() {
        let long = "x".repeat(256);
        assert!(matches!(
            outgoing(&Message::new(long.as_str(), "")),
            Err(Unsendable::TopicTooLong)
        ));
        let mut headers = Headers::new();
        headers.append(long, "v");
        assert!(matches!(
            outgoing(&Message::new("t", "").with_headers(headers)),
            Err(Unsendable::HeaderNameTooLong(_))
        ));
    }
}
