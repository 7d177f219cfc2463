//! RabbitMQ-only tests that act on the broker with `rabbitmqctl`: connections killed
//! mid-stream, a stale ack after a reconnect, a queue deleted under a consumer, and where an
//! event goes that no queue is bound for.
//!
//! Each test works in a virtual host of its own, created for it and deleted after it, so that
//! killing "all connections" of that vhost touches no other test. `rabbitmqctl` is found at
//! `ANYBUS_RABBITMQCTL` (default: Debian's `/usr/lib/rabbitmq/bin/rabbitmqctl`) and talks to
//! the node `ANYBUS_RABBITMQ_NODE` (default: `anybus@localhost`, the node `tests/brokers.sh up
//! rabbitmq` starts).
#![cfg(feature = "rabbitmq")]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anybus::backend::rabbitmq::topology::UNROUTED_QUEUE;
use anybus::backend::rabbitmq::RabbitBackend;
use anybus::backend::{Backend, ConsumerConfig, Delivery, PublishError};
use anybus::observe::{SubscriptionStats, TopicPartition};
use anybus::{App, BrokerUrl, HandlerError, Message, MessageId, Subscription};
use anybus_conformance::{Env, Inbox, PATIENCE};
use tokio::sync::{watch, Semaphore};

const START_BROKER: &str = "`tests/brokers.sh up rabbitmq`";

/// Runs `rabbitmqctl -n NODE ARGS…` and returns its output, failing the test if it fails.
async fn rabbitmqctl(args: &[&str]) -> String {
    let program = std::env::var("ANYBUS_RABBITMQCTL")
        .unwrap_or_else(|_| "/usr/lib/rabbitmq/bin/rabbitmqctl".into());
    let node = std::env::var("ANYBUS_RABBITMQ_NODE").unwrap_or_else(|_| "anybus@localhost".into());
    let args: Vec<String> = ["-n", &node, "-q"]
        .into_iter()
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect();
    let run = {
        let (program, args) = (program.clone(), args.clone());
        tokio::task::spawn_blocking(move || std::process::Command::new(program).args(args).output())
    };
    let output = run.await.expect("join").unwrap_or_else(|e| {
        panic!("cannot run {program}: {e}\n({START_BROKER} installs and starts RabbitMQ)")
    });
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}\n(is the broker up? {START_BROKER} starts it)",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A virtual host of one test, with the guest user allowed everything in it.
struct Vhost {
    name: String,
    env: Env,
}

impl Vhost {
    async fn create() -> Self {
        let name = format!("anybus-test-{}", MessageId::new());
        rabbitmqctl(&["add_vhost", &name]).await;
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]).await;
        let base = Env::rabbitmq().url;
        let server = base
            .rsplit_once('/')
            .map_or(base.as_str(), |(server, _)| server);
        let env = Env {
            url: format!("{server}/{name}"),
            ..Env::rabbitmq()
        };
        Self { name, env }
    }

    /// Closes every client connection to this vhost, as a broker restart would.
    async fn kill_connections(&self) {
        rabbitmqctl(&[
            "close_all_connections",
            "--vhost",
            &self.name,
            "anybus test",
        ])
        .await;
    }

    async fn delete_queue(&self, queue: &str) {
        rabbitmqctl(&["delete_queue", "--vhost", &self.name, queue]).await;
    }

    /// How many messages `queue` holds.
    async fn messages(&self, queue: &str) -> Option<u64> {
        let listing = rabbitmqctl(&["list_queues", "-p", &self.name, "name", "messages"]).await;
        listing.lines().find_map(|line| {
            let (name, count) = line.split_once('\t')?;
            (name == queue).then(|| count.trim().parse().ok()).flatten()
        })
    }

    async fn delete(self) {
        rabbitmqctl(&["delete_vhost", &self.name]).await;
    }
}

/// Waits until the assignment changed (the consumer lost its channel) and then shows the
/// consumer's queues again (it consumes on a new channel).
async fn wait_for_a_new_channel(assignment: &mut watch::Receiver<Vec<TopicPartition>>) {
    tokio::time::timeout(PATIENCE, async {
        assignment.changed().await.expect("the consumer is gone");
        assignment
            .wait_for(|a| !a.is_empty())
            .await
            .expect("the consumer is gone");
    })
    .await
    .expect("the consumer did not lose its channel and get a new one in time");
}

async fn publish_all(app: &App, topic: &str, n: usize) -> BTreeSet<MessageId> {
    let publisher = app.publisher();
    let mut ids = BTreeSet::new();
    for i in 0..n {
        let message = Message::new(topic, i.to_string()).with_key(format!("k{}", i % 7));
        ids.insert(message.id());
        publisher.send(message).await.expect("publish");
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_connection_loses_nothing_and_consuming_resumes() {
    const BEFORE: usize = 100;
    const HELD_AT: usize = 30;
    let vhost = Vhost::create().await;
    let topic = vhost.env.unique("kill");
    // The handler runs freely until HELD_AT messages are done, then waits at the gate: the
    // connection dies with one handler running and the rest prefetched, unacknowledged.
    let gate = Arc::new(Semaphore::new(0));
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (tx, mut handled) = Inbox::new();
    let (g, s) = (Arc::clone(&gate), Arc::clone(&started));
    let app = vhost
        .env
        .start(vec![Subscription::builder([&topic])
            .name("counted")
            .group(vhost.env.unique("g"))
            .handler(move |m: Message| {
                let (tx, gate, started) = (tx.clone(), Arc::clone(&g), Arc::clone(&s));
                async move {
                    if started.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == HELD_AT {
                        let _ = gate.acquire().await;
                    }
                    let _ = tx.send(m.id());
                    Ok::<(), HandlerError>(())
                }
            })])
        .await;
    let mut assignment = app.assignment("counted").expect("subscription exists");
    drop(assignment.borrow_and_update());

    let mut expected = publish_all(&app, &topic, BEFORE).await;
    let mut seen: BTreeSet<MessageId> = handled
        .take(HELD_AT, "the messages before the kill")
        .await
        .into_iter()
        .collect();
    vhost.kill_connections().await;
    // Published while the consumer reconnects: the publisher waits for the new connection.
    expected.extend(publish_all(&app, &topic, BEFORE).await);
    wait_for_a_new_channel(&mut assignment).await;
    gate.close();

    while seen.len() < expected.len() {
        let what = format!(
            "every message at least once ({} of {})",
            seen.len(),
            expected.len()
        );
        seen.insert(handled.next(&what).await);
    }
    assert_eq!(seen, expected, "handled messages nobody published");
    let after = publish_all(&app, &topic, 10).await;
    while !after.iter().all(|id| seen.contains(id)) {
        seen.insert(handled.next("messages published after the reconnect").await);
    }
    let stats = app.stats()[0].stats;
    assert!(
        stats.stale_settlements >= 1,
        "the ack of the handler that ran across the kill was dropped: {stats:?}"
    );
    app.shutdown().await.expect("shutdown");
    vhost.delete().await;
}

fn config(topic: &str, stats: &Arc<SubscriptionStats>) -> ConsumerConfig {
    ConsumerConfig {
        group: "stale".into(),
        topics: vec![topic.into()],
        batch: 16,
        prefetch: 16,
        drain_timeout: Duration::from_secs(5),
        stats: Arc::clone(stats),
        delayed: Vec::new(),
    }
}

async fn poll_one(consumer: &mut Box<dyn anybus::backend::Consumer>) -> Delivery {
    let mut batch = Vec::new();
    tokio::time::timeout(PATIENCE, consumer.poll(&mut batch))
        .await
        .expect("a delivery in time")
        .expect("poll");
    assert_eq!(batch.len(), 1, "{batch:?}");
    batch.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_from_before_a_reconnect_is_dropped_and_counted() {
    let vhost = Vhost::create().await;
    let url = BrokerUrl::parse(&vhost.env.url).expect("url");
    let backend = RabbitBackend::connect(&url).await.expect("connect");
    let topic = vhost.env.unique("stale");
    let stats = Arc::new(SubscriptionStats::default());
    let mut assignment = stats.assignment.subscribe();
    let mut consumer = backend
        .consume(config(&topic, &stats))
        .await
        .expect("consume");
    drop(assignment.borrow_and_update());
    let settler = consumer.settler();

    let first = Message::new(topic.as_str(), "first");
    backend.publish(first.clone()).await.expect("publish");
    let old = poll_one(&mut consumer).await;
    assert_eq!(old.message.id(), first.id());

    vhost.kill_connections().await;
    wait_for_a_new_channel(&mut assignment).await;
    let again = poll_one(&mut consumer).await;
    assert_eq!(
        again.message.id(),
        first.id(),
        "the broker delivers it again"
    );
    assert_ne!(again.receipt.generation(), old.receipt.generation());

    assert!(!settler.is_current(&old.receipt));
    settler.ack(&old.receipt);
    assert_eq!(
        stats.snapshot().stale_settlements,
        1,
        "the old ack is dropped and counted"
    );
    settler.ack(&again.receipt);
    assert_eq!(stats.snapshot().stale_settlements, 1);

    // Had the old ack been sent on the new channel it would have acknowledged the wrong
    // delivery (or closed the channel): the next delivery is the next message, once.
    let second = Message::new(topic.as_str(), "second");
    backend.publish(second.clone()).await.expect("publish");
    let next = poll_one(&mut consumer).await;
    assert_eq!(next.message.id(), second.id());
    assert_eq!(next.receipt.generation(), again.receipt.generation());
    settler.ack(&next.receipt);
    consumer.close().await.expect("close");
    drop(backend);
    vhost.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_queue_is_declared_again_and_consuming_resumes() {
    let vhost = Vhost::create().await;
    let topic = vhost.env.unique("deleted");
    let group = vhost.env.unique("g");
    let (tx, mut handled) = Inbox::new();
    let app = vhost
        .env
        .start(vec![Subscription::builder([&topic])
            .name("healing")
            .group(&group)
            .handler(move |m: Message| {
                let _ = tx.send(m.id());
                std::future::ready(Ok::<(), HandlerError>(()))
            })])
        .await;
    let mut assignment = app.assignment("healing").expect("subscription exists");
    drop(assignment.borrow_and_update());
    vhost.delete_queue(&format!("{topic}.{group}")).await;
    wait_for_a_new_channel(&mut assignment).await;
    let sent = publish_all(&app, &topic, 5).await;
    let got: BTreeSet<MessageId> = handled
        .take(5, "messages after the queue came back")
        .await
        .into_iter()
        .collect();
    assert_eq!(got, sent);
    app.shutdown().await.expect("shutdown");
    vhost.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_no_queue_is_bound_for_is_kept_and_a_return_is_an_error() {
    let vhost = Vhost::create().await;
    let app = vhost.env.start(Vec::new()).await;
    let topic = vhost.env.unique("nobody-listens");
    app.publisher()
        .send(Message::new(topic.as_str(), "kept"))
        .await
        .expect("an unrouted event is confirmed: it is kept");
    assert_eq!(vhost.messages(UNROUTED_QUEUE).await, Some(1));

    // Without the queue that keeps unrouted events, the broker returns the message.
    vhost.delete_queue(UNROUTED_QUEUE).await;
    let error = app
        .publisher()
        .send(Message::new(topic.as_str(), "returned"))
        .await
        .expect_err("a returned message is an error");
    match &error {
        PublishError::Rejected { topic: t, reason } => {
            assert_eq!(*t, topic);
            assert!(reason.contains("no queue is bound"), "{reason}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    app.shutdown().await.expect("shutdown");
    vhost.delete().await;
}
