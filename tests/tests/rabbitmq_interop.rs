//! Interop with another AMQP client: pika, which `tests/brokers.sh up rabbitmq` installs into a
//! virtualenv, publishing messages as a producer other than anybus writes them.
#![cfg(feature = "rabbitmq")]

use std::path::PathBuf;
use std::process::Command;

use anybus::{header, DeadLetter, DedupKey, HandlerError, Message, MessageId, Subscription};
use anybus_conformance::{Env, Inbox};

fn python() -> PathBuf {
    let cache = std::env::var("ANYBUS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/anybus")
        });
    let python = cache.join("venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: `tests/brokers.sh up rabbitmq` installs the Python AMQP client",
        python.display()
    );
    python
}

/// Runs `amqp_peer.py command URL args…` and returns what it printed.
fn peer(env: &Env, command: &str, args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/amqp_peer.py");
    let out = Command::new(python())
        .arg(script)
        .args([command, &env.url])
        .args(args)
        .output()
        .expect("run the Python client");
    assert!(
        out.status.success(),
        "the Python client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

/// Publishes `messages` (`message-id:payload`, `-` for no id) to `topic` with pika.
fn publish(env: &Env, topic: &str, messages: &[&str]) {
    let args: Vec<&str> = std::iter::once(topic)
        .chain(messages.iter().copied())
        .collect();
    peer(env, "publish", &args);
}

/// A subscription under `dedup = true` that reports what its handler is given.
fn deduplicating(env: &Env, topic: &str) -> (Subscription, Inbox<Message>) {
    let (tx, inbox) = Inbox::new();
    let subscription = Subscription::builder([topic])
        .name("once")
        .group(env.unique("g"))
        .dedup(DedupKey::MessageId)
        .handler(move |m: Message| {
            let _ = tx.send(m);
            std::future::ready(Ok::<(), HandlerError>(()))
        });
    (subscription, inbox)
}

/// A foreign `message-id` that is not a UUID is the message's id on every delivery, so under
/// `dedup = true` a second delivery of the message is acked without calling the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_message_id_is_deduplicated_on_its_second_delivery() {
    let env = Env::rabbitmq();
    let topic = env.unique("foreign-id");
    let (subscription, mut handled) = deduplicating(&env, &topic);
    let app = env.start(vec![subscription]).await;
    publish(
        &env,
        &topic,
        &["order-17:first", "order-17:again", "order-18:end"],
    );
    // One queue, one lane: when `end` is handled, the copy before it was seen.
    let got = handled.take(2, "order-17 once, then order-18").await;
    let payloads: Vec<&[u8]> = got.iter().map(|m| &m.payload()[..]).collect();
    assert_eq!(
        payloads,
        [&b"first"[..], b"end"],
        "order-17 was handled twice"
    );
    assert_eq!(got[0].id(), MessageId::of_foreign("order-17"));
    assert_eq!(
        got[0].headers().get_str("anybus-amqp-message-id"),
        Some("order-17")
    );
    let stats = app.stats()[0].stats;
    assert_eq!(stats.duplicates, 1, "{stats:?}");
    app.shutdown().await.expect("shutdown");
}

/// A foreign message without `message-id` has no key under `dedup = true`: it is dead-lettered
/// as a permanent failure that says so, never handled (its deliveries could not be told apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_message_without_an_id_is_dead_lettered_under_dedup() {
    let env = Env::rabbitmq();
    let topic = env.unique("no-id");
    let (subscription, mut handled) = deduplicating(&env, &topic);
    let (tx, mut dead) = Inbox::new();
    let reader = Subscription::builder([format!("{topic}.dlq")])
        .name("dead-letters")
        .group(env.unique("dlq-reader"))
        .dead_letter(DeadLetter::Disabled)
        .handler(move |m: Message| {
            let _ = tx.send(m);
            std::future::ready(Ok::<(), HandlerError>(()))
        });
    let app = env.start(vec![subscription, reader]).await;
    publish(&env, &topic, &["-:anonymous", "order-19:end"]);
    let letter = dead.next("the dead letter of the message without id").await;
    assert_eq!(&letter.payload()[..], b"anonymous");
    assert!(letter.id().is_missing(), "{letter:?}");
    let reason = letter.headers().get_str(header::DLQ_REASON);
    assert_eq!(reason, Some("permanent"), "{letter:?}");
    let error = letter.headers().get_str(header::DLQ_ERROR).unwrap_or("");
    assert!(error.contains("no message id"), "{letter:?}");
    let got = handled.next("the message with an id").await;
    assert_eq!(
        &got.payload()[..],
        b"end",
        "the message without id was handled"
    );
    app.shutdown().await.expect("shutdown");
    assert!(handled.drain_ready().is_empty());
}

/// A group whose queue earlier versions named otherwise (`{topic}.{group}`, for a group with a
/// `.`) finds its old queue cut off from the topic: new events go to the new queue only, and
/// what the old one held is left there for an operator, not consumed and not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_naming_queue_is_unbound_and_left_with_its_messages() {
    let env = Env::rabbitmq();
    let topic = env.unique("renamed");
    let group = format!("{}.eu", env.unique("billing"));
    let old = format!("{topic}.{group}");
    // The events exchange exists once any app connected.
    env.start(Vec::new())
        .await
        .shutdown()
        .await
        .expect("shutdown");
    peer(&env, "bind", &[&old, &topic]);
    publish(&env, &topic, &["-:before-the-upgrade"]);
    let (tx, mut handled) = Inbox::new();
    let app = env
        .start(vec![Subscription::builder([&topic])
            .name("renamed")
            .group(&group)
            .handler(move |m: Message| {
                let _ = tx.send(m.payload().clone());
                std::future::ready(Ok::<(), HandlerError>(()))
            })])
        .await;
    app.publisher()
        .send(Message::new(topic.as_str(), "after"))
        .await
        .expect("publish");
    assert_eq!(handled.next("the new event").await, "after");
    app.shutdown().await.expect("shutdown");
    assert!(
        handled.drain_ready().is_empty(),
        "the old queue was consumed"
    );
    let left = peer(&env, "count", &[&old]);
    peer(&env, "delete", &[&old]);
    assert_eq!(
        left.trim(),
        "1",
        "the old queue got the new event too, or lost its own"
    );
}
