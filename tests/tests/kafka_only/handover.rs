//! A handover under steady traffic waits only for handlers that run: deliveries fetched but
//! not started (a batch the poll thread is building when the rebalance callback runs on it, the
//! channel, the runtime's buffers) are given up to the next owner, not waited for.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anybus::{App, HandlerError, Message};
use anybus_conformance::{Env, Inbox, PATIENCE};

use super::two_partitions;

/// Far longer than the test's patience: a handover that waits for the drain timeout fails.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);

/// Publishers running at once, each one message at a time.
const PUBLISHERS: usize = 8;

/// Measures the time from a second member joining to its first assignment while messages flow
/// through the first member without pause (printed, for the notes that quote it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_under_steady_traffic_is_assigned_without_waiting_for_the_drain() {
    let env = Env::kafka();
    let (topic, group) = (env.unique("steady-join"), env.unique("g"));
    let url = format!("{}&batch.num.messages=1", env.url);
    let (tx, mut handled) = Inbox::new();
    let start =
        |tx: tokio::sync::mpsc::UnboundedSender<(i32, i64)>| {
            App::builder()
                .subscribe(two_partitions(&topic, &group).name("member").handler(
                    move |m: Message| {
                        let _ = tx.send(super::place(&m));
                        std::future::ready(Ok::<(), HandlerError>(()))
                    },
                ))
                .drain_timeout(DRAIN_TIMEOUT)
                .connect(&url)
        };
    let first = start(tx.clone()).await.expect("first member");

    // Several publishers at once keep librdkafka's queue of fetched messages from running
    // dry, as under load. Produced batches of one message, so that the next owner's fetch
    // from the middle of the stream is safe on Tansu (KAFKA_BROKER.md).
    let stop = Arc::new(AtomicBool::new(false));
    let traffic: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let (publisher, stop, topic) = (first.publisher(), Arc::clone(&stop), topic.clone());
            tokio::spawn(async move {
                // Where each message landed: partition and offset.
                let mut placed = Vec::new();
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let m = Message::new(topic.as_str(), "x").with_key(format!("k{p}-{i}"));
                    let origin = publisher.send(m).await.expect("publish");
                    placed.push((
                        origin.partition.expect("a partition"),
                        origin.offset.expect("an offset"),
                    ));
                }
                placed
            })
        })
        .collect();
    let flowing = handled
        .take(200, "traffic flows through the first member")
        .await;

    let joined = Instant::now();
    let second = start(tx).await.expect("second member");
    let mut assignment = second.assignment("member").expect("subscription");
    tokio::time::timeout(PATIENCE, assignment.wait_for(|a| !a.is_empty()))
        .await
        .expect("the second member got a partition before the drain timeout")
        .expect("the second member stopped");
    let took = joined.elapsed();
    eprintln!("join -> first assignment under steady traffic: {took:?}");

    stop.store(true, Ordering::Relaxed);
    let mut placed = Vec::new();
    for publisher in traffic {
        placed.extend(publisher.await.expect("traffic"));
    }
    let mut seen: HashSet<(i32, i64)> = flowing.into_iter().collect();
    while !placed.iter().all(|at| seen.contains(at)) {
        seen.insert(
            handled
                .next("every published message, by one member or the other")
                .await,
        );
    }
    first.shutdown().await.expect("shutdown");
    second.shutdown().await.expect("shutdown");
}
