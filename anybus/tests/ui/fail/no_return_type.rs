#[anybus::subscriber(topic = "orders")]
async fn on_order(order: String) {
    let _ = order;
}

fn main() {}
