use anybus::HandlerError;

#[anybus::subscriber(topic = "orders", group = "billing", group = "shipping")]
async fn on_order(order: String) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

fn main() {}
