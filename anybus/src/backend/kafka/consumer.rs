//! One Kafka consumer-group member: a thread that polls librdkafka, and the rebalance callbacks
//! that drain revoked partitions before they change hands.
//!
//! Offsets are never committed by librdkafka on its own (`enable.auto.commit=false`): the poll
//! thread commits, asynchronously every `commit_interval`, the commit points the
//! [`PartitionTable`] computes from completed work, and synchronously when partitions are
//! revoked and when the consumer closes. A revoke waits (up to the drain timeout) for the work
//! in flight on the revoked partitions, commits what completed, and then lets the partitions go
//! with their generation retired, so a late ack from this member can commit nothing for them.
//!
//! The poll thread is a plain OS thread because the rebalance callback blocks while draining,
//! and it must not block a runtime worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::partitions::PartitionTable;
use crate::backend::{BackendError, Consumer, Delivery, Receipt, Settler};
use crate::handler::BoxFuture;
use crate::message::{header, Headers, Message, MessageId, Origin};
use crate::observe::SubscriptionStats;

/// State shared by the poll thread, its callbacks and the settler.
pub(super) struct Shared {
    table: Mutex<PartitionTable>,
    /// Signalled when work on a revoking partition completes.
    drained: Condvar,
    closing: AtomicBool,
    stats: Arc<SubscriptionStats>,
    drain_timeout: Duration,
}

impl Shared {
    pub(super) fn new(stats: Arc<SubscriptionStats>, drain_timeout: Duration) -> Self {
        Self {
            table: Mutex::default(),
            drained: Condvar::new(),
            closing: AtomicBool::new(false),
            stats,
            drain_timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, PartitionTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn report_assignment(&self, table: &PartitionTable) {
        let owned = table.assignment();
        self.stats.report_assignment(owned);
    }

    /// Drains and gives up the revoked partitions; runs on the poll thread inside `poll`.
    fn revoke(&self, consumer: &BaseConsumer<KafkaContext>, revoked: &TopicPartitionList) {
        let deadline = Instant::now() + self.drain_timeout;
        let mut table = self.lock();
        for tp in revoked.elements() {
            table.begin_revoke(tp.topic(), tp.partition());
        }
        while table.revoking_in_flight() > 0 && !self.closing.load(Ordering::Acquire) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    in_flight = table.revoking_in_flight(),
                    "drain timed out; handing partitions over with work unfinished"
                );
                break;
            }
            table = self
                .drained
                .wait_timeout(table, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let mut commits = TopicPartitionList::new();
        for tp in revoked.elements() {
            if let Some(offset) = table.finish_revoke(tp.topic(), tp.partition()) {
                if let Err(e) =
                    commits.add_partition_offset(tp.topic(), tp.partition(), Offset::Offset(offset))
                {
                    tracing::warn!(error = %e, "cannot list an offset to commit");
                }
            }
        }
        self.report_assignment(&table);
        drop(table);
        if commits.count() > 0 {
            if let Err(e) = consumer.commit(&commits, CommitMode::Sync) {
                tracing::warn!(error = %e, "committing revoked partitions failed");
            }
        }
    }

    fn assign(&self, assigned: &TopicPartitionList) {
        let mut table = self.lock();
        for tp in assigned.elements() {
            table.assign(tp.topic(), tp.partition());
        }
        self.report_assignment(&table);
    }
}

impl Settler for Shared {
    fn is_current(&self, receipt: &Receipt) -> bool {
        self.lock().is_current(receipt)
    }

    fn ack(&self, receipt: &Receipt) {
        let mut table = self.lock();
        if table.complete(receipt).is_err() {
            drop(table);
            return self.stats.count_stale(receipt, "ack");
        }
        if table.revoking_in_flight() == 0 && table.any_revoking() {
            self.drained.notify_all();
        }
    }

    fn nack(&self, receipt: &Receipt) {
        let mut table = self.lock();
        if table.rewind(receipt).is_err() {
            drop(table);
            return self.stats.count_stale(receipt, "nack");
        }
        SubscriptionStats::count(&self.stats.redeliveries);
    }
}

/// Hooks the rebalance callbacks of librdkafka into [`Shared`].
pub(super) struct KafkaContext {
    pub(super) shared: Arc<Shared>,
}

impl ClientContext for KafkaContext {}

impl ConsumerContext for KafkaContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(revoked) => self.shared.revoke(consumer, revoked),
            Rebalance::Assign(assigned) => self.shared.assign(assigned),
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance failed"),
        }
    }
}

/// Turns a fetched record into a [`Message`]; the id comes from the header anybus wrote, or a
/// fresh one for messages from other producers.
fn to_message(m: &BorrowedMessage<'_>, topic: Arc<str>) -> Message {
    let mut headers = Headers::new();
    let mut id = None;
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            if h.key == header::MESSAGE_ID {
                id = h
                    .value
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(MessageId::parse);
            } else {
                headers.append(h.key, Bytes::copy_from_slice(h.value.unwrap_or_default()));
            }
        }
    }
    Message::from_parts(
        id.unwrap_or_default(),
        m.key().map(Bytes::copy_from_slice),
        headers,
        Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        Origin {
            topic,
            partition: Some(m.partition()),
            offset: Some(m.offset()),
            delivery_tag: None,
            timestamp_ms: m.timestamp().to_millis(),
        },
    )
}

/// Polls until closed: performs seeks asked for by nacks, commits periodically, and hands
/// fetched messages to the runtime.
pub(super) fn poll_loop(
    consumer: BaseConsumer<KafkaContext>,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Vec<Delivery>>,
    commit_interval: Duration,
    batch_size: usize,
) {
    let mut last_commit = Instant::now();
    while !shared.closing.load(Ordering::Acquire) {
        let seeks = shared.lock().take_seeks();
        for seek in seeks {
            if let Err(e) = consumer.seek(
                &seek.topic,
                seek.partition,
                Offset::Offset(seek.offset),
                Duration::from_secs(10),
            ) {
                tracing::warn!(topic = &*seek.topic, partition = seek.partition, error = %e, "seek failed");
            }
        }
        if last_commit.elapsed() >= commit_interval {
            commit(&consumer, shared.lock().take_commits(), CommitMode::Async);
            last_commit = Instant::now();
        }
        // Drain what librdkafka has ready into one batch, so the runtime is woken once per
        // batch rather than per message. Each message is tracked right after the poll that
        // returned it, before a rebalance callback of a later poll can change the assignment.
        let mut batch = Vec::with_capacity(batch_size);
        let mut wait = Duration::from_millis(100);
        while batch.len() < batch_size {
            let message = match consumer.poll(wait) {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka consumer error");
                    break;
                }
                Some(Ok(m)) => m,
            };
            wait = Duration::ZERO;
            let tracked =
                shared
                    .lock()
                    .track(message.topic(), message.partition(), message.offset());
            if let Some((receipt, topic)) = tracked {
                batch.push(Delivery {
                    message: Arc::new(to_message(&message, topic)),
                    receipt,
                });
            }
        }
        if !batch.is_empty() && tx.blocking_send(batch).is_err() {
            break;
        }
    }
    // Closing: commit what completed since the last commit. Leaving the group then revokes
    // everything, which commits nothing more: the table knows these were committed.
    commit(&consumer, shared.lock().take_commits(), CommitMode::Sync);
    consumer.unsubscribe();
    drop(consumer);
    shared.report_assignment(&shared.lock());
}

fn commit(
    consumer: &BaseConsumer<KafkaContext>,
    offsets: Vec<(Arc<str>, i32, i64)>,
    mode: CommitMode,
) {
    if offsets.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for (topic, partition, offset) in &offsets {
        if let Err(e) = list.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
            tracing::warn!(error = %e, "cannot list an offset to commit");
        }
    }
    if let Err(e) = consumer.commit(&list, mode) {
        tracing::warn!(error = %e, "commit failed");
    }
}

/// The [`Consumer`] the runtime reads from.
pub(super) struct KafkaConsumer {
    pub(super) rx: mpsc::Receiver<Vec<Delivery>>,
    pub(super) shared: Arc<Shared>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl Consumer for KafkaConsumer {
    fn poll<'a>(
        &'a mut self,
        out: &'a mut Vec<Delivery>,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let Some(first) = self.rx.recv().await else {
                return Err(BackendError::Closed { backend: "kafka" });
            };
            // The poll thread sends at most `batch` deliveries at a time.
            out.extend(first);
            Ok(())
        })
    }

    fn settler(&self) -> Arc<dyn Settler> {
        Arc::clone(&self.shared) as Arc<dyn Settler>
    }

    fn close(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BackendError>> {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.drained.notify_all();
        // Unblocks a poll thread waiting for room in the channel.
        self.rx.close();
        let thread = self.thread.take();
        Box::pin(async move {
            drop(self);
            if let Some(thread) = thread {
                tokio::task::spawn_blocking(move || thread.join())
                    .await
                    .map_err(|e| BackendError::Broker {
                        backend: "kafka",
                        reason: format!("the poll thread could not be joined: {e}"),
                    })?
                    .map_err(|_| BackendError::Broker {
                        backend: "kafka",
                        reason: "the poll thread panicked".into(),
                    })?;
            }
            Ok(())
        })
    }
}
