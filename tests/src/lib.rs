//! The cross-backend conformance suite: test bodies that know nothing of the broker under them.
//!
//! Each body takes an [`Env`] (a broker URL) and uses topic and group names of its own, so the
//! bodies can share one real broker. [`conformance_suite!`] turns them into `#[tokio::test]`s
//! for one backend: adding a backend is one line in `tests/tests/`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anybus::{
    header, App, AppBuilder, Context, DeadLetter, HandlerError, Headers, Message, MessageId,
    Ordering, RetrySpec, StatsSnapshot, Subscription,
};
use bytes::Bytes;
use tokio::sync::{mpsc, Barrier, Semaphore};

#[cfg(feature = "kafka")]
pub mod kafka;
pub mod promise;
pub mod service;
pub mod stores;

pub use promise::*;
pub use service::*;

/// How long a test waits for an event before it fails. A bound on failure, not a sleep.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The broker a suite runs against.
#[derive(Clone, Debug)]
pub struct Env {
    /// The broker URL.
    pub url: String,
    /// Partitions to create topics with.
    pub partitions: u32,
    /// Whether a topic's partitions are split between the members of a group (Kafka, memory),
    /// or the members share one queue (RabbitMQ).
    pub partitioned: bool,
}

impl Env {
    /// A fresh embedded broker of its own.
    pub fn memory() -> Self {
        Self {
            url: format!("memory://conformance-{}", MessageId::new()),
            partitions: 4,
            partitioned: true,
        }
    }

    /// The Kafka broker of `ANYBUS_KAFKA_URL`, by default the one `tests/brokers.sh up kafka`
    /// starts.
    pub fn kafka() -> Self {
        Self {
            // fetch.wait.max.ms=10: Tansu always waits the full fetch wait (500 ms by default)
            // even when data is there (KAFKA_BROKER.md), which would only slow the suite.
            url: std::env::var("ANYBUS_KAFKA_URL").unwrap_or_else(|_| {
                "kafka://127.0.0.1:9092?fetch.wait.max.ms=10&commit_interval_ms=50".into()
            }),
            partitions: 4,
            partitioned: true,
        }
    }

    /// The RabbitMQ broker of `ANYBUS_AMQP_URL`, by default the one
    /// `tests/brokers.sh up rabbitmq` starts.
    pub fn rabbitmq() -> Self {
        Self {
            url: std::env::var("ANYBUS_AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            partitions: 1,
            partitioned: false,
        }
    }

    /// How many partitions (queues) each of two members of one group owns once they settled.
    pub fn half_assignment(&self) -> usize {
        if self.partitioned {
            self.partitions as usize / 2
        } else {
            1
        }
    }

    /// How many partitions (queues) the only member of a group owns.
    pub fn full_assignment(&self) -> usize {
        if self.partitioned {
            self.partitions as usize
        } else {
            1
        }
    }

    /// A name no other test uses: `{base}-{unique}`.
    pub fn unique(&self, base: &str) -> String {
        format!("{base}-{}", MessageId::new())
    }

    /// An app with these subscriptions on this broker, with a short drain timeout.
    pub async fn start(&self, subscriptions: Vec<Subscription>) -> App {
        self.start_with(App::builder(), subscriptions).await
    }

    /// [`Env::start`] from a builder already configured.
    pub async fn start_with(&self, builder: AppBuilder, subscriptions: Vec<Subscription>) -> App {
        subscriptions
            .into_iter()
            .fold(builder, |b, s| b.subscribe(s))
            .drain_timeout(Duration::from_secs(10))
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start an app on {}: {e}\n(is the broker up? `tests/brokers.sh up` starts the test brokers)",
                    anybus::BrokerUrl::parse(&self.url).map_or_else(|_| "?".into(), |u| u.to_string())
                )
            })
    }
}

/// Receives what handlers report, failing the test when it does not come in time.
pub struct Inbox<T>(mpsc::UnboundedReceiver<T>);

impl<T> Inbox<T> {
    /// A sender for handlers and the inbox that reads it.
    pub fn new() -> (mpsc::UnboundedSender<T>, Self) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, Self(rx))
    }

    /// The next report.
    pub async fn next(&mut self, what: &str) -> T {
        match tokio::time::timeout(PATIENCE, self.0.recv()).await {
            Ok(Some(v)) => v,
            Ok(None) => panic!("{what}: every sender is gone"),
            Err(_) => panic!("{what}: nothing arrived within {PATIENCE:?}"),
        }
    }

    /// The next `n` reports.
    pub async fn take(&mut self, n: usize, what: &str) -> Vec<T> {
        let mut all = Vec::with_capacity(n);
        while all.len() < n {
            all.push(
                self.next(&format!("{what} ({} of {n} so far)", all.len()))
                    .await,
            );
        }
        all
    }

    /// Reports already waiting, without waiting for more.
    pub fn drain_ready(&mut self) -> Vec<T> {
        let mut all = Vec::new();
        while let Ok(v) = self.0.try_recv() {
            all.push(v);
        }
        all
    }
}

/// A handler that reports every message it is given.
fn reporting(
    tx: mpsc::UnboundedSender<Message>,
) -> impl Fn(Message) -> std::future::Ready<Result<(), HandlerError>> + Send + Sync + 'static {
    move |m: Message| {
        let _ = tx.send(m);
        std::future::ready(Ok(()))
    }
}

async fn publish_numbered(app: &App, topic: &str, n: usize, keys: usize) -> Vec<MessageId> {
    let publisher = app.publisher();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("k{}", i % keys.max(1));
        let message = Message::new(topic, i.to_string()).with_key(key);
        ids.push(message.id());
        publisher
            .send(message)
            .await
            .unwrap_or_else(|e| panic!("publish {i} to {topic}: {e}"));
    }
    ids
}

/// A message published with a key and headers arrives with the same key, headers, payload and
/// id, and says where it came from.
pub async fn round_trip_keeps_key_and_headers(env: &Env) {
    let topic = env.unique("round-trip");
    let (tx, mut inbox) = Inbox::new();
    let app = env
        .start(vec![Subscription::builder([&topic])
            .group(env.unique("g"))
            .partitions(env.partitions)
            .handler(reporting(tx))])
        .await;
    let mut headers = Headers::new();
    headers.append("trace", Bytes::from_static(b"abc"));
    headers.append("binary", Bytes::from_static(&[0, 159, 255]));
    let sent = Message::new(topic.as_str(), r#"{"n":1}"#)
        .with_key("user-7")
        .with_headers(headers.clone());
    let origin = app.publisher().send(sent.clone()).await.expect("publish");

    let got = inbox.next("the published message").await;
    assert_eq!(got.id(), sent.id());
    assert_eq!(got.key().map(|k| &k[..]), Some(&b"user-7"[..]));
    assert_eq!(got.payload(), sent.payload());
    for (name, value) in headers.iter() {
        assert_eq!(got.headers().get(name), Some(value), "header {name}");
    }
    assert_eq!(got.topic(), topic);
    assert_eq!(got.origin().partition, origin.partition);
    assert_eq!(got.origin().offset, origin.offset);
    app.shutdown().await.expect("shutdown");
}

/// Two groups on one topic each get every message once.
pub async fn every_group_gets_every_message(env: &Env) {
    let topic = env.unique("two-groups");
    let (tx_a, mut a) = Inbox::new();
    let (tx_b, mut b) = Inbox::new();
    let app = env
        .start(vec![
            Subscription::builder([&topic])
                .name("a")
                .group(env.unique("group-a"))
                .partitions(env.partitions)
                .handler(reporting(tx_a)),
            Subscription::builder([&topic])
                .name("b")
                .group(env.unique("group-b"))
                .partitions(env.partitions)
                .handler(reporting(tx_b)),
        ])
        .await;
    let sent: BTreeSet<MessageId> = publish_numbered(&app, &topic, 40, 8)
        .await
        .into_iter()
        .collect();
    for inbox in [&mut a, &mut b] {
        let got: Vec<MessageId> = inbox
            .take(40, "each group")
            .await
            .iter()
            .map(Message::id)
            .collect();
        let unique: BTreeSet<MessageId> = got.iter().copied().collect();
        assert_eq!(unique, sent, "a group missed messages");
        assert_eq!(unique.len(), got.len(), "a group got a message twice");
    }
    app.shutdown().await.expect("shutdown");
    assert!(
        a.drain_ready().is_empty() && b.drain_ready().is_empty(),
        "extra deliveries"
    );
}

/// Polls the stats of the app's first subscription until `done` holds for them and returns
/// them; fails, naming `what` and the last stats, once `deadline` passed. (Stats change without
/// a signal to wait on; the poll yields between reads.)
pub async fn wait_stats(
    app: &App,
    what: &str,
    deadline: tokio::time::Instant,
    done: impl Fn(&StatsSnapshot) -> bool,
) -> StatsSnapshot {
    loop {
        let stats = app.stats()[0].stats;
        if done(&stats) {
            return stats;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {stats:?}");
        tokio::task::yield_now().await;
    }
}

/// Waits until the member's assignment satisfies `ok`.
async fn wait_assignment(app: &App, name: &str, what: &str, ok: impl Fn(usize) -> bool) {
    let mut watch = app.assignment(name).expect("subscription exists");
    let settled = tokio::time::timeout(PATIENCE, watch.wait_for(|a| ok(a.len())))
        .await
        .map(|r| r.is_ok());
    match settled {
        Ok(true) => {}
        Ok(false) => panic!("{what}: the subscription stopped"),
        Err(_) => panic!(
            "{what}: assignment never settled (now {:?})",
            *watch.borrow()
        ),
    }
}

/// Two members of one group split the partitions, and while both live no message is handled
/// twice.
pub async fn members_of_a_group_split_the_messages(env: &Env) {
    let topic = env.unique("split");
    let group = env.unique("g");
    let (tx, mut inbox) = Inbox::new();
    let member = |tx: mpsc::UnboundedSender<(usize, Message)>, who: usize| {
        Subscription::builder([&topic])
            .name("member")
            .group(&group)
            .partitions(env.partitions)
            .handler(move |m: Message| {
                let _ = tx.send((who, m));
                std::future::ready(Ok::<(), HandlerError>(()))
            })
    };
    let one = env.start(vec![member(tx.clone(), 1)]).await;
    let two = env.start(vec![member(tx, 2)]).await;
    let half = |n: usize| n == env.half_assignment();
    wait_assignment(&one, "member", "member one", half).await;
    wait_assignment(&two, "member", "member two", half).await;
    for app in [&one, &two] {
        let health = app.health();
        assert!(health[0].consuming, "{health:?}");
    }

    let sent: BTreeSet<MessageId> = publish_numbered(&one, &topic, 80, 16)
        .await
        .into_iter()
        .collect();
    let got = inbox.take(80, "the group's deliveries").await;
    let mut by_member = [0usize; 3];
    let mut seen = BTreeSet::new();
    for (who, m) in &got {
        by_member[*who] += 1;
        assert!(seen.insert(m.id()), "message {} handled twice", m.id());
    }
    assert_eq!(seen, sent);
    assert!(
        by_member[1] > 0 && by_member[2] > 0,
        "one member did all the work: {by_member:?}"
    );
    one.shutdown().await.expect("shutdown one");
    two.shutdown().await.expect("shutdown two");
    assert!(
        inbox.drain_ready().is_empty(),
        "a message was delivered again"
    );
}

/// A message whose handler failed transiently is tried again (by the default retry policy: a
/// subscription names none), and then succeeds.
pub async fn failed_message_is_tried_again(env: &Env) {
    let topic = env.unique("redeliver");
    let failed_once = Arc::new(Mutex::new(BTreeSet::new()));
    let (tx, mut inbox) = Inbox::new();
    let failures = Arc::clone(&failed_once);
    let app = env
        .start(vec![Subscription::builder([&topic])
            .name("flaky")
            .group(env.unique("g"))
            .partitions(env.partitions)
            .handler(move |m: Message| {
                let first = failures.lock().expect("lock").insert(m.id());
                let _ = tx.send((m.id(), first));
                std::future::ready(if first {
                    Err(HandlerError::transient(std::io::Error::other(
                        "first attempt fails",
                    )))
                } else {
                    Ok(())
                })
            })])
        .await;
    let sent = publish_numbered(&app, &topic, 5, 5).await;
    let mut succeeded = BTreeSet::new();
    while succeeded.len() < sent.len() {
        let (id, first) = inbox.next("attempts").await;
        if !first {
            succeeded.insert(id);
        }
    }
    assert_eq!(succeeded, sent.iter().copied().collect());
    assert_eq!(failed_once.lock().expect("lock").len(), sent.len());
    let stats = app.stats()[0].stats;
    assert_eq!(stats.retries, sent.len() as u64, "{stats:?}");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    app.shutdown().await.expect("shutdown");
}

/// Under `ordering = "partition"`, messages of one partition are handled one at a time, in
/// offset order, and so messages of one key stay in publish order.
pub async fn partition_order_is_kept(env: &Env) {
    let topic = env.unique("partition-order");
    let in_flight: Arc<Mutex<HashMap<i32, usize>>> = Arc::default();
    let (tx, mut inbox) = Inbox::new();
    let running = Arc::clone(&in_flight);
    let app = env
        .start(vec![Subscription::builder([&topic])
            .name("ordered")
            .group(env.unique("g"))
            .partitions(env.partitions)
            .ordering(Ordering::Partition)
            .handler(move |m: Message| {
                let (tx, running) = (tx.clone(), Arc::clone(&running));
                async move {
                    let p = m.origin().partition.unwrap_or(0);
                    let overlap = {
                        let mut r = running.lock().expect("lock");
                        let n = r.entry(p).or_default();
                        *n += 1;
                        *n > 1
                    };
                    tokio::task::yield_now().await;
                    running
                        .lock()
                        .expect("lock")
                        .entry(p)
                        .and_modify(|n| *n -= 1);
                    let _ = tx.send((m, overlap));
                    Ok::<(), HandlerError>(())
                }
            })])
        .await;
    publish_numbered(&app, &topic, 300, 10).await;
    let got = inbox.take(300, "ordered deliveries").await;
    let mut last_seq: BTreeMap<Bytes, usize> = BTreeMap::new();
    let mut last_offset: BTreeMap<i32, i64> = BTreeMap::new();
    for (m, overlap) in &got {
        assert!(
            !overlap,
            "two handlers ran at once on partition {:?}",
            m.origin().partition
        );
        let seq: usize = std::str::from_utf8(m.payload())
            .expect("utf8")
            .parse()
            .expect("number");
        let key = m.key().cloned().expect("keyed");
        if let Some(prev) = last_seq.insert(key.clone(), seq) {
            assert!(prev < seq, "key {key:?}: {seq} handled after {prev}");
        }
        if let (Some(p), Some(o)) = (m.origin().partition, m.origin().offset) {
            if let Some(prev) = last_offset.insert(p, o) {
                assert!(prev < o, "partition {p}: offset {o} handled after {prev}");
            }
        }
    }
    app.shutdown().await.expect("shutdown");
}

/// Under `ordering = "none"`, up to `concurrency` handlers run at once, and never more.
pub async fn unordered_runs_up_to_concurrency(env: &Env) {
    const CONCURRENCY: usize = 8;
    let topic = env.unique("unordered");
    // The first CONCURRENCY handlers wait for each other: they can only all pass if that many
    // run at the same time.
    let barrier = Arc::new(Barrier::new(CONCURRENCY));
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let (tx, mut inbox) = Inbox::new();
    let (b, r, p, s) = (
        Arc::clone(&barrier),
        Arc::clone(&running),
        Arc::clone(&peak),
        Arc::clone(&started),
    );
    let app = env
        .start(vec![Subscription::builder([&topic])
            .name("parallel")
            .group(env.unique("g"))
            .partitions(env.partitions)
            .ordering(Ordering::None)
            .concurrency(CONCURRENCY)
            .handler(move |m: Message| {
                let (tx, b, r, p, s) = (
                    tx.clone(),
                    Arc::clone(&b),
                    Arc::clone(&r),
                    Arc::clone(&p),
                    Arc::clone(&s),
                );
                async move {
                    let now = r.fetch_add(1, AtomicOrdering::SeqCst) + 1;
                    p.fetch_max(now, AtomicOrdering::SeqCst);
                    if s.fetch_add(1, AtomicOrdering::SeqCst) < CONCURRENCY {
                        b.wait().await;
                    } else {
                        tokio::task::yield_now().await;
                    }
                    r.fetch_sub(1, AtomicOrdering::SeqCst);
                    let _ = tx.send(m.id());
                    Ok::<(), HandlerError>(())
                }
            })])
        .await;
    publish_numbered(&app, &topic, 100, 100).await;
    let got: BTreeSet<MessageId> = inbox
        .take(100, "unordered deliveries")
        .await
        .into_iter()
        .collect();
    assert_eq!(got.len(), 100);
    assert_eq!(
        peak.load(AtomicOrdering::SeqCst),
        CONCURRENCY,
        "peak concurrency"
    );
    app.shutdown().await.expect("shutdown");
}

/// Shutdown lets the running handler finish, commits what completed, and loses nothing: a new
/// member of the group handles exactly what the first did not.
pub async fn shutdown_drains_and_loses_nothing(env: &Env) {
    let topic = env.unique("shutdown");
    let group = env.unique("g");
    // Closed, the gate lets every handler through; until then they wait at it.
    let gate = Arc::new(Semaphore::new(0));
    let (started_tx, mut started) = Inbox::new();
    let (done_tx, mut done) = Inbox::new();
    let subscription = |gate: Arc<Semaphore>,
                        started: mpsc::UnboundedSender<MessageId>,
                        done: mpsc::UnboundedSender<MessageId>| {
        Subscription::builder([&topic])
            .name("slow")
            .group(&group)
            .partitions(env.partitions)
            .handler(move |m: Message| {
                let (gate, started, done) = (gate.clone(), started.clone(), done.clone());
                async move {
                    let _ = started.send(m.id());
                    let _ = gate.acquire().await;
                    let _ = done.send(m.id());
                    Ok::<(), HandlerError>(())
                }
            })
    };
    let first = env
        .start(vec![subscription(
            Arc::clone(&gate),
            started_tx.clone(),
            done_tx.clone(),
        )])
        .await;
    let sent: BTreeSet<MessageId> = publish_numbered(&first, &topic, 20, 20)
        .await
        .into_iter()
        .collect();
    let running = started.next("a handler starts").await;

    let mut shutdown = tokio::spawn(first.shutdown());
    // Not a synchronisation: a bound for asserting that shutdown does *not* return while a
    // handler is still running.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut shutdown)
            .await
            .is_err(),
        "shutdown returned while a handler was still running"
    );
    gate.close();
    shutdown.await.expect("join").expect("shutdown");
    let finished_first: BTreeSet<MessageId> = done.drain_ready().into_iter().collect();
    let started_first: BTreeSet<MessageId> = std::iter::once(running)
        .chain(started.drain_ready())
        .collect();
    assert!(
        finished_first.contains(&running),
        "the running handler was cut off"
    );
    assert_eq!(
        started_first, finished_first,
        "a started handler did not finish before shutdown returned"
    );
    assert!(
        finished_first.len() < sent.len(),
        "shutdown handled everything: nothing to resume"
    );

    let second = env
        .start(vec![subscription(gate, started_tx, done_tx)])
        .await;
    let remaining = sent.len() - finished_first.len();
    let finished_second: BTreeSet<MessageId> = done
        .take(remaining, "the rest after restart")
        .await
        .into_iter()
        .collect();
    assert!(
        finished_first.is_disjoint(&finished_second),
        "completed work was handled again"
    );
    let all: BTreeSet<MessageId> = finished_first.union(&finished_second).copied().collect();
    assert_eq!(all, sent, "messages were lost");
    second.shutdown().await.expect("shutdown");
    assert!(
        done.drain_ready().is_empty(),
        "extra deliveries after the rest"
    );
}

/// A member that leaves mid-stream loses nothing: every message is handled at least once.
pub async fn member_leaving_mid_stream_loses_nothing(env: &Env) {
    member_leaves_mid_stream(env, Ordering::Partition).await;
}

/// [`member_leaving_mid_stream_loses_nothing`] under key ordering: the leaving member drains the
/// key lanes of the partitions it gives up, and the new owner gets what they did not finish.
pub async fn key_ordered_member_leaving_mid_stream_loses_nothing(env: &Env) {
    member_leaves_mid_stream(env, Ordering::Key).await;
}

async fn member_leaves_mid_stream(env: &Env, ordering: Ordering) {
    const N: usize = 200;
    let topic = env.unique("leave");
    let group = env.unique("g");
    let (tx, mut inbox) = Inbox::new();
    let member = |tx: mpsc::UnboundedSender<MessageId>| {
        Subscription::builder([&topic])
            .name("member")
            .group(&group)
            .partitions(env.partitions)
            .ordering(ordering)
            .concurrency(8)
            .handler(move |m: Message| {
                let tx = tx.clone();
                async move {
                    tokio::task::yield_now().await;
                    let _ = tx.send(m.id());
                    Ok::<(), HandlerError>(())
                }
            })
    };
    let leaving = env.start(vec![member(tx.clone())]).await;
    let staying = env.start(vec![member(tx)]).await;
    let sent: BTreeSet<MessageId> = publish_numbered(&staying, &topic, N, 50)
        .await
        .into_iter()
        .collect();
    let mut handled: BTreeSet<MessageId> = inbox
        .take(N / 4, "the first quarter")
        .await
        .into_iter()
        .collect();
    leaving
        .shutdown()
        .await
        .expect("the leaving member shuts down");
    while handled.len() < N {
        handled.insert(
            inbox
                .next(&format!("after the leave ({} of {N})", handled.len()))
                .await,
        );
    }
    assert_eq!(handled, sent);
    wait_assignment(&staying, "member", "the staying member", |n| {
        n == env.full_assignment()
    })
    .await;
    staying.shutdown().await.expect("shutdown");
}

/// A request is answered by the handler's return value; a handler's permanent failure comes
/// back as a typed error; a request nobody answers times out with a typed error.
pub async fn requests_are_answered_or_time_out(env: &Env) {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Register {
        email: String,
    }
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Registered {
        user_id: String,
    }
    let topic = env.unique("register");
    let silent = env.unique("nobody-listens");
    let app = env
        .start(vec![Subscription::builder([&topic])
            .name("register")
            .group(env.unique("accounts"))
            .partitions(env.partitions)
            .handler(|r: Register| async move {
                if r.email.contains('@') {
                    Ok(Registered {
                        user_id: format!("u-{}", r.email.len()),
                    })
                } else {
                    Err(HandlerError::permanent(std::io::Error::other(format!(
                        "`{}` is not an email address",
                        r.email
                    ))))
                }
            })])
        .await;
    let publisher = app.publisher();
    let answer: Registered = publisher
        .request(
            &topic,
            &Register {
                email: "ada@example.com".into(),
            },
            PATIENCE,
        )
        .await
        .expect("an answer");
    assert_eq!(
        answer,
        Registered {
            user_id: "u-15".into()
        }
    );

    let refused = publisher
        .request::<_, Registered>(
            &topic,
            &Register {
                email: "nope".into(),
            },
            PATIENCE,
        )
        .await
        .expect_err("a failed handler");
    match refused {
        anybus::RequestError::Remote { error, .. } => {
            assert!(error.contains("`nope` is not an email address"), "{error}")
        }
        other => panic!("expected a remote error, got {other:?}"),
    }

    let timeout = Duration::from_millis(200);
    let unanswered = publisher
        .request::<_, Registered>(
            &silent,
            &Register {
                email: "x@y".into(),
            },
            timeout,
        )
        .await
        .expect_err("nobody answers");
    assert!(
        matches!(unanswered, anybus::RequestError::Timeout { ref topic, timeout: t } if *topic == silent && t == timeout),
        "{unanswered:?}"
    );
    app.shutdown().await.expect("shutdown");
}

/// A payload that does not decode is a permanent failure: it is counted, not retried, and the
/// messages after it in the same partition are still handled.
pub async fn undecodable_payload_does_not_stop_the_partition(env: &Env) {
    #[derive(serde::Deserialize)]
    struct Event {
        n: u32,
    }
    let topic = env.unique("decode");
    let (tx, mut inbox) = Inbox::new();
    let app = env
        .start(vec![Subscription::builder([&topic])
            .name("typed")
            .group(env.unique("g"))
            .partitions(env.partitions)
            .handler(move |e: Event| {
                let _ = tx.send(e.n);
                std::future::ready(Ok::<(), HandlerError>(()))
            })])
        .await;
    let publisher = app.publisher();
    // One key: all three land in the same partition, the bad one in the middle.
    for payload in [&br#"{"n":1}"#[..], b"not json at all", br#"{"n":3}"#] {
        publisher
            .send(Message::new(topic.as_str(), Bytes::copy_from_slice(payload)).with_key("same"))
            .await
            .expect("publish");
    }
    assert_eq!(inbox.take(2, "the decodable events").await, [1, 3]);
    // The lane handles one message at a time, so the failure was counted before 3 ran.
    let stats = app.stats()[0].stats;
    assert_eq!(stats.decode_failures, 1);
    assert_eq!(stats.permanent_failures, 1);
    assert_eq!(
        stats.transient_failures, 0,
        "a decode failure is not retried"
    );
    app.shutdown().await.expect("shutdown");
}

/// Under `ordering = "key"`, messages of one key are handled one at a time in the order they
/// were published, while different keys run in parallel up to `concurrency`, and never more.
pub async fn key_order_is_kept_under_concurrency(env: &Env) {
    const CONCURRENCY: usize = 16;
    const KEYS: usize = 16;
    const MESSAGES: usize = 400;
    let topic = env.unique("key-order");
    // The first CONCURRENCY handlers wait for each other: they can only all pass if that many
    // keys run at the same time.
    let barrier = Arc::new(Barrier::new(CONCURRENCY));
    let started = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let per_key: Arc<Mutex<HashMap<Bytes, usize>>> = Arc::default();
    let (tx, mut inbox) = Inbox::new();
    let shared = (
        Arc::clone(&barrier),
        Arc::clone(&started),
        Arc::clone(&running),
        Arc::clone(&peak),
        Arc::clone(&per_key),
    );
    let app = env
        .start(vec![Subscription::builder([&topic])
            .name("keyed")
            .group(env.unique("g"))
            .partitions(env.partitions)
            .ordering(Ordering::Key)
            .concurrency(CONCURRENCY)
            .handler(move |m: Message| {
                let tx = tx.clone();
                let (barrier, started, running, peak, per_key) = (
                    Arc::clone(&shared.0),
                    Arc::clone(&shared.1),
                    Arc::clone(&shared.2),
                    Arc::clone(&shared.3),
                    Arc::clone(&shared.4),
                );
                async move {
                    let key = m.key().cloned().expect("keyed");
                    let overlap = {
                        let mut keys = per_key.lock().expect("lock");
                        let n = keys.entry(key.clone()).or_default();
                        *n += 1;
                        *n > 1
                    };
                    let now = running.fetch_add(1, AtomicOrdering::SeqCst) + 1;
                    peak.fetch_max(now, AtomicOrdering::SeqCst);
                    if started.fetch_add(1, AtomicOrdering::SeqCst) < CONCURRENCY {
                        barrier.wait().await;
                    } else {
                        tokio::task::yield_now().await;
                    }
                    running.fetch_sub(1, AtomicOrdering::SeqCst);
                    per_key
                        .lock()
                        .expect("lock")
                        .entry(key)
                        .and_modify(|n| *n -= 1);
                    let _ = tx.send((m, overlap));
                    Ok::<(), HandlerError>(())
                }
            })])
        .await;
    publish_numbered(&app, &topic, MESSAGES, KEYS).await;
    let got = inbox.take(MESSAGES, "key-ordered deliveries").await;
    let mut last_seq: BTreeMap<Bytes, usize> = BTreeMap::new();
    for (m, overlap) in &got {
        let key = m.key().cloned().expect("keyed");
        assert!(!overlap, "two handlers ran at once for key {key:?}");
        let seq: usize = std::str::from_utf8(m.payload())
            .expect("utf8")
            .parse()
            .expect("number");
        if let Some(prev) = last_seq.insert(key.clone(), seq) {
            assert!(prev < seq, "key {key:?}: {seq} handled after {prev}");
        }
    }
    assert_eq!(last_seq.len(), KEYS, "every key was handled");
    assert_eq!(
        peak.load(AtomicOrdering::SeqCst),
        CONCURRENCY,
        "peak concurrency"
    );
    app.shutdown().await.expect("shutdown");
}

/// Under `ordering = "key"` with an in-process retry policy, a message that keeps failing holds
/// back only its own key: the other keys of its partition are handled meanwhile, and the next
/// message of its key waits for it.
pub async fn failed_message_blocks_only_its_key(env: &Env) {
    const OTHERS: usize = 20;
    let topic = env.unique("key-retry");
    let others_done = Arc::new(AtomicUsize::new(0));
    let (tx, mut inbox) = Inbox::new();
    let done = Arc::clone(&others_done);
    let app = env
        .start(vec![Subscription::builder([&topic])
            .name("keyed-retry")
            .group(env.unique("g"))
            // One partition: every key shares it, so a stalled partition would stall them all.
            .partitions(1)
            .ordering(Ordering::Key)
            .concurrency(4)
            .retry(anybus::RetrySpec {
                max_attempts: 10_000,
                backoff: anybus::Backoff::Exponential,
                initial: Duration::from_millis(1),
                max: Duration::from_millis(5),
                jitter: false,
                mode: anybus::RetryMode::InProcess,
            })
            .handler(move |m: Message, ctx: anybus::Context| {
                let payload = String::from_utf8_lossy(m.payload()).into_owned();
                // a0 fails until every message of the other keys was handled, and at least
                // once: on a loaded machine its first attempt may start only after the others.
                let result = if payload == "a0"
                    && (ctx.attempt() == 1 || done.load(AtomicOrdering::SeqCst) < OTHERS)
                {
                    Err(HandlerError::transient(std::io::Error::other(
                        "the others are not done yet",
                    )))
                } else {
                    // Reported before counted, so that a0 cannot be reported ahead of a b.
                    let other = payload.starts_with('b');
                    let _ = tx.send((payload, ctx.attempt()));
                    if other {
                        done.fetch_add(1, AtomicOrdering::SeqCst);
                    }
                    Ok(())
                };
                std::future::ready(result)
            })])
        .await;
    let publisher = app.publisher();
    let mut sends = vec![("a".to_string(), "a0".to_string())];
    sends.extend((0..OTHERS).map(|i| (format!("b{i}"), format!("b{i}"))));
    sends.push(("a".into(), "a1".into()));
    for (key, payload) in sends {
        publisher
            .send(Message::new(topic.as_str(), payload).with_key(key))
            .await
            .expect("publish");
    }
    let got = inbox.take(OTHERS + 2, "every message").await;
    let position = |p: &str| got.iter().position(|(q, _)| q == p).expect(p);
    let (a0, a1) = (position("a0"), position("a1"));
    assert_eq!(a0, OTHERS, "a0 passed once the others were done: {got:?}");
    assert_eq!(a1, OTHERS + 1, "a1 waited for a0: {got:?}");
    assert!(got[a0].1 > 1, "a0 succeeded on a retry: {got:?}");
    assert!(
        got.iter().filter(|(p, _)| p != "a0").all(|(_, n)| *n == 1),
        "only a0 was retried: {got:?}"
    );
    let stats = app.stats()[0].stats;
    assert_eq!(stats.retries, u64::from(got[a0].1 - 1), "retries counted");
    app.shutdown().await.expect("shutdown");
}

/// Under key ordering, a hot key whose handler is stuck makes the subscription stop fetching
/// before it would hold more than `max_buffered` deliveries, and fetching resumes as the key
/// drains: every message is then handled, in order. Returns the subscription's counters.
pub async fn a_hot_key_holds_back_fetching_within_the_cap(env: &Env) -> StatsSnapshot {
    // A cap that is not a multiple of the batch: a loop that admitted whole batches while
    // under the cap went past it.
    const CAP: usize = 6;
    const BATCH: usize = 4;
    const MESSAGES: usize = 100;
    let topic = env.unique("hot-key");
    // Closed until the test opens it: the first handler waits there.
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut inbox) = Inbox::new();
    let g = Arc::clone(&gate);
    let app = env
        .start_with(
            App::builder().max_buffered(CAP).batch(BATCH),
            vec![Subscription::builder([&topic])
                .name("hot")
                .group(env.unique("g"))
                .partitions(1)
                .ordering(Ordering::Key)
                .concurrency(4)
                .handler(move |m: Message| {
                    let (tx, gate) = (tx.clone(), Arc::clone(&g));
                    async move {
                        drop(gate.acquire().await.expect("the gate stays open"));
                        let _ = tx.send(m);
                        Ok::<(), HandlerError>(())
                    }
                })],
        )
        .await;
    let mut held_back = app.held_back("hot").expect("subscription exists");
    publish_numbered(&app, &topic, MESSAGES, 1).await;
    tokio::time::timeout(PATIENCE, held_back.wait_for(|held| *held))
        .await
        .expect("the subscription never held back fetching")
        .expect("the subscription stopped");
    let peak = app.stats()[0].stats.peak_buffered;
    assert!(
        (peak as usize) <= CAP,
        "{peak} deliveries held, more than the cap of {CAP}"
    );
    gate.add_permits(Semaphore::MAX_PERMITS);
    let got = inbox.take(MESSAGES, "the hot key's messages").await;
    let seqs: Vec<usize> = got
        .iter()
        .map(|m| {
            std::str::from_utf8(m.payload())
                .expect("utf8")
                .parse()
                .expect("number")
        })
        .collect();
    assert_eq!(seqs, (0..MESSAGES).collect::<Vec<_>>(), "the key's order");
    let stats = app.stats()[0].stats;
    assert!((stats.peak_buffered as usize) <= CAP, "{stats:?}");
    app.shutdown().await.expect("shutdown");
    stats
}

/// Reads what arrives on a dead-letter destination.
fn dead_letter_reader(env: &Env, destination: &str) -> (Subscription, Inbox<Message>) {
    let (tx, inbox) = Inbox::new();
    let subscription = Subscription::builder([destination])
        .name("dead-letters")
        .group(env.unique("dlq-reader"))
        .partitions(env.partitions)
        .dead_letter(DeadLetter::Disabled)
        .handler(reporting(tx));
    (subscription, inbox)
}

/// A header of a dead letter, as text.
fn dlq_header<'a>(letter: &'a Message, name: &str) -> &'a str {
    letter
        .headers()
        .get_str(name)
        .unwrap_or_else(|| panic!("the dead letter has no {name} header: {letter:?}"))
}

/// An undecodable payload goes to `{topic}.dlq` with reason `decode`, its bytes, key and headers
/// untouched, and the messages after it in its partition are still handled.
pub async fn undecodable_payload_is_dead_lettered(env: &Env) {
    #[derive(serde::Deserialize)]
    struct Event {
        n: u32,
    }
    let topic = env.unique("dlq-decode");
    let group = env.unique("g");
    let (reader, mut dead) = dead_letter_reader(env, &format!("{topic}.dlq"));
    let (tx, mut inbox) = Inbox::new();
    let app = env
        .start(vec![
            reader,
            Subscription::builder([&topic])
                .name("typed")
                .group(&group)
                .partitions(env.partitions)
                .handler(move |e: Event| {
                    let _ = tx.send(e.n);
                    std::future::ready(Ok::<(), HandlerError>(()))
                }),
        ])
        .await;
    wait_assignment(&app, "dead-letters", "the dead-letter reader", |n| n > 0).await;
    let publisher = app.publisher();
    let mut headers = Headers::new();
    headers.append("trace", Bytes::from_static(b"t-9"));
    let bad = Message::new(topic.as_str(), Bytes::from_static(b"not json at all"))
        .with_key("same")
        .with_headers(headers);
    for message in [
        Message::new(topic.as_str(), r#"{"n":1}"#).with_key("same"),
        bad.clone(),
        Message::new(topic.as_str(), r#"{"n":3}"#).with_key("same"),
    ] {
        publisher.send(message).await.expect("publish");
    }
    assert_eq!(inbox.take(2, "the decodable events").await, [1, 3]);
    let letter = dead.next("the dead letter").await;
    assert_eq!(letter.id(), bad.id());
    assert_eq!(letter.payload(), bad.payload());
    assert_eq!(letter.key(), bad.key());
    assert_eq!(letter.headers().get_str("trace"), Some("t-9"));
    assert_eq!(dlq_header(&letter, header::DLQ_REASON), "decode");
    assert_eq!(dlq_header(&letter, header::DLQ_TOPIC), topic);
    assert_eq!(dlq_header(&letter, header::DLQ_GROUP), group);
    assert_eq!(dlq_header(&letter, header::DLQ_ATTEMPTS), "1");
    assert!(
        dlq_header(&letter, header::DLQ_ERROR).contains("expected"),
        "{letter:?}"
    );
    // 3 ran after the bad payload was settled, in the same partition.
    let stats = app.stats();
    let typed = stats.iter().find(|s| s.name == "typed").expect("typed");
    assert_eq!(typed.stats.dead_lettered, 1);
    app.shutdown().await.expect("shutdown");
}

/// A handler failing twice and then succeeding is handled on attempt 3 and not dead-lettered.
pub async fn a_retried_message_succeeds_on_its_third_attempt(env: &Env) {
    let topic = env.unique("retry-3");
    let (tx, mut inbox) = Inbox::new();
    let app = env
        .start(vec![Subscription::builder([&topic])
            .name("flaky")
            .group(env.unique("g"))
            .partitions(env.partitions)
            .retry(RetrySpec {
                max_attempts: 5,
                initial: Duration::from_millis(1),
                max: Duration::from_millis(5),
                ..RetrySpec::default()
            })
            .handler(move |_: Message, ctx: Context| {
                let attempt = ctx.attempt();
                let _ = tx.send(attempt);
                std::future::ready(if attempt < 3 {
                    Err(HandlerError::transient(std::io::Error::other("not yet")))
                } else {
                    Ok(())
                })
            })])
        .await;
    publish_numbered(&app, &topic, 1, 1).await;
    assert_eq!(inbox.take(3, "three attempts").await, [1, 2, 3]);
    // Both retries were counted before the third attempt ran.
    let stats = app.stats()[0].stats;
    assert_eq!(stats.retries, 2, "{stats:?}");
    app.shutdown().await.expect("shutdown");
    assert!(inbox.drain_ready().is_empty(), "a fourth attempt");
}

/// A handler that always fails transiently is dead-lettered after the policy's last attempt, a
/// permanent failure at once, each with every metadata header, to the named destination.
pub async fn failures_are_dead_lettered_with_their_metadata(env: &Env) {
    const ATTEMPTS: u32 = 3;
    let topic = env.unique("dlq-fail");
    let group = env.unique("g");
    let destination = env.unique("failed");
    let (reader, mut dead) = dead_letter_reader(env, &destination);
    let app = env
        .start(vec![
            reader,
            Subscription::builder([&topic])
                .name("failing")
                .group(&group)
                .partitions(env.partitions)
                .dead_letter(DeadLetter::Topic(destination.clone()))
                .retry(RetrySpec {
                    max_attempts: ATTEMPTS,
                    initial: Duration::from_millis(1),
                    max: Duration::from_millis(5),
                    ..RetrySpec::default()
                })
                .handler(move |m: Message| {
                    std::future::ready(Err::<(), _>(if m.payload() == "permanent" {
                        HandlerError::permanent(std::io::Error::other("unknown sku"))
                    } else {
                        HandlerError::transient(std::io::Error::other("database down"))
                    }))
                }),
        ])
        .await;
    wait_assignment(&app, "dead-letters", "the dead-letter reader", |n| n > 0).await;
    let publisher = app.publisher();
    let mut sent = BTreeMap::new();
    for (key, payload) in [("k-1", "transient"), ("k-2", "permanent")] {
        let message = Message::new(topic.as_str(), payload).with_key(key);
        let origin = publisher.send(message.clone()).await.expect("publish");
        sent.insert(message.id(), (message, origin));
    }
    let before_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        - 60_000;
    for letter in dead.take(2, "the dead letters").await {
        let (message, origin) = sent.get(&letter.id()).expect("a dead letter of ours");
        assert_eq!(letter.payload(), message.payload());
        assert_eq!(letter.key(), message.key());
        let transient = message.payload() == "transient";
        let h = |name| dlq_header(&letter, name);
        assert_eq!(
            h(header::DLQ_REASON),
            if transient {
                "attempts-exhausted"
            } else {
                "permanent"
            }
        );
        assert_eq!(
            h(header::DLQ_ATTEMPTS),
            if transient { "3" } else { "1" },
            "attempts"
        );
        assert_eq!(
            h(header::DLQ_ERROR),
            if transient {
                "transient failure: database down"
            } else {
                "permanent failure: unknown sku"
            }
        );
        assert_eq!(h(header::DLQ_ERROR_TYPE), "std::io::error::Error");
        assert_eq!(h(header::DLQ_TOPIC), topic);
        assert_eq!(h(header::DLQ_GROUP), group);
        assert_eq!(
            letter.headers().get(header::DLQ_KEY),
            message.key(),
            "key header"
        );
        let partition = letter.headers().get_str(header::DLQ_PARTITION);
        let offset = letter.headers().get_str(header::DLQ_OFFSET);
        assert_eq!(
            partition.map(str::to_owned),
            origin.partition.map(|p| p.to_string())
        );
        assert_eq!(
            offset.map(str::to_owned),
            origin.offset.map(|o| o.to_string())
        );
        let ms = |name| -> u128 { h(name).parse().expect("milliseconds") };
        let (first, dead_at) = (
            ms(header::DLQ_FIRST_FAILURE_MS),
            ms(header::DLQ_DEAD_LETTERED_MS),
        );
        assert!(before_ms <= first && first <= dead_at, "{first} {dead_at}");
    }
    // The retries were counted before the dead letter was sent.
    let stats = app.stats();
    let failing = stats.iter().find(|s| s.name == "failing").expect("failing");
    assert_eq!(
        failing.stats.retries,
        u64::from(ATTEMPTS - 1),
        "{:?}",
        failing.stats
    );
    app.shutdown().await.expect("shutdown");
}

/// A dead letter replayed with [`anybus::replay`] comes back to its topic with its id, key,
/// payload and headers, without the dead-letter metadata, and is handled.
pub async fn a_replayed_dead_letter_is_handled(env: &Env) {
    let topic = env.unique("replay");
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let (tx, mut inbox) = Inbox::new();
    let app = env
        .start(vec![Subscription::builder([&topic])
            .name("picky")
            .group(env.unique("g"))
            .partitions(env.partitions)
            .handler(move |m: Message| {
                // Refuses a message the first time it sees it.
                let first = seen.lock().expect("lock").insert(m.id());
                let _ = tx.send((m, first));
                std::future::ready(if first {
                    Err(HandlerError::permanent(std::io::Error::other(
                        "refused until replayed",
                    )))
                } else {
                    Ok(())
                })
            })])
        .await;
    let mut headers = Headers::new();
    headers.append("trace", Bytes::from_static(b"t-3"));
    let sent = Message::new(topic.as_str(), "payload")
        .with_key("user-3")
        .with_headers(headers);
    app.publisher().send(sent.clone()).await.expect("publish");
    let (refused, first) = inbox.next("the first delivery").await;
    assert!(first && refused.id() == sent.id());

    // The replay starts after the dead letter may already be there: its group kept it.
    let replayer = env
        .start(vec![anybus::replay(&format!("{topic}.dlq"))])
        .await;
    let (replayed, first) = inbox.next("the replayed message").await;
    assert!(!first, "the replayed message is the one refused");
    assert_eq!(replayed.id(), sent.id());
    assert_eq!(replayed.key(), sent.key());
    assert_eq!(replayed.payload(), sent.payload());
    assert_eq!(replayed.headers().get_str("trace"), Some("t-3"));
    assert!(
        replayed
            .headers()
            .iter()
            .all(|(name, _)| !name.starts_with("anybus-dlq-")),
        "{replayed:?}"
    );
    replayer.shutdown().await.expect("shutdown the replayer");
    app.shutdown().await.expect("shutdown");
}

/// Under `retry(mode = "redeliver")`, a message that failed comes back through its group's
/// retry topic once due, with the next attempt, while the messages after it in its partition
/// are handled meanwhile; one that keeps failing is dead-lettered after the last attempt, as a
/// message of its own topic.
pub async fn a_redelivered_retry_comes_back_when_due(env: &Env) {
    const DELAY: Duration = Duration::from_millis(200);
    let topic = env.unique("redeliver-later");
    let group = env.unique("g");
    let (reader, mut dead) = dead_letter_reader(env, &format!("{topic}.dlq"));
    let (tx, mut inbox) = Inbox::new();
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis()
    };
    let app = env
        .start(vec![
            reader,
            Subscription::builder([&topic])
                .name("later")
                .group(&group)
                // One partition: a retry that held its partition back would hold "b" back.
                .partitions(1)
                .retry(RetrySpec {
                    max_attempts: 3,
                    backoff: anybus::Backoff::Fixed,
                    initial: DELAY,
                    max: DELAY,
                    jitter: false,
                    mode: anybus::RetryMode::Redeliver,
                })
                .handler(move |m: Message, ctx: Context| {
                    let payload = String::from_utf8_lossy(m.payload()).into_owned();
                    let attempt = ctx.attempt();
                    let due: Option<u128> = m
                        .headers()
                        .get_str(header::RETRY_DUE_MS)
                        .and_then(|d| d.parse().ok());
                    let fail = payload == "c" || (payload == "a" && attempt == 1);
                    let _ = tx.send((payload, attempt, now_ms(), due, ctx.topic().to_owned()));
                    std::future::ready(if fail {
                        Err(HandlerError::transient(std::io::Error::other("try later")))
                    } else {
                        Ok(())
                    })
                }),
        ])
        .await;
    wait_assignment(&app, "dead-letters", "the dead-letter reader", |n| n > 0).await;
    let publisher = app.publisher();
    for payload in ["a", "b", "c"] {
        publisher
            .send(Message::new(topic.as_str(), payload).with_key("one"))
            .await
            .expect("publish");
    }
    // a1, b1, c1 in partition order; then a2, c2 and c3 through the retry topic.
    let got = inbox.take(6, "every attempt").await;
    let seen: Vec<(&str, u32)> = got.iter().map(|(p, a, ..)| (p.as_str(), *a)).collect();
    assert_eq!(
        &seen[..3],
        [("a", 1), ("b", 1), ("c", 1)],
        "the retries held nothing back"
    );
    let mut later: Vec<(&str, u32)> = seen[3..].to_vec();
    later.sort_unstable();
    assert_eq!(later, [("a", 2), ("c", 2), ("c", 3)]);
    let retry_topic = anybus::retry_topic(&topic, &group);
    for (payload, attempt, at, due, from) in &got {
        if *attempt == 1 {
            assert!(due.is_none() && *from == topic, "{payload}: {from}");
            continue;
        }
        let due = due.expect("a retry copy has a due time");
        let before = got
            .iter()
            .find(|(p, a, ..)| p == payload && *a == attempt - 1)
            .map(|(_, _, at, ..)| *at)
            .expect("the attempt before");
        assert!(
            due >= before + DELAY.as_millis(),
            "{payload} attempt {attempt}: due {due}, the attempt before at {before}"
        );
        assert!(
            *at >= due,
            "{payload} attempt {attempt} ran at {at}, before its due {due}"
        );
        assert_eq!(*from, retry_topic);
    }
    let letter = dead.next("c's dead letter").await;
    assert_eq!(letter.payload(), "c");
    assert_eq!(
        dlq_header(&letter, header::DLQ_REASON),
        "attempts-exhausted"
    );
    assert_eq!(dlq_header(&letter, header::DLQ_ATTEMPTS), "3");
    assert_eq!(dlq_header(&letter, header::DLQ_TOPIC), topic);
    assert!(letter.headers().get(header::RETRY_DUE_MS).is_none());
    app.shutdown().await.expect("shutdown");
}

/// Under partition ordering, a message retried in process holds back only its own partition
/// (RabbitMQ: its queue): the messages of another topic of the same subscription are handled
/// while it waits, and it succeeds once they are.
pub async fn a_retrying_message_does_not_stall_other_partitions(env: &Env) {
    const OTHERS: usize = 10;
    let stuck = env.unique("stuck");
    let flowing = env.unique("flowing");
    let others_done = Arc::new(AtomicUsize::new(0));
    let done = Arc::clone(&others_done);
    let (tx, mut inbox) = Inbox::new();
    let (failed, mut failures) = Inbox::new();
    let stuck_topic = stuck.clone();
    let app = env
        .start(vec![Subscription::builder([&stuck, &flowing])
            .name("lanes")
            .group(env.unique("g"))
            .partitions(1)
            .ordering(Ordering::Partition)
            .retry(RetrySpec {
                max_attempts: 10_000,
                initial: Duration::from_millis(1),
                max: Duration::from_millis(5),
                jitter: false,
                ..RetrySpec::default()
            })
            .handler(move |m: Message, ctx: Context| {
                let from_stuck = m.topic() == stuck_topic;
                let result = if from_stuck && done.load(AtomicOrdering::SeqCst) < OTHERS {
                    let _ = failed.send(ctx.attempt());
                    Err(HandlerError::transient(std::io::Error::other(
                        "the other partition is not done yet",
                    )))
                } else {
                    let _ = tx.send((from_stuck, ctx.attempt()));
                    if !from_stuck {
                        done.fetch_add(1, AtomicOrdering::SeqCst);
                    }
                    Ok(())
                };
                std::future::ready(result)
            })])
        .await;
    let publisher = app.publisher();
    publisher
        .send(Message::new(stuck.as_str(), "waits"))
        .await
        .expect("publish");
    // The other topic is written only once the stuck message is in its retry: otherwise the
    // dispatcher may read the ten first, and the stuck message succeeds at once.
    failures
        .next("the first failure of the stuck message")
        .await;
    for i in 0..OTHERS {
        publisher
            .send(Message::new(flowing.as_str(), i.to_string()))
            .await
            .expect("publish");
    }
    let got = inbox.take(OTHERS + 1, "every message").await;
    assert!(
        got[..OTHERS].iter().all(|(from_stuck, _)| !from_stuck),
        "{got:?}"
    );
    let (from_stuck, attempt) = got[OTHERS];
    assert!(from_stuck && attempt > 1, "{got:?}");
    app.shutdown().await.expect("shutdown");
}

/// With `dedup`, a message delivered twice (here: published twice with one id, as a producer
/// retry does) is handled once: the second delivery is acked without calling the handler.
pub async fn duplicates_are_acked_without_calling_the_handler(env: &Env) {
    const N: usize = 1_000;
    let topic = env.unique("dedup");
    let calls: Arc<Mutex<HashMap<MessageId, usize>>> = Arc::default();
    let counted = Arc::clone(&calls);
    let (tx, mut inbox) = Inbox::new();
    let app = env
        .start(vec![Subscription::builder([&topic])
            .name("once")
            .group(env.unique("g"))
            // One partition and one lane: when "end" is handled, every copy before it was seen.
            .partitions(1)
            .ordering(Ordering::Partition)
            .dedup(anybus::DedupKey::MessageId)
            .handler(move |m: Message| {
                *counted.lock().expect("lock").entry(m.id()).or_default() += 1;
                let _ = tx.send(m.payload().clone());
                std::future::ready(Ok::<(), HandlerError>(()))
            })])
        .await;
    let publisher = app.publisher();
    for i in 0..N {
        let message = Message::new(topic.as_str(), i.to_string()).with_key("k");
        for _ in 0..2 {
            publisher.send(message.clone()).await.expect("publish");
        }
    }
    publisher
        .send(Message::new(topic.as_str(), "end").with_key("k"))
        .await
        .expect("publish");
    let got = inbox.take(N + 1, "each message once").await;
    assert_eq!(got[N], "end", "every copy was seen before the end");
    {
        let calls = calls.lock().expect("lock");
        assert_eq!(calls.len(), N + 1);
        assert!(calls.values().all(|n| *n == 1), "a handler ran twice");
    }
    assert_eq!(app.stats()[0].stats.duplicates, N as u64);
    app.shutdown().await.expect("shutdown");
}

/// The PostgreSQL store of `ANYBUS_POSTGRES_URL`, by default the one `tests/brokers.sh up
/// postgres` starts.
#[cfg(feature = "postgres")]
pub fn postgres_url() -> String {
    std::env::var("ANYBUS_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://anybus:anybus@127.0.0.1:5432/anybus".into())
}

/// A failure after the dedup mark is committed: each of 1,000 handlers commits its inbox
/// transaction and then fails. Its writes stand, so another attempt (or a redelivery) could
/// only find the key done: each message is acked as handled before, counted as a duplicate,
/// and every handler ran exactly once.
#[cfg(feature = "postgres")]
pub async fn a_failure_after_the_inbox_commit_is_not_handled_again(env: &Env) {
    const N: usize = 1_000;
    let topic = env.unique("inbox-redelivery");
    let calls: Arc<Mutex<HashMap<MessageId, usize>>> = Arc::default();
    let counted = Arc::clone(&calls);
    let app = env
        .start_with(
            App::builder().dedup_store(&postgres_url()),
            vec![Subscription::builder([&topic])
                .name("once")
                .group(env.unique("g"))
                .partitions(env.partitions)
                // One message in flight per partition: each is delivered exactly twice, so
                // the counts below are exact.
                .ordering(Ordering::Partition)
                .dedup(anybus::DedupKey::MessageId)
                .handler(move |m: Message, inbox: anybus::dedup::Inbox| {
                    *counted.lock().expect("lock").entry(m.id()).or_default() += 1;
                    async move {
                        inbox.begin().await?.commit().await?;
                        Err::<(), _>(HandlerError::transient("the ack was lost"))
                    }
                })],
        )
        .await;
    publish_numbered(&app, &topic, N, 50).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let stats = wait_stats(&app, "every message acked", deadline, |s| {
        s.duplicates == N as u64
    })
    .await;
    assert_eq!(stats.transient_failures, N as u64, "{stats:?}");
    {
        let calls = calls.lock().expect("lock");
        assert_eq!(calls.len(), N);
        assert!(calls.values().all(|n| *n == 1), "a handler ran twice");
    }
    app.shutdown().await.expect("shutdown");
}

/// A handler that runs far longer than its dedup lease keeps its key: the pipeline renews the
/// lease while the handler runs, so a second copy of the message, delivered meanwhile, keeps
/// finding it in progress (and comes again) instead of running the handler a second time.
pub async fn a_slow_handler_keeps_its_dedup_key(env: &Env) {
    let topic = env.unique("dedup-slow");
    let calls = Arc::new(AtomicUsize::new(0));
    let (started_tx, mut started) = Inbox::new();
    let go = Arc::new(Semaphore::new(0));
    let (c, g) = (Arc::clone(&calls), Arc::clone(&go));
    let app = env
        .start_with(
            App::builder().dedup_lease(Duration::from_millis(200)),
            vec![Subscription::builder([&topic])
                .name("slow")
                .group(env.unique("g"))
                // One partition, two at once: both copies are in flight together.
                .partitions(1)
                .ordering(Ordering::None)
                .concurrency(2)
                .dedup(anybus::DedupKey::MessageId)
                .handler(move |_: Message| {
                    c.fetch_add(1, AtomicOrdering::SeqCst);
                    let _ = started_tx.send(());
                    let go = Arc::clone(&g);
                    async move {
                        go.acquire().await.expect("the test's semaphore").forget();
                        Ok::<(), HandlerError>(())
                    }
                })],
        )
        .await;
    let message = Message::new(topic.as_str(), "slow").with_key("k");
    for _ in 0..2 {
        app.publisher()
            .send(message.clone())
            .await
            .expect("publish");
    }
    started.next("the first copy's handler").await;
    // Each in-progress finding waits 250 ms before its nack: four of them span well past the
    // 200 ms lease.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    wait_stats(&app, "the copy meeting the lease", deadline, |s| {
        s.dedup_in_progress >= 4
    })
    .await;
    go.add_permits(2);
    wait_stats(&app, "both copies settled", deadline, |s| {
        s.handled + s.duplicates >= 2
    })
    .await;
    assert_eq!(
        calls.load(AtomicOrdering::SeqCst),
        1,
        "the handler ran twice"
    );
    app.shutdown().await.expect("shutdown");
}

/// With `dedup`, a handler's failure releases the message's key: the redelivery takes it at
/// once (not after the lease runs out) and is handled.
pub async fn a_failure_releases_the_dedup_key(env: &Env) {
    let topic = env.unique("dedup-release");
    let failed = Arc::new(AtomicUsize::new(0));
    let f = Arc::clone(&failed);
    let (tx, mut inbox) = Inbox::new();
    let app = env
        .start_with(
            // A lease far longer than the test's patience: only a release lets the next
            // delivery in.
            App::builder().dedup_lease(Duration::from_secs(3600)),
            vec![Subscription::builder([&topic])
                .name("released")
                .group(env.unique("g"))
                .partitions(env.partitions)
                .dedup(anybus::DedupKey::MessageId)
                .handler(move |m: Message| {
                    let first = f.fetch_add(1, AtomicOrdering::SeqCst) == 0;
                    let _ = tx.send((m.id(), first));
                    std::future::ready(if first {
                        Err(HandlerError::transient(std::io::Error::other("once")))
                    } else {
                        Ok(())
                    })
                })],
        )
        .await;
    let id = publish_numbered(&app, &topic, 1, 1).await[0];
    let got = inbox.take(2, "the failure and the redelivery").await;
    assert_eq!(got, [(id, true), (id, false)]);
    app.shutdown().await.expect("shutdown");
}

/// With `dedup = "field"`, a message whose payload lacks the field is a permanent failure
/// that says so, dead-lettered; the messages after it are handled.
pub async fn a_message_without_its_dedup_key_is_dead_lettered(env: &Env) {
    let topic = env.unique("dedup-field");
    let (reader, mut dead) = dead_letter_reader(env, &format!("{topic}.dlq"));
    let (tx, mut inbox) = Inbox::new();
    let app = env
        .start(vec![
            reader,
            Subscription::builder([&topic])
                .name("by-field")
                .group(env.unique("g"))
                .partitions(env.partitions)
                .dedup(anybus::DedupKey::Field("order_id".into()))
                .handler(move |m: Message| {
                    let _ = tx.send(m.payload().clone());
                    std::future::ready(Ok::<(), HandlerError>(()))
                }),
        ])
        .await;
    wait_assignment(&app, "dead-letters", "the dead-letter reader", |n| n > 0).await;
    let publisher = app.publisher();
    for payload in [r#"{"sku":"lamp"}"#, r#"{"order_id":"o-1"}"#] {
        publisher
            .send(Message::new(topic.as_str(), payload).with_key("same"))
            .await
            .expect("publish");
    }
    assert_eq!(
        inbox.next("the keyed message").await,
        r#"{"order_id":"o-1"}"#
    );
    let letter = dead.next("the unkeyed message's dead letter").await;
    assert_eq!(letter.payload(), r#"{"sku":"lamp"}"#);
    assert_eq!(dlq_header(&letter, header::DLQ_REASON), "permanent");
    assert!(
        dlq_header(&letter, header::DLQ_ERROR).contains("`order_id`"),
        "{letter:?}"
    );
    app.shutdown().await.expect("shutdown");
}

/// A handler that panics is a permanent failure: its message is dead-lettered saying so, and
/// the lane goes on with the next message, under partition and under key ordering.
pub async fn a_panicking_handler_is_a_permanent_failure(env: &Env) {
    for ordering in [Ordering::Partition, Ordering::Key] {
        let topic = env.unique("panic");
        let (reader, mut dead) = dead_letter_reader(env, &format!("{topic}.dlq"));
        let (tx, mut inbox) = Inbox::new();
        let app = env
            .start(vec![
                reader,
                Subscription::builder([&topic])
                    .name("panicky")
                    .group(env.unique("g"))
                    .partitions(1)
                    .ordering(ordering)
                    .concurrency(1)
                    .handler(move |m: Message| {
                        assert!(m.payload() != "boom", "boom");
                        let _ = tx.send(m.payload().clone());
                        std::future::ready(Ok::<(), HandlerError>(()))
                    }),
            ])
            .await;
        wait_assignment(&app, "dead-letters", "the dead-letter reader", |n| n > 0).await;
        let publisher = app.publisher();
        for payload in ["boom", "after"] {
            publisher
                .send(Message::new(topic.as_str(), payload).with_key("same"))
                .await
                .expect("publish");
        }
        assert_eq!(inbox.next("the message after the panic").await, "after");
        let letter = dead.next("the panicked message's dead letter").await;
        assert_eq!(letter.payload(), "boom");
        assert_eq!(dlq_header(&letter, header::DLQ_REASON), "permanent");
        assert!(
            dlq_header(&letter, header::DLQ_ERROR).contains("panicked: boom"),
            "{letter:?}"
        );
        app.shutdown().await.expect("shutdown");
    }
}

/// Expands to one `#[tokio::test]` per conformance body, each calling it with `$env`.
#[macro_export]
macro_rules! conformance_suite {
    ($env:expr) => {
        $crate::conformance_suite!(@tests $env;
            round_trip_keeps_key_and_headers,
            every_group_gets_every_message,
            members_of_a_group_split_the_messages,
            failed_message_is_tried_again,
            partition_order_is_kept,
            unordered_runs_up_to_concurrency,
            shutdown_drains_and_loses_nothing,
            member_leaving_mid_stream_loses_nothing,
            requests_are_answered_or_time_out,
            undecodable_payload_does_not_stop_the_partition,
            key_order_is_kept_under_concurrency,
            failed_message_blocks_only_its_key,
            a_hot_key_holds_back_fetching_within_the_cap,
            undecodable_payload_is_dead_lettered,
            a_retried_message_succeeds_on_its_third_attempt,
            failures_are_dead_lettered_with_their_metadata,
            a_replayed_dead_letter_is_handled,
            key_ordered_member_leaving_mid_stream_loses_nothing,
            a_redelivered_retry_comes_back_when_due,
            a_retrying_message_does_not_stall_other_partitions,
            duplicates_are_acked_without_calling_the_handler,
            a_failure_releases_the_dedup_key,
            a_message_without_its_dedup_key_is_dead_lettered,
            a_panicking_handler_is_a_permanent_failure,
            a_slow_handler_keeps_its_dedup_key,
            a_failing_message_backs_off_and_is_dead_lettered_by_default,
            retry_forever_keeps_trying_with_backoff,
            a_panicking_dedup_key_function_is_a_permanent_failure,
            an_undecodable_payload_under_field_dedup_is_a_decode_failure,
            retry_headers_on_an_ordinary_message_steer_nothing,
            a_full_partition_holds_back_only_itself,
            a_waiting_retry_copy_holds_no_worker,
            a_repeated_request_is_told_it_is_a_duplicate,
            an_answer_is_decoded_with_the_codec_that_wrote_it,
            the_counters_follow_their_definitions,
        );
        // Bodies that need the PostgreSQL that `tests/brokers.sh up postgres` starts.
        $crate::conformance_suite!(@postgres $env;
            a_failure_after_the_inbox_commit_is_not_handled_again,
        );
    };
    (@postgres $env:expr; $($name:ident,)*) => {
        $(
            #[cfg(feature = "postgres")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::$name(&$env).await;
            }
        )*
    };
    (@tests $env:expr; $($name:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::$name(&$env).await;
            }
        )*
    };
}
