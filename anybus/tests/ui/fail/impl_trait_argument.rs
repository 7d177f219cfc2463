use anybus::HandlerError;

#[anybus::subscriber(topic = "orders")]
async fn on_order(
    order: impl serde::de::DeserializeOwned + Send + 'static,
) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

fn main() {}
