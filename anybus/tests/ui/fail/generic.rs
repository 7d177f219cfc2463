use anybus::HandlerError;

#[anybus::subscriber(topic = "orders")]
async fn on_order<T: serde::de::DeserializeOwned + Send + 'static>(
    order: T,
) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

fn main() {}
