//! Every argument at once, with a raw `Message` payload; `main` checks the parsed spec.

use std::time::Duration;

use anybus::{
    Backoff, DeadLetter, DedupKey, HandlerError, Message, Ordering, RetryMode, RetrySpec,
};

#[anybus::subscriber(
    topic = ["orders.created", "orders.updated"],
    group = "billing",
    codec = "raw",
    concurrency = 32,
    ordering = "none",
    partitions = 8,
    retry(
        max_attempts = 5,
        backoff = "fixed",
        initial = "250ms",
        max = "2m",
        jitter = false,
        mode = "redeliver",
    ),
    dead_letter = "orders.failed",
    dedup = header("x-request-id"),
)]
pub async fn on_order(message: Message) -> Result<(), HandlerError> {
    let _ = message.payload();
    Ok(())
}

#[anybus::subscriber(
    topic = "orders.created",
    ordering = "key",
    dead_letter = false,
    dedup = "order_id",
    retry
)]
async fn keyed(order: String) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

#[anybus::subscriber(
    topic = "orders.created",
    ordering = "partition",
    dead_letter = true,
    dedup = true,
    retry(initial = "1s", max = "1h")
)]
async fn defaults(order: String) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

/// The dedup key of `by_function`: the message key as text.
fn key_text(message: &Message) -> Option<String> {
    Some(String::from_utf8_lossy(message.key()?).into_owned())
}

#[anybus::subscriber(topic = "orders.created", dedup = key_text)]
async fn by_function(order: String) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

fn main() {
    let sub = on_order::subscription();
    let spec = sub.spec();
    assert_eq!(spec.name, "on_order");
    assert_eq!(spec.topics, ["orders.created", "orders.updated"]);
    assert_eq!(spec.group, "billing");
    assert_eq!(spec.codec, "raw");
    assert_eq!(spec.concurrency, 32);
    assert_eq!(spec.ordering, Ordering::None);
    assert_eq!(spec.partitions, Some(8));
    assert_eq!(
        spec.retry,
        Some(RetrySpec {
            max_attempts: 5,
            backoff: Backoff::Fixed,
            initial: Duration::from_millis(250),
            max: Duration::from_secs(120),
            jitter: false,
            mode: RetryMode::Redeliver,
        })
    );
    assert_eq!(spec.dead_letter, DeadLetter::Topic("orders.failed".into()));
    assert_eq!(spec.dedup, Some(DedupKey::Header("x-request-id".into())));

    let sub = keyed::subscription();
    let spec = sub.spec();
    assert_eq!(spec.topics, ["orders.created"]);
    assert_eq!(
        spec.group,
        format!("{}.keyed", module_path!().replace("::", ".")),
        "the group defaults to the handler's module path and name"
    );
    assert_eq!(spec.codec, "json");
    assert_eq!(spec.ordering, Ordering::Key);
    assert_eq!(
        spec.retry,
        Some(RetrySpec::default()),
        "a bare `retry` is the default policy"
    );
    assert_eq!(spec.dead_letter, DeadLetter::Disabled);
    assert_eq!(spec.dedup, Some(DedupKey::Field("order_id".into())));

    let sub = by_function::subscription();
    let Some(DedupKey::Function(f)) = &sub.spec().dedup else {
        panic!("not a function key: {:?}", sub.spec().dedup);
    };
    assert!(f.name().ends_with("key_text"), "{}", f.name());
    let keyed = Message::new("orders.created", "{}").with_key("o-1");
    assert_eq!(f.key(&keyed), Some("o-1".into()));

    let sub = defaults::subscription();
    let spec = sub.spec();
    assert_eq!(spec.ordering, Ordering::Partition);
    assert_eq!(spec.dead_letter, DeadLetter::Default);
    assert_eq!(spec.dedup, Some(DedupKey::MessageId));
    assert_eq!(
        spec.retry,
        Some(RetrySpec {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(3600),
            ..RetrySpec::default()
        })
    );
}
