use anybus::HandlerError;

struct OrderCreated {
    id: u64,
}

#[anybus::subscriber(topic = "orders")]
async fn on_order(order: OrderCreated) -> Result<(), HandlerError> {
    let _ = order.id;
    Ok(())
}

fn main() {}
