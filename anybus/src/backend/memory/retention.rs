//! How much of each partition the memory broker keeps: the bounds a `memory://` URL can set.
//!
//! As on Kafka, retention is per partition and by size and age, whatever was consumed; on top
//! of that, what every consumer group of a topic has committed is dropped (see
//! [`PartitionLog`](super::log::PartitionLog)), since nothing in this process can read it again.

use std::time::Duration;

use crate::message::Message;

/// Bytes a partition keeps unless the URL says `retention.bytes=N`: 64 MiB.
///
/// Bounded, so that a topic nobody reads (or a group that stopped) cannot grow a service's
/// memory without limit, and big enough that a burst of about 90,000 512-byte events waits in
/// one partition for a consumer that starts late.
pub const DEFAULT_RETENTION_BYTES: u64 = 64 * 1024 * 1024;

/// Milliseconds a message is kept unless the URL says `retention.ms=N`: 7 days, Kafka's
/// default `retention.ms`.
pub const DEFAULT_RETENTION_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// What a stored message is counted as beyond its payload, key and headers: the message, its
/// reference count and its log entry, so that a flood of empty messages is bounded too.
const ENTRY_OVERHEAD: usize = std::mem::size_of::<Message>() + 16 + 40;

/// The bounds of one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Retention {
    /// The most bytes ([`stored_size`]) a partition keeps; the newest message is kept even if
    /// it alone is bigger.
    pub(super) bytes: u64,
    /// The most messages a partition keeps, if bounded by count too.
    pub(super) messages: Option<u64>,
    /// How long a message is kept after it was appended.
    pub(super) age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            bytes: DEFAULT_RETENTION_BYTES,
            messages: None,
            age: Duration::from_millis(DEFAULT_RETENTION_MS),
        }
    }
}

/// The URL options [`Retention::set`] knows, for error messages.
pub(super) const OPTIONS: &str = "`retention.bytes=N`, `retention.messages=N`, `retention.ms=N`";

impl Retention {
    /// Applies one URL option. `Ok(false)` if `name` is not a retention option; `Err` names the
    /// option and says what it must be.
    pub(super) fn set(&mut self, name: &str, value: &str) -> Result<bool, String> {
        let positive =
            || {
                value.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    format!("`{name}` must be a positive whole number, not `{value}`")
                })
            };
        match name {
            "retention.bytes" => self.bytes = positive()?,
            "retention.messages" => self.messages = Some(positive()?),
            "retention.ms" => self.age = Duration::from_millis(positive()?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Whether a partition holding `count` messages of `bytes` in all is over a size bound.
    pub(super) fn exceeded(&self, count: usize, bytes: u64) -> bool {
        bytes > self.bytes || self.messages.is_some_and(|max| count as u64 > max)
    }
}

/// What a message counts as against [`Retention::bytes`].
pub(super) fn stored_size(message: &Message) -> u64 {
    let headers: usize = message
        .headers()
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum();
    let key = message.key().map_or(0, |k| k.len());
    (ENTRY_OVERHEAD + message.payload().len() + key + headers) as u64
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex, PoisonError};

    use super::super::{MemoryBackend, MemoryBroker};
    use super::*;
    use crate::backend::{Backend, Consumer, ConsumerConfig, Delivery};
    use crate::observe::SubscriptionStats;
    use crate::url::BrokerUrl;
    use crate::App;

    fn connect(url: &str) -> MemoryBackend {
        MemoryBackend::connect(&BrokerUrl::parse(url).unwrap()).unwrap()
    }

    async fn member(backend: &MemoryBackend, group: &str) -> Box<dyn Consumer> {
        let config = ConsumerConfig {
            group: group.into(),
            topics: vec!["t".into()],
            batch: 64,
            prefetch: 64,
            drain_timeout: Duration::ZERO,
            stats: Arc::new(SubscriptionStats::default()),
            delayed: Vec::new(),
        };
        backend.consume(config).await.unwrap()
    }

    fn publish(backend: &MemoryBackend, n: usize) {
        for _ in 0..n {
            backend.broker().append(Message::new("t", "x"));
        }
    }

    async fn poll(consumer: &mut Box<dyn Consumer>) -> Vec<Delivery> {
        let mut out = Vec::new();
        consumer.poll(&mut out).await.unwrap();
        out
    }

    fn offsets(deliveries: &[Delivery]) -> Vec<i64> {
        deliveries.iter().map(|d| d.receipt.offset).collect()
    }

    /// Every line logged on this thread while `f` runs.
    async fn logged<T>(f: impl std::future::Future<Output = T>) -> (T, String) {
        #[derive(Clone, Default)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let mut log = self.0.lock().unwrap_or_else(PoisonError::into_inner);
                log.extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let capture = Capture::default();
        let sink = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        let result = {
            let _on_this_thread = tracing::subscriber::set_default(subscriber);
            f.await
        };
        let text = capture.0.lock().unwrap().clone();
        (result, String::from_utf8_lossy(&text).into_owned())
    }

    #[tokio::test]
    async fn a_group_whose_messages_a_bound_dropped_goes_on_from_the_first_retained_and_says_so() {
        let backend = connect("memory://unit-ret-skip?partitions=1&retention.messages=3");
        let mut consumer = member(&backend, "g").await;
        publish(&backend, 5);
        let (first, log) = logged(poll(&mut consumer)).await;
        assert_eq!(offsets(&first), [2, 3, 4], "0 and 1 were dropped");
        assert!(
            log.contains("WARN") && log.contains("skipped=2") && log.contains("to=2"),
            "{log}"
        );
        let settler = consumer.settler();
        for d in &first {
            settler.ack(&d.receipt);
        }
        assert_eq!(backend.broker().committed("g", "t"), [5]);
        assert_eq!(
            backend.broker().end_offsets("t"),
            [5],
            "offsets are not reused"
        );
    }

    #[tokio::test]
    async fn work_in_flight_across_a_skip_holds_the_commit_point_until_it_is_done() {
        let backend = connect("memory://unit-ret-in-flight?partitions=1&retention.messages=2");
        let mut consumer = member(&backend, "g").await;
        publish(&backend, 2);
        let running = poll(&mut consumer).await;
        assert_eq!(offsets(&running), [0, 1]);
        publish(&backend, 5);
        let after = poll(&mut consumer).await;
        assert_eq!(offsets(&after), [5, 6], "2 to 4 were dropped unread");
        let settler = consumer.settler();
        for d in &after {
            settler.ack(&d.receipt);
        }
        assert_eq!(
            backend.broker().committed("g", "t"),
            [0],
            "0 and 1 still run"
        );
        settler.ack(&running[1].receipt);
        settler.ack(&running[0].receipt);
        assert_eq!(backend.broker().committed("g", "t"), [7]);
    }

    #[tokio::test]
    async fn a_rewind_below_what_a_bound_dropped_reads_on_from_the_first_retained() {
        let backend = connect("memory://unit-ret-nack?partitions=1&retention.messages=2");
        let mut consumer = member(&backend, "g").await;
        publish(&backend, 2);
        let first = poll(&mut consumer).await;
        publish(&backend, 2);
        consumer.settler().nack(&first[0].receipt);
        let again = poll(&mut consumer).await;
        assert_eq!(
            offsets(&again),
            [2, 3],
            "0 and 1 are gone; the rest is read"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn messages_older_than_the_age_bound_are_not_delivered() {
        let backend = connect("memory://unit-ret-age?partitions=1&retention.ms=60000");
        publish(&backend, 2);
        tokio::time::advance(Duration::from_secs(61)).await;
        publish(&backend, 1);
        assert_eq!(backend.broker().messages("t").len(), 1);
        let mut consumer = member(&backend, "g").await;
        assert_eq!(offsets(&poll(&mut consumer).await), [2]);
    }

    #[tokio::test]
    async fn what_every_group_consumed_is_dropped_and_a_later_group_reads_what_is_left() {
        let backend = connect("memory://unit-ret-consumed?partitions=1");
        let mut a = member(&backend, "a").await;
        let mut b = member(&backend, "b").await;
        publish(&backend, 10);
        let read_a = poll(&mut a).await;
        for d in &read_a {
            a.settler().ack(&d.receipt);
        }
        let read_b = poll(&mut b).await;
        for d in &read_b[..6] {
            b.settler().ack(&d.receipt);
        }
        a.close().await.unwrap();
        b.close().await.unwrap();
        let broker = backend.broker();
        assert_eq!(broker.messages("t").len(), 4, "b has yet to finish 6 to 9");
        assert_eq!(broker.base_offsets("t"), [6]);
        assert_eq!(
            broker.committed("late", "t"),
            [6],
            "a new group starts there"
        );
        let mut late = member(&backend, "late").await;
        assert_eq!(offsets(&poll(&mut late).await), [6, 7, 8, 9]);
    }

    #[tokio::test]
    async fn a_dead_letter_topic_keeps_what_its_replay_group_has_not_read() {
        let backend = connect("memory://unit-ret-keep-for?partitions=1");
        let spec = crate::backend::TopicSpec {
            name: "t".into(),
            partitions: None,
            keep_for: Some("replay".into()),
        };
        backend.declare(&[spec]).await.unwrap();
        let mut other = member(&backend, "other").await;
        publish(&backend, 3);
        for d in &poll(&mut other).await {
            other.settler().ack(&d.receipt);
        }
        other.close().await.unwrap();
        assert_eq!(backend.broker().messages("t").len(), 3);
    }

    #[tokio::test]
    async fn an_app_leaves_no_reply_topic_behind() {
        let broker = MemoryBroker::named("unit-ret-replies");
        let app = App::builder()
            .connect("memory://unit-ret-replies")
            .await
            .unwrap();
        let reply_topic = broker
            .topics()
            .into_iter()
            .find(|t| crate::names::is_reply_topic(t))
            .expect("a reply topic while the app runs");
        app.shutdown().await.unwrap();
        assert!(
            !broker.topics().contains(&reply_topic),
            "{:?}",
            broker.topics()
        );
        assert_eq!(
            broker.committed(&reply_topic, &reply_topic),
            Vec::<i64>::new()
        );
    }

    #[test]
    fn bad_retention_options_are_rejected_naming_the_option() {
        for url in [
            "memory://unit-ret-bad?retention.bytes=0",
            "memory://unit-ret-bad?retention.ms=soon",
            "memory://unit-ret-bad?retention.messages=-3",
        ] {
            let err = MemoryBackend::connect(&BrokerUrl::parse(url).unwrap()).unwrap_err();
            let option = url.split('?').nth(1).unwrap().split('=').next().unwrap();
            assert!(
                matches!(err, crate::url::ConnectError::MalformedUrl { .. })
                    && err.to_string().contains(option),
                "{err}"
            );
        }
        let err = MemoryBackend::connect(&BrokerUrl::parse("memory://x?retention=1").unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("retention.ms=N"), "{err}");
    }

    #[test]
    fn options_set_their_bound_and_bad_values_name_the_option() {
        let mut r = Retention::default();
        assert_eq!(r.set("retention.bytes", "1024"), Ok(true));
        assert_eq!(r.set("retention.messages", "10"), Ok(true));
        assert_eq!(r.set("retention.ms", "250"), Ok(true));
        assert_eq!(r.set("partitions", "2"), Ok(false));
        assert_eq!(
            r,
            Retention {
                bytes: 1024,
                messages: Some(10),
                age: Duration::from_millis(250)
            }
        );
        for (name, value) in [
            ("retention.bytes", "0"),
            ("retention.ms", "-1"),
            ("retention.messages", "lots"),
        ] {
            let err = r.set(name, value).unwrap_err();
            assert!(err.contains(name) && err.contains(value), "{err}");
        }
    }

    #[test]
    fn the_default_is_bounded_in_size_and_age() {
        let r = Retention::default();
        assert!(!r.exceeded(1_000_000, DEFAULT_RETENTION_BYTES));
        assert!(r.exceeded(1, DEFAULT_RETENTION_BYTES + 1));
        assert_eq!(r.age, Duration::from_secs(7 * 24 * 3600));
        let empty = stored_size(&Message::new("t", ""));
        assert!((150..400).contains(&empty), "empty messages count: {empty}");
    }
}
