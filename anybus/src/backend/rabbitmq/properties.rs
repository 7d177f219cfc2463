//! How a [`Message`] travels as an AMQP message, and back.
//!
//! - The topic is the routing key on the events exchange.
//! - The message id is the AMQP `message-id` property (the UUID's text). A `message-id` that
//!   another producer wrote in any other form (`order-17`) is kept: the message's id is
//!   [`MessageId::of_foreign`] of it, the same on every delivery, and the text itself is the
//!   header [`FOREIGN_ID_HEADER`], from which a dead letter, retry copy or replay of the
//!   message is sent with that `message-id` again. A message without `message-id` has the id
//!   [`MessageId::missing`] (so deduplicating by message id refuses it, naming the cause) and is
//!   sent on without one.
//! - The key, which AMQP has no place for, is the header [`KEY_HEADER`].
//! - Headers are the AMQP header table, each value a byte string. A name given more than once
//!   becomes an array of its values, in order; AMQP tables order names by themselves, so the
//!   order between different names is not kept.
//! - Messages are persistent (`delivery-mode` 2) and carry the publish time (`timestamp`).
//!
//! Headers written by other AMQP clients are read too: strings and byte arrays as their bytes,
//! numbers and booleans as their text, arrays as repeated headers; nested tables are skipped.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

use crate::message::{Headers, Message, MessageId, Origin};

/// The header that carries a message's key.
pub const KEY_HEADER: &str = "anybus-key";

/// The header that carries a foreign `message-id` that is not a UUID, as it came (see the module
/// docs). On a message with such a `message-id`, a header of that name in the AMQP table is
/// replaced by it.
pub const FOREIGN_ID_HEADER: &str = "anybus-amqp-message-id";

/// `delivery-mode` of a message the broker writes to disk.
const PERSISTENT: u8 = 2;

/// A message ready for `basic.publish`.
pub(super) struct Outgoing {
    /// The topic, as routing key.
    pub(super) routing_key: ShortString,
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
    let routing_key =
        ShortString::try_new(message.topic()).map_err(|_| Unsendable::TopicTooLong)?;
    let mut table = FieldTable::default();
    if let Some(key) = message.key() {
        table.insert(KEY_HEADER.into(), bytes_value(key));
    }
    let foreign_id = foreign_id(message);
    for (name, value) in message.headers().iter() {
        if foreign_id.is_some() && name == FOREIGN_ID_HEADER {
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
    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_headers(table);
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
        properties,
    })
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
                key = scalar(value);
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
    let mut origin = Origin::topic(topic);
    origin.delivery_tag = Some(delivery_tag);
    origin.timestamp_ms = properties
        .timestamp()
        .and_then(|secs| i64::try_from(secs).ok())
        .map(|secs| secs.saturating_mul(1000));
    Message::from_parts(id, key, headers, Bytes::from(payload), origin)
}

fn bytes_value(bytes: &Bytes) -> AMQPValue {
    AMQPValue::LongString(LongString::from(bytes.to_vec()))
}

/// The bytes of a header value that is not an array or table.
fn scalar(value: &AMQPValue) -> Option<Bytes> {
    let text = |t: String| Some(Bytes::from(t));
    match value {
        AMQPValue::LongString(s) => Some(Bytes::copy_from_slice(s.as_bytes())),
        AMQPValue::ShortString(s) => Some(Bytes::copy_from_slice(s.as_str().as_bytes())),
        AMQPValue::ByteArray(b) => Some(Bytes::copy_from_slice(b.as_slice())),
        AMQPValue::Boolean(b) => text(b.to_string()),
        AMQPValue::ShortShortInt(n) => text(n.to_string()),
        AMQPValue::ShortShortUInt(n) => text(n.to_string()),
        AMQPValue::ShortInt(n) => text(n.to_string()),
        AMQPValue::ShortUInt(n) => text(n.to_string()),
        AMQPValue::LongInt(n) => text(n.to_string()),
        AMQPValue::LongUInt(n) => text(n.to_string()),
        AMQPValue::LongLongInt(n) => text(n.to_string()),
        AMQPValue::Float(n) => text(n.to_string()),
        AMQPValue::Double(n) => text(n.to_string()),
        AMQPValue::Timestamp(n) => text(n.to_string()),
        _ => None,
    }
}

fn header_values(value: &AMQPValue, out: &mut Vec<Bytes>) {
    match value {
        AMQPValue::FieldArray(values) => {
            for v in values.as_slice() {
                header_values(v, out);
            }
        }
        other => out.extend(scalar(other)),
    }
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
        assert_eq!(got.headers().get("nested"), None);
        assert_eq!(got.key(), None);
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
