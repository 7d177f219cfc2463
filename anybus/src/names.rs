//! The names of anybus's own topics: dead letters, retry copies and reply topics, made and
//! recognised in this one place.
//!
//! | topic | name | made by |
//! | --- | --- | --- |
//! | default dead-letter destination of `t` | `t.dlq` | [`dead_letter_topic`] |
//! | retry topic of `t` for group `g` | `t.retry.g` | [`retry_topic`] |
//! | an app instance's reply topic | `anybus.replies.{uuid}` | [`reply_topic`] |
//!
//! A user topic may look like one of these (`orders.retry.requested`, `audit.dlq`), so a topic
//! is recognised only together with what a message says of it: a retry copy names the topic it
//! was first consumed from in a header, a dead letter the topic it came from
//! ([`retry_topic_of`], [`is_dead_letter_of`]). A backend that names queues after these topics
//! (RabbitMQ's wait and reply queues) keeps those queue names in its own naming module.

/// What every app instance's reply topic starts with.
pub const REPLY_TOPIC_PREFIX: &str = "anybus.replies.";

/// The default dead-letter destination of `topic`.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// Whether `topic` is the default dead-letter destination of `from`.
pub(crate) fn is_dead_letter_of(topic: &str, from: &str) -> bool {
    topic.strip_prefix(from) == Some(".dlq")
}

/// The retry topic of `topic` for `group`.
pub fn retry_topic(topic: &str, group: &str) -> String {
    format!("{topic}.retry.{group}")
}

/// [`retry_topic`] read backwards: the group whose retry topic of `original` `topic` is, if it
/// is one. (On a RabbitMQ wait routing key the group ends in the wait suffix.)
pub(crate) fn retry_topic_of<'t>(topic: &'t str, original: &str) -> Option<&'t str> {
    topic.strip_prefix(original)?.strip_prefix(".retry.")
}

/// The reply topic of the app instance `id`.
pub(crate) fn reply_topic(id: impl std::fmt::Display) -> String {
    format!("{REPLY_TOPIC_PREFIX}{id}")
}

/// Whether `topic` is an app instance's reply topic.
#[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))]
pub(crate) fn is_reply_topic(topic: &str) -> bool {
    topic.starts_with(REPLY_TOPIC_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_name_is_recognised_only_as_what_it_was_made_from() {
        assert_eq!(dead_letter_topic("orders"), "orders.dlq");
        assert!(is_dead_letter_of("orders.dlq", "orders"));
        assert!(!is_dead_letter_of("orders.dlq", "order"));
        assert!(!is_dead_letter_of("audit.dlq", "orders"));

        let retry = retry_topic("orders", "billing.v2");
        assert_eq!(retry, "orders.retry.billing.v2");
        assert_eq!(retry_topic_of(&retry, "orders"), Some("billing.v2"));
        // A user topic that merely contains `.retry.` is no retry topic of another topic.
        assert_eq!(retry_topic_of("orders.retry.requested", "payments"), None);

        let reply = reply_topic("0190");
        assert!(is_reply_topic(&reply));
        assert!(!is_reply_topic("anybus.replies"));
    }
}
