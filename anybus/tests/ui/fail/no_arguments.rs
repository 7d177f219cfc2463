use anybus::HandlerError;

#[anybus::subscriber]
async fn on_order(order: String) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

fn main() {}
