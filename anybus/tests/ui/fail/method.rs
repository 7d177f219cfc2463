use anybus::HandlerError;

struct Service;

impl Service {
    #[anybus::subscriber(topic = "orders")]
    async fn on_order(&self, order: String) -> Result<(), HandlerError> {
        let _ = order;
        Ok(())
    }
}

fn main() {}
