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
        let consumer = backend
            .consume(ConsumerConfig {
                group: env.unique("g"),
                topics: vec![topic.clone()],
                batch: 16,
                prefetch: 16,
                drain_timeout: Duration::from_secs(5),
                stats: Arc::new(SubscriptionStats::default()),
                delayed: Vec::new(),
            })
            .await
            .expect("consume");
        let settler = consumer.settler();
        let mut this = Self {
            backend,
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
