//! The embedded broker: Kafka's semantics in process memory, for tests, examples and services
//! that need no broker.
//!
//! Topics have partitions; a keyed message goes to the partition its key hashes to, a keyless
//! one round-robin. Every consumer group reads every message; the members of a group split the
//! partitions between them, and a partition changes hands only after its owner drained its
//! in-flight work (or its drain timeout passed), at the group's committed offset. An ack moves
//! the committed offset to the first unfinished message; a nack rewinds the partition to it, as
//! a Kafka consumer seeking back would. A new group reads from the first message each
//! partition still retains.
//!
//! The broker frees what it no longer needs, so that a long-running service on it stays
//! bounded. Each partition keeps at most `retention.bytes` (payload, key, headers and about
//! 230 bytes of bookkeeping per message; [`DEFAULT_RETENTION_BYTES`], 64 MiB, unless told), at
//! most `retention.messages` messages if set (unbounded by count unless told), and nothing
//! older than `retention.ms` ([`DEFAULT_RETENTION_MS`], 7 days, unless told), the oldest leaving
//! first as the partition is appended to. On top of that, what every consumer group that reads a
//! topic has committed is dropped: nothing could read it again. A topic no group reads keeps
//! what its bounds allow, for a group that starts later. Offsets stay absolute and are never
//! reused. A member whose next offset was dropped by a bound before it was read goes on from
//! the first retained message, as Kafka's `auto.offset.reset=earliest` would, and logs at warn
//! how many it skipped. [`MemoryBackend`] deletes an app's reply topic when the app shuts down.
//!
//! `memory://` names the process-wide default broker; `memory://NAME` a separate one, so tests
//! can run side by side; `?partitions=N` sets how many partitions a topic gets when nothing else
//! says (4 unless told), and `retention.bytes=N`, `retention.messages=N` and `retention.ms=N`
//! (positive whole numbers) the bounds above, e.g.
//! `memory://orders?partitions=8&retention.bytes=1048576&retention.ms=60000`. The options take
//! effect when the broker is created, by the first connect to its name.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use anybus::backend::memory::MemoryBroker;
//! use anybus::{App, Message};
//!
//! let app = App::builder().connect("memory://doc-example").await.unwrap();
//! app.publisher().send(Message::new("greetings", "hello")).await.unwrap();
//! let broker = MemoryBroker::named("doc-example");
//! assert_eq!(broker.messages("greetings").len(), 1);
//! # app.shutdown().await.unwrap();
//! # }
//! ```

mod consumer;
mod group;
mod log;
mod retention;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use tokio::sync::Notify;

use self::consumer::MemoryConsumer;
use self::group::TopicGroup;
use self::log::Topic;
use self::retention::Retention;
pub use self::retention::{DEFAULT_RETENTION_BYTES, DEFAULT_RETENTION_MS};
use super::{Backend, BackendError, Consumer, ConsumerConfig, PublishError, TopicSpec};
use crate::handler::BoxFuture;
use crate::message::{Message, Origin};
use crate::url::{BrokerUrl, ConnectError};

/// Partitions a topic gets when neither the subscription nor the URL says.
pub const DEFAULT_PARTITIONS: u32 = 4;

/// One embedded broker: its topics, consumer groups and committed offsets.
pub struct MemoryBroker {
    name: String,
    default_partitions: u32,
    retention: Retention,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    groups: Mutex<HashMap<(String, String), Arc<TopicGroup>>>,
    /// Woken on every append and every change of ownership; consumers wait on it.
    notify: Arc<Notify>,
    next_member: AtomicU64,
}

fn registry() -> &'static Mutex<HashMap<String, Arc<MemoryBroker>>> {
    static BROKERS: OnceLock<Mutex<HashMap<String, Arc<MemoryBroker>>>> = OnceLock::new();
    BROKERS.get_or_init(Default::default)
}

impl MemoryBroker {
    /// The broker called `name` in this process, created on first use with
    /// [`DEFAULT_PARTITIONS`] and the default retention bounds. `memory://NAME` connects to it.
    pub fn named(name: &str) -> Arc<Self> {
        Self::named_with(name, DEFAULT_PARTITIONS, Retention::default())
    }

    fn named_with(name: &str, default_partitions: u32, retention: Retention) -> Arc<Self> {
        let mut brokers = registry().lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(brokers.entry(name.to_owned()).or_insert_with(|| {
            Arc::new(Self {
                name: name.to_owned(),
                default_partitions,
                retention,
                topics: RwLock::default(),
                groups: Mutex::default(),
                notify: Arc::new(Notify::new()),
                next_member: AtomicU64::new(1),
            })
        }))
    }

    /// The broker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// The topic, created with `partitions` (or the default) if it does not exist.
    fn topic_or_create(&self, name: &str, partitions: Option<u32>) -> Arc<Topic> {
        if let Some(topic) = self.topic(name) {
            return topic;
        }
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(topics.entry(name.to_owned()).or_insert_with(|| {
            Arc::new(Topic::new(
                name,
                partitions.unwrap_or(self.default_partitions),
                self.retention,
            ))
        }))
    }

    fn group(&self, group: &str, topic: &str) -> Arc<TopicGroup> {
        let topic = self.topic_or_create(topic, None);
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            groups
                .entry((group.to_owned(), topic.name.to_string()))
                .or_insert_with(|| Arc::new(TopicGroup::new(group, topic))),
        )
    }

    /// Appends a message; returns where it landed. Creates the topic if needed.
    pub fn append(&self, message: Message) -> Origin {
        let topic = self.topic_or_create(message.topic(), None);
        let origin = topic.append(message);
        self.notify.notify_waiters();
        origin
    }

    /// Every message of a topic the broker still retains, partition by partition, in offset
    /// order.
    pub fn messages(&self, topic: &str) -> Vec<Arc<Message>> {
        let Some(topic) = self.topic(topic) else {
            return Vec::new();
        };
        let mut all = Vec::new();
        for log in &topic.partitions {
            log.read(0, usize::MAX, |_, m| all.push(Arc::clone(m)));
        }
        all
    }

    /// The first offset still retained in each partition of a topic (its end offset when the
    /// partition retains nothing): everything below was dropped by retention. A partition
    /// retains `end_offsets()[p] - base_offsets()[p]` messages.
    pub fn base_offsets(&self, topic: &str) -> Vec<i64> {
        self.topic(topic)
            .map(|t| t.partitions.iter().map(|p| p.base()).collect())
            .unwrap_or_default()
    }

    /// The names of the topics the broker has, sorted.
    pub fn topics(&self) -> Vec<String> {
        let topics = self.topics.read().unwrap_or_else(PoisonError::into_inner);
        let mut names: Vec<String> = topics.keys().cloned().collect();
        names.sort();
        names
    }

    /// Removes topics with their messages and the committed offsets of every group that read
    /// them. Publishing to one again creates it afresh, with offsets from 0.
    pub fn delete(&self, topics: &[String]) {
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        groups.retain(|(_, topic), _| !topics.contains(topic));
        drop(groups);
        let mut all = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        for topic in topics {
            all.remove(topic);
        }
    }

    /// Cuts every member of `group` off, as a broker that dropped their connections for good
    /// would: their polls fail from now on, and so do the subscriptions they serve. A fault for
    /// tests of what an app does when a subscription stops under it.
    pub fn disconnect(&self, group: &str) {
        let groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        for ((name, _), topic_group) in groups.iter() {
            if name == group {
                topic_group.disconnect();
            }
        }
        drop(groups);
        self.notify.notify_waiters();
    }

    /// One past the last offset of each partition of a topic.
    pub fn end_offsets(&self, topic: &str) -> Vec<i64> {
        self.topic(topic)
            .map(|t| t.partitions.iter().map(|p| p.end()).collect())
            .unwrap_or_default()
    }

    /// The next offset `group` reads in each partition of `topic` (its committed offsets); for
    /// a group that has not read the topic yet, where it would start: the first retained
    /// offsets. Asking does not create the group, so it holds nothing back from retention.
    pub fn committed(&self, group: &str, topic: &str) -> Vec<i64> {
        let key = (group.to_owned(), topic.to_owned());
        let known = self
            .groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned();
        match known {
            Some(g) => (0..g.topic.partitions.len())
                .map(|p| g.committed(p))
                .collect(),
            None => self.base_offsets(topic),
        }
    }
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The [`Backend`] over a [`MemoryBroker`].
#[derive(Debug)]
pub struct MemoryBackend {
    broker: Arc<MemoryBroker>,
}

impl MemoryBackend {
    /// Connects to the broker a `memory://[NAME][?partitions=N&retention.bytes=N&…]` URL names
    /// (the options are in the [module docs](self)). The options take effect when the broker
    /// is created, by the first connect to its name.
    pub fn connect(url: &BrokerUrl) -> Result<Self, ConnectError> {
        let malformed = |reason: String| ConnectError::MalformedUrl {
            url: url.to_string(),
            reason,
        };
        let (name, query) = match url.rest().split_once('?') {
            Some((name, query)) => (name, Some(query)),
            None => (url.rest(), None),
        };
        let name = name.trim_end_matches('/');
        let mut partitions = DEFAULT_PARTITIONS;
        let mut retention = Retention::default();
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            match pair.split_once('=') {
                Some(("partitions", n)) => {
                    partitions = n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        malformed(format!("`partitions` must be a positive number, not `{n}`"))
                    })?;
                }
                Some((option, value)) if retention.set(option, value).map_err(malformed)? => {}
                _ => {
                    return Err(malformed(format!(
                        "unknown option `{pair}`; the memory backend knows `partitions=N`, {}",
                        retention::OPTIONS
                    )))
                }
            }
        }
        let name = if name.is_empty() { "default" } else { name };
        Ok(Self {
            broker: MemoryBroker::named_with(name, partitions, retention),
        })
    }

    /// The broker behind this backend.
    pub fn broker(&self) -> &Arc<MemoryBroker> {
        &self.broker
    }
}

impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn declare<'a>(&'a self, topics: &'a [TopicSpec]) -> BoxFuture<'a, Result<(), BackendError>> {
        for topic in topics {
            self.broker.topic_or_create(&topic.name, topic.partitions);
            if let Some(group) = &topic.keep_for {
                // Registered now, the group holds back from retention what it has yet to read.
                self.broker.group(group, &topic.name);
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn delete<'a>(&'a self, topics: &'a [String]) -> BoxFuture<'a, Result<(), BackendError>> {
        self.broker.delete(topics);
        Box::pin(std::future::ready(Ok(())))
    }

    fn consume(
        &self,
        config: ConsumerConfig,
    ) -> BoxFuture<'_, Result<Box<dyn Consumer>, BackendError>> {
        let groups = config
            .topics
            .iter()
            .map(|t| self.broker.group(&config.group, t))
            .collect();
        let id = self.broker.next_member.fetch_add(1, Ordering::Relaxed);
        let consumer = MemoryConsumer::join(
            id,
            groups,
            Arc::clone(&self.broker.notify),
            config.stats,
            config.batch,
            config.drain_timeout,
        );
        Box::pin(std::future::ready(Ok(
            Box::new(consumer) as Box<dyn Consumer>
        )))
    }

    fn publish(&self, message: Message) -> BoxFuture<'_, Result<Origin, PublishError>> {
        Box::pin(std::future::ready(Ok(self.broker.append(message))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Delivery, Receipt};
    use crate::observe::SubscriptionStats;
    use std::time::Duration;

    fn config(group: &str, drain_timeout: Duration) -> ConsumerConfig {
        ConsumerConfig {
            group: group.into(),
            topics: vec!["t".into()],
            batch: 64,
            prefetch: 64,
            drain_timeout,
            stats: Arc::new(SubscriptionStats::default()),
            delayed: Vec::new(),
        }
    }

    fn publish_one_per_partition(backend: &MemoryBackend) {
        for _ in 0..4 {
            backend.broker().append(Message::new("t", "x"));
        }
    }

    fn partitions(deliveries: &[Delivery]) -> Vec<i32> {
        let mut p: Vec<i32> = deliveries
            .iter()
            .filter_map(|d| d.message.origin().partition)
            .collect();
        p.sort();
        p
    }

    #[tokio::test]
    async fn a_stale_ack_after_a_rebalance_commits_nothing() {
        let url = BrokerUrl::parse("memory://unit-stale-ack").unwrap();
        let backend = MemoryBackend::connect(&url).unwrap();
        // No drain time: partitions are handed over with their work still in flight.
        let first = config("g", Duration::ZERO);
        let first_stats = Arc::clone(&first.stats);
        let mut one = backend.consume(first).await.unwrap();
        publish_one_per_partition(&backend);
        let mut old = Vec::new();
        one.poll(&mut old).await.unwrap();
        assert_eq!(partitions(&old), [0, 1, 2, 3]);

        let mut two = backend.consume(config("g", Duration::ZERO)).await.unwrap();
        publish_one_per_partition(&backend);
        let mut fresh = Vec::new();
        one.poll(&mut fresh).await.unwrap();
        assert_eq!(
            partitions(&fresh),
            [0, 2],
            "partitions 1 and 3 went to the new member"
        );

        let settler = one.settler();
        for d in &old {
            settler.ack(&d.receipt);
        }
        assert_eq!(
            first_stats.stale_settlements.load(Ordering::Relaxed),
            2,
            "the acks of partitions 1 and 3 are stale"
        );
        assert_eq!(backend.broker().committed("g", "t"), [1, 0, 1, 0]);

        let mut taken_over = Vec::new();
        two.poll(&mut taken_over).await.unwrap();
        let offsets: Vec<(i32, i64)> = taken_over
            .iter()
            .map(|d| {
                (
                    d.message.origin().partition.unwrap(),
                    d.message.origin().offset.unwrap(),
                )
            })
            .collect();
        assert_eq!(offsets.len(), 4);
        for p in [1, 3] {
            assert!(
                offsets.contains(&(p, 0)) && offsets.contains(&(p, 1)),
                "{offsets:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_paused_partition_is_not_read_until_resumed() {
        let url = BrokerUrl::parse("memory://unit-pause?partitions=2").unwrap();
        let backend = MemoryBackend::connect(&url).unwrap();
        let mut one = backend.consume(config("g", Duration::ZERO)).await.unwrap();
        let paused = one.settler();
        for _ in 0..4 {
            backend.broker().append(Message::new("t", "x"));
        }
        // Slot keys are `group << 16 | partition`: partition 0 of the only topic is slot 0.
        one.pause(0);
        let mut first = Vec::new();
        one.poll(&mut first).await.unwrap();
        assert_eq!(
            places(&first),
            [(1, 0), (1, 1)],
            "only the unpaused partition"
        );
        for d in &first {
            paused.ack(&d.receipt);
        }
        one.resume(0);
        let mut second = Vec::new();
        one.poll(&mut second).await.unwrap();
        assert_eq!(
            places(&second),
            [(0, 0), (0, 1)],
            "from where it was paused"
        );
    }

    #[tokio::test]
    async fn a_nack_rewinds_to_the_first_unfinished_offset() {
        let url = BrokerUrl::parse("memory://unit-nack?partitions=1").unwrap();
        let backend = MemoryBackend::connect(&url).unwrap();
        let mut one = backend.consume(config("g", Duration::ZERO)).await.unwrap();
        for _ in 0..3 {
            backend.broker().append(Message::new("t", "x"));
        }
        let mut first = Vec::new();
        one.poll(&mut first).await.unwrap();
        assert_eq!(first.len(), 3);
        let settler = one.settler();
        settler.ack(&first[0].receipt);
        settler.nack(&first[1].receipt);
        assert!(
            !settler.is_current(&first[2].receipt),
            "work read before the rewind is stale"
        );
        settler.ack(&first[2].receipt);
        assert_eq!(backend.broker().committed("g", "t"), [1]);

        let mut again = Vec::new();
        one.poll(&mut again).await.unwrap();
        let offsets: Vec<i64> = again
            .iter()
            .map(|d| d.message.origin().offset.unwrap())
            .collect();
        assert_eq!(offsets, [1, 2]);
    }

    fn places(deliveries: &[Delivery]) -> Vec<(i32, i64)> {
        let mut places: Vec<(i32, i64)> = deliveries
            .iter()
            .map(|d| {
                let origin = d.message.origin();
                (origin.partition.unwrap(), origin.offset.unwrap())
            })
            .collect();
        places.sort();
        places
    }

    fn of(deliveries: &[Delivery], partition: i32, offset: i64) -> Receipt {
        deliveries
            .iter()
            .find(|d| {
                d.message.origin().partition == Some(partition)
                    && d.message.origin().offset == Some(offset)
            })
            .map(|d| d.receipt)
            .expect("a delivery there")
    }

    #[tokio::test]
    async fn a_handover_gives_up_work_not_started_and_waits_only_for_running_work() {
        let url = BrokerUrl::parse("memory://unit-handover").unwrap();
        let backend = MemoryBackend::connect(&url).unwrap();
        // A drain long enough that only the settlements below can end it.
        let drain = Duration::from_secs(600);
        let first = config("g", drain);
        let first_stats = Arc::clone(&first.stats);
        let mut one = backend.consume(first).await.unwrap();
        publish_one_per_partition(&backend);
        publish_one_per_partition(&backend);
        let mut old = Vec::new();
        one.poll(&mut old).await.unwrap();
        assert_eq!(old.len(), 8);

        let mut two = backend.consume(config("g", drain)).await.unwrap();
        publish_one_per_partition(&backend);
        let mut fresh = Vec::new();
        one.poll(&mut fresh).await.unwrap();
        assert_eq!(partitions(&fresh), [0, 2], "1 and 3 are being handed over");
        assert_eq!(first_stats.handovers.load(Ordering::Relaxed), 2);

        let settler = one.settler();
        assert!(
            settler.try_start(&of(&old, 0, 1)),
            "a kept partition goes on"
        );
        // Offset 0 of partition 1 runs: it started before the handover, and finishes now.
        let running = of(&old, 1, 0);
        assert!(settler.is_current(&running), "what runs on 1 may finish");
        settler.ack(&running);
        // What was not started is given up.
        for (partition, offset) in [(1, 1), (3, 0), (3, 1)] {
            assert!(
                !settler.try_start(&of(&old, partition, offset)),
                "nothing new starts on {partition}"
            );
        }

        // Nothing is in flight on 1 and 3 now, so the next poll hands them over.
        publish_one_per_partition(&backend);
        let mut more = Vec::new();
        one.poll(&mut more).await.unwrap();
        assert_eq!(backend.broker().committed("g", "t")[1..], [1, 0, 0]);
        let mut taken_over = Vec::new();
        while taken_over.len() < 7 {
            two.poll(&mut taken_over).await.unwrap();
        }
        assert_eq!(
            places(&taken_over),
            [(1, 1), (1, 2), (1, 3), (3, 0), (3, 1), (3, 2), (3, 3)],
            "from the first message not finished"
        );
    }

    #[tokio::test]
    async fn a_handover_called_off_reads_again_what_it_gave_up() {
        let url = BrokerUrl::parse("memory://unit-handover-off?partitions=2").unwrap();
        let backend = MemoryBackend::connect(&url).unwrap();
        let drain = Duration::from_secs(600);
        let mut one = backend.consume(config("g", drain)).await.unwrap();
        for _ in 0..4 {
            backend.broker().append(Message::new("t", "x"));
        }
        let mut old = Vec::new();
        one.poll(&mut old).await.unwrap();
        assert_eq!(places(&old), [(0, 0), (0, 1), (1, 0), (1, 1)]);

        let two = backend.consume(config("g", drain)).await.unwrap();
        for _ in 0..2 {
            backend.broker().append(Message::new("t", "x"));
        }
        let mut fresh = Vec::new();
        one.poll(&mut fresh).await.unwrap();
        assert_eq!(places(&fresh), [(0, 2)], "1 is being handed over");
        let settler = one.settler();
        // Offset 0 of partition 1 still runs; offset 1 was given up.
        assert!(!settler.try_start(&of(&old, 1, 1)));

        // The second member leaves before the handover: partition 1 stays, and what was given
        // up is read again, from the first unfinished offset.
        two.close().await.unwrap();
        let mut again = Vec::new();
        one.poll(&mut again).await.unwrap();
        assert_eq!(places(&again), [(1, 0), (1, 1), (1, 2)]);
        assert!(
            !settler.is_current(&of(&old, 1, 0)),
            "the earlier read of partition 1 is stale"
        );
    }
}
