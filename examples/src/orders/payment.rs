//! The payment service: charges the card of every order whose stock is reserved, and says how
//! it went: [`PaymentTaken`] or [`PaymentFailed`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anybus::{HandlerError, Publisher, State};

use crate::events::{money, topics, PaymentFailed, PaymentTaken, StockReserved};
use crate::lock;
use crate::story::{Step, Story};

/// The well-known test card that every charge on is declined.
pub const DECLINED_CARD: &str = "4000000000000002";

/// The most one charge may be, in cents; more is declined.
pub const LIMIT_CENTS: u64 = 50_000;

/// Why a charge was declined.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Decline {
    /// The card declines everything.
    #[error("card declined")]
    CardDeclined,
    /// The amount is over [`LIMIT_CENTS`].
    #[error("{} is over the limit of {}", money(*.0), money(LIMIT_CENTS))]
    OverLimit(u64),
}

/// The (pretend) card network: deterministic, so the flows come out the same every run.
pub fn authorise(card: &str, amount_cents: u64) -> Result<(), Decline> {
    if card == DECLINED_CARD {
        Err(Decline::CardDeclined)
    } else if amount_cents > LIMIT_CENTS {
        Err(Decline::OverLimit(amount_cents))
    } else {
        Ok(())
    }
}

/// The outcome of charging one order: the payment id, or why it was declined.
pub type Charge = Result<String, Decline>;

/// Charges by order id (in memory): what makes the handler idempotent; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Payments(Arc<Mutex<HashMap<String, Charge>>>);

impl Payments {
    /// How charging `order_id` went, if it was tried.
    pub fn charge_of(&self, order_id: &str) -> Option<Charge> {
        lock(&self.0).get(order_id).cloned()
    }

    /// Charges the order once; says whether this call did.
    fn charge(&self, order_id: &str, card: &str, amount_cents: u64) -> (Charge, bool) {
        let mut charges = lock(&self.0);
        if let Some(known) = charges.get(order_id) {
            return (known.clone(), false);
        }
        let charge = authorise(card, amount_cents).map(|()| format!("pay-{order_id}"));
        charges.insert(order_id.to_owned(), charge.clone());
        (charge, true)
    }
}

/// Charges the order's card once, and publishes [`PaymentTaken`] or [`PaymentFailed`]. A
/// redelivered [`StockReserved`] charges nothing more; it publishes the first outcome again.
#[anybus::subscriber(topic = "inventory.stock-reserved", group = "payments")]
pub async fn take_payment(
    event: StockReserved,
    payments: State<Payments>,
    story: State<Story>,
    publisher: Publisher,
) -> Result<(), HandlerError> {
    let order = event.order;
    let (charge, first) = payments.charge(&order.order_id, &order.card, order.amount_cents);
    let key = order.order_id.clone();
    match charge {
        Ok(payment_id) => {
            if first {
                story.record(&order.order_id, Step::PaymentTaken, "payment taken");
            }
            let taken = PaymentTaken { order, payment_id };
            publisher
                .publish_keyed(topics::PAYMENT_TAKEN, key, &taken)
                .await?;
        }
        Err(decline) => {
            if first {
                let text = format!("payment declined ({decline})");
                story.record(&order.order_id, Step::PaymentDeclined, text);
            }
            let failed = PaymentFailed {
                order,
                reason: decline.to_string(),
            };
            publisher
                .publish_keyed(topics::PAYMENT_FAILED, key, &failed)
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use anybus::testing::Recorder;

    use super::*;
    use crate::events::Order;

    fn reserved(card: &str, amount_cents: u64) -> StockReserved {
        StockReserved {
            order: Order {
                order_id: "o-1".into(),
                customer: "u-1".into(),
                sku: "lamp".into(),
                quantity: 1,
                amount_cents,
                card: card.into(),
            },
        }
    }

    #[test]
    fn the_card_network_is_deterministic() {
        assert_eq!(authorise("4242424242424242", 3999), Ok(()));
        assert_eq!(authorise("4242424242424242", LIMIT_CENTS), Ok(()));
        assert_eq!(authorise(DECLINED_CARD, 1), Err(Decline::CardDeclined));
        assert_eq!(
            authorise("4242424242424242", LIMIT_CENTS + 1),
            Err(Decline::OverLimit(LIMIT_CENTS + 1))
        );
        assert_eq!(
            Decline::OverLimit(60_000).to_string(),
            "600.00 is over the limit of 500.00"
        );
    }

    #[tokio::test]
    async fn a_good_card_is_charged_once() {
        let recorder = Recorder::new();
        let payments = State(Arc::new(Payments::default()));
        let story = State(Arc::new(Story::default()));
        for _ in 0..2 {
            take_payment(
                reserved("4242424242424242", 3999),
                payments.clone(),
                story.clone(),
                recorder.publisher(),
            )
            .await
            .unwrap();
        }
        assert_eq!(payments.charge_of("o-1"), Some(Ok("pay-o-1".into())));
        assert_eq!(story.line("o-1"), "payment taken");
        let taken: Vec<PaymentTaken> = recorder.events(topics::PAYMENT_TAKEN).unwrap();
        assert!(taken.iter().all(|t| t.payment_id == "pay-o-1"));
        assert!(recorder
            .events::<PaymentFailed>(topics::PAYMENT_FAILED)
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn a_declined_card_fails_the_payment() {
        let recorder = Recorder::new();
        let payments = State(Arc::new(Payments::default()));
        let story = State(Arc::new(Story::default()));
        take_payment(
            reserved(DECLINED_CARD, 2500),
            payments.clone(),
            story.clone(),
            recorder.publisher(),
        )
        .await
        .unwrap();
        assert_eq!(payments.charge_of("o-1"), Some(Err(Decline::CardDeclined)));
        assert_eq!(story.line("o-1"), "payment declined (card declined)");
        let failed: Vec<PaymentFailed> = recorder.events(topics::PAYMENT_FAILED).unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].reason, "card declined");
        assert!(recorder
            .events::<PaymentTaken>(topics::PAYMENT_TAKEN)
            .unwrap()
            .is_empty());
    }
}
