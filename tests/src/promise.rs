//! Conformance bodies for what a user gets without asking: safe defaults, and user callbacks and
//! foreign input that cannot stall, loop or stop a subscription.

use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anybus::{header, Context, HandlerError, Message, Ordering, RetrySpec, Subscription};
use bytes::Bytes;

use crate::{dead_letter_reader, dlq_header, wait_assignment, Env, Inbox};

/// A handler's report of one call: the payload, the attempt, and when.
type Call = (Bytes, u32, Instant);

/// A subscription that names no retry policy gets the default one: a message that always fails
/// transiently is tried 3 times in all, 100 ms and then 200 ms (or more, with jitter) apart,
/// never at once, and then goes to its dead letter with reason `attempts-exhausted`; the
/// message behind it in its partition is handled after that, and the poison is not tried again.
pub async fn a_failing_message_backs_off_and_is_dead_lettered_by_default(env: &Env) {
    let topic = env.unique("default-retry");
    let (reader, mut dead) = dead_letter_reader(env, &format!("{topic}.dlq"));
    let (tx, mut calls) = Inbox::<Call>::new();
    let app = env
        .start(vec![
            reader,
            Subscription::builder([&topic])
                .name("fails")
                .group(env.unique("g"))
                .partitions(1)
                .handler(move |m: Message, ctx: Context| {
                    let _ = tx.send((m.payload().clone(), ctx.attempt(), Instant::now()));
                    std::future::ready(if m.payload() == "poison" {
                        Err(HandlerError::transient(std::io::Error::other(
                            "always fails",
                        )))
                    } else {
                        Ok(())
                    })
                }),
        ])
        .await;
    wait_assignment(&app, "dead-letters", "the dead-letter reader", |n| n > 0).await;
    let publisher = app.publisher();
    for payload in ["poison", "after"] {
        publisher
            .send(Message::new(topic.as_str(), payload))
            .await
            .expect("publish");
    }
    // One lane: "after" is handled only once the poison was settled, so every attempt the
    // poison got is in the calls before it.
    let mut poison = Vec::new();
    loop {
        let (payload, attempt, at) = calls.next("the handler's calls").await;
        if payload == "after" {
            break;
        }
        poison.push((attempt, at));
        assert!(
            poison.len() <= 3,
            "the poison was tried {} times, attempts {:?}",
            poison.len(),
            poison.iter().map(|(a, _)| *a).take(10).collect::<Vec<_>>()
        );
    }
    let attempts: Vec<u32> = poison.iter().map(|(a, _)| *a).collect();
    assert_eq!(attempts, [1, 2, 3], "the default policy's attempts");
    let gaps: Vec<Duration> = poison.windows(2).map(|w| w[1].1 - w[0].1).collect();
    assert!(
        gaps[0] >= Duration::from_millis(100) && gaps[1] >= Duration::from_millis(200),
        "attempts came without their backoff: {gaps:?}"
    );
    let letter = dead.next("the poison's dead letter").await;
    assert_eq!(letter.payload(), "poison");
    assert_eq!(
        dlq_header(&letter, header::DLQ_REASON),
        "attempts-exhausted"
    );
    assert_eq!(dlq_header(&letter, header::DLQ_ATTEMPTS), "3");
    let stats = app.stats();
    let fails = stats.iter().find(|s| s.name == "fails").expect("fails");
    assert_eq!(fails.stats.retries, 2, "{:?}", fails.stats);
    assert_eq!(fails.stats.dead_lettered, 1, "{:?}", fails.stats);
    app.shutdown().await.expect("shutdown");
}

/// `RetrySpec::forever()` keeps trying a transient failure past the default's 3 attempts, with
/// a backoff, and does not dead-letter it; the message succeeds once its failure passes.
pub async fn retry_forever_keeps_trying_with_backoff(env: &Env) {
    const FAILURES: usize = 6;
    let topic = env.unique("forever");
    let failed = Arc::new(AtomicUsize::new(0));
    let (tx, mut calls) = Inbox::<Call>::new();
    let counted = Arc::clone(&failed);
    let app = env
        .start(vec![Subscription::builder([&topic])
            .name("patient")
            .group(env.unique("g"))
            .partitions(1)
            .retry(RetrySpec {
                initial: Duration::from_millis(5),
                max: Duration::from_millis(20),
                ..RetrySpec::forever()
            })
            .handler(move |m: Message, ctx: Context| {
                let _ = tx.send((m.payload().clone(), ctx.attempt(), Instant::now()));
                let result = if counted.fetch_add(1, AtomicOrdering::SeqCst) < FAILURES {
                    Err(HandlerError::transient(std::io::Error::other(
                        "not there yet",
                    )))
                } else {
                    Ok(())
                };
                std::future::ready(result)
            })])
        .await;
    app.publisher()
        .send(Message::new(topic.as_str(), "eventually"))
        .await
        .expect("publish");
    let got = calls.take(FAILURES + 1, "every attempt").await;
    let attempts: Vec<u32> = got.iter().map(|(_, a, _)| *a).collect();
    assert_eq!(attempts, (1..=FAILURES as u32 + 1).collect::<Vec<_>>());
    assert!(
        got.windows(2)
            .all(|w| w[1].2 - w[0].2 >= Duration::from_millis(5)),
        "an attempt came without its backoff"
    );
    let stats = app.stats()[0].stats;
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    app.shutdown().await.expect("shutdown");
}

/// A dedup key function that panics is guarded like the handler: the message is a permanent
/// failure that says the function panicked, dead-lettered, and the lane goes on with the next
/// message, under partition and under key ordering.
pub async fn a_panicking_dedup_key_function_is_a_permanent_failure(env: &Env) {
    fn order_key(m: &Message) -> Option<String> {
        assert!(m.payload() != "boom", "no key in boom");
        Some(String::from_utf8_lossy(m.payload()).into_owned())
    }
    for ordering in [Ordering::Partition, Ordering::Key] {
        let topic = env.unique("key-panic");
        let (reader, mut dead) = dead_letter_reader(env, &format!("{topic}.dlq"));
        let (tx, mut inbox) = Inbox::new();
        let app = env
            .start(vec![
                reader,
                Subscription::builder([&topic])
                    .name("keyed")
                    .group(env.unique("g"))
                    .partitions(1)
                    .ordering(ordering)
                    .concurrency(1)
                    .dedup(anybus::DedupKey::function(order_key))
                    .handler(move |m: Message| {
                        let _ = tx.send(m.payload().clone());
                        std::future::ready(Ok::<(), HandlerError>(()))
                    }),
            ])
            .await;
        wait_assignment(&app, "dead-letters", "the dead-letter reader", |n| n > 0).await;
        let publisher = app.publisher();
        for payload in ["boom", "after"] {
            publisher
                .send(Message::new(topic.as_str(), payload).with_key("same"))
                .await
                .expect("publish");
        }
        assert_eq!(inbox.next("the message after the panic").await, "after");
        let letter = dead.next("the dead letter").await;
        assert_eq!(letter.payload(), "boom");
        assert_eq!(dlq_header(&letter, header::DLQ_REASON), "permanent");
        assert!(
            dlq_header(&letter, header::DLQ_ERROR)
                .contains("dedup key function panicked: no key in boom"),
            "{letter:?}"
        );
        app.shutdown().await.expect("shutdown");
    }
}

/// Under `dedup = "field"`, a payload that is not JSON is an undecodable payload, exactly as
/// without dedup: dead-lettered with reason `decode` and counted as a decode failure.
pub async fn an_undecodable_payload_under_field_dedup_is_a_decode_failure(env: &Env) {
    let topic = env.unique("dedup-decode");
    let (reader, mut dead) = dead_letter_reader(env, &format!("{topic}.dlq"));
    let (tx, mut inbox) = Inbox::new();
    let app = env
        .start(vec![
            reader,
            Subscription::builder([&topic])
                .name("by-field")
                .group(env.unique("g"))
                .partitions(1)
                .dedup(anybus::DedupKey::Field("order_id".into()))
                .handler(move |m: Message| {
                    let _ = tx.send(m.payload().clone());
                    std::future::ready(Ok::<(), HandlerError>(()))
                }),
        ])
        .await;
    wait_assignment(&app, "dead-letters", "the dead-letter reader", |n| n > 0).await;
    let publisher = app.publisher();
    for payload in ["not json at all", r#"{"order_id":"o-1"}"#] {
        publisher
            .send(Message::new(topic.as_str(), payload))
            .await
            .expect("publish");
    }
    assert_eq!(
        inbox.next("the JSON message").await,
        r#"{"order_id":"o-1"}"#
    );
    let letter = dead.next("the dead letter").await;
    assert_eq!(letter.payload(), "not json at all");
    assert_eq!(dlq_header(&letter, header::DLQ_REASON), "decode");
    assert!(
        dlq_header(&letter, header::DLQ_ERROR_TYPE).ends_with("DecodeError"),
        "{letter:?}"
    );
    let stats = app.stats();
    let by_field = stats
        .iter()
        .find(|s| s.name == "by-field")
        .expect("by-field");
    assert_eq!(by_field.stats.decode_failures, 1, "{:?}", by_field.stats);
    app.shutdown().await.expect("shutdown");
}

/// anybus's retry headers on an ordinary message (a foreign or careless producer's) steer
/// nothing: a due time an hour away does not park its lane, an attempt number of 99 is not the
/// attempt, and a retry topic does not redirect its dead letter.
pub async fn retry_headers_on_an_ordinary_message_steer_nothing(env: &Env) {
    let topic = env.unique("forged");
    let elsewhere = env.unique("elsewhere");
    let (reader, mut dead) = dead_letter_reader(env, &format!("{topic}.dlq"));
    let (tx, mut calls) = Inbox::<(Bytes, u32)>::new();
    let app = env
        .start(vec![
            reader,
            Subscription::builder([&topic])
                .name("plain")
                .group(env.unique("g"))
                .partitions(1)
                .handler(move |m: Message, ctx: Context| {
                    let _ = tx.send((m.payload().clone(), ctx.attempt()));
                    std::future::ready(if m.payload() == "forged" {
                        Err(HandlerError::permanent(std::io::Error::other("refused")))
                    } else {
                        Ok(())
                    })
                }),
        ])
        .await;
    wait_assignment(&app, "dead-letters", "the dead-letter reader", |n| n > 0).await;
    let in_an_hour = std::time::SystemTime::now() + Duration::from_secs(3600);
    let mut headers = anybus::Headers::new();
    headers.insert(
        header::RETRY_DUE_MS,
        in_an_hour
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis()
            .to_string(),
    );
    headers.insert(header::ATTEMPT, "99".to_owned());
    headers.insert(header::RETRY_TOPIC, elsewhere.clone());
    let publisher = app.publisher();
    publisher
        .send(Message::new(topic.as_str(), "forged").with_headers(headers))
        .await
        .expect("publish");
    publisher
        .send(Message::new(topic.as_str(), "after"))
        .await
        .expect("publish");
    let got = calls.take(2, "both messages, at once").await;
    assert_eq!(
        got,
        [(Bytes::from("forged"), 1), (Bytes::from("after"), 1)],
        "the forged message ran first, as attempt 1"
    );
    let letter = dead.next("the forged message's dead letter").await;
    assert_eq!(letter.payload(), "forged");
    assert_eq!(dlq_header(&letter, header::DLQ_TOPIC), topic);
    app.shutdown().await.expect("shutdown");
}

/// Under partition ordering, a partition whose lane is full (here: its first message is
/// retried in process, with 600 messages behind it) holds back only itself: the messages of
/// another topic of the same subscription are all handled meanwhile, and once the retried
/// message succeeds, the 600 are handled too, in order.
pub async fn a_full_partition_holds_back_only_itself(env: &Env) {
    const BEHIND: usize = 600;
    const OTHERS: usize = 10;
    let stuck = env.unique("stuck");
    let flowing = env.unique("flowing");
    let others_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (attempts_tx, mut attempts) = Inbox::<u32>::new();
    let (tx, mut handled) = Inbox::<(String, Bytes)>::new();
    let stuck_topic = stuck.clone();
    let done = Arc::clone(&others_done);
    let app = env
        .start(vec![Subscription::builder([&stuck, &flowing])
            .name("lanes")
            .group(env.unique("g"))
            .partitions(1)
            .ordering(Ordering::Partition)
            .retry(RetrySpec {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(20),
                jitter: false,
                ..RetrySpec::forever()
            })
            .handler(move |m: Message, ctx: Context| {
                let first = m.topic() == stuck_topic && m.payload() == "first";
                let result = if first && !done.load(AtomicOrdering::SeqCst) {
                    let _ = attempts_tx.send(ctx.attempt());
                    Err(HandlerError::transient(std::io::Error::other(
                        "the other topic is not done yet",
                    )))
                } else {
                    let _ = tx.send((m.topic().to_owned(), m.payload().clone()));
                    Ok(())
                };
                std::future::ready(result)
            })])
        .await;
    let publisher = app.publisher();
    publisher
        .send(Message::new(stuck.as_str(), "first"))
        .await
        .expect("publish");
    for i in 0..BEHIND {
        publisher
            .send(Message::new(stuck.as_str(), i.to_string()))
            .await
            .expect("publish");
    }
    // Two backoffs after the backlog was published, its partition has fetched what its lane
    // can hold: a loop that waited for that lane would be stuck by now.
    while attempts.next("the retried message's attempts").await < 3 {}
    for i in 0..OTHERS {
        publisher
            .send(Message::new(flowing.as_str(), i.to_string()))
            .await
            .expect("publish");
    }
    let others = handled
        .take(OTHERS, "the other topic, while the stuck one retries")
        .await;
    let expected: Vec<(String, Bytes)> = (0..OTHERS)
        .map(|i| (flowing.clone(), Bytes::from(i.to_string())))
        .collect();
    assert_eq!(others, expected);
    others_done.store(true, AtomicOrdering::SeqCst);
    let rest = handled
        .take(BEHIND + 1, "the stuck topic, once it goes on")
        .await;
    let mut expected = vec![(stuck.clone(), Bytes::from("first"))];
    expected.extend((0..BEHIND).map(|i| (stuck.clone(), Bytes::from(i.to_string()))));
    assert_eq!(rest, expected, "the stuck topic's order");
    app.shutdown().await.expect("shutdown");
}

/// Under `none` and `key` ordering, a redeliver-later retry copy waiting for its due time holds
/// no worker: with two workers and two copies waiting (due in two minutes), fresh messages are
/// all handled.
pub async fn a_waiting_retry_copy_holds_no_worker(env: &Env) {
    const FRESH: usize = 5;
    for ordering in [Ordering::None, Ordering::Key] {
        let topic = env.unique("waiting-copies");
        let (tx, mut handled) = Inbox::<(Bytes, u32)>::new();
        let app = env
            .start(vec![Subscription::builder([&topic])
                .name("waits")
                .group(env.unique("g"))
                .partitions(1)
                .ordering(ordering)
                .concurrency(2)
                .retry(RetrySpec {
                    mode: anybus::RetryMode::Redeliver,
                    max_attempts: 2,
                    initial: Duration::from_secs(120),
                    max: Duration::from_secs(120),
                    jitter: false,
                    ..RetrySpec::default()
                })
                .handler(move |m: Message, ctx: Context| {
                    let _ = tx.send((m.payload().clone(), ctx.attempt()));
                    std::future::ready(if m.payload().starts_with(b"fails") {
                        Err(HandlerError::transient(std::io::Error::other("later")))
                    } else {
                        Ok(())
                    })
                })])
            .await;
        let publisher = app.publisher();
        for payload in ["fails-1", "fails-2"] {
            publisher
                .send(Message::new(topic.as_str(), payload).with_key(payload))
                .await
                .expect("publish");
        }
        handled.take(2, "the first attempts").await;
        let deadline = tokio::time::Instant::now() + crate::PATIENCE;
        crate::wait_stats(&app, "both copies published", deadline, |s| s.retries == 2).await;
        for i in 0..FRESH {
            publisher
                .send(Message::new(topic.as_str(), format!("fresh-{i}")).with_key(i.to_string()))
                .await
                .expect("publish");
        }
        let mut fresh = handled
            .take(
                FRESH,
                &format!("fresh work under {ordering:?} while copies wait"),
            )
            .await;
        fresh.sort();
        let expected: Vec<(Bytes, u32)> = (0..FRESH)
            .map(|i| (Bytes::from(format!("fresh-{i}")), 1))
            .collect();
        assert_eq!(fresh, expected, "no copy ran early");
        app.shutdown().await.expect("shutdown");
    }
}
