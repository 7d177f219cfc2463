use anybus::HandlerError;

// Every mistake in the attribute and the signature is reported at once, each on its own token.
#[anybus::subscriber(topic = "orders", ordering = "fifo", partitions = 0, retry(jitter = "yes"))]
fn on_order(order: String) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

fn main() {}
