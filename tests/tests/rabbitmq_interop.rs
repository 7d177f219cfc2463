//! Interop with another AMQP client: pika, which `tests/brokers.sh up rabbitmq` installs into a
//! virtualenv, publishing messages as a producer other than anybus writes them, reading what
//! anybus publishes, and asking and answering requests the way AMQP RPC works (`reply_to`,
//! `correlation_id`).
#![cfg(feature = "rabbitmq")]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};

use anybus::{header, DeadLetter, DedupKey, HandlerError, Message, MessageId, Subscription};
use anybus_conformance::{Env, Inbox, PATIENCE};
use serde_json::{json, Value};

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

/// `amqp_peer.py command URL args…`, to be run.
fn peer_command(env: &Env, command: &str, args: &[&str]) -> Command {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/amqp_peer.py");
    let mut peer = Command::new(python());
    peer.arg(script).args([command, &env.url]).args(args);
    peer
}

/// Runs `amqp_peer.py command URL args…` and returns what it printed.
fn peer(env: &Env, command: &str, args: &[&str]) -> String {
    let out = peer_command(env, command, args)
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

/// [`peer`] on a blocking thread, for a peer that waits for the app (which needs the runtime's
/// threads meanwhile).
async fn peer_in_background(env: &Env, command: &'static str, args: Vec<String>) -> Value {
    let env = env.clone();
    let printed = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        peer(&env, command, &args)
    })
    .await
    .expect("the Python client's thread");
    serde_json::from_str(&printed).unwrap_or_else(|e| panic!("{e}: {printed}"))
}

/// A pika RPC server answering one request on a topic (`amqp_peer.py respond`); killed if the
/// test ends before it did.
struct Responder {
    child: Child,
    lines: BufReader<ChildStdout>,
}

impl Responder {
    /// Starts it and waits until its queue is bound, so that no request misses it.
    async fn start(env: &Env, topic: &str) -> Self {
        let mut child = peer_command(env, "respond", &[topic])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run the Python client");
        let lines = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut responder = Self { child, lines };
        let ready = tokio::task::block_in_place(|| responder.line());
        assert_eq!(ready.trim(), "ready", "the responder did not start");
        responder
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.lines.read_line(&mut line).expect("read the responder");
        line
    }

    /// The request it answered, as it saw it.
    async fn request(mut self) -> Value {
        let seen = tokio::task::block_in_place(|| self.line());
        serde_json::from_str(&seen).unwrap_or_else(|e| panic!("{e}: `{seen}`"))
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pika client asks an anybus subscription the AMQP way (its own exclusive callback queue in
/// `reply_to`, a `correlation_id`, no anybus headers) and gets the handler's answer in that
/// queue, with its `correlation_id` and the codec's `content_type`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pika_request_is_answered_in_its_reply_to_queue() {
    #[derive(serde::Deserialize)]
    struct Register {
        email: String,
    }
    #[derive(serde::Serialize)]
    struct Registered {
        user_id: String,
    }
    let env = Env::rabbitmq();
    let topic = env.unique("register");
    let app = env
        .start(vec![Subscription::builder([&topic])
            .name("register")
            .group(env.unique("accounts"))
            .handler(|r: Register| async move {
                Ok::<_, HandlerError>(Registered {
                    user_id: format!("u-{}", r.email.len()),
                })
            })])
        .await;
    let body = json!({"email": "ada@example.com"}).to_string();
    let answer = peer_in_background(&env, "request", vec![topic.clone(), body]).await;
    assert_eq!(answer["timeout"], false, "no answer came: {answer}");
    assert_eq!(answer["correlation_id"], answer["sent_correlation_id"]);
    assert_eq!(answer["content_type"], "application/json", "{answer}");
    let value: Value = serde_json::from_str(answer["body"].as_str().unwrap_or("")).expect("json");
    assert_eq!(value, json!({"user_id": "u-15"}));
    app.shutdown().await.expect("shutdown");
}

/// `Publisher::request` to a pika RPC server: the request names anybus's reply queue in
/// `reply_to` and has a `correlation_id` and a `content_type`; the server publishes its answer
/// to the default exchange with `reply_to` as routing key and only the `correlation_id`, and
/// the request resolves with the decoded answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anybus_request_is_answered_by_a_pika_rpc_server() {
    let env = Env::rabbitmq();
    let topic = env.unique("doubler");
    let app = env.start(Vec::new()).await;
    let responder = Responder::start(&env, &topic).await;
    let answer: Value = app
        .publisher()
        .request(&topic, &json!({"n": 21}), PATIENCE)
        .await
        .expect("pika's answer");
    assert_eq!(answer, json!({"doubled": 42}));
    let seen = responder.request().await;
    assert_eq!(seen["content_type"], "application/json", "{seen}");
    let reply_to = seen["reply_to"].as_str().unwrap_or("");
    assert!(
        reply_to.starts_with("anybus.replies.") && reply_to.ends_with(".%reply"),
        "reply_to names the app's reply queue: {seen}"
    );
    assert!(
        seen["correlation_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{seen}"
    );
    app.shutdown().await.expect("shutdown");
}

/// What anybus publishes says its media type in the AMQP `content_type` property, from the
/// codec that encoded it, so that a pika consumer can decode it by the usual property.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_read_by_pika_has_its_codecs_content_type() {
    let env = Env::rabbitmq();
    let topic = env.unique("typed");
    let queue = env.unique("pika-reader");
    let app = env.start(Vec::new()).await;
    peer(&env, "bind", &[&queue, &topic]);
    app.publisher()
        .publish(&topic, &json!({"id": 7}))
        .await
        .expect("publish");
    let got = peer_in_background(&env, "get", vec![queue.clone()]).await;
    peer(&env, "delete", &[&queue]);
    assert_eq!(got["content_type"], "application/json", "{got}");
    assert!(
        got["headers"].get(header::CONTENT_TYPE).is_none(),
        "the content type is the property, not also a header: {got}"
    );
    assert_eq!(got["body"], r#"{"id":7}"#);
    app.shutdown().await.expect("shutdown");
}

/// Header values that anybus has no plain form for, as pika writes them, are kept: a decimal
/// as its exact decimal text, a void value as an empty value, a nested table as JSON text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_foreign_header_values_are_kept_in_their_documented_form() {
    let env = Env::rabbitmq();
    let topic = env.unique("odd-headers");
    let (tx, mut handled) = Inbox::new();
    let app = env
        .start(vec![Subscription::builder([&topic])
            .name("odd")
            .group(env.unique("g"))
            .handler(move |m: Message| {
                let _ = tx.send(m);
                std::future::ready(Ok::<(), HandlerError>(()))
            })])
        .await;
    peer(&env, "publish-odd-headers", &[&topic]);
    let got = handled.next("the message with odd headers").await;
    let headers = got.headers();
    assert_eq!(
        headers.get_str("nested"),
        Some(r#"{"a":1,"b":"x","inner":{"none":null},"list":[1,"two"]}"#),
        "{got:?}"
    );
    assert_eq!(headers.get_str("price"), Some("1.5"), "{got:?}");
    assert_eq!(headers.get_str("debt"), Some("-2.5"), "{got:?}");
    assert_eq!(headers.get_str("nothing"), Some(""), "{got:?}");
    assert_eq!(headers.get_str("plain"), Some("yes"), "{got:?}");
    app.shutdown().await.expect("shutdown");
}
