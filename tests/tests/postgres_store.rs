//! The PostgreSQL dedup store and inbox against the PostgreSQL that `tests/brokers.sh up
//! postgres` starts (or `ANYBUS_POSTGRES_URL`): the shared store suite, start failures, the
//! inbox's effectively-once writes and rollback, and a store that fails mid-run.
#![cfg(feature = "postgres")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anybus::dedup::sqlx::{self, PgPool, Row};
use anybus::dedup::{DedupStore, Inbox, Reservation};
use anybus::{
    App, DeadLetter, DedupKey, HandlerError, Message, MessageId, RetrySpec, StartError,
    Subscription,
};
use anybus_conformance::{wait_stats, Inbox as Reports, PATIENCE};

fn url() -> String {
    std::env::var("ANYBUS_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://anybus:anybus@127.0.0.1:5432/anybus".into())
}

anybus_conformance::store_suite!(url(), "postgres");

/// A connection of the test's own, to set up tables and look at what handlers wrote.
async fn admin() -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url())
        .await
        .unwrap_or_else(|e| {
            panic!("{e}\n(is PostgreSQL up? `tests/brokers.sh up postgres` starts it)")
        })
}

/// A fresh table `name (order_id text, sku text)` without a unique constraint, so that a
/// second write of one order would show as a second row.
async fn reservations_table(admin: &PgPool) -> String {
    let name = format!(
        "reservations_{}",
        MessageId::new().to_string().replace('-', "_")
    );
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {name} (order_id text NOT NULL, sku text NOT NULL)"
    )))
    .execute(admin)
    .await
    .expect("create the table");
    name
}

async fn rows_per_order(admin: &PgPool, table: &str) -> HashMap<String, i64> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT order_id, count(*) FROM {table} GROUP BY order_id"
    )))
    .fetch_all(admin)
    .await
    .expect("count rows")
    .into_iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct OrderPlaced {
    order_id: String,
    sku: String,
}

/// The handler's write, in its inbox transaction.
async fn reserve(inbox: Inbox, table: &str, order: &OrderPlaced) -> Result<(), HandlerError> {
    let mut tx = inbox.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (order_id, sku) VALUES ($1, $2)"
    )))
    .bind(&order.order_id)
    .bind(&order.sku)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

fn broker() -> String {
    format!("memory://postgres-inbox-{}", MessageId::new())
}

#[tokio::test]
async fn an_unreachable_store_fails_the_start_fast_naming_it() {
    anybus_conformance::stores::an_unreachable_store_fails_the_start_fast_naming_it(
        "postgres://anybus:hunter2@127.0.0.1:1/anybus",
        "postgres://anybus:***@127.0.0.1:1/anybus",
    )
    .await;
}

#[tokio::test]
async fn a_wrong_password_fails_the_start_naming_the_problem() {
    let outcome = App::builder()
        .subscribe(
            Subscription::builder(["t"])
                .dedup(DedupKey::MessageId)
                .handler(|_: Message| std::future::ready(Ok::<(), HandlerError>(()))),
        )
        .dedup_store("postgres://anybus:hunter2@127.0.0.1:5432/anybus")
        .connect(&broker())
        .await;
    let Err(StartError::DedupStore(e)) = outcome else {
        panic!("started, or failed otherwise");
    };
    let text = format!("{e} {e:?}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(text.contains("anybus:***@127.0.0.1:5432"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn a_password_from_a_file_opens_the_store() {
    // The suite's URL without its password, which comes from a file (with the trailing
    // newline a secret mount has) instead.
    let full = url();
    let (scheme, rest) = full.split_once("://").expect("a postgres:// URL");
    let (userinfo, tail) = rest.rsplit_once('@').expect("the suite's URL has a user");
    let (user, password) = userinfo.split_once(':').expect("and a password");
    let file = std::env::temp_dir().join(format!("anybus-pg-pw-{}", MessageId::new()));
    std::fs::write(&file, format!("{password}\n")).expect("write the password file");
    let store = format!(
        "{scheme}://{user}@{tail}{}password_file={}",
        if tail.contains('?') { '&' } else { '?' },
        file.display()
    );
    let app = App::builder()
        .subscribe(
            Subscription::builder(["t"])
                .dedup(DedupKey::MessageId)
                .handler(|_: Message| std::future::ready(Ok::<(), HandlerError>(()))),
        )
        .dedup_store(&store)
        .connect(&broker())
        .await
        .unwrap_or_else(|e| panic!("{e} (is PostgreSQL up? `tests/brokers.sh up postgres`)"));
    app.shutdown().await.expect("shut down");
}

/// Each order published twice (two messages, one `order_id`) is written once, and a handler
/// that commits and then fails (as if the process died before the ack) has its redelivery
/// suppressed: the write is not repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_writes_each_order_once_even_when_the_ack_is_lost() {
    const N: usize = 200;
    let admin = admin().await;
    let table = reservations_table(&admin).await;
    let (tx, mut reports) = Reports::new();
    let t = table.clone();
    let app = App::builder()
        .subscribe(
            Subscription::builder(["orders"])
                .name("stock")
                // A group of its own: the store outlives test runs.
                .group(format!("inventory-{}", MessageId::new()))
                .concurrency(16)
                .dedup(DedupKey::Field("order_id".into()))
                .handler(move |order: OrderPlaced, inbox: Inbox| {
                    let (t, tx) = (t.clone(), tx.clone());
                    async move {
                        reserve(inbox, &t, &order).await?;
                        let _ = tx.send(order.order_id.clone());
                        // Every tenth order loses its ack after the commit.
                        if order.order_id.ends_with('0') {
                            return Err(HandlerError::transient("the ack was lost"));
                        }
                        Ok(())
                    }
                }),
        )
        .dedup_store(&url())
        .connect(&broker())
        .await
        .expect("start");
    for i in 0..N {
        let order = OrderPlaced {
            order_id: format!("o-{i}"),
            sku: "sku-1".into(),
        };
        for _ in 0..2 {
            app.publisher()
                .publish_keyed("orders", order.order_id.clone(), &order)
                .await
                .expect("publish");
        }
    }
    // Every order is written once (a handler reports after its commit), and every message is
    // settled: handled, or acked as a duplicate without its handler.
    let mut written = std::collections::HashSet::new();
    while written.len() < N {
        let order = reports
            .next(&format!("orders written ({} of {N})", written.len()))
            .await;
        assert!(written.insert(order.clone()), "{order} was written twice");
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let stats = wait_stats(&app, "every message settled", deadline, |s| {
        s.handled + s.duplicates == 2 * N as u64
    })
    .await;
    assert_eq!(stats.transient_failures, N as u64 / 10, "{stats:?}");
    assert_eq!(stats.duplicates, N as u64 + N as u64 / 10, "{stats:?}");
    assert_eq!(
        reports.drain_ready(),
        Vec::<String>::new(),
        "a second write"
    );
    let rows = rows_per_order(&admin, &table).await;
    assert_eq!(rows.len(), N);
    assert!(rows.values().all(|n| *n == 1), "{rows:?}");
    app.shutdown().await.expect("shutdown");
}

/// A handler whose transaction fails rolls back its write and the dedup mark together: the
/// key is free again, the redelivery runs the handler, and one row is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transaction_rolls_back_the_dedup_mark() {
    let admin = admin().await;
    let table = reservations_table(&admin).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let (tx, mut reports) = Reports::new();
    let (t, c) = (table.clone(), Arc::clone(&calls));
    let app = App::builder()
        .subscribe(
            Subscription::builder(["orders"])
                .name("stock")
                .group("inventory")
                .dedup(DedupKey::Field("order_id".into()))
                .handler(move |order: OrderPlaced, inbox: Inbox| {
                    let (t, c, tx) = (t.clone(), Arc::clone(&c), tx.clone());
                    async move {
                        let first = c.fetch_add(1, AtomicOrdering::SeqCst) == 0;
                        let mut db = inbox.begin().await?;
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "INSERT INTO {t} (order_id, sku) VALUES ($1, $2)"
                        )))
                        .bind(&order.order_id)
                        .bind(&order.sku)
                        .execute(&mut *db)
                        .await?;
                        if first {
                            // Fails before the commit: the transaction is dropped.
                            let _ = tx.send("failed");
                            return Err(HandlerError::transient("the warehouse is busy"));
                        }
                        db.commit().await?;
                        let _ = tx.send("committed");
                        Ok(())
                    }
                }),
        )
        // A lease far longer than the test's patience: only the rollback and release let the
        // redelivery in.
        .dedup_lease(Duration::from_secs(3600))
        .dedup_store(&url())
        .connect(&broker())
        .await
        .expect("start");
    let order = OrderPlaced {
        order_id: format!("o-{}", MessageId::new()),
        sku: "sku-1".into(),
    };
    app.publisher()
        .publish("orders", &order)
        .await
        .expect("publish");
    assert_eq!(reports.next("the first attempt").await, "failed");
    assert_eq!(reports.next("the redelivery").await, "committed");
    let rows = rows_per_order(&admin, &table).await;
    assert_eq!(rows.get(&order.order_id), Some(&1), "{rows:?}");
    assert_eq!(calls.load(AtomicOrdering::SeqCst), 2);
    app.shutdown().await.expect("shutdown");
}

/// `Ok` from a handler that began its inbox transaction and dropped it would lose its writes
/// silently; it is a permanent failure, dead-lettered with that reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_without_a_commit_is_a_permanent_failure() {
    let (tx, mut dead) = Reports::new();
    let app = App::builder()
        .subscribe(
            Subscription::builder(["orders"])
                .name("forgetful")
                .group("inventory")
                .dedup(DedupKey::MessageId)
                .handler(|_: Message, inbox: Inbox| async move {
                    let _tx = inbox.begin().await?;
                    Ok::<(), HandlerError>(())
                }),
        )
        .subscribe(
            Subscription::builder(["orders.dlq"])
                .name("dead-letters")
                .group("reader")
                .dead_letter(DeadLetter::Disabled)
                .handler(move |m: Message| {
                    let _ = tx.send(m);
                    std::future::ready(Ok::<(), HandlerError>(()))
                }),
        )
        .dedup_store(&url())
        .connect(&broker())
        .await
        .expect("start");
    app.publisher()
        .send(Message::new("orders", "{}"))
        .await
        .expect("publish");
    let letter = dead.next("the dead letter").await;
    let error = letter
        .headers()
        .get_str(anybus::header::DLQ_ERROR)
        .expect("an error header");
    assert!(
        error.contains("without committing its inbox transaction"),
        "{error}"
    );
    assert_eq!(
        letter.headers().get_str(anybus::header::DLQ_REASON),
        Some("permanent")
    );
    app.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn an_inbox_needs_dedup_and_a_postgres_store() {
    let inbox_handler = |_: Message, _: Inbox| std::future::ready(Ok::<(), HandlerError>(()));
    let without_dedup = App::builder()
        .subscribe(
            Subscription::builder(["t"])
                .name("no-dedup")
                .handler(inbox_handler),
        )
        .dedup_store(&url())
        .connect(&broker())
        .await;
    let Err(StartError::Invalid {
        subscription,
        reason,
    }) = without_dedup
    else {
        panic!("started without dedup, or failed otherwise");
    };
    assert_eq!(subscription, "no-dedup");
    assert!(reason.contains("`dedup`"), "{reason}");

    let memory_store = App::builder()
        .subscribe(
            Subscription::builder(["t"])
                .name("memory-store")
                .dedup(DedupKey::MessageId)
                .handler(inbox_handler),
        )
        .connect(&broker())
        .await;
    let Err(StartError::Invalid { reason, .. }) = memory_store else {
        panic!("started with the memory store, or failed otherwise");
    };
    assert!(reason.contains("PostgreSQL dedup store"), "{reason}");
    assert!(reason.contains("memory://"), "{reason}");
}

/// A store that fails mid-run (its table renamed away, so every statement of the store fails)
/// makes deliveries transient failures that come again; once it is back, every message is
/// handled, each exactly once. The store's table lives in a schema of the test's own, so the
/// outage touches no other test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failing_mid_run_delays_but_neither_skips_nor_repeats() {
    const N: usize = 100;
    let topic = "events";
    let admin = admin().await;
    let schema = format!("outage_{}", MessageId::new().to_string().replace('-', "_"));
    let ddl = |sql: String| sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&admin);
    ddl(format!("CREATE SCHEMA {schema}"))
        .await
        .expect("create the schema");
    let calls: Arc<Mutex<HashMap<MessageId, usize>>> = Arc::default();
    let (tx, mut reports) = Reports::new();
    let counted = Arc::clone(&calls);
    let store = format!("{}?options=-c%20search_path%3D{schema}", url());
    let app = App::builder()
        .subscribe(
            Subscription::builder([topic])
                .name("counted")
                .group(MessageId::new().to_string())
                .concurrency(8)
                .dedup(DedupKey::MessageId)
                .handler(move |m: Message| {
                    *counted.lock().expect("lock").entry(m.id()).or_default() += 1;
                    let _ = tx.send(m.id());
                    std::future::ready(Ok::<(), HandlerError>(()))
                }),
        )
        .dedup_store(&store)
        .connect(&broker())
        .await
        .expect("start");
    let publisher = app.publisher();
    let publish = |i: usize| publisher.send(Message::new(topic, i.to_string()));
    for i in 0..N / 2 {
        publish(i).await.expect("publish");
    }
    reports.take(N / 2, "the first half").await;

    ddl(format!("ALTER TABLE {schema}.anybus_dedup RENAME TO away"))
        .await
        .expect("take the store's table away");
    for i in N / 2..N {
        publish(i).await.expect("publish");
    }
    // Wait until the outage is seen, then end it.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    wait_stats(&app, "no delivery met the outage", deadline, |s| {
        s.store_failures >= 3
    })
    .await;
    assert!(
        reports.drain_ready().is_empty(),
        "a handler ran without its reservation"
    );
    ddl(format!("ALTER TABLE {schema}.away RENAME TO anybus_dedup"))
        .await
        .expect("bring the store's table back");
    reports.take(N / 2, "the second half").await;
    {
        let calls = calls.lock().expect("lock");
        assert_eq!(calls.len(), N);
        assert!(calls.values().all(|n| *n == 1), "a handler ran twice");
    }
    app.shutdown().await.expect("shutdown");
    ddl(format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .expect("drop the schema");
}

/// An attempt that committed its inbox transaction and then failed is not tried again: its
/// writes stand, so another attempt could only find the key done. The message is acked as
/// handled before (a duplicate), not dead-lettered and not written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_a_committed_inbox_is_acked_as_a_duplicate() {
    let admin = admin().await;
    let table = reservations_table(&admin).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let (tx, mut reports) = Reports::new();
    let (t, c) = (table.clone(), Arc::clone(&calls));
    let app = App::builder()
        .subscribe(
            Subscription::builder(["orders"])
                .name("stock")
                .group(format!("inventory-{}", MessageId::new()))
                .retry(RetrySpec {
                    initial: Duration::from_millis(1),
                    max: Duration::from_millis(1),
                    ..RetrySpec::default()
                })
                .dedup(DedupKey::Field("order_id".into()))
                .handler(move |order: OrderPlaced, inbox: Inbox| {
                    let (t, c, tx) = (t.clone(), Arc::clone(&c), tx.clone());
                    async move {
                        c.fetch_add(1, AtomicOrdering::SeqCst);
                        let outcome = reserve(inbox, &t, &order).await;
                        let _ = tx.send(match &outcome {
                            Ok(()) => "Ok".to_owned(),
                            Err(e) => e.to_string(),
                        });
                        outcome?;
                        Err::<(), _>(HandlerError::transient("the ack was lost"))
                    }
                }),
        )
        .dedup_store(&url())
        .connect(&broker())
        .await
        .expect("start");
    let order = OrderPlaced {
        order_id: format!("o-{}", MessageId::new()),
        sku: "sku-1".into(),
    };
    app.publisher()
        .publish("orders", &order)
        .await
        .expect("publish");
    assert_eq!(reports.next("the first attempt").await, "Ok");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let stats = wait_stats(&app, "the message acked", deadline, |s| s.duplicates == 1).await;
    assert_eq!(
        (
            stats.dead_lettered,
            stats.handled,
            stats.retries,
            stats.transient_failures
        ),
        (0, 0, 0, 1),
        "{stats:?}"
    );
    assert_eq!(
        calls.load(AtomicOrdering::SeqCst),
        1,
        "the handler ran again"
    );
    assert!(reports.drain_ready().is_empty(), "a second attempt");
    let rows = rows_per_order(&admin, &table).await;
    assert_eq!(rows.get(&order.order_id), Some(&1), "{rows:?}");
    app.shutdown().await.expect("shutdown");
}

/// A key whose row an open transaction holds (an inbox transaction of a duplicate delivery)
/// comes back `InProgress` after a short wait, the keys reserved in the same batch are not held
/// up behind it, and renewing its lease does not wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_row_does_not_hold_up_the_rest_of_its_batch() {
    let store = anybus_conformance::stores::open(&url(), "postgres").await;
    let group = MessageId::new().to_string();
    let lease = Duration::from_secs(30);
    assert_eq!(
        store.reserve(&group, "held", "h", lease).await.ok(),
        Some(Reservation::Fresh)
    );
    let admin = admin().await;
    let mut holder = admin.begin().await.expect("begin");
    sqlx::query(
        "SELECT 1 FROM anybus_dedup WHERE consumer_group = $1 AND dedup_key = 'held' FOR UPDATE",
    )
    .bind(&group)
    .execute(&mut *holder)
    .await
    .expect("hold the row");
    let reserve = |key: String| {
        let (store, group) = (Arc::clone(&store), group.clone());
        tokio::spawn(async move { (store.reserve(&group, &key, "h", lease).await, key) })
    };
    let tasks: Vec<_> = std::iter::once("held".to_owned())
        .chain((0..20).map(|i| format!("k{i}")))
        .map(reserve)
        .collect();
    for task in tasks {
        // Bounded: without the store's lock timeout this would wait for the rollback below.
        let (found, key) = tokio::time::timeout(PATIENCE, task)
            .await
            .expect("a reservation waited for the held row")
            .expect("task");
        let expected = if key == "held" {
            Reservation::InProgress
        } else {
            Reservation::Fresh
        };
        assert_eq!(found.expect("reserve"), expected, "{key}");
    }
    // A renewal skips the held row (the holder's lock keeps others out) instead of failing.
    tokio::time::timeout(PATIENCE, store.extend(&group, "held", "h", lease))
        .await
        .expect("a renewal waited for the held row")
        .expect("a renewal of a held row");
    holder.rollback().await.expect("let go");
}

/// Keys PostgreSQL would refuse as they are (a zero byte; longer than its index takes) are
/// stored hashed: reserved, completed and told apart like any other, without failing the keys
/// batched with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_keys_are_stored_and_told_apart() {
    let store: Arc<dyn DedupStore> = anybus_conformance::stores::open(&url(), "postgres").await;
    let group = MessageId::new().to_string();
    let lease = Duration::from_secs(30);
    let long = "x".repeat(5_000);
    let keys = [
        "a\0b".to_owned(),
        "a\0c".to_owned(),
        long.clone(),
        format!("{long}y"),
        "#abc".to_owned(),
        "plain".to_owned(),
    ];
    let tasks: Vec<_> = keys
        .iter()
        .cloned()
        .map(|key| {
            let (store, group) = (Arc::clone(&store), group.clone());
            tokio::spawn(async move { store.reserve(&group, &key, "h", lease).await })
        })
        .collect();
    for (task, key) in tasks.into_iter().zip(&keys) {
        let found = task.await.expect("task").expect("reserve");
        assert_eq!(found, Reservation::Fresh, "{}", &key[..key.len().min(8)]);
    }
    store
        .complete(&group, &keys[0], Duration::from_secs(60))
        .await
        .expect("complete");
    store
        .complete(&group, &keys[2], Duration::from_secs(60))
        .await
        .expect("complete");
    let states: Vec<Reservation> = {
        let mut states = Vec::new();
        for key in &keys {
            states.push(
                store
                    .reserve(&group, key, "h", lease)
                    .await
                    .expect("reserve"),
            );
        }
        states
    };
    use Reservation::{Done, InProgress};
    assert_eq!(
        states,
        [Done, InProgress, Done, InProgress, InProgress, InProgress]
    );
}

/// A table an earlier version created, without the holder of a lease, gains it when a member
/// connects: what the table held still counts, and leases are their holders' alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_an_earlier_version_gains_lease_holders() {
    let admin = admin().await;
    let schema = format!("earlier_{}", MessageId::new().to_string().replace('-', "_"));
    let ddl = |sql: String| sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&admin);
    ddl(format!("CREATE SCHEMA {schema}"))
        .await
        .expect("create the schema");
    ddl(format!(
        "CREATE TABLE {schema}.anybus_dedup (
            consumer_group text NOT NULL,
            dedup_key text NOT NULL,
            done boolean NOT NULL,
            expires_at timestamptz NOT NULL,
            PRIMARY KEY (consumer_group, dedup_key))"
    ))
    .await
    .expect("the earlier table");
    ddl(format!(
        "INSERT INTO {schema}.anybus_dedup VALUES ('g', 'handled', true, now() + interval '1 hour')"
    ))
    .await
    .expect("a key handled before");
    let url = format!("{}?options=-c%20search_path%3D{schema}", url());
    // While a transaction holds the table, the column cannot be added: the start fails soon,
    // saying what to run by hand, rather than stall every member behind the lock.
    let mut busy = admin.begin().await.expect("begin");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT 1 FROM {schema}.anybus_dedup FOR UPDATE"
    )))
    .execute(&mut *busy)
    .await
    .expect("hold the table");
    let refused = anybus::dedup::connect(&url)
        .await
        .expect_err("the column was added under a held lock");
    // (The test's password is `anybus`, which errors hide, also inside the table's name.)
    assert!(
        refused.reason.contains("_dedup ADD COLUMN holder text"),
        "{refused}"
    );
    busy.rollback().await.expect("let go");
    let store = anybus_conformance::stores::open(&url, "postgres").await;
    let lease = Duration::from_secs(30);
    assert_eq!(
        store.reserve("g", "handled", "a", lease).await.ok(),
        Some(Reservation::Done)
    );
    assert_eq!(
        store.reserve("g", "k", "a", lease).await.ok(),
        Some(Reservation::Fresh)
    );
    store.release("g", "k", "b").await.expect("release");
    assert_eq!(
        store.reserve("g", "k", "b", lease).await.ok(),
        Some(Reservation::InProgress),
        "another holder released the lease"
    );
    store.release("g", "k", "a").await.expect("release");
    assert_eq!(
        store.reserve("g", "k", "b", lease).await.ok(),
        Some(Reservation::Fresh)
    );
    drop(store);
    ddl(format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .expect("drop the schema");
}
