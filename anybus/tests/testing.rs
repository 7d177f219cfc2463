//! `anybus::testing`: handlers that take `Context` or `Publisher` called directly, and apps on a
//! private embedded broker whose outcomes a test waits for without sleeping.

use std::time::Duration;

use anybus::testing::{self, Recorder, TestApp, WaitError};
use anybus::{
    header, App, Context, HandlerError, MessageId, Publisher, RetrySpec, State, Subscription,
};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct OrderCreated {
    order_id: String,
    quantity: u32,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct StockReserved {
    order_id: String,
    attempt: u32,
    tenant: String,
}

struct Shelf {
    limit: u32,
}

/// Reserves stock, echoing what its context says; refuses (permanently) more than the shelf
/// holds.
#[anybus::subscriber(topic = "orders.created", group = "inventory")]
async fn reserve(
    order: OrderCreated,
    ctx: Context,
    shelf: State<Shelf>,
    publisher: Publisher,
) -> Result<(), HandlerError> {
    if order.quantity > shelf.limit {
        return Err(HandlerError::permanent(std::io::Error::other(format!(
            "only {} on the shelf",
            shelf.limit
        ))));
    }
    let reserved = StockReserved {
        order_id: order.order_id.clone(),
        attempt: ctx.attempt(),
        tenant: ctx.headers().get_str("x-tenant").unwrap_or("-").to_owned(),
    };
    let key = ctx.key().cloned().unwrap_or_default();
    publisher
        .publish_keyed("stock.reserved", key, &reserved)
        .await?;
    Ok(())
}

fn order(id: &str, quantity: u32) -> OrderCreated {
    OrderCreated {
        order_id: id.into(),
        quantity,
    }
}

#[tokio::test]
async fn a_handler_taking_context_and_publisher_is_called_directly() {
    let recorder = Recorder::new();
    let ctx = recorder
        .context("orders.created")
        .key("o-1")
        .header("x-tenant", "acme")
        .attempt(3)
        .build();
    let shelf = State(std::sync::Arc::new(Shelf { limit: 5 }));
    reserve(order("o-1", 2), ctx, shelf, recorder.publisher())
        .await
        .unwrap();

    let reserved: Vec<StockReserved> = recorder.events("stock.reserved").unwrap();
    assert_eq!(
        reserved,
        [StockReserved {
            order_id: "o-1".into(),
            attempt: 3,
            tenant: "acme".into(),
        }]
    );
    let sent = recorder.messages();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].key().map(|k| &k[..]), Some(&b"o-1"[..]));
    assert_eq!(sent[0].origin().offset, Some(0));
    assert!(recorder.messages_on("orders.created").is_empty());
}

#[test]
fn a_built_context_says_what_it_was_given() {
    let id = MessageId::new();
    let ctx = testing::context("payments.taken")
        .key("k")
        .header("a", "1")
        .header("a", "2")
        .payload(&b"{}"[..])
        .message_id(id)
        .partition(2)
        .offset(41)
        .group("billing")
        .attempt(4)
        .state(Shelf { limit: 7 })
        .build();
    assert_eq!(ctx.topic(), "payments.taken");
    assert_eq!(ctx.key().map(|k| &k[..]), Some(&b"k"[..]));
    let values: Vec<&[u8]> = ctx.headers().iter().map(|(_, v)| &v[..]).collect();
    assert_eq!(values, [&b"1"[..], &b"2"[..]]);
    assert_eq!(&ctx.message().payload()[..], b"{}");
    assert_eq!(ctx.message_id(), id);
    assert_eq!((ctx.partition(), ctx.offset()), (Some(2), Some(41)));
    assert_eq!((ctx.group(), ctx.attempt()), ("billing", 4));
    assert_eq!(ctx.state::<Shelf>().map(|s| s.limit), Some(7));
    assert!(ctx.state::<String>().is_none());

    let plain = testing::context("t").build();
    assert_eq!((plain.attempt(), plain.group()), (1, "test"));
    assert_eq!(
        (plain.key(), plain.partition(), plain.offset()),
        (None, None, None)
    );
    assert!(plain.headers().is_empty());
}

#[tokio::test]
async fn a_recorded_request_times_out_instead_of_hanging() {
    let recorder = Recorder::new();
    let answer: Result<String, _> = recorder
        .publisher()
        .request("prices.request", "lamp", Duration::from_millis(10))
        .await;
    assert!(
        matches!(answer, Err(anybus::RequestError::Timeout { .. })),
        "{answer:?}"
    );
    assert_eq!(recorder.messages_on("prices.request").len(), 1);
}

fn inventory() -> anybus::AppBuilder {
    App::builder()
        .state(Shelf { limit: 5 })
        .subscribe(reserve::subscription())
}

#[tokio::test]
async fn the_test_app_waits_for_handled_deliveries_and_their_events() {
    let bus = TestApp::start(inventory()).await.unwrap();
    for id in ["o-1", "o-2", "o-3"] {
        bus.publisher()
            .publish_keyed("orders.created", id, &order(id, 1))
            .await
            .unwrap();
    }
    let stats = bus.handled("reserve", 3).await.unwrap();
    assert_eq!((stats.handled, stats.permanent_failures), (3, 0));
    let mut reserved: Vec<String> = bus
        .events::<StockReserved>("stock.reserved", 3)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.order_id)
        .collect();
    reserved.sort();
    assert_eq!(reserved, ["o-1", "o-2", "o-3"]);
    bus.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_test_app_waits_for_the_dead_letter_of_a_refused_order() {
    let bus = TestApp::start(inventory()).await.unwrap();
    bus.publish("orders.created", &order("o-9", 50))
        .await
        .unwrap();
    let letters = bus.dead_letters("orders.created", 1).await.unwrap();
    let headers = letters[0].headers();
    assert_eq!(headers.get_str(header::DLQ_REASON), Some("permanent"));
    assert_eq!(
        headers.get_str(header::DLQ_ERROR),
        Some("permanent failure: only 5 on the shelf")
    );
    let stats = bus.dead_lettered("reserve", 1).await.unwrap();
    assert_eq!((stats.handled, stats.dead_lettered), (0, 1));
    assert!(bus.broker().messages("stock.reserved").is_empty());
    bus.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_wait_past_its_deadline_says_what_it_waited_for_and_what_there_was() {
    let bus = TestApp::start(inventory())
        .await
        .unwrap()
        .with_deadline(Duration::from_millis(50));
    bus.publish("orders.created", &order("o-9", 50))
        .await
        .unwrap();
    bus.dead_lettered("reserve", 1).await.unwrap();

    let error = bus.handled("reserve", 1).await.unwrap_err();
    assert!(matches!(error, WaitError::Deadline { .. }), "{error}");
    assert_eq!(
        error.to_string(),
        "waited 50ms for subscription `reserve` to handle 1 delivery, but it handled 0; \
         transient failures 0, permanent failures 1 (decode 0), dead-lettered 1, duplicates 0"
    );
    let error = bus
        .events::<StockReserved>("stock.reserved", 1)
        .await
        .unwrap_err();
    assert_eq!(
        format!("{error:?}"),
        "waited 50ms for 1 message on `stock.reserved`, but it holds 0"
    );
    bus.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_wait_for_an_unknown_subscription_fails_at_once_naming_the_known_ones() {
    let bus = TestApp::start(inventory()).await.unwrap();
    let error = bus.handled("reserve_stock", 1).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "the app has no subscription `reserve_stock`; it has [\"reserve\"]"
    );
    bus.shutdown().await.unwrap();
}

#[tokio::test]
async fn events_that_do_not_decode_are_named_by_topic_and_place() {
    let bus = TestApp::start(App::builder()).await.unwrap();
    bus.publish("stock.reserved", "not an object")
        .await
        .unwrap();
    let error = bus
        .events::<StockReserved>("stock.reserved", 1)
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("message 0 on `stock.reserved` does not decode as testing::StockReserved"),
        "{error}"
    );
    bus.shutdown().await.unwrap();
}

#[tokio::test]
async fn test_apps_do_not_share_their_broker() {
    let first = TestApp::start(inventory()).await.unwrap();
    let second = TestApp::start(inventory()).await.unwrap();
    first
        .publish("orders.created", &order("o-1", 1))
        .await
        .unwrap();
    first.handled("reserve", 1).await.unwrap();
    assert_eq!(second.stats("reserve").unwrap().handled, 0);
    assert!(second.broker().messages("orders.created").is_empty());
    assert_ne!(first.broker().name(), second.broker().name());
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn until_waits_for_any_condition_on_the_app() {
    let bus = TestApp::start_with(inventory(), "partitions=1")
        .await
        .unwrap();
    for id in ["o-1", "o-2"] {
        bus.publish("orders.created", &order(id, 1)).await.unwrap();
    }
    bus.until("both orders committed", |bus| {
        bus.broker().committed("inventory", "orders.created") == [2]
    })
    .await
    .unwrap();
    assert_eq!(bus.broker().end_offsets("orders.created"), [2]);
    bus.shutdown().await.unwrap();
}

/// A handler that fails with `anyhow::Error`: retried as a transient failure, then
/// dead-lettered with anyhow's message and type.
async fn flaky(_: String) -> Result<(), anyhow::Error> {
    Err(anyhow::anyhow!("stock service unreachable"))
}

#[tokio::test]
async fn an_anyhow_failure_is_retried_then_dead_lettered_with_its_message() {
    let retry = RetrySpec {
        max_attempts: 2,
        initial: Duration::from_millis(1),
        jitter: false,
        ..RetrySpec::default()
    };
    let sub = Subscription::builder(["stock.check"])
        .name("flaky")
        .group("checker")
        .retry(retry)
        .handler(flaky);
    let bus = TestApp::start(App::builder().subscribe(sub)).await.unwrap();
    bus.publish("stock.check", "lamp").await.unwrap();
    let letters = bus.dead_letters("stock.check", 1).await.unwrap();
    let headers = letters[0].headers();
    assert_eq!(
        headers.get_str(header::DLQ_REASON),
        Some("attempts-exhausted")
    );
    assert_eq!(headers.get_str(header::DLQ_ATTEMPTS), Some("2"));
    assert_eq!(
        headers.get_str(header::DLQ_ERROR),
        Some("transient failure: stock service unreachable")
    );
    assert_eq!(
        headers.get_str(header::DLQ_ERROR_TYPE),
        Some("anyhow::Error")
    );
    let stats = bus.dead_lettered("flaky", 1).await.unwrap();
    assert_eq!((stats.retries, stats.handled), (1, 0));
    bus.shutdown().await.unwrap();
}

/// The guide's "Testing handlers" example (docs/handlers.md) is the `anybus::testing` module's
/// doc example (which rustdoc compiles and runs) without its hidden lines, so the guide shows
/// code that works.
#[test]
fn the_guide_shows_the_testing_doc_example() {
    let readme = include_str!("../../docs/handlers.md");
    let module = include_str!("../src/testing/mod.rs");
    let section = &readme[readme
        .find("## Testing handlers")
        .expect("the guide has a Testing handlers section")..];
    let start = section
        .find("```rust\n")
        .expect("the section has an example")
        + 8;
    let shown = &section[start..start + section[start..].find("```\n").expect("it ends")];
    let doc: String = module
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .skip_while(|l| *l != "```")
        .skip(1)
        .take_while(|l| *l != "```")
        .filter(|l| !(l.starts_with("# ") || *l == "#"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(shown, doc);
}
