use anybus::HandlerError;

#[anybus::subscriber(topic = "orders", ordering = "fifo")]
async fn on_order(order: String) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

fn main() {}
