//! Interop with another Kafka client: Confluent's Python client, which `tests/brokers.sh up
//! kafka` installs into a virtualenv. (Debian's kcat is too old to talk to Tansu, see
//! KAFKA_BROKER.md.)
#![cfg(feature = "kafka")]

use std::path::PathBuf;
use std::process::Command;

use anybus::{HandlerError, Headers, Message};
use anybus_conformance::kafka::{bootstrap, wait_committed};
use anybus_conformance::{Env, Inbox};
use bytes::Bytes;

fn python() -> PathBuf {
    let cache = std::env::var("ANYBUS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/anybus")
        });
    let python = cache.join("venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: `tests/brokers.sh up kafka` installs the Python Kafka client",
        python.display()
    );
    python
}

fn peer(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/kafka_peer.py");
    let out = Command::new(python())
        .arg(script)
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_from_another_client_arrives_with_key_and_headers() {
    let env = Env::kafka();
    let topic = env.unique("from-python");
    let (tx, mut inbox) = Inbox::new();
    // Two groups: each gets its own delivery of the record.
    let group = |name: &str| {
        let tx = tx.clone();
        anybus::Subscription::builder([&topic])
            .name(name)
            .group(env.unique(name))
            .handler(move |m: Message| {
                let _ = tx.send(m);
                std::future::ready(Ok::<(), HandlerError>(()))
            })
    };
    let app = env.start(vec![group("a"), group("b")]).await;
    let bootstrap = bootstrap(&env);
    let trace = format!("trace={}", hex(b"abc"));
    let binary = format!("bin={}", hex(&[0, 255, 7]));
    peer(&[
        "produce",
        &bootstrap,
        &topic,
        "user-42",
        r#"{"n":1}"#,
        &trace,
        &binary,
    ]);

    let got = inbox.next("the message from Python").await;
    assert_eq!(got.key().map(|k| &k[..]), Some(&b"user-42"[..]));
    assert_eq!(&got.payload()[..], br#"{"n":1}"#);
    let headers: Vec<(&str, &[u8])> = got.headers().iter().map(|(n, v)| (n, &v[..])).collect();
    assert_eq!(headers, [("trace", &b"abc"[..]), ("bin", &[0, 255, 7][..])]);
    // Without anybus's id header, the id comes from the record's place: every delivery of the
    // record has the same one (so `dedup = true` recognises a redelivery).
    let again = inbox.next("the other group's delivery").await;
    assert_eq!(again.id(), got.id());
    let origin = got.origin();
    assert_eq!(
        got.id(),
        anybus::MessageId::of_record(
            &topic,
            origin.partition.expect("a partition"),
            origin.offset.expect("an offset"),
            origin.timestamp_ms,
        )
    );
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_from_anybus_is_read_by_another_client() {
    let env = Env::kafka();
    let topic = env.unique("to-python");
    let app = env.start(vec![]).await;
    let mut headers = Headers::new();
    headers.append("trace", Bytes::from_static(b"xyz"));
    let message = Message::new(topic.as_str(), r#"{"n":2}"#)
        .with_key("order-7")
        .with_headers(headers);
    let id = message.id();
    app.publisher().send(message).await.expect("publish");

    let line = peer(&[
        "consume",
        &bootstrap(&env),
        &topic,
        &env.unique("python"),
        "1",
    ]);
    let got: serde_json::Value = serde_json::from_str(line.trim()).expect("json");
    assert_eq!(got["key"], hex(b"order-7"));
    assert_eq!(got["value"], hex(br#"{"n":2}"#));
    let headers = got["headers"].as_array().expect("headers");
    assert!(
        headers.contains(&serde_json::json!(["trace", hex(b"xyz")])),
        "{headers:?}"
    );
    assert!(
        headers.contains(&serde_json::json!([
            "anybus-message-id",
            hex(id.to_string().as_bytes())
        ])),
        "{headers:?}"
    );
    app.shutdown().await.expect("shutdown");
}

/// A header name is bytes on the wire: one that is not UTF-8 (which rdkafka's header iterator
/// panics on) is delivered with U+FFFD in place of the bad bytes, and the partition goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_name_that_is_not_utf8_is_delivered_lossily_and_the_partition_flows() {
    let env = Env::kafka();
    let (topic, group) = (env.unique("bad-header-name"), env.unique("g"));
    let (tx, mut inbox) = Inbox::new();
    let app = env
        .start(vec![anybus::Subscription::builder([&topic])
            .group(&group)
            .partitions(1)
            .handler(move |m: Message| {
                let _ = tx.send(m);
                std::future::ready(Ok::<(), HandlerError>(()))
            })])
        .await;
    let bootstrap = bootstrap(&env);
    let bad = format!("{}={}", hex(b"bad\xff\xfename"), hex(b"v"));
    let good = format!("{}={}", hex(b"ok"), hex(b"w"));
    peer(&[
        "produce-raw-names",
        &bootstrap,
        &topic,
        "user-1",
        "first",
        &bad,
        &good,
    ]);
    peer(&["produce", &bootstrap, &topic, "user-1", "second"]);

    let first = inbox.next("the record with the bad header name").await;
    assert_eq!(&first.payload()[..], b"first");
    let headers: Vec<(&str, &[u8])> = first.headers().iter().map(|(n, v)| (n, &v[..])).collect();
    assert_eq!(
        headers,
        [("bad\u{FFFD}\u{FFFD}name", &b"v"[..]), ("ok", &b"w"[..])]
    );
    let second = inbox.next("the record after it").await;
    assert_eq!(&second.payload()[..], b"second");
    wait_committed(&env, &group, &topic, &[2]).await;
    app.shutdown().await.expect("shutdown");
}
