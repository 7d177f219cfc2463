use anybus::{Context, HandlerError};

#[anybus::subscriber(topic = "orders")]
async fn on_order(order: String, ctx: Context, retries: u32) -> Result<(), HandlerError> {
    let _ = (order, ctx, retries);
    Ok(())
}

fn main() {}
