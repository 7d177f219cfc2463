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

use std::time::{Duration, SystemTime};

use crate::message::{header, Message, Origin};
use crate::subscription::RetrySpec;

/// The retry topic of `topic` for `group`.
pub fn retry_topic(topic: &str, group: &str) -> String {
    format!("{topic}.retry.{group}")
}

/// The topic a message was first consumed from: its own, unless it is a retry copy.
pub(crate) fn original_topic(message: &Message) -> &str {
    message
        .headers()
        .get_str(header::RETRY_TOPIC)
        .unwrap_or_else(|| message.topic())
}

/// When a retry copy is due; `None` for a message that is not one.
pub(crate) fn due(message: &Message) -> Option<SystemTime> {
    millis_header(message, header::RETRY_DUE_MS)
}

/// When the first attempt of a retry copy failed; `None` for a message that is not one.
pub(crate) fn first_failure(message: &Message) -> Option<SystemTime> {
    millis_header(message, header::RETRY_FIRST_FAILURE_MS)
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

/// The copy of `message` that comes back for attempt `next_attempt` at `due`.
pub(crate) fn retry_copy(
    message: &Message,
    group: &str,
    next_attempt: u32,
    due: SystemTime,
    first_failure: SystemTime,
) -> Message {
    let original = original_topic(message).to_owned();
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
        let copy = retry_copy(&message, "billing", 2, due, first);
        assert_eq!(copy.topic(), "orders.retry.billing");
        assert_eq!(copy.id(), message.id());
        assert_eq!(copy.key(), message.key());
        assert_eq!(copy.headers().get_str(header::ATTEMPT), Some("2"));
        assert_eq!(copy.headers().get_str(header::RETRY_TOPIC), Some("orders"));
        assert_eq!(self::due(&copy), Some(due));
        assert_eq!(first_failure(&copy), Some(first));
        assert_eq!(original_topic(&copy), "orders");

        // A copy of a copy still names the first topic.
        let again = retry_copy(&copy, "billing", 3, due, first);
        assert_eq!(again.topic(), "orders.retry.billing");
        assert_eq!(again.headers().get_str(header::ATTEMPT), Some("3"));
    }
}
