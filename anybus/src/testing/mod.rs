//! Testing handlers: call one directly with a hand-made [`Context`](crate::Context) and a
//! [`Publisher`](crate::Publisher) that records, or run the whole app on a private embedded
//! broker and wait for what it did.
//!
//! A handler is an ordinary `async fn`, but the extractors it takes come from a running app.
//! This module makes them without one:
//!
//! - [`context`] builds a [`Context`](crate::Context) with the topic, key, headers, attempt,
//!   group and state a test chooses;
//! - a [`Recorder`] gives a [`Publisher`](crate::Publisher) that keeps what the handler
//!   published instead of sending it, to assert on afterwards;
//! - a [`TestApp`] runs an app on a `memory://` broker of its own and waits, without sleeping,
//!   until its subscriptions handled or dead-lettered deliveries or events were published,
//!   failing with a [`WaitError`] that says what it waited for and what there was once its
//!   deadline passed.
//!
//! The module is always built: it needs no dependency beyond the embedded broker, which is
//! always on, so a test uses it without enabling a feature.
//!
//! ```
//! use anybus::testing::{Recorder, TestApp};
//! use anybus::{App, Context, HandlerError, Publisher};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct OrderCreated { order_id: String }
//!
//! #[anybus::subscriber(topic = "orders.created", group = "inventory")]
//! async fn reserve_stock(event: OrderCreated, ctx: Context, publisher: Publisher)
//!     -> Result<(), HandlerError> {
//!     // Keyed as the order came, so that the order's events stay in order.
//!     let key = ctx.key().cloned().unwrap_or_default();
//!     publisher.publish_keyed("stock.reserved", key, &event).await?;
//!     Ok(())
//! }
//!
//! type TestResult = Result<(), Box<dyn std::error::Error>>;
//!
//! // Each is a `#[tokio::test]` in a test module. The handler called directly:
//! async fn a_reservation_keeps_the_order_key() -> TestResult {
//!     let recorder = Recorder::new();
//!     let ctx = recorder.context("orders.created").key("o-1").attempt(2).build();
//!     let event = OrderCreated { order_id: "o-1".into() };
//!     reserve_stock(event, ctx, recorder.publisher()).await.unwrap();
//!     let reserved: Vec<OrderCreated> = recorder.events("stock.reserved")?;
//!     assert_eq!(reserved, [OrderCreated { order_id: "o-1".into() }]);
//!     assert_eq!(recorder.messages()[0].key().map(|k| &k[..]), Some(&b"o-1"[..]));
//!     Ok(())
//! }
//!
//! // The app on a private broker: publish, then wait for the outcome.
//! async fn the_app_reserves_stock_for_a_new_order() -> TestResult {
//!     let bus = TestApp::start(App::builder().subscribe(reserve_stock::subscription())).await?;
//!     let created = OrderCreated { order_id: "o-2".into() };
//!     bus.publisher().publish_keyed("orders.created", "o-2", &created).await?;
//!     bus.handled("reserve_stock", 1).await?;
//!     let reserved: Vec<OrderCreated> = bus.events("stock.reserved", 1).await?;
//!     assert_eq!(reserved, [created]);
//!     bus.shutdown().await?;
//!     Ok(())
//! }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> TestResult {
//! #     a_reservation_keeps_the_order_key().await?;
//! #     the_app_reserves_stock_for_a_new_order().await
//! # }
//! ```

mod context;
mod harness;
mod observed;
mod recorder;

pub use self::context::{context, ContextBuilder};
pub use self::harness::{TestApp, WaitError, DEFAULT_DEADLINE};
pub use self::recorder::Recorder;
