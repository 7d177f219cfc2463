//! The ordering rows: the scenario Confluent's Parallel Consumer publishes. 10,000 messages in
//! one partition, each handler waiting a time drawn uniformly from 0–5 ms (a timer, as work that
//! does not use the CPU), concurrency 100, under partition order, key order with 10 keys, key
//! order with 10,000 keys and no order.
//!
//! The messages are published before the app starts; the clock runs from the first handler start
//! to the last handler end, so joining the group is not counted. Each row gives the wall time,
//! its ratio to the ideal (the drawn work divided by the parallelism the ordering allows: the
//! longest chain of one key, or the total over 100), and the same schedule run by plain tokio
//! tasks (a semaphore of 100, one task per key chain). The work waits on a timer thread of the
//! bench's own, not on tokio's timer: tokio rounds every wait up to the next millisecond, which
//! on 0–5 ms waits alone costs ~1.45 × the ideal, for anybus and plain tasks alike.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anybus::{App, HandlerError, Message, MessageId, Ordering, Subscription};
use futures_util::future::join_all;
use tokio::sync::Semaphore;

use crate::{Clock, Row};

/// Messages per run.
const N: usize = 10_000;
/// Handlers at once.
const CONCURRENCY: usize = 100;
/// The longest simulated work, in microseconds.
const MAX_WORK_US: u64 = 5_000;

/// One ordering case of the scenario.
#[derive(Clone, Copy)]
struct Case {
    /// How the table names it.
    name: &'static str,
    ordering: Ordering,
    /// Distinct message keys (message `i` has key `i % keys`).
    keys: usize,
    /// Parallel Consumer's published wall time for the case.
    peer: &'static str,
}

const CASES: [Case; 4] = [
    Case {
        name: "(a) partition order",
        ordering: Ordering::Partition,
        keys: N,
        peer: "22.2 s",
    },
    Case {
        name: "(b) key order, 10 keys",
        ordering: Ordering::Key,
        keys: 10,
        peer: "3.3 s",
    },
    Case {
        name: "(c) key order, 10,000 keys",
        ordering: Ordering::Key,
        keys: N,
        peer: "2.13 s",
    },
    Case {
        name: "(d) unordered",
        ordering: Ordering::None,
        keys: N,
        peer: "2.83 s",
    },
];

/// The work of every message, drawn uniformly from 0–5 ms by a fixed-seed xorshift, so that every
/// run and every backend get the same schedule.
fn work() -> Vec<Duration> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..N)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            Duration::from_micros(state % (MAX_WORK_US + 1))
        })
        .collect()
}

/// The chains a case must run one after another: one per key, or a single one under partition
/// order.
fn chains(case: Case, work: &[Duration]) -> Vec<Vec<Duration>> {
    match case.ordering {
        Ordering::Partition => vec![work.to_vec()],
        Ordering::Key => {
            let mut by_key: BTreeMap<usize, Vec<Duration>> = BTreeMap::new();
            for (i, w) in work.iter().enumerate() {
                by_key.entry(i % case.keys).or_default().push(*w);
            }
            by_key.into_values().collect()
        }
        _ => work.iter().map(|w| vec![*w]).collect(),
    }
}

/// The least wall time the case allows: its longest chain, or all the work spread over
/// `CONCURRENCY`.
fn ideal(chains: &[Vec<Duration>]) -> Duration {
    let total: Duration = chains.iter().flatten().sum();
    let longest = chains
        .iter()
        .map(|c| c.iter().sum::<Duration>())
        .max()
        .unwrap_or_default();
    longest.max(total / CONCURRENCY as u32)
}

/// A timer finer than tokio's, whose wheel rounds every wait up to the next millisecond (on
/// 0–5 ms of work that alone costs ~1.45 × the ideal): one thread keeps the deadlines in a heap
/// and sleeps on a channel until the earliest, which Linux wakes within tens of microseconds.
#[derive(Clone)]
struct Timer(std::sync::mpsc::Sender<(Instant, tokio::sync::oneshot::Sender<()>)>);

impl Timer {
    fn start() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<(Instant, tokio::sync::oneshot::Sender<()>)>();
        std::thread::Builder::new()
            .name("bench-timer".into())
            .spawn(move || {
                use std::cmp::Reverse;
                let mut due: std::collections::BinaryHeap<Reverse<(Instant, u64)>> =
                    std::collections::BinaryHeap::new();
                let mut wakers = std::collections::HashMap::new();
                let mut seq = 0u64;
                loop {
                    let now = Instant::now();
                    while let Some(Reverse((at, id))) = due.peek().copied() {
                        if at > now {
                            break;
                        }
                        due.pop();
                        if let Some(waker) = wakers.remove(&id) {
                            let _: Result<(), ()> = tokio::sync::oneshot::Sender::send(waker, ());
                        }
                    }
                    let next = match due.peek() {
                        Some(Reverse((at, _))) => {
                            rx.recv_timeout(at.saturating_duration_since(now))
                        }
                        None => rx
                            .recv()
                            .map_err(|_| std::sync::mpsc::RecvTimeoutError::Disconnected),
                    };
                    match next {
                        Ok((at, waker)) => {
                            seq += 1;
                            due.push(Reverse((at, seq)));
                            wakers.insert(seq, waker);
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
            .expect("the timer thread");
        Self(tx)
    }

    /// Waits `d`.
    async fn sleep(&self, d: Duration) {
        if d.is_zero() {
            return;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.0.send((Instant::now() + d, tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// The case's chains run by plain tokio tasks: one task per chain, at most `CONCURRENCY` at once.
async fn tokio_baseline(chains: Vec<Vec<Duration>>, timer: &Timer) -> Duration {
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for chain in chains {
        let permit = Arc::clone(&permits)
            .acquire_owned()
            .await
            .expect("semaphore open");
        let timer = timer.clone();
        tasks.spawn(async move {
            for w in chain {
                timer.sleep(w).await;
            }
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    started.elapsed()
}

/// Publishes the case's messages: the payload is the work in microseconds.
async fn publish(url: &str, topic: &str, case: Case, work: &[Duration]) {
    let app = App::builder().connect(url).await.expect("a publishing app");
    let publisher = app.publisher();
    for chunk in work.chunks(1_000).enumerate() {
        let (c, chunk) = chunk;
        let sends = chunk.iter().enumerate().map(|(j, w)| {
            let i = c * 1_000 + j;
            let message = Message::new(topic, w.as_micros().to_string())
                .with_key((i % case.keys).to_string());
            publisher.send(message)
        });
        for sent in join_all(sends).await {
            sent.expect("publish");
        }
    }
    app.shutdown().await.expect("shutdown the publisher");
}

/// Consumes the case's topic with anybus: first handler start to last handler end.
async fn consume(url: &str, topic: &str, case: Case, timer: &Timer) -> Duration {
    let clock = Clock::default();
    let c = clock.clone();
    let timer = timer.clone();
    let app = App::builder()
        .subscribe(
            Subscription::builder([topic])
                .group(format!("ordering-{}", MessageId::new()))
                .partitions(1)
                .ordering(case.ordering)
                .concurrency(CONCURRENCY)
                .handler(move |m: Message| {
                    let (clock, timer) = (c.clone(), timer.clone());
                    async move {
                        clock.start();
                        let us: u64 = std::str::from_utf8(m.payload())
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or_default();
                        timer.sleep(Duration::from_micros(us)).await;
                        clock.done(N);
                        Ok::<(), HandlerError>(())
                    }
                }),
        )
        .connect(url)
        .await
        .expect("the consuming app");
    let took = clock.wait(N).await;
    app.shutdown().await.expect("shutdown");
    took
}

/// The four cases on the broker of `url` (`backend` names it in the table), published through
/// `publish_url`; `prepare` declares a one-partition topic where the broker needs that before
/// publishing. `baselines` keeps the plain-tokio times of the cases across calls, so that each
/// is run once per process.
pub async fn rows<P, Fut>(
    backend: &str,
    url: &str,
    publish_url: &str,
    prepare: P,
    baselines: &mut Vec<Duration>,
    rows: &mut Vec<Row>,
) where
    P: Fn(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let work = work();
    let timer = Timer::start();
    for (i, case) in CASES.into_iter().enumerate() {
        let topic = format!("bench-ordering-{}", MessageId::new());
        prepare(topic.clone()).await;
        publish(publish_url, &topic, case, &work).await;
        let took = consume(url, &topic, case, &timer).await.as_secs_f64();
        let chains = chains(case, &work);
        let ideal = ideal(&chains).as_secs_f64();
        if baselines.len() <= i {
            baselines.push(tokio_baseline(chains, &timer).await);
        }
        let baseline = baselines[i].as_secs_f64();
        rows.push(Row::new(
            format!(
                "{backend}, ordering: {}, {N} msgs in 1 partition, work 0–5 ms, concurrency {CONCURRENCY}: wall time",
                case.name
            ),
            format!(
                "{took:.2} s = {:.2} × ideal ({ideal:.2} s) = {:.2} × plain tasks ({baseline:.2} s)",
                took / ideal,
                took / baseline,
            ),
            format!(
                "Parallel Consumer {}; target ≤ 1.2 × ideal (plain tasks on the same timer: {:.2} ×)",
                case.peer,
                baseline / ideal
            ),
        ));
    }
}
