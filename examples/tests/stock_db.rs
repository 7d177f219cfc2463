//! The order flow with the inventory on PostgreSQL (feature `postgres`), against the database
//! that `tests/brokers.sh up postgres` starts (or `ANYBUS_POSTGRES_URL`): the flows end as they
//! do in memory, and an `OrderCreated` delivered twice takes its stock once.
#![cfg(feature = "postgres")]

use std::time::Duration;

use anybus::{App, Codec, Json, Message, StatsSnapshot};
use anybus_examples::events::{topics, Order, OrderCreated};
use anybus_examples::orders::inventory::Inventory;
use anybus_examples::orders::stock_db::StockDb;
use anybus_examples::scenario::{self, GOOD_CARD};
use anybus_examples::{app_with_stock_db, Step, Stores};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const FLOW_TIMEOUT: Duration = Duration::from_secs(30);

fn url() -> String {
    std::env::var("ANYBUS_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://anybus:anybus@127.0.0.1:5432/anybus".into())
}

/// Stores with an empty in-memory inventory (the database has the stock), and the database.
async fn shop() -> (Stores, StockDb) {
    let db = StockDb::create(&url(), scenario::STOCK.iter().copied())
        .await
        .unwrap_or_else(|e| {
            panic!("{e}\n(is PostgreSQL up? `tests/brokers.sh up postgres` starts it)")
        });
    (Stores::new(Inventory::default()), db)
}

fn stats_of(app: &App, name: &str) -> StatsSnapshot {
    app.stats()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no subscription {name}"))
        .stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_flows_complete_with_the_inventory_in_postgres() {
    let (stores, db) = shop().await;
    let app = app_with_stock_db(&stores, &db, &url())
        .connect("memory://examples-stock-db-flows")
        .await
        .expect("the app starts");
    let run = scenario::start(&app.publisher(), REQUEST_TIMEOUT)
        .await
        .expect("every request is answered");
    scenario::finish(&run, &stores.story, FLOW_TIMEOUT)
        .await
        .expect("every flow ends");
    app.shutdown().await.expect("the app shuts down cleanly");
    assert_eq!(
        run.report(&stores.story)[2..],
        [
            "order o-1 (Ada, 1 × lamp): placed (39.99) → stock reserved → payment taken → shipment arranged (tracking TRK-O-1)",
            "order o-2 (Ada, 2 × book): placed (25.00) → stock reserved → payment declined (card declined) → stock released",
            "order o-3 (Grace, 3 × mug): placed (26.97) → stock reserved → payment taken → shipment arranged (tracking TRK-O-3)",
        ]
    );
    let levels = db.levels().await.expect("levels");
    assert_eq!(levels["book"], 10, "back to the start");
    assert_eq!(levels["lamp"], 5 - 1);
    assert_eq!(levels["mug"], 20 - 3);
    assert_eq!(db.reservations("o-2").await.expect("rows"), [(2, true)]);
    assert_eq!(db.reservations("o-3").await.expect("rows"), [(3, false)]);
    db.drop_schema().await.expect("drop the schema");
}

/// The broker delivers one `OrderCreated` twice (the same message: a crash before the ack, a
/// rebalance), and the checkout publishes it a third time as a new message: the stock is
/// taken once, one reservation row is written, and the copies are acked as duplicates
/// without running the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_created_three_times_takes_its_stock_once() {
    let (stores, db) = shop().await;
    let app = app_with_stock_db(&stores, &db, &url())
        .connect("memory://examples-stock-db-twice?partitions=1")
        .await
        .expect("the app starts");
    let order = Order {
        order_id: "o-42".into(),
        customer: "u-1".into(),
        sku: "mug".into(),
        quantity: 3,
        amount_cents: 2_697,
        card: GOOD_CARD.into(),
    };
    let created = Message::new(
        topics::ORDER_CREATED,
        Json::encode(&OrderCreated {
            order: order.clone(),
        })
        .expect("encode"),
    )
    .with_key("o-42");
    let republished =
        Message::new(topics::ORDER_CREATED, created.payload().clone()).with_key("o-42");
    assert_ne!(created.id(), republished.id());
    for message in [created.clone(), created, republished] {
        app.publisher().send(message).await.expect("publish");
    }
    // One partition: the three copies are settled in order, and the flow's end comes after
    // the first.
    let deadline = tokio::time::Instant::now() + FLOW_TIMEOUT;
    loop {
        let s = stats_of(&app, "reserve_stock_once");
        if s.handled + s.duplicates == 3
            && stores.story.steps("o-42").contains(&Step::ShipmentArranged)
        {
            assert_eq!((s.handled, s.duplicates), (1, 2), "{s:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s:?}");
        tokio::task::yield_now().await;
    }
    app.shutdown().await.expect("the app shuts down cleanly");
    assert_eq!(db.levels().await.expect("levels")["mug"], 20 - 3);
    assert_eq!(db.reservations("o-42").await.expect("rows"), [(3, false)]);
    assert_eq!(
        stores.story.steps("o-42"),
        [
            Step::StockReserved,
            Step::PaymentTaken,
            Step::ShipmentArranged
        ]
    );
    db.drop_schema().await.expect("drop the schema");
}
