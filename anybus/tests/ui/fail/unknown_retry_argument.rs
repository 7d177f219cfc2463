use anybus::HandlerError;

#[anybus::subscriber(topic = "orders", retry(attempts = 5))]
async fn on_order(order: String) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

fn main() {}
