use anybus::HandlerError;

struct Quote {
    cents: u64,
}

#[anybus::subscriber(topic = "quotes.request")]
async fn quote(item: String) -> Result<Quote, HandlerError> {
    Ok(Quote {
        cents: item.len() as u64,
    })
}

fn main() {}
