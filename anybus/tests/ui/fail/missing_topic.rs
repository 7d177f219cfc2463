use anybus::HandlerError;

#[anybus::subscriber(group = "billing", concurrency = 4)]
async fn on_order(order: String) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

fn main() {}
