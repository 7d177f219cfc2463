//! The Redis dedup store against the Redis that `tests/brokers.sh up redis` starts (or
//! `ANYBUS_REDIS_URL`): atomic reservations, lease expiry, completion and release, and the
//! pipeline's exactly-once handling of duplicates with the store shared through Redis.
#![cfg(feature = "redis")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anybus::dedup::{self, DedupStore, Reservation};
use anybus::{App, DedupKey, HandlerError, Message, MessageId, StartError, Subscription};
use anybus_conformance::{Inbox, PATIENCE};

fn url() -> String {
    std::env::var("ANYBUS_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn store() -> Arc<dyn DedupStore> {
    dedup::connect(&url())
        .await
        .unwrap_or_else(|e| panic!("{e}\n(is Redis up? `tests/brokers.sh up redis` starts it)"))
}

const LEASE: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_100_concurrent_reservations_of_one_key_exactly_one_is_fresh() {
    let store = store().await;
    let (group, key) = (MessageId::new().to_string(), "k");
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (store, group) = (Arc::clone(&store), group.clone());
            tokio::spawn(async move { store.reserve(&group, key, LEASE).await })
        })
        .collect();
    let mut found = HashMap::new();
    for task in tasks {
        let r = task.await.expect("task").expect("reserve");
        *found.entry(format!("{r:?}")).or_insert(0) += 1;
    }
    assert_eq!(found.get("Fresh"), Some(&1), "{found:?}");
    assert_eq!(found.get("InProgress"), Some(&99), "{found:?}");
}

#[tokio::test]
async fn an_expired_lease_lets_the_next_reserver_in() {
    let store = store().await;
    let group = MessageId::new().to_string();
    let lease = Duration::from_millis(200);
    let taken = Instant::now();
    assert_eq!(
        store.reserve(&group, "k", lease).await.ok(),
        Some(Reservation::Fresh)
    );
    assert_eq!(
        store.reserve(&group, "k", lease).await.ok(),
        Some(Reservation::InProgress)
    );
    // Ask until the server lets the lease go; it must not before the lease ran out.
    loop {
        let found = store.reserve(&group, "k", lease).await.expect("reserve");
        if found == Reservation::Fresh {
            break;
        }
        assert!(taken.elapsed() < PATIENCE, "the lease never expired");
        tokio::task::yield_now().await;
    }
    assert!(
        taken.elapsed() >= lease,
        "taken over after {:?}",
        taken.elapsed()
    );
}

#[tokio::test]
async fn completion_release_and_groups() {
    let store = store().await;
    let (a, b) = (MessageId::new().to_string(), MessageId::new().to_string());
    assert_eq!(
        store.reserve(&a, "k", LEASE).await.ok(),
        Some(Reservation::Fresh)
    );
    store.release(&a, "k").await.expect("release");
    assert_eq!(
        store.reserve(&a, "k", LEASE).await.ok(),
        Some(Reservation::Fresh),
        "a released lease is free at once"
    );
    store.complete(&a, "k", TTL).await.expect("complete");
    assert_eq!(
        store.reserve(&a, "k", LEASE).await.ok(),
        Some(Reservation::Done)
    );
    store.release(&a, "k").await.expect("release");
    assert_eq!(
        store.reserve(&a, "k", LEASE).await.ok(),
        Some(Reservation::Done),
        "a release does not undo a completion"
    );
    assert_eq!(
        store.reserve(&b, "k", LEASE).await.ok(),
        Some(Reservation::Fresh),
        "another group is not suppressed"
    );
}

/// The store is shared: a member that joins after another handled a batch acks the batch's
/// duplicates without calling its handler, because Redis remembers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_member_suppresses_what_an_earlier_one_handled() {
    const N: usize = 100;
    let broker = format!("memory://redis-dedup-{}", MessageId::new());
    let (topic, group) = ("orders", MessageId::new().to_string());
    let calls: Arc<Mutex<HashMap<MessageId, usize>>> = Arc::default();
    let (tx, mut inbox) = Inbox::new();
    let start = || {
        let (calls, tx) = (Arc::clone(&calls), tx.clone());
        App::builder()
            .subscribe(
                Subscription::builder([topic])
                    .name("once")
                    .group(&group)
                    // One partition: the end marker comes after every copy before it.
                    .partitions(1)
                    .dedup(DedupKey::MessageId)
                    .handler(move |m: Message| {
                        *calls.lock().expect("lock").entry(m.id()).or_default() += 1;
                        let _ = tx.send(m.payload().clone());
                        std::future::ready(Ok::<(), HandlerError>(()))
                    }),
            )
            .dedup_store(&url())
            .connect(&broker)
    };
    let first = start().await.expect("the first member");
    let batch: Vec<Message> = (0..N)
        .map(|i| Message::new(topic, i.to_string()).with_key("k"))
        .collect();
    for message in &batch {
        first
            .publisher()
            .send(message.clone())
            .await
            .expect("publish");
    }
    inbox.take(N, "the batch").await;
    first.shutdown().await.expect("shutdown the first member");

    let second = start().await.expect("the second member");
    for message in &batch {
        second
            .publisher()
            .send(message.clone())
            .await
            .expect("publish again");
    }
    second
        .publisher()
        .send(Message::new(topic, "end").with_key("k"))
        .await
        .expect("publish the end");
    assert_eq!(
        inbox.next("the end").await,
        "end",
        "a duplicate was handled"
    );
    assert_eq!(second.stats()[0].stats.duplicates, N as u64);
    assert!(calls.lock().expect("lock").values().all(|n| *n == 1));
    second.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn an_unreachable_store_fails_the_start_fast_naming_it() {
    let started = Instant::now();
    let outcome = App::builder()
        .subscribe(
            Subscription::builder(["t"])
                .dedup(DedupKey::MessageId)
                .handler(|_: Message| std::future::ready(Ok::<(), HandlerError>(()))),
        )
        .dedup_store("redis://user:hunter2@127.0.0.1:1")
        .connect("memory://redis-unreachable")
        .await;
    let Err(StartError::DedupStore(e)) = outcome else {
        panic!("started, or failed otherwise");
    };
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let shown = format!("{e} {e:?}");
    assert!(shown.contains("redis://user:***@127.0.0.1:1"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}
