use anybus::HandlerError;

/// Takes the payload text, not the message: not a dedup key function.
fn order_key(payload: &str) -> String {
    payload.to_owned()
}

#[anybus::subscriber(topic = "orders", dedup = order_key)]
async fn on_order(order: String) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

fn main() {}
