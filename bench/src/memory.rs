//! The embedded broker's scenarios: end-to-end throughput, allocations per message, and the
//! phases that callgrind counts instructions of.
//!
//! Every scenario runs on a fresh broker, `memory://bench-<uuid>?partitions=P&retention.bytes=1
//! GiB` (the scenarios append up to 200,000 messages to one partition before a consumer
//! starts, more than the default bound keeps), with one
//! subscription (group [`GROUP`]) whose handler counts and wakes the bench when the last
//! message is handled. A scenario is finished when the group's committed offsets sum to the
//! number of messages, so the last ack is inside the measurement.

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anybus::backend::memory::{MemoryBackend, MemoryBroker};
use anybus::{App, BrokerUrl, HandlerError, Message, MessageId, Publisher, Raw, Subscription};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::alloc::Counts;

/// The consumer group of every scenario.
pub const GROUP: &str = "bench";

/// The 512-byte JSON event of the JSON scenarios.
#[derive(Clone, Serialize, Deserialize)]
pub struct Event {
    /// An id.
    pub id: u64,
    /// A name.
    pub name: String,
    /// Filler that brings the encoded event to 512 bytes.
    pub body: String,
}

impl Event {
    /// An event whose JSON encoding is exactly 512 bytes.
    pub fn sized(id: u64) -> Self {
        let mut e = Self {
            id,
            name: "order-created".into(),
            body: String::new(),
        };
        let empty = serde_json::to_vec(&e).map_or(0, |v| v.len());
        e.body = "x".repeat(512usize.saturating_sub(empty));
        e
    }

    /// The encoded event.
    pub fn bytes(id: u64) -> Bytes {
        Bytes::from(serde_json::to_vec(&Self::sized(id)).unwrap_or_default())
    }
}

/// What the handler takes, and how the publisher publishes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// 512 raw bytes: the handler takes the [`Message`] (codec `raw`, no decoding); the
    /// publisher sends a clone of one pre-built [`Bytes`].
    Raw,
    /// The 512-byte JSON [`Event`]: the handler takes it decoded with serde (codec `json`); the
    /// publisher encodes it with [`Publisher::publish`].
    Json,
}

impl Payload {
    /// Both, in table order.
    pub const ALL: [Self; 2] = [Self::Raw, Self::Json];

    /// How the table names it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw bytes",
            Self::Json => "512 B JSON",
        }
    }

    /// How the command line names it: `raw` or `json`.
    pub fn arg(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Json => "json",
        }
    }

    /// Parses [`Payload::arg`].
    pub fn parse(arg: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.arg() == arg)
    }

    /// The bytes of one message.
    pub fn bytes(self) -> Bytes {
        match self {
            Self::Raw => Bytes::from(vec![7u8; 512]),
            Self::Json => Event::bytes(1),
        }
    }
}

/// A fresh broker and the subscription that counts what it handles.
pub struct Rig {
    /// The broker, for appending and reading committed offsets.
    broker: Arc<MemoryBroker>,
    /// `memory://bench-<uuid>?partitions=P`.
    url: String,
    /// The one topic.
    topic: Arc<str>,
    /// What is published and handled.
    payload: Payload,
    /// Messages the handler saw.
    handled: Arc<AtomicUsize>,
    /// Woken when the handler saw the last message.
    done: Arc<Notify>,
}

impl Rig {
    /// A rig on a new broker whose topics get `partitions` partitions, keeping up to 1 GiB a
    /// partition.
    pub fn new(payload: Payload, partitions: u32) -> Self {
        Self::with_options(payload, partitions, "&retention.bytes=1073741824")
    }

    /// A rig on a new broker whose topics get `partitions` partitions, with further URL
    /// `options` (`&name=value…`; empty for the broker's defaults).
    pub fn with_options(payload: Payload, partitions: u32, options: &str) -> Self {
        let url = format!(
            "memory://bench-{}?partitions={partitions}{options}",
            MessageId::new()
        );
        // Connecting registers the broker with its partition count, so that a topic appended to
        // before any app starts gets that many too.
        let backend = BrokerUrl::parse(&url)
            .and_then(|url| MemoryBackend::connect(&url))
            .expect("a memory broker");
        Self {
            broker: Arc::clone(backend.broker()),
            url,
            topic: Arc::from("bench"),
            payload,
            handled: Arc::default(),
            done: Arc::default(),
        }
    }

    /// The subscription: one handler that counts to `n` and then wakes [`Rig::finish`].
    pub fn subscription(&self, n: usize) -> Subscription {
        let (handled, done) = (Arc::clone(&self.handled), Arc::clone(&self.done));
        let count = move || {
            if handled.fetch_add(1, Ordering::Relaxed) + 1 == n {
                done.notify_one();
            }
            std::future::ready(Ok::<(), HandlerError>(()))
        };
        let builder = Subscription::builder([&*self.topic]).group(GROUP);
        match self.payload {
            Payload::Raw => builder.codec::<Raw>().handler(move |m: Message| {
                black_box(&m);
                count()
            }),
            Payload::Json => builder.handler(move |e: Event| {
                black_box(&e);
                count()
            }),
        }
    }

    /// Starts an app with [`Rig::subscription`] on this rig's broker.
    pub async fn start(&self, n: usize) -> App {
        App::builder()
            .subscribe(self.subscription(n))
            .connect(&self.url)
            .await
            .expect("the bench app")
    }

    /// Starts an app without subscriptions, to publish with.
    pub async fn start_publisher(&self) -> App {
        App::builder()
            .connect(&self.url)
            .await
            .expect("the bench app")
    }

    /// Appends `n` messages straight into the broker, bypassing the publisher.
    pub fn prepublish(&self, n: usize) {
        let bytes = self.payload.bytes();
        for _ in 0..n {
            self.broker
                .append(Message::new(Arc::clone(&self.topic), bytes.clone()));
        }
    }

    /// Publishes `n` messages through `publisher`, one after another, as an application would:
    /// [`Publisher::send`] of a pre-built payload for raw bytes, [`Publisher::publish`] of the
    /// event (encoded each time) for JSON.
    pub async fn publish(&self, publisher: &Publisher, n: usize) {
        match self.payload {
            Payload::Raw => {
                let bytes = self.payload.bytes();
                for _ in 0..n {
                    let message = Message::new(Arc::clone(&self.topic), bytes.clone());
                    publisher.send(message).await.expect("publish");
                }
            }
            Payload::Json => {
                let event = Event::sized(1);
                for _ in 0..n {
                    publisher
                        .publish(&self.topic, &event)
                        .await
                        .expect("publish");
                }
            }
        }
    }

    /// Waits until the handler counted `n` and the group committed `n` offsets.
    pub async fn finish(&self, n: usize) {
        self.done.notified().await;
        // The last ack follows the last handler call in the same lane; rarely is it not done.
        while self.committed() < n {
            tokio::task::yield_now().await;
        }
    }

    /// Messages the handler saw so far.
    pub fn handled(&self) -> usize {
        self.handled.load(Ordering::Relaxed)
    }

    /// Messages the broker retains of the topic.
    pub fn retained(&self) -> usize {
        self.broker.messages(&self.topic).len()
    }

    /// Offsets the group committed, summed over partitions.
    fn committed(&self) -> usize {
        let sum: i64 = self.broker.committed(GROUP, &self.topic).iter().sum();
        usize::try_from(sum).unwrap_or(0)
    }
}

/// Publishes `n` messages from a spawned task while the app handles them; returns the time
/// from the first publish to the last commit.
pub async fn end_to_end(payload: Payload, partitions: u32, n: usize) -> Duration {
    let rig = Arc::new(Rig::new(payload, partitions));
    let app = rig.start(n).await;
    let publisher = app.publisher();
    let started = Instant::now();
    let publishing = tokio::spawn({
        let rig = Arc::clone(&rig);
        async move { rig.publish(&publisher, n).await }
    });
    rig.finish(n).await;
    let took = started.elapsed();
    publishing.await.expect("the publisher task");
    app.shutdown().await.expect("shutdown");
    took
}

/// Consumes `n` pre-published messages; returns the time from starting the app to the last
/// commit.
pub async fn consume_only(payload: Payload, partitions: u32, n: usize) -> Duration {
    let rig = Rig::new(payload, partitions);
    rig.prepublish(n);
    let started = Instant::now();
    let app = rig.start(n).await;
    rig.finish(n).await;
    let took = started.elapsed();
    app.shutdown().await.expect("shutdown");
    took
}

/// Publishes `n` messages with no subscriber; returns the time taken.
pub async fn publish_only(payload: Payload, n: usize) -> Duration {
    let rig = Rig::new(payload, 1);
    let app = rig.start_publisher().await;
    let publisher = app.publisher();
    let started = Instant::now();
    rig.publish(&publisher, n).await;
    let took = started.elapsed();
    app.shutdown().await.expect("shutdown");
    took
}

/// Consumes `n` pre-published messages; returns what was allocated from starting the app to
/// the last commit (the dispatch path, plus the app's start-up).
pub async fn consume_allocations(payload: Payload, partitions: u32, n: usize) -> Counts {
    let rig = Rig::new(payload, partitions);
    rig.prepublish(n);
    let before = Counts::now();
    let app = rig.start(n).await;
    rig.finish(n).await;
    let counted = Counts::since(before);
    app.shutdown().await.expect("shutdown");
    counted
}

/// What publishing `n` messages through the publisher allocates, with no subscriber.
pub async fn publish_allocations(payload: Payload, n: usize) -> Counts {
    let rig = Rig::new(payload, 1);
    let app = rig.start_publisher().await;
    let publisher = app.publisher();
    let before = Counts::now();
    rig.publish(&publisher, n).await;
    let counted = Counts::since(before);
    app.shutdown().await.expect("shutdown");
    counted
}

/// What decoding the JSON event `n` times allocates: the handler's own share of the JSON
/// scenario's allocations.
pub fn decode_allocations(n: usize) -> Counts {
    let bytes = Event::bytes(1);
    let before = Counts::now();
    decode(&bytes, n);
    Counts::since(before)
}

/// Decodes `bytes` as an [`Event`] `n` times, as the JSON handler's codec does.
fn decode(bytes: &Bytes, n: usize) {
    for _ in 0..n {
        let event: Event = serde_json::from_slice(black_box(bytes)).expect("the event decodes");
        black_box(event);
    }
}

/// What `bench callgrind-run` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Start an app and consume `n` messages appended to the broker beforehand.
    Consume,
    /// Publish `n` messages through the publisher, with no subscriber.
    Publish,
    /// Decode the JSON event `n` times, outside anybus.
    Decode,
}

impl Phase {
    /// How the command line names it.
    pub fn arg(self) -> &'static str {
        match self {
            Self::Consume => "consume",
            Self::Publish => "publish",
            Self::Decode => "decode",
        }
    }

    /// Parses [`Phase::arg`].
    pub fn parse(arg: &str) -> Option<Self> {
        [Self::Consume, Self::Publish, Self::Decode]
            .into_iter()
            .find(|p| p.arg() == arg)
    }
}

/// The body of `bench callgrind-run`: sets the phase up, then runs it inside
/// [`measured_phase`], the only function callgrind collects in (`--toggle-collect`).
pub fn callgrind_run(phase: Phase, payload: Payload, partitions: u32, n: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let rig = Rig::new(payload, partitions);
    match phase {
        Phase::Consume => {
            rig.prepublish(n);
            let app = measured_phase(|| {
                rt.block_on(async {
                    let app = rig.start(n).await;
                    rig.finish(n).await;
                    app
                })
            });
            rt.block_on(app.shutdown()).expect("shutdown");
        }
        Phase::Publish => {
            let app = rt.block_on(rig.start_publisher());
            let publisher = app.publisher();
            measured_phase(|| rt.block_on(rig.publish(&publisher, n)));
            rt.block_on(app.shutdown()).expect("shutdown");
        }
        Phase::Decode => {
            let bytes = Event::bytes(1);
            measured_phase(|| decode(&bytes, n));
        }
    }
}

/// Runs `f` and prints what it allocated (`allocations: A bytes: B`). Callgrind is started
/// with `--collect-atstart=no --toggle-collect=*measured_phase*`, so it counts only what runs in
/// here.
#[inline(never)]
pub fn measured_phase<T>(f: impl FnOnce() -> T) -> T {
    let before = Counts::now();
    let result = black_box(f());
    let counted = Counts::since(before);
    println!(
        "allocations: {} bytes: {}",
        counted.allocations, counted.bytes
    );
    result
}
