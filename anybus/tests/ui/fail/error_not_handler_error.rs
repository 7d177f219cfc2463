/// A domain error that is no `std::error::Error` and does not convert into `HandlerError`.
#[derive(Debug)]
struct OutOfStock;

#[anybus::subscriber(topic = "orders")]
async fn on_order(order: String) -> Result<(), OutOfStock> {
    let _ = order;
    Ok(())
}

fn main() {}
