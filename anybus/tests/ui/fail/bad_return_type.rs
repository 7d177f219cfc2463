#[anybus::subscriber(topic = "orders")]
async fn on_order(order: String) -> u32 {
    order.len() as u32
}

fn main() {}
