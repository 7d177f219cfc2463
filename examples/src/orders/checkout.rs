//! The order service: answers order requests with the order id and announces the order as
//! [`OrderCreated`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use anybus::{HandlerError, Publisher, State};

use crate::events::{money, topics, Order, OrderCreated, OrderPlaced, PlaceOrder};
use crate::lock;
use crate::story::{Step, Story};

/// What the shop sells: product and unit price in cents.
pub const CATALOG: &[(&str, u64)] = &[("book", 1250), ("lamp", 3999), ("mug", 899)];

/// The unit price of `sku`, if the shop sells it.
pub fn price(sku: &str) -> Option<u64> {
    CATALOG.iter().find(|(s, _)| *s == sku).map(|(_, p)| *p)
}

/// The order store (in memory); cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct OrderBook(Arc<Mutex<OrderBookInner>>);

#[derive(Debug, Default)]
struct OrderBookInner {
    orders: BTreeMap<String, Order>,
    by_request: HashMap<String, String>,
    opened: u64,
}

impl OrderBook {
    /// The order `order_id`, if it was placed.
    pub fn get(&self, order_id: &str) -> Option<Order> {
        lock(&self.0).orders.get(order_id).cloned()
    }

    /// How many orders were placed.
    pub fn count(&self) -> usize {
        lock(&self.0).orders.len()
    }

    /// Opens the order a request asks for, or finds the one its request id opened before; says
    /// which.
    fn open(&self, request: &PlaceOrder, amount_cents: u64) -> (Order, bool) {
        let mut inner = lock(&self.0);
        if let Some(id) = inner.by_request.get(&request.request_id) {
            return (inner.orders[id].clone(), false);
        }
        inner.opened += 1;
        let order = Order {
            order_id: format!("o-{}", inner.opened),
            customer: request.customer.clone(),
            sku: request.sku.clone(),
            quantity: request.quantity,
            amount_cents,
            card: request.card.clone(),
        };
        inner
            .by_request
            .insert(request.request_id.clone(), order.order_id.clone());
        inner.orders.insert(order.order_id.clone(), order.clone());
        (order, true)
    }
}

/// Why an order was refused. Retrying cannot help, so it fails permanently and the requester
/// gets the message.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// The shop does not sell this.
    #[error("unknown product `{0}`")]
    UnknownProduct(String),
    /// Nothing, or too much, was ordered.
    #[error("cannot order {0} items")]
    BadQuantity(u32),
}

/// Places an order: checks it, opens it (once per request id: a repeated or redelivered
/// request answers the same order), publishes [`OrderCreated`] keyed by the order id, and
/// answers the order id with the price.
///
/// The event is published on every call, after the order is stored; its consumers skip
/// repeats.
#[anybus::subscriber(topic = "orders.place", group = "orders")]
pub async fn place_order(
    request: PlaceOrder,
    book: State<OrderBook>,
    story: State<Story>,
    publisher: Publisher,
) -> Result<OrderPlaced, HandlerError> {
    let unit = price(&request.sku)
        .ok_or_else(|| HandlerError::permanent(OrderError::UnknownProduct(request.sku.clone())))?;
    let amount_cents = match request.quantity {
        0 => None,
        n => unit.checked_mul(u64::from(n)),
    }
    .ok_or_else(|| HandlerError::permanent(OrderError::BadQuantity(request.quantity)))?;
    let (order, opened) = book.open(&request, amount_cents);
    if opened {
        story.record(
            &order.order_id,
            Step::Placed,
            format!("placed ({})", money(order.amount_cents)),
        );
    }
    let answer = OrderPlaced {
        order_id: order.order_id.clone(),
        amount_cents: order.amount_cents,
    };
    publisher
        .publish_keyed(
            topics::ORDER_CREATED,
            order.order_id.clone(),
            &OrderCreated { order },
        )
        .await?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use anybus::testing::Recorder;
    use anybus::FailureKind;

    use super::*;

    fn two_books(request_id: &str) -> PlaceOrder {
        PlaceOrder {
            request_id: request_id.into(),
            customer: "u-1".into(),
            sku: "book".into(),
            quantity: 2,
            card: "4242424242424242".into(),
        }
    }

    #[tokio::test]
    async fn an_order_is_priced_answered_and_announced_once_per_request() {
        let recorder = Recorder::new();
        let book = State(Arc::new(OrderBook::default()));
        let story = State(Arc::new(Story::default()));
        let first = place_order(
            two_books("r-1"),
            book.clone(),
            story.clone(),
            recorder.publisher(),
        )
        .await
        .unwrap();
        let again = place_order(
            two_books("r-1"),
            book.clone(),
            story.clone(),
            recorder.publisher(),
        )
        .await
        .unwrap();
        let other = place_order(
            two_books("r-2"),
            book.clone(),
            story.clone(),
            recorder.publisher(),
        )
        .await
        .unwrap();
        assert_eq!(first.order_id, "o-1");
        assert_eq!(first.amount_cents, 2500);
        assert_eq!(again, first);
        assert_eq!(other.order_id, "o-2");
        assert_eq!(book.count(), 2);
        assert_eq!(story.steps("o-1"), [Step::Placed]);
        // The repeat announced o-1 again; the consumers skip it by order id.
        let created: Vec<OrderCreated> = recorder.events(topics::ORDER_CREATED).unwrap();
        assert_eq!(created.len(), 3);
        assert!(created.iter().all(|e| e.order.amount_cents == 2500));
    }

    #[tokio::test]
    async fn unknown_products_and_empty_orders_are_refused_for_good() {
        let recorder = Recorder::new();
        let book = State(Arc::new(OrderBook::default()));
        let story = State(Arc::new(Story::default()));
        let unknown = PlaceOrder {
            sku: "piano".into(),
            ..two_books("r-1")
        };
        let empty = PlaceOrder {
            quantity: 0,
            ..two_books("r-2")
        };
        for request in [unknown, empty] {
            let error = place_order(request, book.clone(), story.clone(), recorder.publisher())
                .await
                .unwrap_err();
            assert_eq!(error.kind(), FailureKind::Permanent);
        }
        assert_eq!(book.count(), 0);
        assert!(recorder
            .events::<OrderCreated>(topics::ORDER_CREATED)
            .unwrap()
            .is_empty());
    }
}
