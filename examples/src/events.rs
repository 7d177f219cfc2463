//! What the services say to each other: requests with their answers, and events. Everything
//! travels as JSON (serde), so any service in any language could join in.
//!
//! Events are published keyed by the user id or order id they are about, so every event of one
//! user or one order lands in the same partition and stays in order.

use serde::{Deserialize, Serialize};

/// The topics of both flows. `#[subscriber(topic = "...")]` needs a literal, so the handlers
/// repeat these names; a unit test checks that they agree.
pub mod topics {
    /// Requests to register a user ([`RegisterUser`](super::RegisterUser) →
    /// [`Registered`](super::Registered)).
    pub const REGISTER_USER: &str = "users.register";
    /// [`UserRegistered`](super::UserRegistered) events.
    pub const USER_REGISTERED: &str = "users.registered";
    /// Requests to place an order ([`PlaceOrder`](super::PlaceOrder) →
    /// [`OrderPlaced`](super::OrderPlaced)).
    pub const PLACE_ORDER: &str = "orders.place";
    /// [`OrderCreated`](super::OrderCreated) events.
    pub const ORDER_CREATED: &str = "orders.created";
    /// [`StockReserved`](super::StockReserved) events.
    pub const STOCK_RESERVED: &str = "inventory.stock-reserved";
    /// [`OutOfStock`](super::OutOfStock) events.
    pub const OUT_OF_STOCK: &str = "inventory.out-of-stock";
    /// [`StockReleased`](super::StockReleased) events.
    pub const STOCK_RELEASED: &str = "inventory.stock-released";
    /// [`PaymentTaken`](super::PaymentTaken) events.
    pub const PAYMENT_TAKEN: &str = "payments.taken";
    /// [`PaymentFailed`](super::PaymentFailed) events.
    pub const PAYMENT_FAILED: &str = "payments.failed";
    /// [`ShipmentArranged`](super::ShipmentArranged) events.
    pub const SHIPMENT_ARRANGED: &str = "shipping.arranged";
}

/// Request: open an account. Answered with [`Registered`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterUser {
    /// The address; one account per address.
    pub email: String,
    /// What to call the user.
    pub name: String,
    /// What the user said they like; feeds the recommendations.
    pub interests: Vec<String>,
}

/// Answer to [`RegisterUser`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// The id of the (new or existing) account.
    pub user_id: String,
}

/// Event: an account was opened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRegistered {
    /// The account's id (the event's key).
    pub user_id: String,
    /// The address.
    pub email: String,
    /// The user's name.
    pub name: String,
    /// The user's interests.
    pub interests: Vec<String>,
}

/// Request: place an order. Answered with [`OrderPlaced`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceOrder {
    /// Chosen by the client, one per intended order: sending the same request again (a retry
    /// after a timeout, or a redelivery) answers the same order instead of opening a second one.
    pub request_id: String,
    /// The user id of the buyer.
    pub customer: String,
    /// The product.
    pub sku: String,
    /// How many.
    pub quantity: u32,
    /// The card to charge. A stand-in: a real system would carry a payment token, never a card
    /// number.
    pub card: String,
}

/// Answer to [`PlaceOrder`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The id of the order.
    pub order_id: String,
    /// What it will cost, in cents.
    pub amount_cents: u64,
}

/// An order as the order service accepted it; carried along by the events of the order flow so
/// that each service has what it needs without asking another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The order's id (the key of every event about it).
    pub order_id: String,
    /// The user id of the buyer.
    pub customer: String,
    /// The product.
    pub sku: String,
    /// How many.
    pub quantity: u32,
    /// The total, in cents.
    pub amount_cents: u64,
    /// The card to charge.
    pub card: String,
}

/// Event: the order service accepted an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreated {
    /// The order.
    pub order: Order,
}

/// Event: the inventory set the order's items aside.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReserved {
    /// The order.
    pub order: Order,
}

/// Event: the inventory could not set the order's items aside; the order ends here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutOfStock {
    /// The order's id.
    pub order_id: String,
    /// The product.
    pub sku: String,
    /// How many the order wanted.
    pub requested: u32,
    /// How many were left.
    pub available: u32,
}

/// Event: the payment service charged the order's card.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentTaken {
    /// The order.
    pub order: Order,
    /// The payment's id.
    pub payment_id: String,
}

/// Event: the card was declined; the inventory releases the order's stock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFailed {
    /// The order.
    pub order: Order,
    /// Why the card was declined.
    pub reason: String,
}

/// Event: the order is on its way; the order ends here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentArranged {
    /// The order's id.
    pub order_id: String,
    /// The parcel's tracking number.
    pub tracking: String,
}

/// Event: the stock an order had reserved is available again; the order ends here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReleased {
    /// The order's id.
    pub order_id: String,
    /// The product.
    pub sku: String,
    /// How many went back on the shelf.
    pub quantity: u32,
}

/// Formats cents as `12.50`.
pub fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

#[cfg(test)]
mod tests {
    use anybus::{Codec, Json};

    use super::*;

    #[test]
    fn money_has_two_decimals() {
        assert_eq!(money(0), "0.00");
        assert_eq!(money(5), "0.05");
        assert_eq!(money(3999), "39.99");
        assert_eq!(money(120_000), "1200.00");
    }

    #[test]
    fn events_round_trip_as_json() {
        let event = PaymentFailed {
            order: Order {
                order_id: "o-1".into(),
                customer: "u-1".into(),
                sku: "book".into(),
                quantity: 2,
                amount_cents: 2500,
                card: "4000000000000002".into(),
            },
            reason: "card declined".into(),
        };
        let json = Json::encode(&event).unwrap();
        assert_eq!(Json::decode::<PaymentFailed>(&json).unwrap(), event);
    }
}
