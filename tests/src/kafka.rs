//! Helpers of the Kafka-only tests: reading a group's committed offsets with a raw client.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::{Env, PATIENCE};

/// The `host:port` list of the Kafka URL the suite runs against.
pub fn bootstrap(env: &Env) -> String {
    let rest = env.url.trim_start_matches("kafka://");
    rest.split('?').next().unwrap_or(rest).to_owned()
}

/// The committed offsets of `group` for partitions `0..partitions` of `topic` (-1 where none).
pub async fn committed(env: &Env, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let (bootstrap, group, topic) = (bootstrap(env), group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", &group)
            .create()
            .expect("a raw consumer");
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition(&topic, p);
        }
        let offsets = consumer
            .committed_offsets(list, Duration::from_secs(10))
            .expect("committed offsets");
        (0..partitions)
            .map(
                |p| match offsets.find_partition(&topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => -1,
                },
            )
            .collect()
    })
    .await
    .expect("join")
}

/// Reads the committed offsets until they are `expected`. Synchronises on a broker read: the
/// pause between reads only spaces them out.
pub async fn wait_committed(env: &Env, group: &str, topic: &str, expected: &[i64]) {
    let start = Instant::now();
    loop {
        let now = committed(env, group, topic, expected.len() as i32).await;
        if now == expected {
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "committed offsets of {group} on {topic} stayed {now:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
