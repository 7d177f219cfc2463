//! Both flows end to end on the embedded broker, through the same wiring the `flows` binary
//! uses.

use std::time::Duration;

use anybus::{App, MessageId, Publisher};
use anybus_examples::events::{topics, OrderPlaced, PlaceOrder, RegisterUser, Registered};
use anybus_examples::orders::inventory::{Inventory, Reservation};
use anybus_examples::orders::payment::{Decline, DECLINED_CARD};
use anybus_examples::scenario::{self, Purchase, Run, Signup, GOOD_CARD};
use anybus_examples::{app, Step, Stores};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const FLOW_TIMEOUT: Duration = Duration::from_secs(30);

fn stores() -> Stores {
    Stores::new(Inventory::with_stock(scenario::STOCK.iter().copied()))
}

async fn connect(stores: &Stores, url: &str) -> App {
    app(stores).connect(url).await.expect("the app starts")
}

fn assert_no_failures(app: &App) {
    for report in app.stats() {
        let s = report.stats;
        assert_eq!(
            (
                s.transient_failures,
                s.permanent_failures,
                s.decode_failures
            ),
            (0, 0, 0),
            "{}",
            report.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_flows_complete_and_leave_consistent_stores() {
    let stores = stores();
    let app = connect(&stores, "memory://examples-flows-e2e").await;
    let run = scenario::start(&app.publisher(), REQUEST_TIMEOUT)
        .await
        .expect("every request is answered");
    scenario::finish(&run, &stores.story, FLOW_TIMEOUT)
        .await
        .expect("every flow ends");
    assert_no_failures(&app);
    app.shutdown().await.expect("the app shuts down cleanly");

    assert_eq!(
        run.report(&stores.story),
        [
            "user ada@example.com: registered as u-1 → welcome mail sent → recommendation profile built (book, lamp)",
            "user grace@example.com: registered as u-2 → welcome mail sent → recommendation profile built (mug)",
            "order o-1 (Ada, 1 × lamp): placed (39.99) → stock reserved → payment taken → shipment arranged (tracking TRK-O-1)",
            "order o-2 (Ada, 2 × book): placed (25.00) → stock reserved → payment declined (card declined) → stock released",
            "order o-3 (Grace, 3 × mug): placed (26.97) → stock reserved → payment taken → shipment arranged (tracking TRK-O-3)",
        ]
    );

    // Users: one account, one welcome mail and one profile each.
    assert_eq!(stores.accounts.count(), 2);
    let mut welcomed: Vec<String> = stores.mailbox.sent().into_iter().map(|m| m.to).collect();
    welcomed.sort();
    assert_eq!(welcomed, ["ada@example.com", "grace@example.com"]);
    assert_eq!(
        stores.profiles.get("u-1").unwrap().recommended,
        ["book", "lamp"]
    );
    assert_eq!(stores.profiles.get("u-2").unwrap().recommended, ["mug"]);

    // Orders: the declined one gave its stock back, the others hold theirs and shipped.
    assert_eq!(stores.orders.count(), 3);
    assert_eq!(stores.orders.get("o-2").unwrap().customer, "u-1");
    assert_eq!(
        stores.inventory.reservation("o-2"),
        Some(Reservation::Released)
    );
    assert_eq!(
        stores.payments.charge_of("o-2"),
        Some(Err(Decline::CardDeclined))
    );
    assert_eq!(stores.inventory.available("book"), 10, "back to the start");
    assert_eq!(stores.inventory.available("lamp"), 5 - 1);
    assert_eq!(stores.inventory.available("mug"), 20 - 3);
    assert_eq!(stores.shipments.shipped(), ["o-1", "o-3"]);
    assert_eq!(stores.story.steps("o-2").last(), Some(&Step::StockReleased));
}

async fn register(publisher: &Publisher, email: &str, name: &str) -> String {
    let request = RegisterUser {
        email: email.into(),
        name: name.into(),
        interests: vec!["coffee".into()],
    };
    let answer: Registered = publisher
        .request(topics::REGISTER_USER, &request, REQUEST_TIMEOUT)
        .await
        .expect("registered");
    answer.user_id
}

async fn place(publisher: &Publisher, request: &PlaceOrder) -> String {
    let answer: OrderPlaced = publisher
        .request(topics::PLACE_ORDER, request, REQUEST_TIMEOUT)
        .await
        .expect("placed");
    answer.order_id
}

/// Repeated requests publish their events again, as a redelivery would; nothing happens twice.
///
/// With one partition per topic every consumer handles a topic's events in publish order, so
/// once the last user's and the last order's flows ended, the repeats before them were handled
/// too: the test waits on the story alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_requests_change_nothing_twice() {
    let stores = stores();
    let app = connect(&stores, "memory://examples-flows-repeats?partitions=1").await;
    let publisher = app.publisher();

    let ada = register(&publisher, "ada@example.com", "Ada").await;
    assert_eq!(register(&publisher, "ada@example.com", "Ada").await, ada);
    let grace = register(&publisher, "grace@example.com", "Grace").await;

    let mugs = |card: &str| PlaceOrder {
        request_id: MessageId::new().to_string(),
        customer: ada.clone(),
        sku: "mug".into(),
        quantity: 2,
        card: card.into(),
    };
    let (paid, declined) = (mugs(GOOD_CARD), mugs(DECLINED_CARD));
    let paid_id = place(&publisher, &paid).await;
    assert_eq!(place(&publisher, &paid).await, paid_id);
    let declined_id = place(&publisher, &declined).await;
    assert_eq!(place(&publisher, &declined).await, declined_id);
    // The last orders of each outcome come after the repeats on every topic they pass.
    let last_paid = place(
        &publisher,
        &PlaceOrder {
            customer: grace.clone(),
            ..mugs(GOOD_CARD)
        },
    )
    .await;
    let last_declined = place(
        &publisher,
        &PlaceOrder {
            customer: grace.clone(),
            ..mugs(DECLINED_CARD)
        },
    )
    .await;

    let signup = |name, email| Signup {
        name,
        email,
        interests: &[],
    };
    let purchase = |customer, card| Purchase {
        customer,
        sku: "mug",
        quantity: 2,
        card,
    };
    let run = Run {
        users: vec![
            (signup("Ada", "ada@example.com"), ada.clone()),
            (signup("Grace", "grace@example.com"), grace),
        ],
        orders: vec![
            (purchase("Ada", GOOD_CARD), paid_id.clone()),
            (purchase("Ada", DECLINED_CARD), declined_id.clone()),
            (purchase("Grace", GOOD_CARD), last_paid.clone()),
            (purchase("Grace", DECLINED_CARD), last_declined.clone()),
        ],
    };
    scenario::finish(&run, &stores.story, FLOW_TIMEOUT)
        .await
        .expect("every flow ends");
    assert_no_failures(&app);
    app.shutdown().await.expect("the app shuts down cleanly");

    assert_eq!(stores.accounts.count(), 2);
    assert_eq!(stores.mailbox.sent().len(), 2, "one welcome mail per user");
    assert_eq!(stores.orders.count(), 4);
    assert_eq!(stores.inventory.available("mug"), 20 - 2 - 2);
    assert_eq!(
        stores.inventory.reservation(&declined_id),
        Some(Reservation::Released)
    );
    assert_eq!(stores.shipments.shipped(), [paid_id.clone(), last_paid]);
    // Each step was recorded once, however often its event came.
    let steps = |id: &str| {
        let mut steps = stores.story.steps(id);
        steps.sort();
        steps
    };
    assert_eq!(
        steps(&ada),
        [Step::Registered, Step::WelcomeMailSent, Step::ProfileBuilt]
    );
    assert_eq!(
        steps(&paid_id),
        [
            Step::Placed,
            Step::StockReserved,
            Step::PaymentTaken,
            Step::ShipmentArranged
        ]
    );
    assert_eq!(
        steps(&declined_id),
        [
            Step::Placed,
            Step::StockReserved,
            Step::PaymentDeclined,
            Step::StockReleased
        ]
    );
}
