use anybus::HandlerError;

#[anybus::subscriber(topic = "quotes.request")]
async fn quote(item: String) -> Result<impl serde::Serialize, HandlerError> {
    Ok(item.len())
}

fn main() {}
