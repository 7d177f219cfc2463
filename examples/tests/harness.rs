//! The order flow under `anybus::testing::TestApp`: every service of both flows on a private
//! embedded broker, an event published into the middle of the flow, and waits for what the
//! services did (handled deliveries, follow-up events, dead letters) instead of sleeps.

use anybus::testing::TestApp;
use anybus::{header, Message};
use anybus_examples::events::{topics, Order, OrderCreated, ShipmentArranged, StockReleased};
use anybus_examples::orders::inventory::{Inventory, Reservation};
use anybus_examples::orders::payment::DECLINED_CARD;
use anybus_examples::scenario::{self, GOOD_CARD};
use anybus_examples::{app, Stores};

fn stores() -> Stores {
    Stores::new(Inventory::with_stock(scenario::STOCK.iter().copied()))
}

fn order(id: &str, sku: &str, quantity: u32, card: &str) -> OrderCreated {
    OrderCreated {
        order: Order {
            order_id: id.into(),
            customer: "u-1".into(),
            sku: sku.into(),
            quantity,
            amount_cents: 1000,
            card: card.into(),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_order_is_shipped_and_a_declined_one_gives_its_stock_back() {
    let stores = stores();
    let bus = TestApp::start(app(&stores)).await.expect("the app starts");
    let publisher = bus.publisher();
    publisher
        .publish_keyed(
            topics::ORDER_CREATED,
            "o-1",
            &order("o-1", "lamp", 1, GOOD_CARD),
        )
        .await
        .unwrap();
    publisher
        .publish_keyed(
            topics::ORDER_CREATED,
            "o-2",
            &order("o-2", "book", 2, DECLINED_CARD),
        )
        .await
        .unwrap();

    let shipped: Vec<ShipmentArranged> = bus.events(topics::SHIPMENT_ARRANGED, 1).await.unwrap();
    assert_eq!(shipped[0].order_id, "o-1");
    let released: Vec<StockReleased> = bus.events(topics::STOCK_RELEASED, 1).await.unwrap();
    assert_eq!(
        (released[0].order_id.as_str(), released[0].quantity),
        ("o-2", 2)
    );
    // Each handler acknowledged what it handled: the inventory both orders, the compensation
    // the declined one.
    assert_eq!(bus.handled("reserve_stock", 2).await.unwrap().handled, 2);
    let compensation = bus.handled("release_stock", 1).await.unwrap();
    assert_eq!(
        (
            compensation.transient_failures,
            compensation.permanent_failures
        ),
        (0, 0)
    );
    assert_eq!(stores.inventory.available("book"), 10, "back to the start");
    assert_eq!(stores.inventory.available("lamp"), 5 - 1);
    assert_eq!(
        stores.inventory.reservation("o-2"),
        Some(Reservation::Released)
    );
    bus.shutdown().await.expect("the app shuts down cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_event_that_does_not_decode_is_dead_lettered_and_takes_no_stock() {
    let stores = stores();
    let bus = TestApp::start(app(&stores)).await.expect("the app starts");
    bus.publisher()
        .send(Message::new(topics::ORDER_CREATED, "{\"order\": 7}").with_key("o-bad"))
        .await
        .unwrap();

    let letters = bus.dead_letters(topics::ORDER_CREATED, 1).await.unwrap();
    let headers = letters[0].headers();
    assert_eq!(headers.get_str(header::DLQ_REASON), Some("decode"));
    assert_eq!(headers.get_str(header::DLQ_GROUP), Some("inventory"));
    assert_eq!(letters[0].key().map(|k| &k[..]), Some(&b"o-bad"[..]));
    let stats = bus.dead_lettered("reserve_stock", 1).await.unwrap();
    assert_eq!((stats.handled, stats.decode_failures), (0, 1));
    assert_eq!(stores.inventory.levels(), stores_at_start());
    assert!(bus.broker().messages(topics::STOCK_RESERVED).is_empty());
    bus.shutdown().await.expect("the app shuts down cleanly");
}

fn stores_at_start() -> std::collections::BTreeMap<String, u32> {
    stores().inventory.levels()
}
