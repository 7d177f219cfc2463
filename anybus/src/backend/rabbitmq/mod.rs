//! The RabbitMQ backend (feature `rabbitmq`), on `lapin` and tokio, for
//! `amqp://user:pass@host:port/vhost` URLs.
//!
//! # How topics and groups map onto RabbitMQ
//!
//! - **A topic is a routing key** on one durable topic exchange, `anybus`. Publishing an event
//!   publishes it to that exchange with the topic as routing key.
//! - **A consumer group owns a durable queue per topic**, `{topic}.{group}` with `%` and `.` of
//!   the group written `%25` and `%2E` ([`topology::group_queue`]: no two pairs share a queue),
//!   bound to the exchange with the topic as binding key. So every group gets every event once, and the
//!   **members of a group share its queue**: the broker hands each message to one of them.
//!   There are no partitions: each member reports `[topic:0]` per queue as its assignment, and
//!   `partitions` in a subscription is ignored. As the exchange matches binding keys as
//!   patterns, a subscribed topic with `*` or `#` (`orders.*`) receives every matching topic;
//!   each message's origin names the topic it was published to.
//! - **An event no queue is bound for is kept, not lost**: the exchange's alternate exchange,
//!   `anybus.unrouted`, parks it in the durable queue `anybus.unrouted` (up to 100 000 events;
//!   beyond that the broker refuses such publishes and `publish` fails). A group's queue exists
//!   from the moment its first member starts: events published before that are in the
//!   unrouted queue, not in the group's.
//! - **Dead letters** are events on their dead-letter topic. The replay group of each
//!   dead-letter topic ([`replay_group`](crate::replay_group)) has its queue declared when an
//!   app that may dead-letter to it starts, so that queue holds every dead letter for
//!   [`replay`](crate::replay()), whether or not a replay ever ran.
//! - **Redeliver-later retries** go to the group's retry topic through its wait queue,
//!   `{retry topic}.%wait`, declared with the consumer and bound to its own exchange,
//!   `anybus.wait`, so that no topic routes into it: a retry copy is published there with a
//!   per-message TTL (`expiration`) until its due time, and the queue dead-letters it back to the
//!   events exchange with the retry topic as routing key, into the group's retry queue.
//! - **Request/reply** uses the runtime's private reply topic per app (`anybus.replies.<uuid>`),
//!   whose queue, `{reply topic}.%reply`, is not durable and expires a minute after its app is
//!   gone. It is AMQP RPC too: a request names that queue in its `reply-to` property and has a
//!   `correlation-id`, so another client answers it through the default exchange; and another
//!   client's request (`reply-to`, `correlation-id`, no anybus headers) is answered into its
//!   `reply-to` queue (see [`properties`]).
//!
//! The names and arguments above are data, a [`topology::Topology`] built from a subscription's
//! group and topics. It is declared when a consumer starts, and declared again, with the base
//! exchanges, on every new connection.
//!
//! # Messages
//!
//! Published events are persistent, carry the message id as AMQP `message-id`, the codec's
//! media type as `content-type`, the key in the header `anybus-key`, and every other header as
//! a byte string in the AMQP header table (see [`properties`], which also says how a foreign
//! `message-id`, or none, becomes an id, and how header values of every AMQP type are read). A received message's origin names its topic (the routing key it was
//! published with) and its delivery tag; it has no partition or offset.
//!
//! # Delivery
//!
//! Acknowledgements are manual. The prefetch (`basic.qos`) of each queue's consumer is twice
//! the subscription's `concurrency` (under key ordering, at least the app's `max_buffered`, so
//! that deliveries waiting behind a busy key do not starve the others): the broker holds back
//! what a member has not acknowledged beyond it. A transient failure nacks the message with requeue: RabbitMQ puts it back and delivers it
//! again, after what the member already holds (so under partition ordering a retried message
//! comes after the ones prefetched behind it). Every delivery is stamped with the generation
//! of the channel it came on; an ack or nack of a channel that died is dropped and counted
//! (`stale_settlements`), never sent on the new channel, and the broker delivers the message
//! again.
//!
//! Publishing uses publisher confirms: [`Backend::publish`] returns after the broker confirmed,
//! and a refusal (a nack, a returned message) is a [`PublishError`].
//!
//! # Reconnecting
//!
//! When the connection dies, the backend reconnects with capped exponential backoff, declares
//! the topology again, reopens every consumer on a new channel, and carries on; what was in
//! flight is delivered again by the broker. While a consumer has no channel its assignment
//! (see [`App::assignment`](crate::App::assignment)) is empty: that is its health.
//!
//! # Connecting
//!
//! A wrong password, an unknown virtual host and an unreachable host each fail
//! [`App::connect`](crate::AppBuilder::connect) with a [`ConnectError`] that names the cause
//! (`authentication failed for user …`, `virtual host … does not exist …`, `connection
//! refused by …`, `no answer from … within 5s`). Connecting gives up after 5 seconds, or after
//! the URL's `connection_timeout` (milliseconds). The password never appears in an error, a
//! log line or `Debug` output of anybus. (lapin itself, at `trace` level, logs the login
//! frame, where the password is among the bytes of the SASL response: keep `lapin` at `debug`
//! or above outside of debugging.) `amqps://` is refused: this build has no TLS.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use anybus::{App, HandlerError, Subscription};
//!
//! async fn mail(address: String) -> Result<(), HandlerError> {
//!     println!("welcome, {address}");
//!     Ok(())
//! }
//!
//! let app = App::builder()
//!     .subscribe(Subscription::builder(["users.registered"]).group("mailer").handler(mail))
//!     .connect("amqp://guest:guest@127.0.0.1:5672/%2f")
//!     .await?;
//! app.publisher().publish("users.registered", "ada@example.com").await?;
//! app.shutdown().await?;
//! # Ok(())
//! # }
//! ```

mod connection;
mod consumer;
mod declare;
mod feed;
mod field_values;
mod generation;
mod naming;
pub mod properties;
mod publisher;
mod superseded;
mod target;
pub mod topology;

use std::fmt;
use std::sync::Arc;

pub use self::connection::{RECONNECT_MAX_DELAY, RECONNECT_MIN_DELAY};
pub use self::publisher::PUBLISH_PATIENCE;
pub use self::target::DEFAULT_CONNECT_TIMEOUT;

use self::connection::Link;
use self::consumer::RabbitConsumer;
use self::publisher::Publisher;
use self::target::Target;
use self::topology::Topology;
use super::{Backend, BackendError, Consumer, ConsumerConfig, PublishError, TopicSpec};
use crate::handler::BoxFuture;
use crate::message::{Message, Origin};
use crate::url::{BrokerUrl, ConnectError};

/// The [`Backend`] on a RabbitMQ broker. Dropping it closes the connection.
pub struct RabbitBackend {
    link: Arc<Link>,
    publisher: Publisher,
}

impl RabbitBackend {
    /// Connects to the broker an `amqp://` URL names and declares the base topology.
    pub async fn connect(url: &BrokerUrl) -> Result<Self, ConnectError> {
        let link = Link::open(Target::parse(url)?).await?;
        Ok(Self {
            publisher: Publisher::new(Arc::clone(&link)),
            link,
        })
    }
}

impl Backend for RabbitBackend {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    /// Topics need no declaration of their own: the events exchange routes any topic, and
    /// queues are declared per group when a consumer starts. Checks that the names fit AMQP, and
    /// declares now the queue of a topic's `keep_for` group (a dead-letter topic's replay
    /// group), remembered for every new connection like a consumer's.
    fn declare<'a>(&'a self, topics: &'a [TopicSpec]) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let refused = |topic: &TopicSpec, reason: String| BackendError::Declare {
                topic: topic.name.clone(),
                reason,
            };
            for topic in topics {
                topology::check_name("topic", &topic.name)
                    .map_err(|e| refused(topic, e.to_string()))?;
                let Some(group) = &topic.keep_for else {
                    continue;
                };
                let (kept, _) = Topology::for_group(group, std::slice::from_ref(&topic.name))
                    .map_err(|e| refused(topic, e.to_string()))?;
                let session = self
                    .link
                    .session()
                    .await
                    .map_err(|e| refused(topic, e.to_string()))?;
                connection::declare(&session.connection, &kept)
                    .await
                    .map_err(|e| refused(topic, self.link.target().scrub(&e.to_string())))?;
                self.link.remember(&kept);
            }
            Ok(())
        })
    }

    fn consume(
        &self,
        config: ConsumerConfig,
    ) -> BoxFuture<'_, Result<Box<dyn Consumer>, BackendError>> {
        let link = Arc::clone(&self.link);
        Box::pin(async move {
            let consumer = RabbitConsumer::open(link, config).await?;
            Ok(Box::new(consumer) as Box<dyn Consumer>)
        })
    }

    fn publish(&self, message: Message) -> BoxFuture<'_, Result<Origin, PublishError>> {
        Box::pin(self.publisher.publish(message))
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if !self.link.close_and_wait().await {
                tracing::debug!(broker = %self.link.target(), "the connection did not close cleanly");
            }
        })
    }
}

impl Drop for RabbitBackend {
    fn drop(&mut self) {
        self.link.close();
    }
}

impl fmt::Debug for RabbitBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitBackend")
            .field("broker", self.link.target())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Mutex, OnceLock, PoisonError};

    use super::*;
    use crate::message::MessageId;
    use crate::App;

    /// Every line logged in this test binary, at every level and from every thread (lapin's
    /// I/O thread included), from the first call on.
    fn log() -> &'static Arc<Mutex<Vec<u8>>> {
        static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
        LOG.get_or_init(|| {
            let log = Arc::new(Mutex::new(Vec::new()));
            let sink = Arc::clone(&log);
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(move || Capture(Arc::clone(&sink)))
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("the only global subscriber");
            log
        })
    }

    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The test broker's `host:port` (from `ANYBUS_AMQP_URL`, as the conformance suite reads it).
    fn broker() -> String {
        let url = std::env::var("ANYBUS_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        let authority = rest.split('/').next().unwrap_or(rest);
        authority
            .rsplit_once('@')
            .map_or(authority, |(_, a)| a)
            .to_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_password_is_in_no_error_and_no_log_line() {
        let log = log();
        let password = format!("pw-{}", MessageId::new());
        // Every character a URL reserves, percent-encoded, reaches the broker (which refuses
        // it) and is logged neither as written nor decoded.
        let awkward = format!("p@ss:w/rd#?&={}%", MessageId::new());
        let encoded: String =
            percent_encoding::utf8_percent_encode(&awkward, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let broker = broker();
        let cases = [
            (
                format!("amqp://guest:{encoded}@{broker}/%2f"),
                "authentication failed",
            ),
            (
                format!("amqp://guest:{awkward}@{broker}/%2f"),
                "percent-encode",
            ),
            (
                format!("amqp://guest:{password}@{broker}/%2f"),
                "authentication failed",
            ),
            (
                format!("amqp://guest:{password}@127.0.0.1:1/%2f"),
                "connection refused",
            ),
            (
                format!("amqp://guest:{password}@{broker}/%2f?heartbeat=x"),
                "malformed",
            ),
        ];
        for (url, cause) in cases {
            let error = App::builder().connect(&url).await.expect_err("refused");
            let (shown, debug) = (error.to_string(), format!("{error:?}"));
            assert!(
                shown.contains(cause),
                "{shown}\n(is the broker up? `tests/brokers.sh up rabbitmq` starts it)"
            );
            for secret in [&password, &awkward, &encoded] {
                assert!(
                    !shown.contains(secret.as_str()) && !debug.contains(secret.as_str()),
                    "{debug}"
                );
            }
        }
        let logged = String::from_utf8_lossy(&log.lock().unwrap_or_else(PoisonError::into_inner))
            .into_owned();
        assert!(
            logged.contains("ACCESS_REFUSED"),
            "the broker's refusal was logged (so the capture works): {logged}"
        );
        for secret in [&password, &awkward, &encoded] {
            assert!(
                !logged.contains(secret.as_str()),
                "a log line shows the password"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_resolves_once_the_broker_answered() {
        let url = BrokerUrl::parse(&format!("amqp://guest:guest@{}/%2f", broker())).unwrap();
        let backend = RabbitBackend::connect(&url).await.unwrap_or_else(|e| {
            panic!("{e}\n(is the broker up? `tests/brokers.sh up rabbitmq` starts it)")
        });
        assert!(
            backend.link.close_and_wait().await,
            "the broker answered connection.close before close returned"
        );
    }
}
