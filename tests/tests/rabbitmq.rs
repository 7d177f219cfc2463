//! The conformance suite on RabbitMQ (`tests/brokers.sh up rabbitmq`), and the bad URLs only
//! a real broker can refuse: each fails fast, names its cause, and never shows the password.
//! Tests that drive the broker itself (killed connections, deleted queues) are in
//! `rabbitmq_reconnect.rs`.
#![cfg(feature = "rabbitmq")]

use std::time::{Duration, Instant};

use anybus::{App, ConnectError, MessageId, StartError};

anybus_conformance::conformance_suite!(anybus_conformance::Env::rabbitmq());

/// "Fails fast": well inside the 5 s connect timeout, which only an unanswered host waits for.
const FAST: Duration = Duration::from_secs(3);

/// The suite's broker URL with other credentials, virtual host or address.
fn url_with(user_pass: Option<&str>, host_port: Option<&str>, vhost: Option<&str>) -> String {
    let base = anybus_conformance::Env::rabbitmq().url;
    let rest = base.strip_prefix("amqp://").expect("an amqp:// URL");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, "%2f"));
    let (userinfo, address) = authority
        .rsplit_once('@')
        .unwrap_or(("guest:guest", authority));
    format!(
        "amqp://{}@{}/{}",
        user_pass.unwrap_or(userinfo),
        host_port.unwrap_or(address),
        vhost.unwrap_or(path)
    )
}

/// Connects, expecting a connect error; returns its text after checking that neither its
/// `Display` nor its `Debug` shows `password`.
async fn refused(url: &str, password: &str) -> (ConnectError, String, Duration) {
    let started = Instant::now();
    let outcome = App::builder().connect(url).await;
    let took = started.elapsed();
    let error = match outcome {
        Ok(app) => {
            let _ = app.shutdown().await;
            panic!("connecting to {} succeeded", url.replace(password, "***"));
        }
        Err(error) => error,
    };
    let StartError::Connect(error) = error else {
        panic!("expected a connect error, got {error:?}");
    };
    let (shown, debug) = (error.to_string(), format!("{error:?}"));
    assert!(
        !shown.contains(password),
        "the password is in the error: {shown}"
    );
    assert!(
        !debug.contains(password),
        "the password is in its Debug: {debug}"
    );
    (error, shown, took)
}

fn broker_hint(error: &str) -> String {
    format!("{error}\n(is the broker up? `tests/brokers.sh up rabbitmq` starts it)")
}

#[tokio::test]
async fn a_wrong_password_fails_fast_naming_the_user_and_not_the_password() {
    let password = format!("pw-{}", MessageId::new());
    let url = url_with(Some(&format!("guest:{password}")), None, None);
    let (error, shown, took) = refused(&url, &password).await;
    assert!(
        matches!(&error, ConnectError::AuthenticationFailed { user, .. } if user == "guest"),
        "{}",
        broker_hint(&shown)
    );
    assert!(
        shown.contains("authentication failed for user `guest`"),
        "{shown}"
    );
    assert!(took < FAST, "took {took:?}");
}

#[tokio::test]
async fn an_unknown_vhost_fails_fast_naming_the_vhost() {
    // The broker checks the password before the vhost, so this needs the real one; the test
    // broker's is the user name, so what must not show is the pair.
    let vhost = format!("no-such-vhost-{}", MessageId::new());
    let (error, shown, took) = refused(&url_with(None, None, Some(&vhost)), "guest:guest").await;
    assert!(
        matches!(&error, ConnectError::UnknownVhost { vhost: v, .. } if *v == vhost),
        "{}",
        broker_hint(&shown)
    );
    assert!(
        shown.contains(&format!("virtual host `{vhost}` does not exist")),
        "{shown}"
    );
    assert!(took < FAST, "took {took:?}");
}

#[tokio::test]
async fn a_host_nobody_listens_on_fails_fast_naming_the_address() {
    let password = format!("pw-{}", MessageId::new());
    let url = url_with(
        Some(&format!("guest:{password}")),
        Some("127.0.0.1:1"),
        None,
    );
    let (error, shown, took) = refused(&url, &password).await;
    assert!(
        matches!(error, ConnectError::Unreachable { .. }),
        "{error:?}"
    );
    assert!(
        shown.contains("connection refused by 127.0.0.1:1"),
        "{shown}"
    );
    assert!(took < FAST, "took {took:?}");
}

/// A file holding `contents`, in the temporary directory, named uniquely.
fn secret_file(contents: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("anybus-amqp-pw-{}", MessageId::new()));
    std::fs::write(&path, contents).expect("write the password file");
    path
}

#[tokio::test]
async fn a_password_from_a_file_logs_in() {
    // The suite's broker URL without its password, which comes from a file (as a Docker or
    // Kubernetes secret mount gives it, with a trailing newline) instead.
    let full = anybus_conformance::Env::rabbitmq().url;
    let rest = full.strip_prefix("amqp://").expect("an amqp:// URL");
    let (userinfo, tail) = rest.rsplit_once('@').expect("the suite's URL has a user");
    let (user, password) = userinfo.split_once(':').expect("and a password");
    let file = secret_file(&format!("{password}\n"));
    let url = format!("amqp://{user}@{tail}?password_file={}", file.display());
    let app = App::builder()
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{}", broker_hint(&e.to_string())));
    app.shutdown().await.expect("shut down");
}

#[tokio::test]
async fn a_password_with_reserved_characters_reaches_the_broker_and_is_never_shown() {
    // Percent-encoded, a password with every character a URL reserves is the broker's to
    // refuse (it is not guest's), and is shown neither as written nor decoded.
    let password = format!("p@ss:w/rd#?&={}%", MessageId::new());
    let encoded: String = password
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let url = url_with(Some(&format!("guest:{encoded}")), None, None);
    let (error, shown, _) = refused(&url, &password).await;
    assert!(!shown.contains(&encoded), "{shown}");
    assert!(
        matches!(&error, ConnectError::AuthenticationFailed { user, .. } if user == "guest"),
        "{}",
        broker_hint(&shown)
    );
    // Written raw, the same password does not read as a URL's user-info: refused before any
    // connection, without a piece of it.
    let raw = url_with(Some(&format!("guest:{password}")), None, None);
    let (error, shown, _) = refused(&raw, &password).await;
    assert!(
        matches!(error, ConnectError::MalformedUrl { .. }),
        "{error:?}"
    );
    assert!(shown.contains("percent-encode"), "{shown}");
    assert!(!shown.contains("rd#?&"), "{shown}");
}

#[tokio::test]
async fn a_password_variable_that_is_not_set_is_named() {
    let name = format!(
        "ANYBUS_UNSET_{}",
        MessageId::new().to_string().replace('-', "_")
    );
    let url = url_with(Some("guest"), None, None) + &format!("?password_env={name}");
    let (error, shown, took) = refused(&url, "guest:guest").await;
    assert!(matches!(error, ConnectError::Password { .. }), "{error:?}");
    assert!(
        shown.contains(&format!(
            "environment variable `{name}` (from `password_env`) is not set"
        )),
        "{shown}"
    );
    assert!(took < FAST, "took {took:?}");
}

#[tokio::test]
async fn a_host_that_does_not_answer_fails_within_the_connect_timeout() {
    let password = format!("pw-{}", MessageId::new());
    // A listener on loopback that accepts the connection and never speaks AMQP: the handshake
    // gets no answer, and the error names the address within the URL's connect timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a silent listener");
    let address = silent.local_addr().expect("its address").to_string();
    let url = url_with(Some(&format!("guest:{password}")), Some(&address), None)
        + "?connection_timeout=300";
    let (error, shown, took) = refused(&url, &password).await;
    assert!(
        matches!(error, ConnectError::Unreachable { .. }),
        "{error:?}"
    );
    assert!(shown.contains(&address), "{shown}");
    assert!(took < FAST, "took {took:?}");
    drop(silent);
}

/// A redeliver-later retry copy waits in its retry topic's wait queue (a per-message TTL that
/// dead-letters back to the topic), not in a consumer: it comes back expired from that queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_copy_waits_in_the_wait_queue() {
    use anybus::{Backoff, Context, HandlerError, Message, RetryMode, RetrySpec, Subscription};
    let env = anybus_conformance::Env::rabbitmq();
    let topic = env.unique("wait-queue");
    let group = env.unique("g");
    let (tx, mut inbox) = anybus_conformance::Inbox::new();
    let app = env
        .start(vec![Subscription::builder([&topic])
            .name("waiting")
            .group(&group)
            .retry(RetrySpec {
                max_attempts: 2,
                backoff: Backoff::Fixed,
                initial: Duration::from_millis(100),
                max: Duration::from_millis(100),
                jitter: false,
                mode: RetryMode::Redeliver,
            })
            .handler(move |m: Message, ctx: Context| {
                let attempt = ctx.attempt();
                let _ = tx.send((attempt, m));
                std::future::ready(if attempt == 1 {
                    Err(HandlerError::transient(std::io::Error::other("later")))
                } else {
                    Ok(())
                })
            })])
        .await;
    app.publisher()
        .send(Message::new(topic.as_str(), "x"))
        .await
        .expect("publish");
    let got = inbox.take(2, "both attempts").await;
    let (attempt, copy) = &got[1];
    assert_eq!(*attempt, 2);
    let wait_queue = format!("{}.%wait", anybus::retry_topic(&topic, &group));
    let headers = copy.headers();
    assert_eq!(
        headers.get_str("x-first-death-queue"),
        Some(wait_queue.as_str()),
        "{copy:?}"
    );
    assert_eq!(
        headers.get_str("x-first-death-reason"),
        Some("expired"),
        "{copy:?}"
    );
    app.shutdown().await.expect("shutdown");
}

/// A `#` pattern also matches the group's own dead-letter topic: the dead letter of a message
/// the pattern subscription gave up on comes back to it, and must be skipped, not handled (and
/// dead-lettered again, and again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_subscription_skips_its_own_dead_letters() {
    use anybus::{DeadLetter, HandlerError, Message, Subscription};
    let env = anybus_conformance::Env::rabbitmq();
    let prefix = env.unique("pattern");
    let topic = format!("{prefix}.created");
    let (tx, mut handled) = anybus_conformance::Inbox::new();
    let (dlq_tx, mut dead) = anybus_conformance::Inbox::new();
    let app = env
        .start(vec![
            Subscription::builder([format!("{prefix}.#")])
                .name("pattern")
                .group(env.unique("g"))
                .handler(move |m: Message| {
                    let _ = tx.send((m.topic().to_owned(), m.payload().clone()));
                    std::future::ready(if m.payload() == "bad" {
                        Err(HandlerError::permanent(std::io::Error::other("bad")))
                    } else {
                        Ok(())
                    })
                }),
            Subscription::builder([format!("{topic}.dlq")])
                .name("reader")
                .group(env.unique("reader"))
                .dead_letter(DeadLetter::Disabled)
                .handler(move |m: Message| {
                    let _ = dlq_tx.send(m.payload().clone());
                    std::future::ready(Ok::<(), HandlerError>(()))
                }),
        ])
        .await;
    let publisher = app.publisher();
    publisher
        .send(Message::new(topic.as_str(), "bad"))
        .await
        .expect("publish");
    assert_eq!(dead.next("the dead letter").await, "bad");
    // The pattern's queue got the dead letter when the reader's did: it is ahead of "end".
    publisher
        .send(Message::new(topic.as_str(), "end"))
        .await
        .expect("publish");
    let got = handled.take(2, "bad, then end").await;
    assert_eq!(
        got,
        [(topic.clone(), "bad".into()), (topic.clone(), "end".into())],
        "the dead letter was handled"
    );
    app.shutdown().await.expect("shutdown");
}

/// A pattern subscription handles every user topic it matches, also those whose names merely
/// look like anybus's helper topics (`….retry.…`, `….dlq`, `….wait`): only a message that is a
/// dead letter or another group's retry copy by its headers too is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_subscription_handles_topics_that_only_look_like_helpers() {
    use anybus::{HandlerError, Message, Subscription};
    let env = anybus_conformance::Env::rabbitmq();
    let prefix = env.unique("lookalike");
    let (tx, mut handled) = anybus_conformance::Inbox::new();
    let app = env
        .start(vec![Subscription::builder([format!("{prefix}.#")])
            .name("pattern")
            .group(env.unique("g"))
            .handler(move |m: Message| {
                let _ = tx.send(m.topic().to_owned());
                std::future::ready(Ok::<(), HandlerError>(()))
            })])
        .await;
    let topics: Vec<String> = ["retry.requested", "refunds.dlq", "jobs.wait", "end"]
        .iter()
        .map(|t| format!("{prefix}.{t}"))
        .collect();
    for topic in &topics {
        app.publisher()
            .send(Message::new(topic.as_str(), "x"))
            .await
            .expect("publish");
    }
    assert_eq!(handled.take(topics.len(), "every user topic").await, topics);
    app.shutdown().await.expect("shutdown");
}

/// Topic `a` with group `b.c` and topic `a.b` with group `c` once shared the queue `a.b.c`, so
/// each group took the other's events: each must get its own topic's events, and only those.
/// (One group at a time, so that which member the broker picks cannot hide a shared queue.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_whose_names_run_into_each_other_keep_their_own_events() {
    use anybus::{HandlerError, Message, Subscription};
    let env = anybus_conformance::Env::rabbitmq();
    let a = env.unique("collide");
    let ab = format!("{a}.b");
    let (tx, mut handled) = anybus_conformance::Inbox::new();
    let member = |topic: &str, group: &str| {
        let tx = tx.clone();
        Subscription::builder([topic])
            .name(group)
            .group(group)
            .handler(move |m: Message| {
                let _ = tx.send((m.topic().to_owned(), m.payload().clone()));
                std::future::ready(Ok::<(), HandlerError>(()))
            })
    };
    // Group `c` on `a.b` has its queue, then is away while its event comes.
    env.start(vec![member(&ab, "c")])
        .await
        .shutdown()
        .await
        .expect("shutdown");
    let app = env.start(vec![member(&a, "b.c")]).await;
    for (topic, payload) in [(&ab, "for c"), (&a, "for b.c")] {
        app.publisher()
            .send(Message::new(topic.as_str(), payload))
            .await
            .expect("publish");
    }
    assert_eq!(
        handled.next("the event of group b.c").await,
        (a.clone(), "for b.c".into()),
        "group b.c handled group c's event"
    );
    app.shutdown().await.expect("shutdown");
    assert!(handled.drain_ready().is_empty());
    let app = env.start(vec![member(&ab, "c")]).await;
    assert_eq!(
        handled.next("the event of group c").await,
        (ab.clone(), "for c".into())
    );
    app.shutdown().await.expect("shutdown");
}

/// A wait queue was bound to the events exchange by `{retry topic}.wait`, so an event on a user
/// topic of that name also landed in it, without a TTL, at its head, where RabbitMQ expires
/// messages: every retry copy behind it waited forever. Wait queues have an exchange of their
/// own now, and the retry comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_on_a_topic_named_like_a_wait_queue_does_not_hold_up_retries() {
    use anybus::{Backoff, Context, HandlerError, Message, RetryMode, RetrySpec, Subscription};
    let env = anybus_conformance::Env::rabbitmq();
    let topic = env.unique("wait-name");
    let group = env.unique("g");
    let lookalike = format!("{}.wait", anybus::retry_topic(&topic, &group));
    let (tx, mut inbox) = anybus_conformance::Inbox::new();
    let (other_tx, mut other) = anybus_conformance::Inbox::new();
    let app = env
        .start(vec![
            Subscription::builder([&topic])
                .name("retrying")
                .group(&group)
                .retry(RetrySpec {
                    max_attempts: 2,
                    backoff: Backoff::Fixed,
                    initial: Duration::from_millis(50),
                    max: Duration::from_millis(50),
                    jitter: false,
                    mode: RetryMode::Redeliver,
                })
                .handler(move |_: Message, ctx: Context| {
                    let attempt = ctx.attempt();
                    let _ = tx.send(attempt);
                    std::future::ready(if attempt == 1 {
                        Err(HandlerError::transient(std::io::Error::other("later")))
                    } else {
                        Ok(())
                    })
                }),
            Subscription::builder([&lookalike])
                .name("lookalike")
                .group(env.unique("h"))
                .handler(move |m: Message| {
                    let _ = other_tx.send(m.payload().clone());
                    std::future::ready(Ok::<(), HandlerError>(()))
                }),
        ])
        .await;
    let publisher = app.publisher();
    publisher
        .send(Message::new(lookalike.as_str(), "user event"))
        .await
        .expect("publish");
    assert_eq!(other.next("the user topic's event").await, "user event");
    publisher
        .send(Message::new(topic.as_str(), "x"))
        .await
        .expect("publish");
    assert_eq!(inbox.take(2, "both attempts").await, [1, 2]);
    app.shutdown().await.expect("shutdown");
}
