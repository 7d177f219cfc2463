//! The inventory: reserves stock for new orders ([`StockReserved`], or [`OutOfStock`]) and, as
//! the compensating step of a declined payment, releases it again ([`StockReleased`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use anybus::{HandlerError, Publisher, State};

use crate::events::{
    topics, OrderCreated, OutOfStock, PaymentFailed, StockReleased, StockReserved,
};
use crate::lock;
use crate::story::{Step, Story};

/// What the inventory decided for one order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reservation {
    /// `quantity` of `sku` are set aside for the order.
    Held {
        /// The product.
        sku: String,
        /// How many.
        quantity: u32,
    },
    /// There were only `available` left; nothing was set aside.
    Refused {
        /// How many were left.
        available: u32,
    },
    /// The reservation was given back (the payment was declined).
    Released,
}

/// Stock levels and reservations (in memory); cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Inventory(Arc<Mutex<InventoryInner>>);

#[derive(Debug, Default)]
struct InventoryInner {
    /// Items on the shelf and not reserved, by product.
    available: BTreeMap<String, u32>,
    /// The decision per order id: what makes each handler idempotent.
    reservations: HashMap<String, Reservation>,
}

/// The first decision for an order, or the one taken before.
enum Decided<T> {
    First(T),
    Again(T),
}

impl Inventory {
    /// An inventory with these products on the shelf.
    pub fn with_stock<'a>(items: impl IntoIterator<Item = (&'a str, u32)>) -> Self {
        let available = items.into_iter().map(|(s, n)| (s.to_owned(), n)).collect();
        Self(Arc::new(Mutex::new(InventoryInner {
            available,
            reservations: HashMap::new(),
        })))
    }

    /// How many of `sku` are available (not reserved).
    pub fn available(&self, sku: &str) -> u32 {
        lock(&self.0).available.get(sku).copied().unwrap_or(0)
    }

    /// Every product with how many are available.
    pub fn levels(&self) -> BTreeMap<String, u32> {
        lock(&self.0).available.clone()
    }

    /// What was decided for `order_id`, if it was seen.
    pub fn reservation(&self, order_id: &str) -> Option<Reservation> {
        lock(&self.0).reservations.get(order_id).cloned()
    }

    fn reserve(&self, order_id: &str, sku: &str, quantity: u32) -> Decided<Reservation> {
        let mut inner = lock(&self.0);
        if let Some(known) = inner.reservations.get(order_id) {
            return Decided::Again(known.clone());
        }
        let left = inner.available.entry(sku.to_owned()).or_insert(0);
        let decision = if *left >= quantity {
            *left -= quantity;
            Reservation::Held {
                sku: sku.to_owned(),
                quantity,
            }
        } else {
            Reservation::Refused { available: *left }
        };
        inner
            .reservations
            .insert(order_id.to_owned(), decision.clone());
        Decided::First(decision)
    }

    /// Gives a held reservation back; `None` if the order holds none and never did.
    fn release(&self, order_id: &str) -> Option<Decided<()>> {
        let mut inner = lock(&self.0);
        match inner.reservations.get(order_id)? {
            Reservation::Released => Some(Decided::Again(())),
            Reservation::Refused { .. } => None,
            Reservation::Held { sku, quantity } => {
                let (sku, quantity) = (sku.clone(), *quantity);
                *inner.available.entry(sku).or_insert(0) += quantity;
                inner
                    .reservations
                    .insert(order_id.to_owned(), Reservation::Released);
                Some(Decided::First(()))
            }
        }
    }
}

/// Reserves the items of a new order and publishes [`StockReserved`], or [`OutOfStock`] when
/// too few are left. A redelivered [`OrderCreated`] reserves nothing more: it publishes the
/// decision taken the first time again (in case publishing failed then), which the next
/// service skips as a repeat.
#[anybus::subscriber(topic = "orders.created", group = "inventory")]
pub async fn reserve_stock(
    event: OrderCreated,
    inventory: State<Inventory>,
    story: State<Story>,
    publisher: Publisher,
) -> Result<(), HandlerError> {
    let order = event.order;
    let (decision, first) = match inventory.reserve(&order.order_id, &order.sku, order.quantity) {
        Decided::First(d) => (d, true),
        Decided::Again(d) => (d, false),
    };
    let key = order.order_id.clone();
    match decision {
        Reservation::Held { .. } => {
            if first {
                story.record(&order.order_id, Step::StockReserved, "stock reserved");
            }
            publisher
                .publish_keyed(topics::STOCK_RESERVED, key, &StockReserved { order })
                .await?;
        }
        Reservation::Refused { available } => {
            if first {
                story.record(
                    &order.order_id,
                    Step::OutOfStock,
                    format!("out of stock (only {available} left)"),
                );
            }
            let event = OutOfStock {
                order_id: order.order_id,
                sku: order.sku,
                requested: order.quantity,
                available,
            };
            publisher
                .publish_keyed(topics::OUT_OF_STOCK, key, &event)
                .await?;
        }
        // The payment was declined and the stock released before this redelivery: the order
        // is over.
        Reservation::Released => {}
    }
    Ok(())
}

/// The compensating step: a declined payment gives the order's reservation back, and
/// [`StockReleased`] says so. A redelivered [`PaymentFailed`] releases nothing twice.
#[anybus::subscriber(topic = "payments.failed", group = "inventory-compensation")]
pub async fn release_stock(
    event: PaymentFailed,
    inventory: State<Inventory>,
    story: State<Story>,
    publisher: Publisher,
) -> Result<(), HandlerError> {
    let order = event.order;
    match inventory.release(&order.order_id) {
        None => {
            tracing::warn!(order_id = %order.order_id, "payment failed for an order without a reservation; nothing to release");
            return Ok(());
        }
        Some(Decided::First(())) => {
            story.record(&order.order_id, Step::StockReleased, "stock released");
        }
        Some(Decided::Again(())) => {}
    }
    let released = StockReleased {
        order_id: order.order_id.clone(),
        sku: order.sku,
        quantity: order.quantity,
    };
    publisher
        .publish_keyed(topics::STOCK_RELEASED, order.order_id, &released)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use anybus::testing::Recorder;

    use super::*;
    use crate::events::Order;

    fn order(id: &str, sku: &str, quantity: u32) -> Order {
        Order {
            order_id: id.into(),
            customer: "u-1".into(),
            sku: sku.into(),
            quantity,
            amount_cents: 100,
            card: "4242424242424242".into(),
        }
    }

    #[tokio::test]
    async fn reserving_twice_takes_the_stock_once() {
        let recorder = Recorder::new();
        let inventory = State(Arc::new(Inventory::with_stock([("book", 5)])));
        let story = State(Arc::new(Story::default()));
        for _ in 0..2 {
            let event = OrderCreated {
                order: order("o-1", "book", 2),
            };
            reserve_stock(
                event,
                inventory.clone(),
                story.clone(),
                recorder.publisher(),
            )
            .await
            .unwrap();
        }
        assert_eq!(inventory.available("book"), 3);
        assert_eq!(story.steps("o-1"), [Step::StockReserved]);
        let reserved: Vec<StockReserved> = recorder.events(topics::STOCK_RESERVED).unwrap();
        assert_eq!(reserved.len(), 2, "the decision is published again");
    }

    #[tokio::test]
    async fn too_few_items_end_the_order() {
        let recorder = Recorder::new();
        let inventory = State(Arc::new(Inventory::with_stock([("lamp", 1)])));
        let story = State(Arc::new(Story::default()));
        let event = OrderCreated {
            order: order("o-1", "lamp", 2),
        };
        reserve_stock(
            event,
            inventory.clone(),
            story.clone(),
            recorder.publisher(),
        )
        .await
        .unwrap();
        assert_eq!(inventory.available("lamp"), 1);
        assert_eq!(
            inventory.reservation("o-1"),
            Some(Reservation::Refused { available: 1 })
        );
        assert_eq!(story.steps("o-1"), [Step::OutOfStock]);
        let short: Vec<OutOfStock> = recorder.events(topics::OUT_OF_STOCK).unwrap();
        assert_eq!(short.len(), 1);
        assert_eq!((short[0].requested, short[0].available), (2, 1));
        assert!(recorder
            .events::<StockReserved>(topics::STOCK_RESERVED)
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn a_declined_payment_gives_the_stock_back_once() {
        let recorder = Recorder::new();
        let inventory = State(Arc::new(Inventory::with_stock([("mug", 4)])));
        let story = State(Arc::new(Story::default()));
        let created = OrderCreated {
            order: order("o-1", "mug", 3),
        };
        reserve_stock(
            created,
            inventory.clone(),
            story.clone(),
            recorder.publisher(),
        )
        .await
        .unwrap();
        assert_eq!(inventory.available("mug"), 1);
        for _ in 0..2 {
            let failed = PaymentFailed {
                order: order("o-1", "mug", 3),
                reason: "card declined".into(),
            };
            release_stock(
                failed,
                inventory.clone(),
                story.clone(),
                recorder.publisher(),
            )
            .await
            .unwrap();
        }
        assert_eq!(inventory.available("mug"), 4);
        assert_eq!(inventory.reservation("o-1"), Some(Reservation::Released));
        assert_eq!(
            story.steps("o-1"),
            [Step::StockReserved, Step::StockReleased]
        );
        // A late redelivery of the order does not reserve it again.
        let late = OrderCreated {
            order: order("o-1", "mug", 3),
        };
        reserve_stock(late, inventory.clone(), story.clone(), recorder.publisher())
            .await
            .unwrap();
        assert_eq!(inventory.available("mug"), 4);
    }

    #[tokio::test]
    async fn nothing_is_released_for_an_unknown_order() {
        let recorder = Recorder::new();
        let inventory = State(Arc::new(Inventory::with_stock([("mug", 4)])));
        let failed = PaymentFailed {
            order: order("o-9", "mug", 3),
            reason: "card declined".into(),
        };
        release_stock(
            failed,
            inventory.clone(),
            State(Arc::new(Story::default())),
            recorder.publisher(),
        )
        .await
        .unwrap();
        assert_eq!(inventory.available("mug"), 4);
        assert!(recorder
            .events::<StockReleased>(topics::STOCK_RELEASED)
            .unwrap()
            .is_empty());
    }
}
