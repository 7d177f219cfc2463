//! The Kafka backend's pause of one partition ([`Consumer::pause`] and [`Consumer::resume`]),
//! driven on a raw consumer as the runtime drives it: the paused partition stops, the other one
//! flows, and the paused one resumes at the first message not yet returned.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anybus::backend::kafka::KafkaBackend;
use anybus::backend::{Backend, Consumer, ConsumerConfig, Delivery, Settler, TopicSpec};
use anybus::observe::SubscriptionStats;
use anybus::{BrokerUrl, Message};
use anybus_conformance::{Env, PATIENCE};

/// A consumer of a fresh topic of two partitions, and a key that lands on each partition.
struct TwoPartitions {
    backend: KafkaBackend,
    group: String,
    stats: Arc<SubscriptionStats>,
    consumer: Box<dyn Consumer>,
    settler: Arc<dyn Settler>,
    topic: String,
    keys: [String; 2],
    /// The receipt slot of each partition.
    slots: [u32; 2],
}

impl TwoPartitions {
    /// Opens the consumer, then publishes keyed messages until each partition got one, reads
    /// and acknowledges them all (so nothing is fetched or on its way when the test starts).
    async fn open(env: &Env, name: &str) -> Self {
        let url = BrokerUrl::parse(&env.url).expect("url");
        let backend = KafkaBackend::connect(&url).await.expect("connect");
        let topic = env.unique(name);
        backend
            .declare(&[TopicSpec {
                name: topic.clone(),
                partitions: Some(2),
                keep_for: None,
            }])
            .await
            .expect("declare");
        let (group, stats) = (env.unique("g"), Arc::new(SubscriptionStats::default()));
        let consumer = backend
            .consume(config(&group, &topic, &stats))
            .await
            .expect("consume");
        let settler = consumer.settler();
        let mut this = Self {
            backend,
            group,
            stats,
            consumer,
            settler,
            topic,
            keys: [String::new(), String::new()],
            slots: [0, 0],
        };
        let mut probes = 0;
        for i in 0.. {
            let key = format!("k{i}");
            let p = this.publish(&key, "probe").await;
            probes += 1;
            if this.keys[p].is_empty() {
                this.keys[p] = key;
            }
            if this.keys.iter().all(|k| !k.is_empty()) {
                break;
            }
        }
        let mut seen = [false, false];
        for d in this.take(probes).await {
            seen[partition(&d)] = true;
            this.slots[partition(&d)] = d.receipt.slot();
            this.settler.ack(&d.receipt);
        }
        assert_eq!(seen, [true, true]);
        this
    }

    /// Publishes to the partition of `key`; returns that partition.
    async fn publish(&self, key: &str, payload: &str) -> usize {
        let origin = self
            .backend
            .publish(Message::new(self.topic.as_str(), payload.to_owned()).with_key(key.to_owned()))
            .await
            .expect("publish");
        origin.partition.expect("a partition") as usize
    }

    /// Publishes `payload` to partition `p`.
    async fn publish_to(&self, p: usize, payload: &str) {
        assert_eq!(self.publish(&self.keys[p].clone(), payload).await, p);
    }

    /// Polls until `n` deliveries arrived (more may come in the last batch: they are kept).
    async fn take(&mut self, n: usize) -> Vec<Delivery> {
        let mut out = Vec::new();
        while out.len() < n {
            tokio::time::timeout(PATIENCE, self.consumer.poll(&mut out))
                .await
                .unwrap_or_else(|_| panic!("{} of {n} deliveries in time", out.len()))
                .expect("poll");
        }
        out
    }
}

fn config(group: &str, topic: &str, stats: &Arc<SubscriptionStats>) -> ConsumerConfig {
    ConsumerConfig {
        group: group.to_owned(),
        topics: vec![topic.to_owned()],
        batch: 16,
        prefetch: 16,
        drain_timeout: Duration::from_secs(5),
        stats: Arc::clone(stats),
        delayed: Vec::new(),
    }
}

/// Waits until the member whose stats these are owns `n` partitions; returns them.
async fn wait_owned(stats: &SubscriptionStats, n: usize, what: &str) -> Vec<usize> {
    let mut watch = stats.assignment.subscribe();
    let settled = tokio::time::timeout(PATIENCE, watch.wait_for(|a| a.len() == n)).await;
    let Ok(owned) = settled else {
        panic!(
            "{what}: the assignment stayed {:?}",
            *stats.assignment.borrow()
        );
    };
    let owned = owned.expect("the consumer is gone");
    owned.iter().map(|tp| tp.partition as usize).collect()
}

fn partition(d: &Delivery) -> usize {
    d.message.origin().partition.expect("a partition") as usize
}

fn payload(d: &Delivery) -> String {
    String::from_utf8(d.message.payload().to_vec()).expect("utf8")
}

/// Groups deliveries by partition: their offsets and payloads, in the order they came.
fn by_partition(deliveries: &[Delivery]) -> BTreeMap<usize, Vec<(i64, String)>> {
    let mut all: BTreeMap<usize, Vec<(i64, String)>> = BTreeMap::new();
    for d in deliveries {
        let offset = d.message.origin().offset.expect("an offset");
        all.entry(partition(d))
            .or_default()
            .push((offset, payload(d)));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_partition_stops_while_the_other_flows_and_resumes_where_it_stopped() {
    let env = Env::kafka();
    let mut t = TwoPartitions::open(&env, "pause-one").await;
    t.consumer.pause(t.slots[0]);
    for i in 0..5 {
        t.publish_to(0, &format!("held-{i}")).await;
        t.publish_to(1, &format!("flows-{i}")).await;
    }
    // Published after the paused partition's messages: once it arrived, those would have too.
    t.publish_to(1, "marker").await;
    let flowed = t.take(6).await;
    let got = by_partition(&flowed);
    assert_eq!(got.get(&0), None, "the paused partition delivered");
    let payloads: Vec<&str> = got[&1].iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(
        payloads,
        ["flows-0", "flows-1", "flows-2", "flows-3", "flows-4", "marker"]
    );
    for d in &flowed {
        t.settler.ack(&d.receipt);
    }

    t.consumer.resume(t.slots[0]);
    let resumed = t.take(5).await;
    let got = by_partition(&resumed);
    assert_eq!(got.get(&1), None, "nothing of the other partition is left");
    let held = &got[&0];
    let payloads: Vec<&str> = held.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(
        payloads,
        ["held-0", "held-1", "held-2", "held-3", "held-4"],
        "from the first message not returned, none lost or repeated"
    );
    let first = held[0].0;
    let offsets: Vec<i64> = held.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (first..first + 5).collect::<Vec<_>>());
    for d in &resumed {
        t.settler.ack(&d.receipt);
    }
    // Nothing more was on its way: the next delivery is the next message published.
    t.publish_to(0, "after").await;
    let after = t.take(1).await;
    assert_eq!(after.len(), 1, "{:?}", by_partition(&after));
    assert_eq!(payload(&after[0]), "after");
    t.consumer.close().await.expect("close");
}

/// A nack of a paused partition's delivery rewinds it (a seek while paused); resuming then
/// fetches from the nacked message, not from where the partition was paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_while_paused_redelivers_from_the_nacked_message_after_resume() {
    let env = Env::kafka();
    let mut t = TwoPartitions::open(&env, "pause-nack").await;
    for i in 0..3 {
        t.publish_to(0, &format!("m-{i}")).await;
    }
    let first = t.take(3).await;
    assert_eq!(by_partition(&first)[&0].len(), 3);
    t.settler.ack(&first[0].receipt);
    t.consumer.pause(t.slots[0]);
    // m-1 failed: it and m-2 (whose delivery is now stale) come again.
    t.settler.nack(&first[1].receipt);
    assert!(!t.settler.is_current(&first[2].receipt));
    t.publish_to(0, "m-3").await;
    t.publish_to(1, "marker").await;
    let flowed = t.take(1).await;
    assert_eq!(
        by_partition(&flowed).get(&0),
        None,
        "the paused partition delivered"
    );
    assert_eq!(payload(&flowed[0]), "marker");
    t.settler.ack(&flowed[0].receipt);

    t.consumer.resume(t.slots[0]);
    let again = t.take(3).await;
    let payloads: Vec<String> = by_partition(&again)[&0]
        .iter()
        .map(|(_, p)| p.clone())
        .collect();
    assert_eq!(payloads, ["m-1", "m-2", "m-3"]);
    t.consumer.close().await.expect("close");
}

/// A held partition stays paused through a rebalance: a second member joins (one partition
/// moves, cooperative-sticky, and the held one is either kept or moved) and leaves again (the
/// moved one comes back); until the runtime resumes it, the held partition delivers nothing,
/// and then exactly what nobody handled yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_partition_stays_paused_through_a_rebalance() {
    let env = Env::kafka();
    let mut a = TwoPartitions::open(&env, "pause-rebalance").await;
    a.consumer.pause(a.slots[0]);
    a.publish_to(0, "a-0").await;

    let b_stats = Arc::new(SubscriptionStats::default());
    let mut b = a
        .backend
        .consume(config(&a.group, &a.topic, &b_stats))
        .await
        .expect("second member");
    let moved = wait_owned(&b_stats, 1, "the second member takes a partition").await[0];
    eprintln!("the second member took partition {moved}");
    assert_eq!(
        wait_owned(&a.stats, 1, "the first member gives one up").await,
        [1 - moved]
    );
    a.publish_to(0, "b-1").await;
    a.publish_to(1, "b-1").await;
    // What the second member reads of the partition it took: from the last commit on.
    let expected_b: &[&str] = if moved == 0 {
        &["a-0", "b-1"]
    } else {
        &["b-1"]
    };
    let mut from_b = Vec::new();
    while from_b.len() < expected_b.len() {
        tokio::time::timeout(PATIENCE, b.poll(&mut from_b))
            .await
            .expect("the second member's deliveries in time")
            .expect("poll");
    }
    let payloads: Vec<String> = from_b.iter().map(payload).collect();
    assert_eq!(payloads, expected_b);
    assert!(from_b.iter().all(|d| partition(d) == moved));
    let settler = b.settler();
    for d in &from_b {
        settler.ack(&d.receipt);
    }
    if moved == 0 {
        let kept = a.take(1).await;
        assert_eq!(
            (partition(&kept[0]), payload(&kept[0])),
            (1, "b-1".into()),
            "the first member reads only the partition it kept"
        );
        a.settler.ack(&kept[0].receipt);
    }
    b.close().await.expect("the second member leaves");
    wait_owned(&a.stats, 2, "the first member takes both again").await;

    a.publish_to(0, "c-2").await;
    a.publish_to(1, "marker").await;
    let flowed = a.take(1).await;
    assert_eq!(
        by_partition(&flowed).get(&0),
        None,
        "the held partition delivered after the rebalance"
    );
    assert_eq!(payload(&flowed[0]), "marker");
    a.settler.ack(&flowed[0].receipt);

    a.consumer.resume(a.slots[0]);
    // Kept: everything since the pause. Moved and back: what the second member did not read.
    let expected_a: &[&str] = if moved == 0 {
        &["c-2"]
    } else {
        &["a-0", "b-1", "c-2"]
    };
    let resumed = a.take(expected_a.len()).await;
    let payloads: Vec<String> = resumed.iter().map(payload).collect();
    assert_eq!(payloads, expected_a, "moved: {moved}");
    assert!(resumed.iter().all(|d| partition(d) == 0));
    a.consumer.close().await.expect("close");
}

/// Both partitions held; a second member joins and takes one, which the runtime resumes while it
/// is away, and leaves again. The partition that came back flows (librdkafka would keep it
/// paused: its pause outlives the assignment), and the one kept through the cooperative
/// rebalance stays paused until resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_resumed_while_away_flows_when_it_comes_back() {
    let env = Env::kafka();
    let mut a = TwoPartitions::open(&env, "pause-away").await;
    a.consumer.pause(a.slots[0]);
    a.consumer.pause(a.slots[1]);
    let b_stats = Arc::new(SubscriptionStats::default());
    let b = a
        .backend
        .consume(config(&a.group, &a.topic, &b_stats))
        .await
        .expect("second member");
    let moved = wait_owned(&b_stats, 1, "the second member takes a partition").await[0];
    let kept = 1 - moved;
    assert_eq!(
        wait_owned(&a.stats, 1, "the first member gives one up").await,
        [kept]
    );
    a.consumer.resume(a.slots[moved]);
    b.close().await.expect("the second member leaves");
    wait_owned(&a.stats, 2, "the first member takes both again").await;

    a.publish_to(kept, "kept").await;
    a.publish_to(moved, "back").await;
    let back = a.take(1).await;
    assert_eq!(
        back.iter()
            .map(|d| (partition(d), payload(d)))
            .collect::<Vec<_>>(),
        [(moved, "back".to_owned())],
        "the partition resumed while away flows; the kept one stays paused"
    );
    a.settler.ack(&back[0].receipt);
    a.consumer.resume(a.slots[kept]);
    let resumed = a.take(1).await;
    assert_eq!(
        resumed
            .iter()
            .map(|d| (partition(d), payload(d)))
            .collect::<Vec<_>>(),
        [(kept, "kept".to_owned())]
    );
    a.consumer.close().await.expect("close");
}
