//! A handler taking every extractor, a serde payload and a reply; the annotated function stays
//! an ordinary `async fn` that can be called directly.

use anybus::{Context, HandlerError, Headers, Key, Publisher, State};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct PriceRequest {
    sku: String,
}

#[derive(Serialize, Debug, PartialEq)]
struct Price {
    cents: u64,
}

struct Catalog {
    base: u64,
}

// Extractors come in any order after the payload.
#[anybus::subscriber(topic = "prices.request", group = "pricing")]
async fn price(
    request: PriceRequest,
    catalog: State<Catalog>,
    key: Key,
    headers: Headers,
    publisher: Publisher,
    ctx: Context,
) -> Result<Price, HandlerError> {
    let _ = (key.0, headers, publisher, ctx.topic(), ctx.attempt());
    Ok(Price {
        cents: catalog.base + request.sku.len() as u64,
    })
}

// No extractors, the default JSON codec, and an error type that converts into HandlerError.
#[anybus::subscriber(topic = "counts")]
async fn count(n: u64) -> Result<(), std::io::Error> {
    if n == 0 {
        return Err(std::io::Error::other("zero"));
    }
    Ok(())
}

// A plain function with no extractors is still callable as written.
#[anybus::subscriber(topic = "words")]
async fn shout(word: String) -> Result<String, HandlerError> {
    Ok(word.to_uppercase())
}

fn main() {
    let spec = price::subscription().spec().clone();
    assert_eq!(spec.name, "price");
    assert_eq!(spec.topics, ["prices.request"]);
    assert_eq!(spec.group, "pricing");
    assert_eq!(spec.codec, "json");
    assert_eq!(
        spec.concurrency,
        anybus::SubscriptionSpec::DEFAULT_CONCURRENCY
    );
    assert_eq!(spec.ordering, anybus::Ordering::Partition);
    assert_eq!(spec.partitions, None);
    assert_eq!(spec.retry, None);

    // The module path and the name: unique to this crate and module.
    assert_eq!(
        count::subscription().spec().group,
        format!("{}.count", module_path!().replace("::", "."))
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert_eq!(runtime.block_on(shout("hi".into())).unwrap(), "HI");
    assert!(runtime.block_on(count(0)).is_err());
    assert!(runtime.block_on(count(1)).is_ok());
}
