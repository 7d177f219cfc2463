//! RabbitMQ rows: anybus against raw lapin on the same queue with the same prefetch and manual
//! acks, and publishing with confirms, in one run (raw, then anybus, repeated).
//!
//! Before each consume round the queue anybus declares for the group (`{topic}.{group}`) is
//! filled with 512-byte JSON events; the raw consumer reads that same queue. Both are timed
//! from their first message to their last ack.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anybus::{App, HandlerError, Message, MessageId, Subscription};
use futures_util::future::join_all;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::Notify;

use crate::memory::Event;
use crate::{comparison, Row};

const N: usize = 20_000;
const ROUNDS: usize = 3;
const WINDOW: usize = 256;
/// The prefetch anybus derives for the default concurrency (2 × 16); the raw consumer uses it
/// too.
const PREFETCH: u16 = 32;
const EXCHANGE: &str = "anybus";

pub(crate) fn url() -> String {
    std::env::var("ANYBUS_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

async fn channel() -> (Connection, Channel) {
    let conn = Connection::connect(&url(), ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ");
    let channel = conn.create_channel().await.expect("a channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    (conn, channel)
}

/// Publishes `n` events with raw lapin, `WINDOW` confirms outstanding.
async fn raw_publish(channel: &Channel, topic: &str, n: usize) -> Duration {
    let payload = Event::bytes(1);
    let started = Instant::now();
    for chunk in 0..n.div_ceil(WINDOW) {
        let count = WINDOW.min(n - chunk * WINDOW);
        let mut confirms = Vec::with_capacity(count);
        for _ in 0..count {
            let confirm = channel
                .basic_publish(
                    EXCHANGE.into(),
                    topic.into(),
                    BasicPublishOptions::default(),
                    &payload,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("raw publish");
            confirms.push(confirm);
        }
        for confirm in join_all(confirms).await {
            confirm.expect("raw confirm");
        }
    }
    started.elapsed()
}

/// Publishes `n` events through anybus, `WINDOW` in flight.
async fn anybus_publish(app: &App, topic: &str, n: usize) -> Duration {
    let publisher = app.publisher();
    let payload = Event::bytes(1);
    let started = Instant::now();
    for chunk in 0..n.div_ceil(WINDOW) {
        let count = WINDOW.min(n - chunk * WINDOW);
        let sends = (0..count).map(|_| publisher.send(Message::new(topic, payload.clone())));
        for result in join_all(sends).await {
            result.expect("anybus publish");
        }
    }
    started.elapsed()
}

async fn raw_consume(channel: &Channel, queue: &str, n: usize) -> Duration {
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            format!("raw-{}", MessageId::new()).as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut first = None;
    for _ in 0..n {
        let delivery = consumer.next().await.expect("a delivery").expect("ok");
        first.get_or_insert_with(Instant::now);
        let event: Event = serde_json::from_slice(&delivery.data).expect("json");
        std::hint::black_box(&event);
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
    }
    let took = first.map_or(Duration::ZERO, |f| f.elapsed());
    channel
        .basic_cancel(consumer.tag(), Default::default())
        .await
        .expect("cancel");
    took
}

fn subscription(
    topic: &str,
    group: &str,
    n: usize,
    done: Arc<Notify>,
    first: Arc<Mutex<Option<Instant>>>,
) -> Subscription {
    let handled = Arc::new(AtomicUsize::new(0));
    Subscription::builder([topic])
        .group(group)
        .handler(move |e: Event| {
            std::hint::black_box(&e);
            let count = handled.fetch_add(1, Ordering::Relaxed) + 1;
            if count == 1 {
                first
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert_with(Instant::now);
            }
            if count == n {
                done.notify_one();
            }
            std::future::ready(Ok::<(), HandlerError>(()))
        })
}

/// The RabbitMQ rows.
pub fn rows(rt: &tokio::runtime::Runtime, rows: &mut Vec<Row>) {
    rt.block_on(async {
        let (_conn, channel) = channel().await;
        let topic = format!("bench-{}", MessageId::new());
        let group = "bench";
        let queue = format!("{topic}.{group}");
        // Declares the exchange, the group's queue and its binding, then stops consuming.
        let declare = App::builder()
            .subscribe(subscription(&topic, group, usize::MAX, Arc::default(), Arc::default()))
            .connect(&url())
            .await
            .expect("anybus on rabbitmq");
        declare.shutdown().await.expect("shutdown");

        let (mut raw, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            raw_publish(&channel, &topic, N).await;
            raw.push(raw_consume(&channel, &queue, N).await);
            raw_publish(&channel, &topic, N).await;
            let (done, first) = (Arc::new(Notify::new()), Arc::new(Mutex::new(None)));
            let app = App::builder()
                .subscribe(subscription(&topic, group, N, Arc::clone(&done), Arc::clone(&first)))
                .connect(&url())
                .await
                .expect("anybus on rabbitmq");
            done.notified().await;
            ours.push(
                first
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .map_or(Duration::ZERO, |f| f.elapsed()),
            );
            app.shutdown().await.expect("shutdown");
        }
        rows.push(comparison(
            format!(
                "rabbitmq, 512 B JSON: consume + decode + ack (prefetch {PREFETCH}), msg/s (best / median of {ROUNDS} × {N}), anybus vs raw lapin"
            ),
            N,
            &mut ours,
            &mut raw,
            "; target ≥ 0.97",
        ));

        let app = App::builder().connect(&url()).await.expect("anybus on rabbitmq");
        let (mut raw, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            raw.push(raw_publish(&channel, &topic, N).await);
            ours.push(anybus_publish(&app, &topic, N).await);
        }
        app.shutdown().await.expect("shutdown");
        rows.push(comparison(
            format!(
                "rabbitmq, 512 B: publish with confirms ({WINDOW} outstanding), msg/s (best / median of {ROUNDS} × {N}), anybus vs raw lapin"
            ),
            N,
            &mut ours,
            &mut raw,
            "",
        ));
        // Leave no bench queue behind.
        let _ = channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await;
    });
}
