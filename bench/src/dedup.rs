//! The dedup rows: consume throughput on the memory backend with each dedup store against none,
//! at concurrency 64, unordered, in one run.
//!
//! N raw messages are appended first; the clock runs from the first handler start to the N-th
//! handled message. Each row reports msg/s (best and median of the rounds) and the overhead per
//! message against the run without dedup.

use std::time::Duration;

use anybus::{App, DedupKey, HandlerError, Message, MessageId, Ordering, Subscription};
use futures_util::future::join_all;

use crate::{rates, thousands, Clock, Row};

/// Handlers at once.
const CONCURRENCY: usize = 64;

/// How a row deduplicates.
pub enum Store {
    /// Through the store of this URL.
    Url(String),
    /// Through the PostgreSQL store of this URL, each handler also beginning and committing
    /// its inbox transaction (which completes the key).
    #[cfg(feature = "postgres")]
    Inbox(String),
}

impl Store {
    fn url(&self) -> &str {
        match self {
            Store::Url(url) => url,
            #[cfg(feature = "postgres")]
            Store::Inbox(url) => url,
        }
    }
}

/// One run: `n` messages, deduplicated through `store` (or not).
async fn run(n: usize, store: Option<&Store>) -> Duration {
    let broker = format!("memory://bench-dedup-{}", MessageId::new());
    let topic = "bench-dedup";
    let publisher = App::builder().connect(&broker).await.expect("a publisher");
    let p = publisher.publisher();
    for chunk in 0..n.div_ceil(1_000) {
        let sends = (chunk * 1_000..((chunk + 1) * 1_000).min(n))
            .map(|i| p.send(Message::new(topic, i.to_string()).with_key(i.to_string())));
        for sent in join_all(sends).await {
            sent.expect("publish");
        }
    }
    let clock = Clock::default();
    let c = clock.clone();
    let mut subscription = Subscription::builder([topic])
        .group(format!("dedup-{}", MessageId::new()))
        .ordering(Ordering::None)
        .concurrency(CONCURRENCY);
    let mut builder = App::builder();
    if let Some(store) = store {
        subscription = subscription.dedup(DedupKey::MessageId);
        builder = builder.dedup_store(store.url());
    }
    let subscription = match store {
        #[cfg(feature = "postgres")]
        Some(Store::Inbox(_)) => {
            subscription.handler(move |m: Message, inbox: anybus::dedup::Inbox| {
                let c = c.clone();
                async move {
                    std::hint::black_box(&m);
                    c.start();
                    inbox.begin().await?.commit().await?;
                    c.done(n);
                    Ok::<(), HandlerError>(())
                }
            })
        }
        _ => subscription.handler(move |m: Message| {
            std::hint::black_box(&m);
            c.start();
            c.done(n);
            std::future::ready(Ok::<(), HandlerError>(()))
        }),
    };
    let app = builder
        .subscribe(subscription)
        .connect(&broker)
        .await
        .expect("the consuming app");
    let took = clock.wait(n).await;
    app.shutdown().await.expect("shutdown");
    publisher.shutdown().await.expect("shutdown the publisher");
    took
}

/// The rows: no dedup, then each store in `stores` (name, URL), `rounds` interleaved rounds of
/// `n` messages.
pub async fn rows(stores: &[(&str, Store)], n: usize, rounds: usize, rows: &mut Vec<Row>) {
    let mut none = Vec::new();
    let mut with: Vec<Vec<Duration>> = vec![Vec::new(); stores.len()];
    for _ in 0..rounds {
        none.push(run(n, None).await);
        for (i, (_, store)) in stores.iter().enumerate() {
            with[i].push(run(n, Some(store)).await);
        }
    }
    let (none_best, none_median) = rates(n, &mut none);
    rows.push(Row::new(
        format!("memory backend, {n} msgs, unordered, concurrency {CONCURRENCY}: consume without dedup, msg/s (best / median of {rounds})"),
        format!("{} / {}", thousands(none_best), thousands(none_median)),
        "the baseline of the dedup rows",
    ));
    for ((name, _), runs) in stores.iter().zip(&mut with) {
        let (best, median) = rates(n, runs);
        let overhead_us = (1.0 / median - 1.0 / none_median) * 1e6;
        rows.push(Row::new(
            format!("memory backend, {n} msgs, unordered, concurrency {CONCURRENCY}: consume with {name}, msg/s (best / median of {rounds})"),
            format!(
                "{} / {}; +{overhead_us:.2} µs per message (median)",
                thousands(best),
                thousands(median)
            ),
            format!(
                "{:.2} × without dedup (median); target ≥ 20,000 msg/s for Redis and PostgreSQL",
                median / none_median
            ),
        ));
    }
}
