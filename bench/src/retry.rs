//! The retry rows: consume throughput when 1 % of the messages fail once and are retried in
//! process, against the same run with no failures.
//!
//! The group's queue or offsets are set up first (an app joins and leaves), then N messages are
//! published, then the app consumes them: the clock runs from the first handler start to the
//! N-th success. Message `i` fails its first attempt when `i % 100 == 0`; the retry waits 1 ms
//! (no jitter). Under partition order the retry holds back its partition; under key order
//! (64 keys, concurrency 64) only its key.

use std::time::Duration;

use anybus::{
    App, Backoff, Context, HandlerError, Message, MessageId, Ordering, RetryMode, RetrySpec,
    Subscription,
};
use futures_util::future::join_all;

use crate::{rates, thousands, Clock, Row};

/// Partitions of the topic (RabbitMQ: one queue).
const PARTITIONS: u32 = 4;
/// Distinct keys, and the concurrency, of the key-ordered runs.
const KEYS: usize = 64;

fn subscription(
    topic: &str,
    group: &str,
    ordering: Ordering,
    n: usize,
    fail_every: Option<usize>,
    clock: &Clock,
) -> Subscription {
    let clock = clock.clone();
    Subscription::builder([topic])
        .name("retry-bench")
        .group(group)
        .partitions(PARTITIONS)
        .ordering(ordering)
        .concurrency(KEYS)
        .retry(RetrySpec {
            max_attempts: 3,
            backoff: Backoff::Fixed,
            initial: Duration::from_millis(1),
            max: Duration::from_millis(1),
            jitter: false,
            mode: RetryMode::InProcess,
        })
        .handler(move |m: Message, ctx: Context| {
            clock.start();
            let i: usize = std::str::from_utf8(m.payload())
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or_default();
            let fail =
                fail_every.is_some_and(|every| i.is_multiple_of(every)) && ctx.attempt() == 1;
            std::future::ready(if fail {
                Err(HandlerError::transient(std::io::Error::other("fails once")))
            } else {
                clock.done(n);
                Ok(())
            })
        })
}

/// One run: `n` messages, every `fail_every`-th failing once.
async fn run<P, Fut>(
    url: &str,
    publish_url: &str,
    prepare: &P,
    ordering: Ordering,
    n: usize,
    fail_every: Option<usize>,
) -> Duration
where
    P: Fn(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let topic = format!("bench-retry-{}", MessageId::new());
    let group = format!("retry-{}", MessageId::new());
    prepare(topic.clone()).await;
    // Join and leave once, so that the group's queue (RabbitMQ) exists before the messages.
    let unused = Clock::default();
    let setup = App::builder()
        .subscribe(subscription(
            &topic, &group, ordering, n, fail_every, &unused,
        ))
        .connect(url)
        .await
        .expect("the set-up app");
    let mut assignment = setup.assignment("retry-bench").expect("subscription");
    assignment
        .wait_for(|a| !a.is_empty())
        .await
        .expect("an assignment");
    setup.shutdown().await.expect("shutdown the set-up app");

    let publisher = App::builder()
        .connect(publish_url)
        .await
        .expect("a publisher");
    let p = publisher.publisher();
    for chunk in 0..n.div_ceil(1_000) {
        let sends = (chunk * 1_000..((chunk + 1) * 1_000).min(n)).map(|i| {
            p.send(Message::new(topic.as_str(), i.to_string()).with_key((i % KEYS).to_string()))
        });
        for sent in join_all(sends).await {
            sent.expect("publish");
        }
    }
    publisher.shutdown().await.expect("shutdown the publisher");

    let clock = Clock::default();
    let app = App::builder()
        .subscribe(subscription(
            &topic, &group, ordering, n, fail_every, &clock,
        ))
        .connect(url)
        .await
        .expect("the consuming app");
    let took = clock.wait(n).await;
    app.shutdown().await.expect("shutdown");
    took
}

/// The retry rows on the broker of `url`, published through `publish_url`: `n` messages,
/// `rounds` interleaved rounds.
pub async fn rows<P, Fut>(
    backend: &str,
    url: &str,
    publish_url: &str,
    prepare: P,
    n: usize,
    rounds: usize,
    rows: &mut Vec<Row>,
) where
    P: Fn(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for (ordering, name) in [
        (Ordering::Partition, "partition order"),
        (Ordering::Key, "key order, 64 keys, concurrency 64"),
    ] {
        let (mut clean, mut failing) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            clean.push(run(url, publish_url, &prepare, ordering, n, None).await);
            failing.push(run(url, publish_url, &prepare, ordering, n, Some(100)).await);
        }
        let (clean_best, clean_median) = rates(n, &mut clean);
        let (best, median) = rates(n, &mut failing);
        rows.push(Row::new(
            format!(
                "{backend}, {name}, {n} msgs: consume with 1 % failing once (in-process retry after 1 ms), msg/s (best / median of {rounds})"
            ),
            format!(
                "1 % failing {} / {}; none failing {} / {}",
                thousands(best),
                thousands(median),
                thousands(clean_best),
                thousands(clean_median)
            ),
            format!(
                "ratio {:.2} (best), {:.2} (median)",
                best / clean_best,
                median / clean_median
            ),
        ));
    }
}
