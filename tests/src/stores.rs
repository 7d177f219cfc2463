//! Test bodies every shared dedup store (Redis, PostgreSQL) must pass against its real server:
//! atomic reservations, lease expiry, completion and release, groups, and a later member
//! suppressing what an earlier one handled. [`store_suite!`](crate::store_suite) turns them
//! into tests for one store URL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anybus::dedup::{self, DedupStore, Reservation};
use anybus::{App, DedupKey, HandlerError, Message, MessageId, StartError, Subscription};

use crate::{Inbox, PATIENCE};

const LEASE: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(3600);

/// The store of `url`, or a failure that says how to start its server.
pub async fn open(url: &str, server: &str) -> Arc<dyn DedupStore> {
    dedup::connect(url).await.unwrap_or_else(|e| {
        panic!("{e}\n(is {server} up? `tests/brokers.sh up {server}` starts it)")
    })
}

/// Of 100 concurrent reservations of one free key, exactly one is `Fresh`.
pub async fn of_100_concurrent_reservations_of_one_key_exactly_one_is_fresh(
    store: Arc<dyn DedupStore>,
) {
    let (group, key) = (MessageId::new().to_string(), "k");
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (store, group) = (Arc::clone(&store), group.clone());
            tokio::spawn(async move { store.reserve(&group, key, "h", LEASE).await })
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

/// Of 1,000 concurrent reservations over 100 keys, exactly one per key is `Fresh` (a store
/// that sends operations in batches meets the same key twice in one batch); concurrent
/// completions of all of them are then `Done`.
pub async fn concurrent_reservations_of_many_keys_give_one_fresh_per_key(
    store: Arc<dyn DedupStore>,
) {
    const KEYS: usize = 100;
    let group = MessageId::new().to_string();
    let tasks: Vec<_> = (0..10 * KEYS)
        .map(|i| {
            let (store, group) = (Arc::clone(&store), group.clone());
            tokio::spawn(async move {
                let key = (i % KEYS).to_string();
                let found = store.reserve(&group, &key, "h", LEASE).await;
                (key, found)
            })
        })
        .collect();
    let mut fresh: HashMap<String, usize> = HashMap::new();
    for task in tasks {
        let (key, found) = task.await.expect("task");
        match found.expect("reserve") {
            Reservation::Fresh => *fresh.entry(key).or_default() += 1,
            Reservation::InProgress => {}
            Reservation::Done => panic!("{key} is done before anyone completed it"),
        }
    }
    assert_eq!(fresh.len(), KEYS, "{fresh:?}");
    assert!(fresh.values().all(|n| *n == 1), "{fresh:?}");
    let completions: Vec<_> = (0..KEYS)
        .map(|key| {
            let (store, group) = (Arc::clone(&store), group.clone());
            tokio::spawn(async move { store.complete(&group, &key.to_string(), TTL).await })
        })
        .collect();
    for completion in completions {
        completion.await.expect("task").expect("complete");
    }
    for key in 0..KEYS {
        assert_eq!(
            store
                .reserve(&group, &key.to_string(), "h", LEASE)
                .await
                .ok(),
            Some(Reservation::Done),
            "key {key}"
        );
    }
}

/// Reserves `key` for `holder` again and again until it comes back `Fresh` (whatever held it
/// ran out), failing with `never` once the patience counted from `since` is spent.
async fn reserve_until_fresh(
    store: &dyn DedupStore,
    group: &str,
    key: &str,
    holder: &str,
    lease: Duration,
    since: Instant,
    never: &str,
) {
    loop {
        let found = store
            .reserve(group, key, holder, lease)
            .await
            .expect("reserve");
        if found == Reservation::Fresh {
            return;
        }
        assert!(since.elapsed() < PATIENCE, "{never}");
        tokio::task::yield_now().await;
    }
}

/// A lease holds off other reservers until it runs out, and not longer.
pub async fn an_expired_lease_lets_the_next_reserver_in(store: Arc<dyn DedupStore>) {
    let group = MessageId::new().to_string();
    // Long enough that a busy machine (the broker shares two cores) answers the second
    // reservation well within it.
    let lease = Duration::from_secs(1);
    let taken = Instant::now();
    assert_eq!(
        store.reserve(&group, "k", "h", lease).await.ok(),
        Some(Reservation::Fresh)
    );
    let second = store.reserve(&group, "k", "h", lease).await.ok();
    assert!(
        taken.elapsed() < lease,
        "the store took {:?} to answer two reservations: this run cannot tell a live lease from an expired one",
        taken.elapsed()
    );
    assert_eq!(second, Some(Reservation::InProgress));
    // Ask until the server lets the lease go; it must not before the lease ran out.
    reserve_until_fresh(
        &*store,
        &group,
        "k",
        "h",
        lease,
        taken,
        "the lease never expired",
    )
    .await;
    assert!(
        taken.elapsed() >= lease,
        "taken over after {:?}",
        taken.elapsed()
    );
}

/// A renewed lease outlives its first term and runs out only once renewals stop; a renewal
/// neither revives a done key as a lease nor takes a free one.
pub async fn a_renewed_lease_lasts_until_renewals_stop(store: Arc<dyn DedupStore>) {
    let group = MessageId::new().to_string();
    let lease = Duration::from_secs(1);
    assert_eq!(
        store.reserve(&group, "k", "h", lease).await.ok(),
        Some(Reservation::Fresh)
    );
    let taken = Instant::now();
    // Renew again and again for three leases: the key stays held throughout. A reservation
    // that came back within a lease of its renewal was sent, and answered, before the renewed
    // lease could run out: it must find the key held. (One that a stalled machine answered
    // later says nothing, and is not counted.)
    let mut checked = 0;
    while taken.elapsed() < 3 * lease {
        let renewing = Instant::now();
        store.extend(&group, "k", "h", lease).await.expect("extend");
        let found = store.reserve(&group, "k", "h", lease).await.ok();
        if renewing.elapsed() < lease {
            assert_eq!(
                found,
                Some(Reservation::InProgress),
                "after {:?}",
                taken.elapsed()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "only {checked} renewals came back within a lease"
    );
    let last = Instant::now();
    store.extend(&group, "k", "h", lease).await.expect("extend");
    reserve_until_fresh(
        &*store,
        &group,
        "k",
        "h",
        lease,
        last,
        "the lease never ran out",
    )
    .await;
    assert!(
        last.elapsed() >= lease,
        "ran out after {:?}",
        last.elapsed()
    );
    store.complete(&group, "k", TTL).await.expect("complete");
    store.extend(&group, "k", "h", lease).await.expect("extend");
    store
        .extend(&group, "free", "h", lease)
        .await
        .expect("extend");
    assert_eq!(
        store.reserve(&group, "k", "h", lease).await.ok(),
        Some(Reservation::Done)
    );
    assert_eq!(
        store.reserve(&group, "free", "h", lease).await.ok(),
        Some(Reservation::Fresh)
    );
}

/// A lease is its holder's alone: a holder whose lease ran out and was taken over (its member
/// was cut off from the store for longer than the lease) can neither free nor renew the new
/// holder's lease, and no other holder can.
pub async fn a_lease_is_its_holders_alone(store: Arc<dyn DedupStore>) {
    let group = MessageId::new().to_string();
    let short = Duration::from_millis(200);
    let long = Duration::from_secs(60);
    assert_eq!(
        store.reserve(&group, "k", "old", short).await.ok(),
        Some(Reservation::Fresh)
    );
    store.release(&group, "k", "other").await.expect("release");
    assert_eq!(
        store.reserve(&group, "k", "other", short).await.ok(),
        Some(Reservation::InProgress),
        "another holder released the lease"
    );
    // The old holder's lease runs out, and a new holder takes the key, for long.
    let taken = Instant::now();
    reserve_until_fresh(
        &*store,
        &group,
        "k",
        "new",
        long,
        taken,
        "the lease never ran out",
    )
    .await;
    // Late, the old holder releases: that leaves the new holder's lease alone.
    store.release(&group, "k", "old").await.expect("release");
    assert_eq!(
        store.reserve(&group, "k", "third", short).await.ok(),
        Some(Reservation::InProgress),
        "the old holder freed the new holder's lease"
    );
    store.release(&group, "k", "new").await.expect("release");
    // Now a short lease, which the old holder tries to renew for long: it must still run out
    // (well within the patience, which is shorter than the renewal would be).
    assert_eq!(
        store.reserve(&group, "k", "new", short).await.ok(),
        Some(Reservation::Fresh),
        "its holder's release frees it at once"
    );
    store
        .extend(&group, "k", "old", long)
        .await
        .expect("extend");
    let taken = Instant::now();
    reserve_until_fresh(
        &*store,
        &group,
        "k",
        "third",
        short,
        taken,
        "the old holder renewed the new holder's lease",
    )
    .await;
}

/// A release frees a lease at once but never undoes a completion; groups are apart.
pub async fn completion_release_and_groups(store: Arc<dyn DedupStore>) {
    let (a, b) = (MessageId::new().to_string(), MessageId::new().to_string());
    assert_eq!(
        store.reserve(&a, "k", "h", LEASE).await.ok(),
        Some(Reservation::Fresh)
    );
    store.release(&a, "k", "h").await.expect("release");
    assert_eq!(
        store.reserve(&a, "k", "h", LEASE).await.ok(),
        Some(Reservation::Fresh),
        "a released lease is free at once"
    );
    store.complete(&a, "k", TTL).await.expect("complete");
    assert_eq!(
        store.reserve(&a, "k", "h", LEASE).await.ok(),
        Some(Reservation::Done)
    );
    store.release(&a, "k", "h").await.expect("release");
    assert_eq!(
        store.reserve(&a, "k", "h", LEASE).await.ok(),
        Some(Reservation::Done),
        "a release does not undo a completion"
    );
    assert_eq!(
        store.reserve(&b, "k", "h", LEASE).await.ok(),
        Some(Reservation::Fresh),
        "another group is not suppressed"
    );
}

/// A done key is remembered for its TTL and no longer: then it may be taken again.
pub async fn a_completion_is_forgotten_after_its_ttl(store: Arc<dyn DedupStore>) {
    let group = MessageId::new().to_string();
    let ttl = Duration::from_millis(200);
    assert_eq!(
        store.reserve(&group, "k", "h", LEASE).await.ok(),
        Some(Reservation::Fresh)
    );
    let done = Instant::now();
    store.complete(&group, "k", ttl).await.expect("complete");
    loop {
        let found = store
            .reserve(&group, "k", "h", LEASE)
            .await
            .expect("reserve");
        if found == Reservation::Fresh {
            break;
        }
        assert_eq!(found, Reservation::Done);
        assert!(
            done.elapsed() < PATIENCE,
            "the completion was never forgotten"
        );
        tokio::task::yield_now().await;
    }
    assert!(
        done.elapsed() >= ttl,
        "forgotten after {:?}",
        done.elapsed()
    );
}

/// The store is shared: a member that joins after another handled a batch acks the batch's
/// duplicates without calling its handler, because the store remembers them.
pub async fn a_later_member_suppresses_what_an_earlier_one_handled(store_url: &str) {
    const N: usize = 100;
    let broker = format!("memory://store-dedup-{}", MessageId::new());
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
            .dedup_store(store_url)
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

/// A store that cannot be reached fails the start within a few seconds, naming the store
/// without its password. `unreachable` has the password `hunter2` and `shown` is how the
/// error must name it.
pub async fn an_unreachable_store_fails_the_start_fast_naming_it(unreachable: &str, shown: &str) {
    let started = Instant::now();
    let outcome = App::builder()
        .subscribe(
            Subscription::builder(["t"])
                .dedup(DedupKey::MessageId)
                .handler(|_: Message| std::future::ready(Ok::<(), HandlerError>(()))),
        )
        .dedup_store(unreachable)
        .connect(&format!("memory://unreachable-store-{}", MessageId::new()))
        .await;
    let Err(StartError::DedupStore(e)) = outcome else {
        panic!("started, or failed otherwise");
    };
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let text = format!("{e} {e:?}");
    assert!(text.contains(shown), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

/// Turns the bodies of [`stores`](crate::stores) into tests of the store at `$url` (an
/// expression giving a `String`), whose server `tests/brokers.sh up $server` starts.
#[macro_export]
macro_rules! store_suite {
    ($url:expr, $server:literal) => {
        $crate::store_suite!(@store $url, $server;
            of_100_concurrent_reservations_of_one_key_exactly_one_is_fresh,
            concurrent_reservations_of_many_keys_give_one_fresh_per_key,
            an_expired_lease_lets_the_next_reserver_in,
            a_renewed_lease_lasts_until_renewals_stop,
            a_lease_is_its_holders_alone,
            completion_release_and_groups,
            a_completion_is_forgotten_after_its_ttl,
        );

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_later_member_suppresses_what_an_earlier_one_handled() {
            $crate::stores::a_later_member_suppresses_what_an_earlier_one_handled(&$url).await;
        }
    };
    (@store $url:expr, $server:literal; $($name:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::stores::$name($crate::stores::open(&$url, $server).await).await;
            }
        )*
    };
}
