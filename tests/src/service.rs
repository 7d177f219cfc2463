//! Conformance bodies for what a service author touches first: request/reply that answers a
//! repeated request, and decodes an answer with the codec that wrote it.

use std::time::{Duration, Instant};

use anybus::{DedupKey, HandlerError, Raw, RequestError, Subscription};

use crate::{Env, PATIENCE};

/// A request sent twice (a client that retried) to a subscription that deduplicates by a field
/// of the request: the first is answered, the second is told at once, with
/// [`RequestError::Duplicate`], that it was handled before, rather than left to wait for its
/// whole timeout.
pub async fn a_repeated_request_is_told_it_is_a_duplicate(env: &Env) {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Charge {
        request_id: String,
        cents: u64,
    }
    let topic = env.unique("charge");
    let app = env
        .start(vec![Subscription::builder([&topic])
            .name("charge")
            .group(env.unique("payments"))
            .partitions(env.partitions)
            .dedup(DedupKey::Field("request_id".into()))
            .handler(|c: Charge| async move {
                Ok::<_, HandlerError>(c.cents * 2)
            })])
        .await;
    let publisher = app.publisher();
    let charge = Charge {
        request_id: "r-1".into(),
        cents: 21,
    };
    let first: u64 = publisher
        .request(&topic, &charge, PATIENCE)
        .await
        .expect("the first request is answered");
    assert_eq!(first, 42);
    let asked = Instant::now();
    let again = publisher
        .request::<_, u64>(&topic, &charge, PATIENCE)
        .await
        .expect_err("a repeated request is not handled again");
    assert!(
        matches!(again, RequestError::Duplicate { topic: ref to } if *to == topic),
        "expected a duplicate error, got {again:?}"
    );
    assert!(
        asked.elapsed() < PATIENCE / 2,
        "the duplicate was told only after {:?}",
        asked.elapsed()
    );
    assert_eq!(app.stats()[0].stats.handled, 1);
    assert_eq!(app.stats()[0].stats.duplicates, 1);
    app.shutdown().await.expect("shutdown");
}

/// An answer is decoded with the codec that wrote it: a responder whose subscription uses the
/// raw codec answers bytes (not JSON), and a plain `request` reads them, because the answer's
/// `content-type` says what they are.
pub async fn an_answer_is_decoded_with_the_codec_that_wrote_it(env: &Env) {
    let topic = env.unique("echo-raw");
    let app = env
        .start(vec![Subscription::builder([&topic])
            .name("echo")
            .group(env.unique("echo"))
            .partitions(env.partitions)
            .codec::<Raw>()
            .handler(|asked: String| async move {
                Ok::<_, HandlerError>(format!("you sent {asked}"))
            })])
        .await;
    let answer: String = app
        .publisher()
        .request(&topic, "ping", Duration::from_secs(30))
        .await
        .expect("a raw answer, decoded as raw");
    // The request went out as JSON (`"ping"`, with quotes); the raw answer came back as is.
    assert_eq!(answer, "you sent \"ping\"");
    app.shutdown().await.expect("shutdown");
}

/// The counters follow the definitions in `anybus::observe`: a message that fails transiently
/// twice and then succeeds counts 1 handled, 2 transient failures and 2 retries; a message whose
/// 3 attempts all fail counts 3 more transient failures, 2 more retries, 1 exhausted and 1 dead
/// letter, and no permanent failure; a permanent failure counts 1 permanent and 1 dead letter.
pub async fn the_counters_follow_their_definitions(env: &Env) {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use anybus::{Message, RetrySpec};

    let topic = env.unique("counted");
    let (reader, mut dead) = crate::dead_letter_reader(env, &format!("{topic}.dlq"));
    let calls: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let counted = Arc::clone(&calls);
    let app = env
        .start(vec![
            Subscription::builder([&topic])
                .name("counted")
                .group(env.unique("g"))
                .partitions(1)
                .retry(RetrySpec {
                    initial: Duration::from_millis(1),
                    max: Duration::from_millis(5),
                    ..RetrySpec::default()
                })
                .handler(move |m: Message| {
                    let body = String::from_utf8_lossy(m.payload()).into_owned();
                    let n = {
                        let mut calls = counted.lock().expect("lock");
                        let n = calls.entry(body.clone()).or_default();
                        *n += 1;
                        *n
                    };
                    std::future::ready(match body.as_str() {
                        "third-time-lucky" if n < 3 => {
                            Err(HandlerError::transient(std::io::Error::other("not yet")))
                        }
                        "never" => Err(HandlerError::transient(std::io::Error::other("never"))),
                        "refused" => Err(HandlerError::permanent(std::io::Error::other("no"))),
                        _ => Ok(()),
                    })
                }),
            reader,
        ])
        .await;
    let publisher = app.publisher();
    for body in ["third-time-lucky", "never", "refused", "fine"] {
        publisher
            .send(Message::new(topic.as_str(), body).with_key("k"))
            .await
            .expect("publish");
    }
    dead.take(2, "the exhausted and the refused message").await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let stats = crate::wait_stats(&app, "every message settled", deadline, |s| {
        s.handled == 2 && s.dead_lettered == 2
    })
    .await;
    assert_eq!(
        (
            stats.handled,
            stats.transient_failures,
            stats.retries,
            stats.exhausted,
            stats.permanent_failures,
            stats.decode_failures,
            stats.dead_lettered,
        ),
        (2, 2 + 3, 2 + 2, 1, 1, 0, 2),
        "(handled, transient, retries, exhausted, permanent, decode, dead-lettered): {stats:?}"
    );
    app.shutdown().await.expect("shutdown");
}
