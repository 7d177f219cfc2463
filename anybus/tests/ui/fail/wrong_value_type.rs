use anybus::HandlerError;

#[anybus::subscriber(topic = "orders", concurrency = "32")]
async fn on_order(order: String) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

fn main() {}
