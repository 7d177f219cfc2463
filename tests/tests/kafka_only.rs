//! What only Kafka has: committed offsets that other clients can read, crashes of a member
//! process, and rebalances driven by the broker's group protocol.
#![cfg(feature = "kafka")]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anybus::{App, Context, HandlerError, Message, MessageId, Ordering, Subscription};
use anybus_conformance::kafka::{committed, wait_committed};
use anybus_conformance::{wait_stats, Env, Inbox, PATIENCE};
use tokio::sync::Semaphore;

#[path = "kafka_only/handover.rs"]
mod handover;
#[path = "kafka_only/partition_pause.rs"]
mod partition_pause;

async fn publish(app: &App, topic: &str, n: usize) -> Vec<MessageId> {
    let publisher = app.publisher();
    let mut ids = Vec::new();
    for i in 0..n {
        let m = Message::new(topic, i.to_string());
        ids.push(m.id());
        publisher.send(m).await.expect("publish");
    }
    ids
}

fn one_partition(env: &Env, topic: &str, group: &str) -> anybus::SubscriptionBuilder {
    let _ = env;
    Subscription::builder([topic]).group(group).partitions(1)
}

/// A member of `group` on a topic of two partitions: the rebalance tests make one partition
/// move (cooperative-sticky) by starting a second member.
fn two_partitions(topic: &str, group: &str) -> anybus::SubscriptionBuilder {
    Subscription::builder([topic]).group(group).partitions(2)
}

/// Where a message was read: partition and offset.
fn place(m: &Message) -> (i32, i64) {
    (m.origin().partition.unwrap(), m.origin().offset.unwrap())
}

/// Publishes keyed messages `x` until each of the topic's two partitions has at least `n`;
/// returns how many each got, and the key of each partition's first message.
async fn fill_both_partitions(app: &App, topic: &str, n: i64) -> ([i64; 2], [String; 2]) {
    let publisher = app.publisher();
    let mut per_partition = [0i64; 2];
    let mut keys = [None, None];
    for key in 0.. {
        let key = format!("k{key}");
        let origin = publisher
            .send(Message::new(topic, "x").with_key(key.clone()))
            .await
            .expect("publish");
        let p = origin.partition.expect("a partition") as usize;
        per_partition[p] += 1;
        keys[p].get_or_insert(key);
        if per_partition.iter().all(|count| *count >= n) {
            break;
        }
    }
    (
        per_partition,
        keys.map(|k| k.expect("a key of each partition")),
    )
}

/// Starts a second member of `group`, which takes one partition over from the first and
/// reports where each message it handles was read; waits until the first member was asked
/// for a partition.
async fn join_second_member(
    env: &Env,
    first: &App,
    topic: &str,
    group: &str,
) -> (App, Inbox<(i32, i64)>) {
    let (tx, seen) = Inbox::new();
    let second = env
        .start(vec![two_partitions(topic, group).name("member").handler(
            move |m: Message| {
                let _ = tx.send(place(&m));
                std::future::ready(Ok::<(), HandlerError>(()))
            },
        )])
        .await;
    wait_stats(
        first,
        "the rebalance asks the first member for a partition",
        tokio::time::Instant::now() + PATIENCE,
        |s| s.handovers > 0,
    )
    .await;
    (second, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_never_pass_an_unfinished_offset() {
    let env = Env::kafka();
    let (topic, group) = (env.unique("out-of-order"), env.unique("g"));
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut done) = Inbox::new();
    let held = Arc::clone(&gate);
    let app = env
        .start(vec![one_partition(&env, &topic, &group)
            .ordering(Ordering::None)
            .concurrency(8)
            .handler(move |_: Message, ctx: Context| {
                let (tx, held) = (tx.clone(), Arc::clone(&held));
                async move {
                    if ctx.offset() == Some(5) {
                        let _ = held.acquire().await;
                    }
                    let _ = tx.send(ctx.offset().unwrap_or(-1));
                    Ok::<(), HandlerError>(())
                }
            })])
        .await;
    publish(&app, &topic, 20).await;
    let finished: BTreeSet<i64> = done
        .take(19, "all but offset 5")
        .await
        .into_iter()
        .collect();
    assert!(!finished.contains(&5));
    wait_committed(&env, &group, &topic, &[5]).await;
    // A bound for asserting that nothing moves the commit past 5 while it is unfinished: a
    // dozen commit intervals.
    let until = tokio::time::Instant::now() + Duration::from_millis(600);
    while tokio::time::Instant::now() < until {
        assert_eq!(committed(&env, &group, &topic, 1).await, [5]);
    }
    gate.close();
    assert_eq!(done.next("offset 5").await, 5);
    wait_committed(&env, &group, &topic, &[20]).await;
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_commit_redelivers_exactly_the_uncommitted_tail() {
    let env = Env::kafka();
    let (topic, group) = (env.unique("crash"), env.unique("g"));
    let producer = env.start(vec![]).await;
    // The topic must exist with one partition before the member subscribes.
    let (tx, mut seen) = Inbox::new();
    let probe = env
        .start(vec![one_partition(&env, &topic, &env.unique("probe"))
            .handler(move |_: Message| {
                let _ = tx.send(());
                std::future::ready(Ok::<(), HandlerError>(()))
            })])
        .await;
    publish(&producer, &topic, 50).await;
    seen.take(50, "the probe reads the topic").await;
    probe.shutdown().await.expect("probe shutdown");

    // A short session, so that the broker notices the killed member quickly.
    let url = format!("{}&session.timeout.ms=6000", env.url);
    let mut member = Command::new(env!("CARGO_BIN_EXE_kafka_crash_member"))
        .args([&url, &topic, &group, "30"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the member process");
    let stdout = member.stdout.take().expect("stdout");
    let blocked = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|line| line.starts_with("blocked"))
    });
    let line = tokio::time::timeout(PATIENCE, blocked)
        .await
        .expect("the member reached offset 30 in time")
        .expect("join");
    assert_eq!(line.as_deref(), Some("blocked 30"));
    wait_committed(&env, &group, &topic, &[30]).await;
    member.kill().expect("SIGKILL the member");
    member.wait().expect("reap the member");

    let (tx, mut redelivered) = Inbox::new();
    let survivor = env
        .start(vec![one_partition(&env, &topic, &group).handler(
            move |_: Message, ctx: Context| {
                let _ = tx.send(ctx.offset().unwrap_or(-1));
                std::future::ready(Ok::<(), HandlerError>(()))
            },
        )])
        .await;
    let offsets = redelivered.take(20, "the uncommitted tail").await;
    assert_eq!(offsets, (30..50).collect::<Vec<i64>>());
    wait_committed(&env, &group, &topic, &[50]).await;
    survivor.shutdown().await.expect("shutdown");
    producer.shutdown().await.expect("shutdown");
    assert!(redelivered.drain_ready().is_empty(), "more than the tail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_ack_after_a_rebalance_commits_nothing() {
    let env = Env::kafka();
    let (topic, group) = (env.unique("stale"), env.unique("g"));
    let gate = Arc::new(Semaphore::new(0));
    let (started_tx, mut started) = Inbox::new();
    let (done_tx, mut done) = Inbox::new();
    let held = Arc::clone(&gate);
    let first = App::builder()
        .subscribe(
            two_partitions(&topic, &group)
                .name("member")
                .handler(move |m: Message| {
                    let (held, started_tx) = (Arc::clone(&held), started_tx.clone());
                    async move {
                        let _ = started_tx.send(m.origin().partition);
                        let _ = held.acquire().await;
                        Ok::<(), HandlerError>(())
                    }
                }),
        )
        // The rebalance below waits this long for the blocked handlers, then hands over.
        .drain_timeout(Duration::from_millis(300))
        .connect(&env.url)
        .await
        .expect("first member");
    // Keyed messages until both partitions have one; the first member blocks on the first
    // message of each (one in flight per partition), the rest wait behind it.
    let (per_partition, _) = fill_both_partitions(&first, &topic, 1).await;
    let mut blocked: Vec<Option<i32>> = started.take(2, "the first member starts both").await;
    blocked.sort();
    assert_eq!(blocked, [Some(0), Some(1)]);

    // Joining moves one partition (cooperative-sticky) to the second member, after the drain
    // timeout, with the first member's handler still running.
    let second = env
        .start(vec![two_partitions(&topic, &group).name("member").handler(
            move |m: Message| {
                let _ = done_tx.send(m.origin().partition);
                std::future::ready(Ok::<(), HandlerError>(()))
            },
        )])
        .await;
    let moved = done
        .next("the second member handles the moved partition")
        .await
        .expect("a partition") as usize;
    for _ in 1..per_partition[moved] {
        assert_eq!(
            done.next("the rest of the moved partition").await,
            Some(moved as i32)
        );
    }
    // The kept partition's commit point is its blocked first offset, 0: committed, never passed.
    let mut before = vec![0, 0];
    before[moved] = per_partition[moved];
    wait_committed(&env, &group, &topic, &before).await;

    gate.close();
    wait_stats(
        &first,
        "the late ack of the first member was not counted as stale",
        tokio::time::Instant::now() + PATIENCE,
        |s| s.stale_settlements > 0,
    )
    .await;
    // The first member's ack of the partition it kept counts; the other commits nothing.
    wait_committed(&env, &group, &topic, &per_partition).await;
    assert_eq!(first.stats()[0].stats.stale_settlements, 1);
    first.shutdown().await.expect("shutdown");
    second.shutdown().await.expect("shutdown");
    assert!(
        done.drain_ready().is_empty(),
        "the second member handled more than the moved partition"
    );
}

/// A partition asked back in a rebalance waits only for the handler running on it: the messages
/// fetched behind that one are given up, not handled, and the partition's next owner starts at
/// the first of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_waits_only_for_the_running_handler() {
    const PER_PARTITION: i64 = 10;
    let env = Env::kafka();
    let (topic, group) = (env.unique("handover"), env.unique("g"));
    let gate = Arc::new(Semaphore::new(0));
    let (first_tx, mut first_seen) = Inbox::new();
    let held = Arc::clone(&gate);
    let first = App::builder()
        .subscribe(
            two_partitions(&topic, &group)
                .name("member")
                .handler(move |m: Message| {
                    let (held, first_tx) = (Arc::clone(&held), first_tx.clone());
                    async move {
                        let at = place(&m);
                        let _ = first_tx.send(at);
                        if at.1 == 0 {
                            // The first message of each partition runs until the test opens the gate.
                            let _ = held.acquire().await;
                        }
                        Ok::<(), HandlerError>(())
                    }
                }),
        )
        // Far longer than the test: only the settlements can end the handover.
        .drain_timeout(Duration::from_secs(120))
        .connect(&env.url)
        .await
        .expect("first member");
    let (per_partition, _) = fill_both_partitions(&first, &topic, PER_PARTITION).await;
    let mut running: Vec<(i32, i64)> = first_seen.take(2, "both first messages run").await;
    running.sort();
    assert_eq!(running, [(0, 0), (1, 0)]);

    // Joining moves one partition (cooperative-sticky) to the second member, once the first
    // member's handler on it finished.
    let (second, mut second_seen) = join_second_member(&env, &first, &topic, &group).await;
    gate.close();

    let (moved, offset) = second_seen.next("the moved partition's next owner").await;
    let kept = 1 - moved;
    assert_eq!(offset, 1, "it starts behind the message that was running");
    for expected in 2..per_partition[moved as usize] {
        assert_eq!(
            second_seen.next("the rest of the moved partition").await,
            (moved, expected)
        );
    }
    for expected in 1..per_partition[kept as usize] {
        assert_eq!(
            first_seen.next("the rest of the kept partition").await,
            (kept, expected)
        );
    }
    wait_committed(&env, &group, &topic, &per_partition).await;
    first.shutdown().await.expect("shutdown");
    second.shutdown().await.expect("shutdown");
    assert!(
        first_seen.drain_ready().is_empty(),
        "the first member handled more of the moved partition"
    );
    assert!(second_seen.drain_ready().is_empty(), "handled twice");
}

/// A handover whose last work in flight fails (a nack, which rewinds the partition) ends then,
/// not at the drain timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_during_a_handover_ends_its_drain() {
    let env = Env::kafka();
    let (topic, group) = (env.unique("handover-nack"), env.unique("g"));
    let gate = Arc::new(Semaphore::new(0));
    let (first_tx, mut first_seen) = Inbox::new();
    let held = Arc::clone(&gate);
    let failed = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let first = App::builder()
        .subscribe(
            two_partitions(&topic, &group)
                .name("member")
                .handler(move |m: Message| {
                    let (held, first_tx, failed) =
                        (Arc::clone(&held), first_tx.clone(), Arc::clone(&failed));
                    async move {
                        let at = place(&m);
                        let _ = first_tx.send(at);
                        // The first delivery of a "block" message waits for the test, then fails
                        // transiently: with no retry policy, that is a nack.
                        if m.payload() == "block" && failed.lock().unwrap().insert(at) {
                            let _ = held.acquire().await;
                            return Err(HandlerError::transient(std::io::Error::other("once")));
                        }
                        Ok(())
                    }
                }),
        )
        // Far longer than the test's patience: only the nack can end the handover in time.
        .drain_timeout(Duration::from_secs(120))
        .connect(&env.url)
        .await
        .expect("first member");
    // Keyed messages until each partition has one, handled at once: that finds a key of each.
    let (per_partition, key_of) = fill_both_partitions(&first, &topic, 1).await;
    wait_committed(&env, &group, &topic, &per_partition).await;
    let _ = first_seen.drain_ready();
    // Then one "block" message in each: the only work of each partition, so nothing fetched
    // behind it could end a drain.
    let publisher = first.publisher();
    for key in &key_of {
        publisher
            .send(Message::new(topic.as_str(), "block").with_key(key.clone()))
            .await
            .expect("publish");
    }
    let mut running: Vec<(i32, i64)> = first_seen.take(2, "both block").await;
    running.sort();
    assert_eq!(
        running,
        [(0, per_partition[0]), (1, per_partition[1])],
        "the last message of each partition blocks"
    );

    let (second, mut second_seen) = join_second_member(&env, &first, &topic, &group).await;
    gate.close();

    // The failed message was not committed: the next owner starts at it.
    let (moved, offset) = second_seen.next("the moved partition's next owner").await;
    assert_eq!(offset, per_partition[moved as usize]);
    let all: Vec<i64> = per_partition.iter().map(|n| n + 1).collect();
    wait_committed(&env, &group, &topic, &all).await;
    first.shutdown().await.expect("shutdown");
    second.shutdown().await.expect("shutdown");
}

/// A handover does not wait for the backoff of an in-process retry on the partition: the
/// message waiting to be tried again is given up to the next owner, which handles it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_cuts_a_retry_backoff_short() {
    let env = Env::kafka();
    let (topic, group) = (env.unique("handover-retry"), env.unique("g"));
    let (first_tx, mut first_seen) = Inbox::new();
    let first = App::builder()
        .subscribe(
            two_partitions(&topic, &group)
                .name("member")
                // A backoff far longer than the test's patience.
                .retry(anybus::RetrySpec {
                    max_attempts: 3,
                    initial: Duration::from_secs(600),
                    max: Duration::from_secs(600),
                    jitter: false,
                    mode: anybus::RetryMode::InProcess,
                    ..anybus::RetrySpec::default()
                })
                .handler(move |m: Message| {
                    let _ = first_tx.send(place(&m));
                    std::future::ready(Err::<(), _>(HandlerError::transient(
                        std::io::Error::other("fails here"),
                    )))
                }),
        )
        .drain_timeout(Duration::from_secs(600))
        .connect(&env.url)
        .await
        .expect("first member");
    // Keyed messages until each partition has one; each fails and waits for its retry.
    let (per_partition, _) = fill_both_partitions(&first, &topic, 1).await;
    let mut waiting: Vec<(i32, i64)> = first_seen.take(2, "both first messages fail").await;
    waiting.sort();
    assert_eq!(waiting, [(0, 0), (1, 0)]);

    let (second, mut second_seen) = join_second_member(&env, &first, &topic, &group).await;
    // Without the cut, the handover would wait out the 600 s backoff (or drain).
    let (moved, offset) = second_seen.next("the moved partition's next owner").await;
    assert_eq!(offset, 0, "the message that waited for its retry");
    let mut before = [0i64; 2];
    before[moved as usize] = per_partition[moved as usize];
    wait_committed(&env, &group, &topic, &before).await;
    assert_eq!(
        first.stats()[0].stats.skipped_stale,
        1,
        "the retry was given up"
    );
    second.shutdown().await.expect("shutdown");
    // Shutting down gives up the first member's own waiting retry too.
    tokio::time::timeout(PATIENCE, first.shutdown())
        .await
        .expect("the shutdown waited for the retry backoff")
        .expect("shutdown");
}

#[tokio::test]
async fn an_unreachable_bootstrap_server_fails_connect_in_bounded_time() {
    let started = std::time::Instant::now();
    let err = App::builder()
        .connect("kafka://127.0.0.1:1")
        .await
        .expect_err("nothing listens on port 1");
    assert!(
        matches!(
            err,
            anybus::StartError::Connect(anybus::ConnectError::Unreachable { .. })
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}

/// Under key ordering, a stuck hot key fills the runtime's buffer and the consumer then pauses
/// fetching (rather than blocking its poll thread, which must keep serving rebalances), and
/// resumes from where it paused: every message arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_pauses_fetching_and_resumes_where_it_stopped() {
    let stats =
        anybus_conformance::a_hot_key_holds_back_fetching_within_the_cap(&Env::kafka()).await;
    assert!(stats.fetch_pauses >= 1, "fetching never paused: {stats:?}");
}
