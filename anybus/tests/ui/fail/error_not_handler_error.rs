#[anybus::subscriber(topic = "orders")]
async fn on_order(order: String) -> Result<(), String> {
    let _ = order;
    Ok(())
}

fn main() {}
