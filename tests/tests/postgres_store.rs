//! The PostgreSQL dedup store and inbox against the PostgreSQL that `tests/brokers.sh up
//! postgres` starts (or `ANYBUS_POSTGRES_URL`): the shared store suite, start failures, the
//! inbox's effectively-once writes and rollback, and a store that fails mid-run.
#![cfg(feature = "postgres")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anybus::dedup::sqlx::{self, PgPool, Row};
use anybus::dedup::Inbox;
use anybus::{
    App, DeadLetter, DedupKey, HandlerError, Message, MessageId, StartError, Subscription,
};
use anybus_conformance::{Inbox as Reports, PATIENCE};

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
async fn reserve(inbox: &Inbox, table: &str, order: &OrderPlaced) -> Result<(), HandlerError> {
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
                        reserve(&inbox, &t, &order).await?;
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
    loop {
        let stats = app.stats()[0].stats;
        if stats.handled + stats.duplicates == 2 * N as u64 {
            assert_eq!(stats.transient_failures, N as u64 / 10, "{stats:?}");
            assert_eq!(stats.duplicates, N as u64 + N as u64 / 10, "{stats:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stats:?}");
        tokio::task::yield_now().await;
    }
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

/// A store that stops answering mid-run (its table locked, so every statement of the store
/// times out) makes deliveries transient failures that come again; once it answers, every
/// message is handled, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failing_mid_run_delays_but_neither_skips_nor_repeats() {
    const N: usize = 100;
    let topic = "events";
    let calls: Arc<Mutex<HashMap<MessageId, usize>>> = Arc::default();
    let (tx, mut reports) = Reports::new();
    let counted = Arc::clone(&calls);
    // lock_timeout: a statement that waits on the locked table fails after 100 ms.
    let store = format!("{}?options=-c%20lock_timeout%3D100", url());
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

    let admin = admin().await;
    let mut outage = admin.begin().await.expect("begin");
    sqlx::query("LOCK TABLE anybus_dedup IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *outage)
        .await
        .expect("lock the store's table");
    for i in N / 2..N {
        publish(i).await.expect("publish");
    }
    // Wait until the outage is seen, then end it.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while app.stats()[0].stats.transient_failures < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery met the outage"
        );
        tokio::task::yield_now().await;
    }
    outage.rollback().await.expect("unlock");
    reports.take(N / 2, "the second half").await;
    {
        let calls = calls.lock().expect("lock");
        assert_eq!(calls.len(), N);
        assert!(calls.values().all(|n| *n == 1), "a handler ran twice");
    }
    app.shutdown().await.expect("shutdown");
}
