use anybus::HandlerError;

#[anybus::subscriber(topic = "orders")]
async fn on_tick() -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
