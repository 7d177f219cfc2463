//! What a dead letter is: the original message, payload, key, id and headers untouched, plus
//! headers that say why, where it came from, and when.
//!
//! The dead letter keeps the message id, so that a replayed dead letter is still recognised by
//! deduplication. Of the original headers only anybus's own attempt count and retry headers are
//! dropped: the dead letter says how many attempts were made in [`header::DLQ_ATTEMPTS`]. A
//! redeliver-later copy given up on is dead-lettered as the message of the topic it was first
//! consumed from (its partition and offset are the retry topic's).

use std::time::SystemTime;

use crate::error::{FailureKind, HandlerError};
use crate::message::{header, Message, Origin};
use crate::subscription::DeadLetter;

use super::redeliver;

/// The most bytes of an error message a dead letter carries.
pub(crate) const ERROR_BOUND: usize = 1024;

/// Why a message became a dead letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The payload did not decode.
    Decode,
    /// The handler said no attempt can succeed.
    Permanent,
    /// Every attempt the retry policy allows failed.
    AttemptsExhausted,
}

impl Reason {
    /// The reason for a final failure of this kind.
    pub(crate) fn of(kind: FailureKind) -> Self {
        match kind {
            FailureKind::Decode => Self::Decode,
            FailureKind::Permanent => Self::Permanent,
            FailureKind::Transient => Self::AttemptsExhausted,
        }
    }

    /// The value of [`header::DLQ_REASON`].
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Decode => "decode",
            Self::Permanent => "permanent",
            Self::AttemptsExhausted => "attempts-exhausted",
        }
    }
}

/// Where a dead letter of a message consumed from `topic` goes; `None` when dead letters are
/// disabled.
pub(crate) fn destination(policy: &DeadLetter, topic: &str) -> Option<String> {
    match policy {
        DeadLetter::Default => Some(crate::names::dead_letter_topic(topic)),
        DeadLetter::Topic(name) => Some(name.clone()),
        DeadLetter::Disabled => None,
    }
}

/// What happened to a message that is given up on.
pub(crate) struct Failure<'a> {
    pub(crate) error: &'a HandlerError,
    /// The topic the message was first consumed from (for a retry copy, not the retry topic).
    pub(crate) topic: &'a str,
    pub(crate) group: &'a str,
    pub(crate) attempts: u32,
    pub(crate) first_failure: SystemTime,
    pub(crate) now: SystemTime,
}

/// The dead letter of `message`, to be published to `to`.
pub(crate) fn dead_letter(message: &Message, to: &str, failure: &Failure<'_>) -> Message {
    let topic = failure.topic.to_owned();
    let mut headers = message.headers().clone();
    for name in [
        header::ATTEMPT,
        header::RETRY_DUE_MS,
        header::RETRY_TOPIC,
        header::RETRY_FIRST_FAILURE_MS,
    ] {
        headers.remove(name);
    }
    let origin = message.origin();
    let mut put = |name: &str, value: String| headers.insert(name, value);
    put(
        header::DLQ_REASON,
        Reason::of(failure.error.kind()).as_str().into(),
    );
    put(
        header::DLQ_ERROR,
        truncate(&failure.error.to_string(), ERROR_BOUND),
    );
    put(header::DLQ_ERROR_TYPE, failure.error.type_name().into());
    put(header::DLQ_TOPIC, topic);
    if let Some(partition) = origin.partition {
        put(header::DLQ_PARTITION, partition.to_string());
    }
    if let Some(offset) = origin.offset {
        put(header::DLQ_OFFSET, offset.to_string());
    }
    put(header::DLQ_GROUP, failure.group.into());
    put(header::DLQ_ATTEMPTS, failure.attempts.to_string());
    put(
        header::DLQ_FIRST_FAILURE_MS,
        redeliver::millis(failure.first_failure),
    );
    put(header::DLQ_DEAD_LETTERED_MS, redeliver::millis(failure.now));
    if let Some(key) = message.key() {
        headers.insert(header::DLQ_KEY, key.clone());
    }
    Message::from_parts(
        message.id(),
        message.key().cloned(),
        headers,
        message.payload().clone(),
        Origin::topic(to),
    )
}

/// `text` cut to at most `bound` bytes, on a character boundary, with `…` when cut.
fn truncate(text: &str, bound: usize) -> String {
    if text.len() <= bound {
        return text.to_owned();
    }
    let ellipsis = "…";
    let mut end = bound - ellipsis.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ellipsis}", &text[..end])
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::message::Headers;

    fn consumed() -> Message {
        let mut headers = Headers::new();
        headers.append("trace", Bytes::from_static(b"t-1"));
        headers.append(header::ATTEMPT, Bytes::from_static(b"2"));
        Message::new("orders", "not json")
            .with_key("user-7")
            .with_headers(headers)
            .with_origin(Origin {
                topic: "orders".into(),
                partition: Some(3),
                offset: Some(41),
                delivery_tag: None,
                timestamp_ms: None,
            })
    }

    #[test]
    fn a_dead_letter_keeps_the_message_and_says_why() {
        let message = consumed();
        let error = HandlerError::permanent(std::io::Error::other("unknown sku"));
        let first = SystemTime::UNIX_EPOCH + Duration::from_millis(1_000);
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(2_500);
        let failure = Failure {
            error: &error,
            topic: "orders",
            group: "billing",
            attempts: 1,
            first_failure: first,
            now,
        };
        let letter = dead_letter(&message, "orders.dlq", &failure);
        assert_eq!(letter.topic(), "orders.dlq");
        assert_eq!(letter.id(), message.id());
        assert_eq!(letter.key(), message.key());
        assert_eq!(letter.payload(), message.payload());
        let h = letter.headers();
        assert_eq!(h.get_str("trace"), Some("t-1"));
        assert_eq!(h.get(header::ATTEMPT), None);
        assert_eq!(h.get_str(header::DLQ_REASON), Some("permanent"));
        assert_eq!(
            h.get_str(header::DLQ_ERROR),
            Some("permanent failure: unknown sku")
        );
        assert_eq!(
            h.get_str(header::DLQ_ERROR_TYPE),
            Some("std::io::error::Error")
        );
        assert_eq!(h.get_str(header::DLQ_TOPIC), Some("orders"));
        assert_eq!(h.get_str(header::DLQ_PARTITION), Some("3"));
        assert_eq!(h.get_str(header::DLQ_OFFSET), Some("41"));
        assert_eq!(h.get_str(header::DLQ_KEY), Some("user-7"));
        assert_eq!(h.get_str(header::DLQ_GROUP), Some("billing"));
        assert_eq!(h.get_str(header::DLQ_ATTEMPTS), Some("1"));
        assert_eq!(h.get_str(header::DLQ_FIRST_FAILURE_MS), Some("1000"));
        assert_eq!(h.get_str(header::DLQ_DEAD_LETTERED_MS), Some("2500"));
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        let long = "é".repeat(ERROR_BOUND);
        let cut = truncate(&long, ERROR_BOUND);
        assert!(cut.len() <= ERROR_BOUND, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert_eq!(truncate("short", ERROR_BOUND), "short");
    }

    #[test]
    fn the_destination_follows_the_policy() {
        assert_eq!(
            destination(&DeadLetter::Default, "orders").as_deref(),
            Some("orders.dlq")
        );
        assert_eq!(
            destination(&DeadLetter::Topic("failed".into()), "orders").as_deref(),
            Some("failed")
        );
        assert_eq!(destination(&DeadLetter::Disabled, "orders"), None);
    }
}
