use anybus::HandlerError;

#[anybus::subscriber(topic = "orders")]
fn on_order(order: String) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

fn main() {
    // The function is kept, so using it does not add errors of its own.
    let _ = on_order(String::new());
}
