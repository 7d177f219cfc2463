//! The order flow, with a compensating step.
//!
//! ```text
//! orders.place (request) ──▶ checkout::place_order ──answers──▶ the order id
//!                                  │
//!                                  ▼ orders.created (OrderCreated)
//!                      inventory::reserve_stock ──▶ inventory.out-of-stock (ends the order)
//!                                  │
//!                                  ▼ inventory.stock-reserved (StockReserved)
//!                       payment::take_payment
//!                      │                     │
//!   payments.taken ◀───┘                     └───▶ payments.failed (PaymentFailed)
//!          │                                              │
//!          ▼                                              ▼
//! shipping::arrange_shipping               inventory::release_stock
//!          │                                              │
//!          ▼                                              ▼
//! shipping.arranged (ends the order)      inventory.stock-released (ends the order)
//! ```
//!
//! Every event is keyed by the order id, so the events of one order stay in order on every
//! topic. Each service has its own consumer group (the inventory's compensation too, so that a
//! backlog of new orders never delays giving stock back) and keeps its decision per order id,
//! which makes every handler safe to run twice for the same event.

pub mod checkout;
pub mod inventory;
pub mod payment;
pub mod shipping;
#[cfg(feature = "postgres")]
pub mod stock_db;

use anybus::Subscription;

/// The subscriptions of the order services.
pub fn services() -> Vec<Subscription> {
    vec![
        checkout::place_order::subscription(),
        inventory::reserve_stock::subscription(),
        payment::take_payment::subscription(),
        shipping::arrange_shipping::subscription(),
        inventory::release_stock::subscription(),
    ]
}

/// The subscriptions of the order services with the inventory on PostgreSQL
/// ([`stock_db`]): the same flow, the stock reserved and released effectively once.
#[cfg(feature = "postgres")]
pub fn services_with_stock_db() -> Vec<Subscription> {
    vec![
        checkout::place_order::subscription(),
        stock_db::reserve_stock_once::subscription(),
        payment::take_payment::subscription(),
        shipping::arrange_shipping::subscription(),
        stock_db::release_stock_once::subscription(),
    ]
}
