use anybus::HandlerError;

#[anybus::subscriber(topic = "orders", retry(max_attempts = 5, initial = "soon"))]
async fn on_order(order: String) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

fn main() {}
