//! Kafka rows: anybus against a raw rdkafka client on the same pre-produced topic, in the same
//! run, interleaved (raw, then anybus, repeated).
//!
//! The raw consumer is a `StreamConsumer` that decodes each event and stores its offset
//! (`enable.auto.offset.store=false`, auto-commit of stored offsets every second): the commit
//! policy anybus follows with its own contiguous commits. Both are timed from their first
//! message to their last, so that joining the group is not counted.

use std::time::{Duration, Instant};

use anybus::{App, HandlerError, Message, MessageId, Subscription};
use futures_util::future::join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::memory::Event;
use crate::{comparison, Clock, Row};

const N: usize = 100_000;
const ROUNDS: usize = 3;
/// Consume rounds: a round is a fifth of a second, so more of them steady the median.
const CONSUME_ROUNDS: usize = 5;
const WINDOW: usize = 1_000;

pub(crate) fn url() -> String {
    std::env::var("ANYBUS_KAFKA_URL")
        .unwrap_or_else(|_| "kafka://127.0.0.1:9092?fetch.wait.max.ms=10".into())
}

/// [`url`] for a publisher whose every produce request holds one message. Tansu loses the rest
/// of a produced batch when a consumer fetches from an offset inside it (KAFKA_BROKER.md), and
/// a consumer that pauses fetching (a full key-ordered or partition lane) resumes from exactly
/// such an offset; rows that make the consumer pause publish this way.
pub(crate) fn one_message_batches_url() -> String {
    let url = url();
    let joiner = if url.contains('?') { '&' } else { '?' };
    format!("{url}{joiner}batch.num.messages=1")
}

fn bootstrap() -> String {
    let url = url();
    let rest = url.trim_start_matches("kafka://");
    rest.split('?').next().unwrap_or(rest).to_owned()
}

fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("a raw producer")
}

/// A raw producer whose every produce request holds one message, for the topics the consume
/// rows read. anybus pauses a partition whose lane stays full (512 deliveries waiting) and
/// librdkafka resumes it from the next unread offset, inside a produced batch; Tansu loses the
/// rest of such a batch (see [`one_message_batches_url`]), which would leave the row waiting for
/// messages that are gone.
fn seed_producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("batch.num.messages", "1")
        .create()
        .expect("a raw producer")
}

pub(crate) async fn create_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("an admin client");
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    admin
        .create_topics(&[new], &AdminOptions::new())
        .await
        .expect("create the bench topic");
}

/// Produces `n` 512-byte events with the raw producer, `WINDOW` in flight; `with_id` adds the
/// message-id header anybus writes on every message (53 bytes), to tell the cost of the header
/// from the cost of the framework.
async fn raw_produce(producer: &FutureProducer, topic: &str, n: usize, with_id: bool) -> Duration {
    let payload = Event::bytes(1);
    let started = Instant::now();
    for chunk in 0..n.div_ceil(WINDOW) {
        let sends = (chunk * WINDOW..((chunk + 1) * WINDOW).min(n)).map(|i| {
            let key = i.to_string();
            let payload = payload.clone();
            async move {
                let id = if with_id {
                    MessageId::new().to_string()
                } else {
                    String::new()
                };
                let mut record = FutureRecord::to(topic).key(&key).payload(&payload[..]);
                if with_id {
                    record = record.headers(OwnedHeaders::new_with_capacity(1).insert(Header {
                        key: anybus::header::MESSAGE_ID,
                        value: Some(id.as_bytes()),
                    }));
                }
                producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .map(drop)
                    .map_err(|(e, _)| e)
            }
        });
        for result in join_all(sends).await {
            result.expect("raw produce");
        }
    }
    started.elapsed()
}

/// Publishes `n` events through anybus, `WINDOW` in flight.
async fn anybus_produce(app: &App, topic: &str, n: usize) -> Duration {
    let publisher = app.publisher();
    let payload = Event::bytes(1);
    let started = Instant::now();
    for chunk in 0..n.div_ceil(WINDOW) {
        let sends = (chunk * WINDOW..((chunk + 1) * WINDOW).min(n))
            .map(|i| publisher.send(Message::new(topic, payload.clone()).with_key(i.to_string())));
        for result in join_all(sends).await {
            result.expect("anybus publish");
        }
    }
    started.elapsed()
}

async fn raw_consume(topic: &str, n: usize) -> Duration {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", format!("raw-{}", MessageId::new()))
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("a raw consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut first = None;
    for _ in 0..n {
        let m = consumer.recv().await.expect("a message");
        first.get_or_insert_with(Instant::now);
        let event: Event = serde_json::from_slice(m.payload().unwrap_or_default()).expect("json");
        std::hint::black_box(&event);
        consumer.store_offset_from_message(&m).expect("store");
    }
    first.map_or(Duration::ZERO, |f| f.elapsed())
}

async fn anybus_consume(topic: &str, n: usize) -> Duration {
    let clock = Clock::default();
    let c = clock.clone();
    let app = App::builder()
        .subscribe(
            Subscription::builder([topic])
                .group(format!("anybus-{}", MessageId::new()))
                .handler(move |e: Event| {
                    std::hint::black_box(&e);
                    c.start();
                    c.done(n);
                    std::future::ready(Ok::<(), HandlerError>(()))
                }),
        )
        .connect(&url())
        .await
        .expect("anybus on kafka");
    let took = clock.wait(n).await;
    app.shutdown().await.expect("shutdown");
    took
}

/// The Kafka rows.
pub fn rows(rt: &tokio::runtime::Runtime, rows: &mut Vec<Row>) {
    rt.block_on(async {
        let producer = producer();
        let seed = seed_producer();
        for partitions in [1, 4] {
            let topic = format!("bench-{partitions}p-{}", MessageId::new());
            create_topic(&topic, partitions).await;
            raw_produce(&seed, &topic, N, false).await;
            let (mut raw, mut ours) = (Vec::new(), Vec::new());
            for _ in 0..CONSUME_ROUNDS {
                raw.push(raw_consume(&topic, N).await);
                ours.push(anybus_consume(&topic, N).await);
            }
            rows.push(comparison(
                format!(
                    "kafka, {partitions} partition(s), 512 B JSON: consume + decode + commit, msg/s (best / median of {CONSUME_ROUNDS} × {N}), anybus vs raw StreamConsumer"
                ),
                N,
                &mut ours,
                &mut raw,
                "; target ≥ 0.95",
            ));
        }
        let app = App::builder().connect(&url()).await.expect("anybus on kafka");
        let topic = format!("bench-publish-{}", MessageId::new());
        create_topic(&topic, 4).await;
        let (mut raw, mut raw_with_id, mut ours) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            raw.push(raw_produce(&producer, &topic, N / 2, false).await);
            raw_with_id.push(raw_produce(&producer, &topic, N / 2, true).await);
            ours.push(anybus_produce(&app, &topic, N / 2).await);
        }
        rows.push(comparison(
            format!(
                "kafka, 4 partitions, 512 B: publish with delivery reports ({WINDOW} in flight), msg/s (best / median of {ROUNDS} × {}), anybus vs raw FutureProducer",
                N / 2
            ),
            N / 2,
            &mut ours.clone(),
            &mut raw,
            "",
        ));
        rows.push(comparison(
            format!(
                "kafka, the same publish, anybus vs raw FutureProducer sending anybus's 53-byte message-id header too (best / median of {ROUNDS} × {})",
                N / 2
            ),
            N / 2,
            &mut ours,
            &mut raw_with_id,
            "",
        ));
        app.shutdown().await.expect("shutdown");
    });
}

/// `bench kafka-consume PARTITIONS RUNS raw|anybus`: consumes one pre-produced topic `RUNS`
/// times with one of the two consumers, a line each, for `perf record` and the like.
pub fn consume_runs(args: &[String]) {
    let partitions: i32 = args.first().and_then(|p| p.parse().ok()).unwrap_or(4);
    let runs: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(ROUNDS);
    let raw = args.get(2).is_some_and(|c| c == "raw");
    crate::Flavor::MultiThread.runtime().block_on(async {
        let topic = format!("bench-{partitions}p-{}", MessageId::new());
        create_topic(&topic, partitions).await;
        raw_produce(&seed_producer(), &topic, N, false).await;
        for _ in 0..runs {
            let took = if raw {
                raw_consume(&topic, N).await
            } else {
                anybus_consume(&topic, N).await
            };
            println!(
                "{} {partitions}p: {} msg/s",
                if raw { "raw" } else { "anybus" },
                crate::thousands(N as f64 / took.as_secs_f64())
            );
        }
    });
}

/// `bench kafka-publish RUNS raw|anybus`: publishes `N / 2` events `RUNS` times with one of
/// the two producers, a line each, for `perf record` and the like.
pub fn publish_runs(args: &[String]) {
    let runs: usize = args.first().and_then(|r| r.parse().ok()).unwrap_or(ROUNDS);
    let raw = args.get(1).is_some_and(|c| c == "raw");
    crate::Flavor::MultiThread.runtime().block_on(async {
        let topic = format!("bench-publish-{}", MessageId::new());
        create_topic(&topic, 4).await;
        let producer = producer();
        let app = App::builder()
            .connect(&url())
            .await
            .expect("anybus on kafka");
        for _ in 0..runs {
            let took = if raw {
                raw_produce(&producer, &topic, N / 2, false).await
            } else {
                anybus_produce(&app, &topic, N / 2).await
            };
            println!(
                "{}: {} msg/s",
                if raw { "raw" } else { "anybus" },
                crate::thousands((N / 2) as f64 / took.as_secs_f64())
            );
        }
        app.shutdown().await.expect("shutdown");
    });
}
