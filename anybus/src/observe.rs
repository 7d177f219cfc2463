//! What the runtime counts and traces.
//!
//! Every delivery is handled inside a `tracing` span named `anybus.delivery` with the topic,
//! partition, offset, consumer group, message id and subscription; a handler's failure is logged
//! inside it. Counters per subscription are plain atomics, read with
//! [`App::stats`](crate::App::stats) or [`AppHandle::stats`](crate::AppHandle::stats).
//!
//! ## What each counter counts
//!
//! A *message* is counted once however often it is delivered; a *call* is one run of the
//! handler (one attempt); a *delivery* is one time the broker handed the message over.
//!
//! | counter | counts | one message that … |
//! |---|---|---|
//! | `handled` | messages whose handler succeeded | succeeds on attempt 3: 1 |
//! | `transient_failures` | calls that failed transiently (any error not marked permanent), each attempt counted, whatever came next | fails 5 times in process, then succeeds: 5 |
//! | `permanent_failures` | calls that failed permanently: `HandlerError::permanent`, a panic, an undecodable payload, a missing or unreadable dedup key | panics: 1 |
//! | `decode_failures` | of the permanent failures, payloads that did not decode | is not JSON: 1 (and 1 permanent) |
//! | `retries` | attempts scheduled again after a transient failure, in process or as a redeliver-later copy | fails twice, then succeeds: 2 |
//! | `exhausted` | messages given up because their attempts ran out | fails transiently 3 times by default: 1 (and 3 transient) |
//! | `dead_lettered` | dead letters the broker confirmed, for any reason | is exhausted, or fails permanently: 1 |
//! | `duplicates` | deliveries acked without (or, under the inbox, despite) running the handler, because their dedup key was done | arrives twice under `dedup`: 1 |
//! | `dedup_in_progress` | deliveries left for later because another delivery held their dedup key | |
//! | `store_failures` | dedup store calls that failed (the delivery comes again, or the call is tried again) | |
//! | `publish_failures` | dead letters, retry copies and answers the broker did not confirm (the message comes again) | |
//! | `redeliveries` | partitions rewound by a nack | |
//! | `stale_settlements`, `skipped_stale`, `handovers` | acks dropped and deliveries given up after a rebalance, and partitions handed over | |
//! | `peak_buffered`, `fetch_pauses`, `lane_pauses` | backpressure: most deliveries held under key ordering, fetch pauses, partitions paused for a full lane | |

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use tracing::field::Empty;
use tracing::Span;

use crate::message::Message;

/// One partition of one topic.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition (0 for a RabbitMQ queue).
    pub partition: i32,
}

/// Live counters of one subscription, and the partitions it owns.
#[derive(Debug)]
pub struct SubscriptionStats {
    /// The partitions this member owns right now, as the backend last reported them.
    pub assignment: watch::Sender<Vec<TopicPartition>>,
    /// Deliveries whose handler succeeded.
    pub handled: AtomicU64,
    /// Handler calls that failed transiently, each attempt counted (see the module docs).
    pub transient_failures: AtomicU64,
    /// Handler calls that failed permanently, decode failures included.
    pub permanent_failures: AtomicU64,
    /// Attempts scheduled again after a transient failure, in process or as a retry copy.
    pub retries: AtomicU64,
    /// Messages given up because their attempts ran out.
    pub exhausted: AtomicU64,
    /// Dedup store calls that failed.
    pub store_failures: AtomicU64,
    /// Dead letters, retry copies and answers the broker did not confirm.
    pub publish_failures: AtomicU64,
    /// Payloads that did not decode.
    pub decode_failures: AtomicU64,
    /// Messages sent to their dead-letter destination.
    pub dead_lettered: AtomicU64,
    /// Deliveries acked without their handler because their dedup key was done.
    pub duplicates: AtomicU64,
    /// Deliveries left for redelivery because another delivery held their dedup key.
    pub dedup_in_progress: AtomicU64,
    /// Partitions rewound by a nack.
    pub redeliveries: AtomicU64,
    /// Acks and nacks dropped because their generation was no longer live.
    pub stale_settlements: AtomicU64,
    /// Deliveries given up before their handler ran (or before another attempt) because their
    /// partition had moved on or was being handed over; they go to its next owner.
    pub skipped_stale: AtomicU64,
    /// Partitions this member began to hand over in a rebalance.
    pub handovers: AtomicU64,
    /// Whether a key-ordered subscription has stopped fetching because it holds
    /// `max_buffered` unfinished deliveries; it fetches again as keys drain.
    pub held_back: watch::Sender<bool>,
    /// The most unfinished deliveries a key-ordered subscription held at once.
    pub peak_buffered: AtomicU64,
    /// Times the Kafka consumer paused fetching because the runtime had no room.
    pub fetch_pauses: AtomicU64,
    /// Times one partition was paused because its lane was full, while the others went on.
    pub lane_pauses: AtomicU64,
}

impl Default for SubscriptionStats {
    fn default() -> Self {
        Self {
            assignment: watch::Sender::new(Vec::new()),
            handled: AtomicU64::default(),
            transient_failures: AtomicU64::default(),
            permanent_failures: AtomicU64::default(),
            retries: AtomicU64::default(),
            exhausted: AtomicU64::default(),
            store_failures: AtomicU64::default(),
            publish_failures: AtomicU64::default(),
            decode_failures: AtomicU64::default(),
            dead_lettered: AtomicU64::default(),
            duplicates: AtomicU64::default(),
            dedup_in_progress: AtomicU64::default(),
            redeliveries: AtomicU64::default(),
            stale_settlements: AtomicU64::default(),
            skipped_stale: AtomicU64::default(),
            handovers: AtomicU64::default(),
            held_back: watch::Sender::new(false),
            peak_buffered: AtomicU64::default(),
            fetch_pauses: AtomicU64::default(),
            lane_pauses: AtomicU64::default(),
        }
    }
}

impl SubscriptionStats {
    /// A copy of the counters in which a message's outcome is never seen without the calls
    /// that led to it: a message counted as `handled`, `duplicates`, `exhausted` or
    /// `dead_lettered` has its failed calls and retries in the copy too. (Each counter is
    /// incremented with `Release` after those of the steps before it, and the copy reads the
    /// outcomes first, with `Acquire`, then the steps.)
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Acquire);
        // Outcomes first: struct fields are evaluated in the order they are written.
        let (handled, duplicates, exhausted, dead_lettered) = (
            get(&self.handled),
            get(&self.duplicates),
            get(&self.exhausted),
            get(&self.dead_lettered),
        );
        StatsSnapshot {
            handled,
            transient_failures: get(&self.transient_failures),
            permanent_failures: get(&self.permanent_failures),
            retries: get(&self.retries),
            exhausted,
            store_failures: get(&self.store_failures),
            publish_failures: get(&self.publish_failures),
            decode_failures: get(&self.decode_failures),
            dead_lettered,
            duplicates,
            dedup_in_progress: get(&self.dedup_in_progress),
            redeliveries: get(&self.redeliveries),
            stale_settlements: get(&self.stale_settlements),
            skipped_stale: get(&self.skipped_stale),
            handovers: get(&self.handovers),
            peak_buffered: get(&self.peak_buffered),
            fetch_pauses: get(&self.fetch_pauses),
            lane_pauses: get(&self.lane_pauses),
        }
    }

    /// Records whether the subscription holds back fetching, waking watchers only if that
    /// changed.
    pub(crate) fn report_held_back(&self, held: bool) {
        self.held_back.send_if_modified(|current| {
            let changed = *current != held;
            *current = held;
            changed
        });
    }

    /// Publishes the partitions the member owns now, waking watchers only if that changed.
    pub(crate) fn report_assignment(&self, owned: Vec<TopicPartition>) {
        self.assignment.send_if_modified(|current| {
            let changed = *current != owned;
            if changed {
                *current = owned;
            }
            changed
        });
    }

    /// Counts a settlement dropped because its generation is no longer live.
    pub(crate) fn count_stale(&self, receipt: &crate::backend::Receipt, what: &str) {
        Self::count(&self.stale_settlements);
        tracing::debug!(
            slot = receipt.slot,
            offset = receipt.offset,
            generation = receipt.generation,
            "dropped a stale {what}"
        );
    }

    pub(crate) fn count(counter: &AtomicU64) {
        // Release: whoever reads this count with Acquire sees the counts made before it
        // (see `snapshot`). Free on x86, where every read-modify-write is ordered anyway.
        counter.fetch_add(1, Ordering::Release);
    }
}

/// The counters of one subscription at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// See [`SubscriptionStats::handled`].
    pub handled: u64,
    /// See [`SubscriptionStats::transient_failures`].
    pub transient_failures: u64,
    /// See [`SubscriptionStats::permanent_failures`].
    pub permanent_failures: u64,
    /// See [`SubscriptionStats::retries`].
    pub retries: u64,
    /// See [`SubscriptionStats::exhausted`].
    pub exhausted: u64,
    /// See [`SubscriptionStats::store_failures`].
    pub store_failures: u64,
    /// See [`SubscriptionStats::publish_failures`].
    pub publish_failures: u64,
    /// See [`SubscriptionStats::decode_failures`].
    pub decode_failures: u64,
    /// See [`SubscriptionStats::dead_lettered`].
    pub dead_lettered: u64,
    /// See [`SubscriptionStats::duplicates`].
    pub duplicates: u64,
    /// See [`SubscriptionStats::dedup_in_progress`].
    pub dedup_in_progress: u64,
    /// See [`SubscriptionStats::redeliveries`].
    pub redeliveries: u64,
    /// See [`SubscriptionStats::stale_settlements`].
    pub stale_settlements: u64,
    /// See [`SubscriptionStats::skipped_stale`].
    pub skipped_stale: u64,
    /// See [`SubscriptionStats::handovers`].
    pub handovers: u64,
    /// See [`SubscriptionStats::peak_buffered`].
    pub peak_buffered: u64,
    /// See [`SubscriptionStats::fetch_pauses`].
    pub fetch_pauses: u64,
    /// See [`SubscriptionStats::lane_pauses`].
    pub lane_pauses: u64,
}

/// The span one delivery is handled in. Costs one branch when no subscriber listens.
pub(crate) fn delivery_span(message: &Message, group: &str, subscription: &str) -> Span {
    let origin = message.origin();
    let span = tracing::info_span!(
        "anybus.delivery",
        topic = &*origin.topic,
        partition = Empty,
        offset = Empty,
        delivery_tag = Empty,
        group,
        message_id = %message.id(),
        subscription,
    );
    if !span.is_disabled() {
        if let Some(p) = origin.partition {
            span.record("partition", p);
        }
        if let Some(o) = origin.offset {
            span.record("offset", o);
        }
        if let Some(t) = origin.delivery_tag {
            span.record("delivery_tag", t);
        }
    }
    span
}
