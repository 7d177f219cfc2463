use std::rc::Rc;

use anybus::HandlerError;

#[anybus::subscriber(topic = "orders")]
async fn on_order(order: String) -> Result<(), HandlerError> {
    let shared = Rc::new(order);
    tokio::task::yield_now().await;
    let _ = shared;
    Ok(())
}

fn main() {}
