//! Redeliver-later retries (`retry(mode = "redeliver")`): a message whose handler failed
//! transiently is published again, to its group's retry topic, with a due time, and the original
//! is acknowledged once the broker confirmed the copy. The subscription consumes its retry topics
//! beside its own; a copy waits in its lane until it is due and is then handled like the
//! original, with the next attempt number.
//!
//! The retry topic of topic `t` for group `g` is `t.retry.g`, so that another group's retries
//! never reach this one. A copy keeps the message's id, key, payload and headers, and carries
//! [`header::ATTEMPT`], [`header::RETRY_DUE_MS`], [`header::RETRY_TOPIC`] (the topic it was
//! first consumed from, which also names its dead-letter destination) and
//! [`header::RETRY_FIRST_FAILURE_MS`].
//!
//! These headers steer the pipeline (when a message runs, its attempt number, where its dead
//! letter goes), so they are read only from a message that is a copy of the group's own
//! ([`RetryCopy::of`]): consumed from the group's retry topic of the topic the copy names. On
//! any other message, from a foreign producer or another group, they are data.

use std::time::{Duration, SystemTime};

use crate::message::{header, Message, Origin};
use crate::names::{self, retry_topic};
use crate::subscription::RetrySpec;

/// What anybus wrote on a retry copy it made for one group, read from a message that is one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RetryCopy<'m> {
    /// The topic the message was first consumed from.
    pub(crate) original: &'m str,
    /// The attempt this copy is.
    pub(crate) attempt: u32,
    /// When the copy is due.
    pub(crate) due: Option<SystemTime>,
    /// When the first attempt failed.
    pub(crate) first_failure: Option<SystemTime>,
}

impl<'m> RetryCopy<'m> {
    /// The retry headers of `message` if it is a copy `group` made: its topic is the group's
    /// retry topic of the topic its [`header::RETRY_TOPIC`] names. `None` for every other
    /// message, whatever headers it carries.
    pub(crate) fn of(message: &'m Message, group: &str) -> Option<Self> {
        let (original, of_group) = retry_topic_parts(message)?;
        if of_group != group {
            return None;
        }
        Some(Self {
            original,
            attempt: message
                .headers()
                .get_str(header::ATTEMPT)
                .and_then(|a| a.parse().ok())
                .filter(|a| *a > 0)
                .unwrap_or(1),
            due: millis_header(message, header::RETRY_DUE_MS),
            first_failure: millis_header(message, header::RETRY_FIRST_FAILURE_MS),
        })
    }
}

/// Whether `topic` is one that anybus's own retries or dead letters use, as far as `message`
/// (a message consumed from it) shows: the default dead-letter destination of the topic the
/// message's [`header::DLQ_TOPIC`] names, or a retry topic (or its RabbitMQ wait routing key)
/// of the topic its [`header::RETRY_TOPIC`] names, of a group other than `group`. A topic that
/// merely looks like one (`orders.retry.requested`, `audit.dlq`) is not, unless the message
/// says so in both name and header.
pub(crate) fn is_foreign_helper(message: &Message, group: &str) -> bool {
    let topic = message.topic();
    let headers = message.headers();
    let dead_letter = headers
        .get_str(header::DLQ_TOPIC)
        .is_some_and(|from| names::is_dead_letter_of(topic, from));
    let retry = retry_topic_parts(message).is_some_and(|(_, of_group)| of_group != group);
    dead_letter || retry
}

/// [`retry_topic`] read backwards (by [`names::retry_topic_of`]), as far as `message` shows it: when the message's topic is
/// `{t}.retry.{g}` for the `t` its [`header::RETRY_TOPIC`] names, that `t` and `g` (which, on a
/// RabbitMQ wait routing key, ends in the wait suffix).
fn retry_topic_parts(message: &Message) -> Option<(&str, &str)> {
    let original = message.headers().get_str(header::RETRY_TOPIC)?;
    let group = names::retry_topic_of(message.topic(), original)?;
    Some((original, group))
}

fn millis_header(message: &Message, name: &str) -> Option<SystemTime> {
    let ms: u64 = message.headers().get_str(name)?.parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

/// The wait before attempt `attempt + 1` under `policy`: the policy's backoff after `attempt`
/// failures.
pub(crate) fn delay(policy: &RetrySpec, attempt: u32) -> Duration {
    super::backoff(policy)
        .nth(attempt.saturating_sub(1) as usize)
        .unwrap_or(policy.max)
}

/// The copy of `message`, first consumed from `original`, that comes back for attempt
/// `next_attempt` at `due`.
pub(crate) fn retry_copy(
    message: &Message,
    original: &str,
    group: &str,
    next_attempt: u32,
    due: SystemTime,
    first_failure: SystemTime,
) -> Message {
    let original = original.to_owned();
    let mut headers = message.headers().clone();
    headers.insert(header::ATTEMPT, next_attempt.to_string());
    headers.insert(header::RETRY_DUE_MS, millis(due));
    headers.insert(header::RETRY_FIRST_FAILURE_MS, millis(first_failure));
    headers.insert(header::RETRY_TOPIC, original.clone());
    Message::from_parts(
        message.id(),
        message.key().cloned(),
        headers,
        message.payload().clone(),
        Origin::topic(retry_topic(&original, group)),
    )
}

/// `at` as milliseconds since the Unix epoch, the form of anybus's time headers.
pub(crate) fn millis(at: SystemTime) -> String {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::{Backoff, RetryMode};

    fn policy() -> RetrySpec {
        RetrySpec {
            max_attempts: 5,
            backoff: Backoff::Exponential,
            initial: Duration::from_millis(100),
            max: Duration::from_millis(300),
            jitter: false,
            mode: RetryMode::Redeliver,
        }
    }

    #[test]
    fn delays_grow_from_initial_up_to_max() {
        let p = policy();
        let waits: Vec<u128> = (1..=4).map(|a| delay(&p, a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 300, 300]);
    }

    #[test]
    fn a_copy_goes_to_the_groups_retry_topic_and_says_when_it_is_due() {
        let message = Message::new("orders", "x").with_key("k");
        let due = SystemTime::UNIX_EPOCH + Duration::from_millis(5_000);
        let first = SystemTime::UNIX_EPOCH + Duration::from_millis(4_000);
        let copy = retry_copy(&message, "orders", "billing", 2, due, first);
        assert_eq!(copy.topic(), "orders.retry.billing");
        assert_eq!(copy.id(), message.id());
        assert_eq!(copy.key(), message.key());
        assert_eq!(copy.headers().get_str(header::ATTEMPT), Some("2"));
        assert_eq!(copy.headers().get_str(header::RETRY_TOPIC), Some("orders"));
        // Consumed, the copy's topic is the retry topic it was published to.
        let consumed = copy.with_origin(Origin::topic("orders.retry.billing"));
        let read = RetryCopy::of(&consumed, "billing").expect("its own copy");
        assert_eq!(read.due, Some(due));
        assert_eq!(read.first_failure, Some(first));
        assert_eq!(read.attempt, 2);
        assert_eq!(read.original, "orders");

        // A copy of a copy still names the first topic.
        let again = retry_copy(&consumed, read.original, "billing", 3, due, first);
        assert_eq!(again.topic(), "orders.retry.billing");
        assert_eq!(again.headers().get_str(header::ATTEMPT), Some("3"));
    }

    #[test]
    fn retry_headers_steer_nothing_outside_the_groups_own_retry_topic() {
        let mut headers = crate::Headers::new();
        headers.insert(header::RETRY_TOPIC, "orders".to_owned());
        headers.insert(header::ATTEMPT, "99".to_owned());
        headers.insert(header::RETRY_DUE_MS, u64::MAX.to_string());
        let forged = Message::new("orders", "x").with_headers(headers.clone());
        assert_eq!(
            RetryCopy::of(&forged, "billing"),
            None,
            "on the topic itself"
        );
        let elsewhere = Message::new("payments", "x").with_headers(headers.clone());
        assert_eq!(RetryCopy::of(&elsewhere, "billing"), None);
        let others = Message::new("orders.retry.shipping", "x").with_headers(headers);
        assert_eq!(
            RetryCopy::of(&others, "billing"),
            None,
            "another group's copy"
        );
    }

    #[test]
    fn helper_topics_are_known_by_name_and_header_not_by_suffix() {
        let plain = |topic: &str| Message::new(topic, "x");
        for topic in ["orders.retry.requested", "audit.dlq", "jobs.wait"] {
            assert!(!is_foreign_helper(&plain(topic), "g"), "{topic}");
        }
        let mut dlq = crate::Headers::new();
        dlq.insert(header::DLQ_TOPIC, "orders.created".to_owned());
        let letter = plain("orders.created.dlq").with_headers(dlq.clone());
        assert!(is_foreign_helper(&letter, "g"));
        let not_its = plain("orders.other.dlq").with_headers(dlq);
        assert!(!is_foreign_helper(&not_its, "g"));
        let mut retry = crate::Headers::new();
        retry.insert(header::RETRY_TOPIC, "orders.created".to_owned());
        let copy = |topic: &str| plain(topic).with_headers(retry.clone());
        assert!(is_foreign_helper(&copy("orders.created.retry.h"), "g"));
        assert!(is_foreign_helper(&copy("orders.created.retry.g.wait"), "g"));
        assert!(
            !is_foreign_helper(&copy("orders.created.retry.g"), "g"),
            "its own"
        );
    }
}
