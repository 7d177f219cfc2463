//! Shipping: arranges the delivery of every paid order and announces it as
//! [`ShipmentArranged`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anybus::{HandlerError, Publisher, State};

use crate::events::{topics, PaymentTaken, ShipmentArranged};
use crate::lock;
use crate::story::{Step, Story};

/// Tracking numbers by order id (in memory); cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Shipments(Arc<Mutex<BTreeMap<String, String>>>);

impl Shipments {
    /// The tracking number of `order_id`'s parcel, if it was shipped.
    pub fn tracking(&self, order_id: &str) -> Option<String> {
        lock(&self.0).get(order_id).cloned()
    }

    /// Every shipped order id, sorted.
    pub fn shipped(&self) -> Vec<String> {
        lock(&self.0).keys().cloned().collect()
    }

    /// Books the parcel once; says whether this call did.
    fn book(&self, order_id: &str) -> (String, bool) {
        let mut shipments = lock(&self.0);
        if let Some(tracking) = shipments.get(order_id) {
            return (tracking.clone(), false);
        }
        let tracking = format!("TRK-{}", order_id.to_uppercase());
        shipments.insert(order_id.to_owned(), tracking.clone());
        (tracking, true)
    }
}

/// Books the parcel of a paid order once and publishes [`ShipmentArranged`]. A redelivered
/// [`PaymentTaken`] books nothing more.
#[anybus::subscriber(topic = "payments.taken", group = "shipping")]
pub async fn arrange_shipping(
    event: PaymentTaken,
    shipments: State<Shipments>,
    story: State<Story>,
    publisher: Publisher,
) -> Result<(), HandlerError> {
    let order_id = event.order.order_id;
    let (tracking, first) = shipments.book(&order_id);
    if first {
        let text = format!("shipment arranged (tracking {tracking})");
        story.record(&order_id, Step::ShipmentArranged, text);
    }
    let arranged = ShipmentArranged {
        order_id: order_id.clone(),
        tracking,
    };
    publisher
        .publish_keyed(topics::SHIPMENT_ARRANGED, order_id, &arranged)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use anybus::testing::Recorder;

    use super::*;
    use crate::events::Order;

    #[tokio::test]
    async fn a_paid_order_ships_once() {
        let recorder = Recorder::new();
        let shipments = State(Arc::new(Shipments::default()));
        let story = State(Arc::new(Story::default()));
        let paid = PaymentTaken {
            order: Order {
                order_id: "o-3".into(),
                customer: "u-2".into(),
                sku: "mug".into(),
                quantity: 3,
                amount_cents: 2697,
                card: "4242424242424242".into(),
            },
            payment_id: "pay-o-3".into(),
        };
        for _ in 0..2 {
            arrange_shipping(
                paid.clone(),
                shipments.clone(),
                story.clone(),
                recorder.publisher(),
            )
            .await
            .unwrap();
        }
        assert_eq!(shipments.shipped(), ["o-3"]);
        assert_eq!(shipments.tracking("o-3").as_deref(), Some("TRK-O-3"));
        assert_eq!(story.steps("o-3"), [Step::ShipmentArranged]);
        let arranged: Vec<ShipmentArranged> = recorder.events(topics::SHIPMENT_ARRANGED).unwrap();
        assert!(arranged.iter().all(|a| a.tracking == "TRK-O-3"));
    }
}
