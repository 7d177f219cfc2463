//! Moving dead letters back to the topics they came from.
//!
//! [`replay`](crate::replay()) is a subscription like any other: it consumes a dead-letter topic and publishes
//! each dead letter to the topic named in its [`header::DLQ_TOPIC`] header, with the original
//! payload, key, message id (so deduplication still recognises it) and headers, without the
//! `anybus-dlq-*` metadata. A dead letter is acknowledged only once its replay was confirmed.
//!
//! Run it when the cause is fixed, and stop it when the dead letters you meant to replay are
//! back: a message that fails again goes back to the dead-letter topic, and a replay left
//! running would send it round again. `cargo run -p anybus-examples --bin replay` shows one
//! way, stopping after a given number.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let app = anybus::App::builder()
//!     .subscribe(anybus::replay("orders.created.dlq"))
//!     .connect("memory://")
//!     .await?;
//! # app.shutdown().await?;
//! # Ok(())
//! # }
//! ```

use crate::context::Context;
use crate::error::HandlerError;
use crate::message::{header, Message, Origin};
use crate::subscription::{DeadLetter, Ordering, Subscription};

/// The name of every replay subscription.
pub const REPLAY_SUBSCRIPTION: &str = "anybus-replay";

/// The consumer group that replays `dead_letters`: `anybus-replay.{dead_letters}`. An app
/// declares it with each dead-letter topic, so that on RabbitMQ its queue holds every dead
/// letter from the first one on; on Kafka and memory the group reads the topic from the start.
/// Each dead letter is replayed once: the group's committed offsets (or its queue) remember
/// what was.
pub fn replay_group(dead_letters: &str) -> String {
    format!("anybus-replay.{dead_letters}")
}

/// A subscription, in consumer group [`replay_group`], that republishes every dead letter of
/// `dead_letters` to the topic it came from. What is not a dead letter (it has no
/// [`header::DLQ_TOPIC`]) is a permanent failure, logged and skipped.
pub fn replay(dead_letters: &str) -> Subscription {
    Subscription::builder([dead_letters])
        .name(REPLAY_SUBSCRIPTION)
        .group(replay_group(dead_letters))
        .ordering(Ordering::Partition)
        .dead_letter(DeadLetter::Disabled)
        .handler(|letter: Message, ctx: Context| async move {
            let original = restore_dead_letter(&letter)?;
            ctx.publisher().send(original).await?;
            Ok::<(), HandlerError>(())
        })
}

/// The message a dead letter was made from, addressed to its original topic.
pub fn restore_dead_letter(letter: &Message) -> Result<Message, HandlerError> {
    let topic = letter.headers().get_str(header::DLQ_TOPIC).ok_or_else(|| {
        HandlerError::permanent(format!(
            "not a dead letter: no {} header",
            header::DLQ_TOPIC
        ))
    })?;
    let mut headers = letter.headers().clone();
    let metadata: Vec<String> = headers
        .iter()
        .map(|(name, _)| name)
        .filter(|name| name.starts_with("anybus-dlq-"))
        .map(str::to_owned)
        .collect();
    for name in metadata {
        headers.remove(&name);
    }
    Ok(Message::from_parts(
        letter.id(),
        letter.key().cloned(),
        headers,
        letter.payload().clone(),
        Origin::topic(topic),
    ))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::message::Headers;

    #[test]
    fn a_restored_dead_letter_is_the_original_message() {
        let mut headers = Headers::new();
        headers.append("trace", Bytes::from_static(b"t-1"));
        headers.append(header::DLQ_TOPIC, Bytes::from_static(b"orders"));
        headers.append(header::DLQ_REASON, Bytes::from_static(b"permanent"));
        headers.append(header::DLQ_ATTEMPTS, Bytes::from_static(b"3"));
        let letter = Message::new("orders.dlq", "payload")
            .with_key("user-7")
            .with_headers(headers);
        let original = restore_dead_letter(&letter).expect("a dead letter");
        assert_eq!(original.topic(), "orders");
        assert_eq!(original.id(), letter.id());
        assert_eq!(original.key(), letter.key());
        assert_eq!(original.payload(), letter.payload());
        let names: Vec<&str> = original.headers().iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["trace"]);
    }

    #[test]
    fn what_is_not_a_dead_letter_is_refused() {
        let error =
            restore_dead_letter(&Message::new("orders.dlq", "x")).expect_err("not a dead letter");
        assert!(!error.is_transient());
        assert!(error.to_string().contains(header::DLQ_TOPIC), "{error}");
    }
}
