//! What `App::connect` refuses, and how it says so, before anything is consumed.

use anybus::{App, DeadLetter, DedupKey, HandlerError, RetrySpec, StartError, State, Subscription};

async fn ok(_: String) -> Result<(), HandlerError> {
    Ok(())
}

fn refusal(result: Result<App, StartError>) -> StartError {
    match result {
        Ok(_) => panic!("the app started"),
        Err(e) => e,
    }
}

#[cfg(not(feature = "kafka"))]
#[tokio::test]
async fn kafka_url_without_the_feature_names_the_feature() {
    let err = refusal(App::builder().connect("kafka://127.0.0.1:9092").await);
    assert!(
        matches!(
            err,
            StartError::Connect(anybus::ConnectError::FeatureDisabled {
                feature: "kafka",
                ..
            })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("`kafka` cargo feature"), "{err}");
}

#[cfg(not(feature = "rabbitmq"))]
#[tokio::test]
async fn amqp_url_without_the_feature_names_the_feature_and_hides_the_password() {
    let err = refusal(
        App::builder()
            .connect("amqp://app:hunter2@127.0.0.1:5672/%2f")
            .await,
    );
    assert!(
        err.to_string().contains("`rabbitmq` cargo feature"),
        "{err}"
    );
    assert!(!format!("{err} {err:?}").contains("hunter2"));
}

#[tokio::test]
async fn unknown_scheme_lists_the_supported_ones_without_the_password() {
    let err = refusal(
        App::builder()
            .connect("nats://u:hunter2@localhost:4222")
            .await,
    );
    let text = err.to_string();
    assert!(text.contains("`nats`") && text.contains("memory://") && text.contains("amqp://"));
    assert!(!format!("{text} {err:?}").contains("hunter2"), "{text}");
}

#[tokio::test]
async fn malformed_urls_say_what_is_wrong() {
    let err = refusal(App::builder().connect("localhost:9092").await);
    assert!(err.to_string().contains("expected `scheme://"), "{err}");
    let err = refusal(App::builder().connect("memory://x?partitions=zero").await);
    assert!(
        err.to_string()
            .contains("`partitions` must be a positive number"),
        "{err}"
    );
    let err = refusal(App::builder().connect("memory://x?colour=blue").await);
    assert!(
        err.to_string().contains("unknown option `colour=blue`"),
        "{err}"
    );
}

#[tokio::test]
async fn a_dedup_store_that_cannot_be_opened_is_refused_naming_it_without_the_password() {
    let app = App::builder()
        .subscribe(
            Subscription::builder(["t"])
                .dedup(DedupKey::MessageId)
                .handler(ok),
        )
        .dedup_store("redis://user:hunter2@127.0.0.1:6379")
        .connect("memory://dedup-refusal")
        .await;
    let err = refusal(app);
    assert!(matches!(err, StartError::DedupStore(_)), "{err:?}");
    let (shown, debug) = (err.to_string(), format!("{err:?}"));
    assert!(shown.contains("redis://user:***@127.0.0.1:6379"), "{shown}");
    assert!(
        !shown.contains("hunter2") && !debug.contains("hunter2"),
        "{debug}"
    );
}

#[tokio::test]
async fn options_that_cannot_work_are_refused_with_the_reason() {
    let cases: Vec<(Subscription, &str)> = vec![
        (
            Subscription::builder(["t"]).concurrency(0).handler(ok),
            "concurrency must be at least 1",
        ),
        (
            Subscription::builder(["t"])
                .retry(RetrySpec {
                    max_attempts: 0,
                    ..RetrySpec::default()
                })
                .handler(ok),
            "max_attempts must be at least 1",
        ),
        (
            Subscription::builder(["t"])
                .dead_letter(DeadLetter::Topic(String::new()))
                .handler(ok),
            "the destination name is empty",
        ),
        (
            Subscription::builder(["orders.#"])
                .retry(RetrySpec {
                    mode: anybus::RetryMode::Redeliver,
                    ..RetrySpec::default()
                })
                .handler(ok),
            "cannot be combined with a `#` pattern topic",
        ),
    ];
    for (subscription, reason) in cases {
        let err = refusal(
            App::builder()
                .subscribe(subscription)
                .connect("memory://invalid")
                .await,
        );
        assert!(
            matches!(&err, StartError::Invalid { reason: r, .. } if r.contains(reason)),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn a_handler_taking_unregistered_state_is_refused() {
    struct Db;
    async fn needs_db(_: String, _db: State<Db>) -> Result<(), HandlerError> {
        Ok(())
    }
    let err = refusal(
        App::builder()
            .subscribe(
                Subscription::builder(["t"])
                    .name("needs_db")
                    .handler(needs_db),
            )
            .connect("memory://state")
            .await,
    );
    let text = err.to_string();
    assert!(
        text.contains("needs_db") && text.contains("State<") && text.contains("Db"),
        "{text}"
    );

    let app = App::builder()
        .state(Db)
        .subscribe(Subscription::builder(["t"]).handler(needs_db))
        .connect("memory://state")
        .await
        .expect("starts once the state is registered");
    app.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn invalid_options_are_refused() {
    let err = refusal(
        App::builder()
            .subscribe(Subscription::builder(["t"]).concurrency(0).handler(ok))
            .connect("memory://invalid")
            .await,
    );
    assert!(
        err.to_string().contains("concurrency must be at least 1"),
        "{err}"
    );
}

/// Two subscriptions of one app that consume one topic in one group would split its messages
/// between them; the app refuses to start, naming both.
#[tokio::test]
async fn two_subscriptions_sharing_a_group_and_topic_are_refused_naming_both() {
    let err = refusal(
        App::builder()
            .subscribe(
                Subscription::builder(["orders"])
                    .name("audit")
                    .group("billing")
                    .handler(ok),
            )
            .subscribe(
                Subscription::builder(["orders"])
                    .name("charge")
                    .group("billing")
                    .handler(ok),
            )
            .connect("memory://shared-group")
            .await,
    );
    let text = err.to_string();
    assert!(
        text.contains("`audit`") && text.contains("`charge`") && text.contains("split"),
        "{text}"
    );
}

/// While `run` owns the app, a handle taken before reads its stats and health from another
/// task, publishes, and shuts it down.
#[tokio::test]
async fn a_handle_reads_stats_and_health_and_stops_a_running_app() {
    let app = App::builder()
        .subscribe(Subscription::builder(["pings"]).group("pinger").handler(ok))
        .connect("memory://handle")
        .await
        .expect("start");
    let handle = app.handle();
    let running = tokio::spawn(app.run());
    handle
        .publisher()
        .publish("pings", "hello")
        .await
        .expect("publish");
    let handled = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            if handle.stats()[0].stats.handled == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        handled.is_ok(),
        "the ping was not handled: {:?}",
        handle.stats()
    );
    assert!(handle.health()[0].consuming, "{:?}", handle.health());
    handle.shutdown();
    running
        .await
        .expect("the run task")
        .expect("a clean shutdown");
    assert!(!handle.health()[0].consuming, "{:?}", handle.health());
}
