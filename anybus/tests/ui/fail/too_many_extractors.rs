use anybus::{Context, HandlerError, Headers, Key, Publisher};

#[anybus::subscriber(topic = "orders")]
async fn on_order(
    order: String,
    a: Context,
    b: Publisher,
    c: Headers,
    d: Key,
    e: Context,
    f: Publisher,
    g: Headers,
) -> Result<(), HandlerError> {
    let _ = (order, a, b, c, d, e, f, g);
    Ok(())
}

fn main() {}
