//! One Kafka consumer-group member: a thread that polls librdkafka, and the rebalance callbacks
//! that drain revoked partitions before they change hands.
//!
//! Offsets are never committed by librdkafka on its own (`enable.auto.commit=false`): the poll
//! thread commits, asynchronously every `commit_interval`, the commit points the
//! [`PartitionTable`] computes from completed work, and synchronously when partitions are
//! revoked and when the consumer closes. A revoke stops new work on the revoked partitions
//! (fetched deliveries are given up as the runtime comes to them, [`Settler::try_start`]),
//! waits (up to the drain timeout) until none of their work is in flight, commits what
//! completed, and then lets the partitions go with their generation retired, so a late ack
//! from this member can commit nothing for them.
//!
//! The poll thread is a plain OS thread because the rebalance callback blocks while draining,
//! and it must not block a runtime worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::partitions::{PartitionTable, Seek};
use crate::backend::{BackendError, Consumer, Delivery, Receipt, Settler};
use crate::handler::BoxFuture;
use crate::message::{header, Headers, Message, MessageId, Origin, RecordIds};
use crate::observe::SubscriptionStats;

/// State shared by the poll thread, its callbacks and the settler.
pub(super) struct Shared {
    table: Mutex<PartitionTable>,
    /// Signalled when work on a revoking partition completes.
    drained: Condvar,
    /// Signalled when a partition starts to be revoked, or is rewound: work waiting to go on
    /// ([`Settler::stopped`]) looks whether it still may.
    stopped: tokio::sync::Notify,
    closing: AtomicBool,
    stats: Arc<SubscriptionStats>,
    drain_timeout: Duration,
}

impl Shared {
    pub(super) fn new(stats: Arc<SubscriptionStats>, drain_timeout: Duration) -> Self {
        Self {
            table: Mutex::default(),
            drained: Condvar::new(),
            stopped: tokio::sync::Notify::new(),
            closing: AtomicBool::new(false),
            stats,
            drain_timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, PartitionTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes a revoke waiting for its partitions' work, once none is left.
    fn notify_if_drained(&self, table: &PartitionTable) {
        if table.revoking_in_flight() == 0 && table.any_revoking() {
            self.drained.notify_all();
        }
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
            if table.begin_revoke(tp.topic(), tp.partition()) {
                SubscriptionStats::count(&self.stats.handovers);
            }
        }
        self.stopped.notify_waiters();
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

    fn try_start(&self, receipt: &Receipt) -> bool {
        let mut table = self.lock();
        if table.try_start(receipt) {
            return true;
        }
        self.notify_if_drained(&table);
        false
    }

    fn ack(&self, receipt: &Receipt) {
        let mut table = self.lock();
        if table.complete(receipt).is_err() {
            drop(table);
            return self.stats.count_stale(receipt, "ack");
        }
        self.notify_if_drained(&table);
    }

    fn nack(&self, receipt: &Receipt) {
        let mut table = self.lock();
        if table.rewind(receipt).is_err() {
            drop(table);
            return self.stats.count_stale(receipt, "nack");
        }
        SubscriptionStats::count(&self.stats.redeliveries);
        // A rewind forgets the partition's work in flight, which may end a drain.
        self.notify_if_drained(&table);
        drop(table);
        self.stopped.notify_waiters();
    }

    fn stopped<'a>(&'a self, receipt: &'a Receipt) -> BoxFuture<'a, ()> {
        Box::pin(crate::backend::once(&self.stopped, move || {
            !self.lock().may_start(receipt)
        }))
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

/// Where the poll thread copies fetched keys, payloads and header values: one shared buffer
/// that messages take slices of, so a message costs no allocation of its own for them.
///
/// Copying each into a fresh allocation cost three allocations per message, all made on the
/// poll thread and freed on the runtime's, where the frees queued on the allocator's lock for
/// the poll thread's arena. A buffer holds about [`CopyBuffer::SIZE`] bytes of messages and is
/// freed when the last message cut from it is dropped, so a handler that keeps one message
/// keeps its neighbours' bytes too (the buffer it was cut from, or the two it straddles); a
/// value too big to share gets its own allocation.
#[derive(Default)]
pub(super) struct CopyBuffer {
    buf: BytesMut,
}

impl CopyBuffer {
    /// The size of a new buffer.
    const SIZE: usize = 64 * 1024;
    /// Values larger than this are copied on their own.
    const OWN: usize = Self::SIZE / 8;

    /// A copy of `data`.
    pub(super) fn copy(&mut self, data: &[u8]) -> Bytes {
        if data.is_empty() {
            return Bytes::new();
        }
        if data.len() > Self::OWN {
            return Bytes::copy_from_slice(data);
        }
        if self.buf.capacity() < data.len() {
            // Never grow a buffer that messages hold slices of: start a new one.
            self.buf = BytesMut::with_capacity(Self::SIZE);
        }
        self.buf.extend_from_slice(data);
        self.buf.split().freeze()
    }
}

/// Turns a fetched record into a [`Message`]; the id comes from the header anybus wrote, or,
/// for records of other producers, from the record's place ([`MessageId::of_record`]), so that
/// a redelivery of such a record has the same id (and deduplicates by it).
fn to_message(
    m: &BorrowedMessage<'_>,
    topic: Arc<str>,
    ids: RecordIds,
    copies: &mut CopyBuffer,
) -> Message {
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
                headers.append(h.key, copies.copy(h.value.unwrap_or_default()));
            }
        }
    }
    let timestamp_ms = m.timestamp().to_millis();
    let id = id.unwrap_or_else(|| ids.id(m.partition(), m.offset(), timestamp_ms));
    Message::from_parts(
        id,
        m.key().map(|k| copies.copy(k)),
        headers,
        copies.copy(m.payload().unwrap_or_default()),
        Origin {
            topic,
            partition: Some(m.partition()),
            offset: Some(m.offset()),
            delivery_tag: None,
            timestamp_ms,
        },
    )
}

/// How long the poll thread waits for room in the runtime's channel before it pauses fetching.
pub(super) const PAUSE_AFTER: Duration = Duration::from_millis(250);

/// Polls until closed: performs seeks asked for by nacks, commits periodically, and hands
/// fetched messages to the runtime.
///
/// When the runtime's channel stays full for [`PAUSE_AFTER`] (the subscription holds as much as
/// it may buffer, e.g. a hot key is stuck), the thread does not go on blocking on it, which would
/// also stop it from serving rebalances and committing: it pauses fetching for the whole
/// assignment and keeps polling for rebalance events and committing, then resumes once the
/// runtime made room. librdkafka drops what it had fetched ahead for paused partitions and
/// fetches again from the last message it returned, so nothing is skipped.
pub(super) fn poll_loop(
    consumer: BaseConsumer<KafkaContext>,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Vec<Fetched>>,
    commit_interval: Duration,
    batch_size: usize,
    runtime: tokio::runtime::Handle,
) {
    let mut last_commit = Instant::now();
    let mut paused = false;
    // Messages returned while the channel was full: sent first once there is room.
    let mut held: Vec<Fetched> = Vec::new();
    let mut copies = CopyBuffer::default();
    while !shared.closing.load(Ordering::Acquire) {
        // A full channel is the runtime's ordinary backpressure: wait a little for room, keeping
        // librdkafka's prefetched messages; only a runtime that takes nothing for that long
        // makes the thread pause (which drops the prefetched messages, to be fetched again).
        let full = tx.capacity() == 0
            && (paused
                || runtime
                    .block_on(async { tokio::time::timeout(PAUSE_AFTER, tx.reserve()).await })
                    .is_err());
        if paused && !full {
            set_paused(&consumer, false);
            paused = false;
        }
        if !paused {
            // A seek of a paused partition would be undone by the resume, which fetches from
            // where the partition was paused; so seeks wait until fetching resumed.
            seek(&consumer, shared.lock().take_seeks());
        }
        if last_commit.elapsed() >= commit_interval {
            commit(&consumer, shared.lock().take_commits(), CommitMode::Async);
            last_commit = Instant::now();
        }
        if full {
            // Pausing the current assignment again each round also covers partitions a
            // rebalance assigned meanwhile.
            set_paused(&consumer, true);
            if !paused {
                SubscriptionStats::count(&shared.stats.fetch_pauses);
                tracing::debug!("the runtime has no room: fetching paused");
            }
            paused = true;
            if let Some(delivery) =
                poll_one(&consumer, &shared, &mut copies, Duration::from_millis(10))
            {
                held.push(delivery);
            }
            continue;
        }
        // Drain what librdkafka has ready into one batch, so the runtime is woken once per
        // batch rather than per message. Each message is tracked right after the poll that
        // returned it, before a rebalance callback of a later poll can change the assignment.
        let mut batch = std::mem::take(&mut held);
        batch.reserve(batch_size.saturating_sub(batch.len()));
        let mut wait = Duration::from_millis(100);
        while batch.len() < batch_size {
            match poll_one(&consumer, &shared, &mut copies, wait) {
                Some(delivery) => batch.push(delivery),
                None => break,
            }
            wait = Duration::ZERO;
        }
        // There is room (this thread is the only sender), so this does not block.
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

/// A tracked message on its way from the poll thread to the runtime.
///
/// The message goes by value and is put in its `Arc` on the runtime's side, where it is also
/// dropped: an allocation made on the poll thread and freed on another one waited on the
/// allocator's lock for the poll thread's arena, which librdkafka keeps busy. (A header list,
/// when a record has headers besides anybus's id, and the batch's `Vec` still cross.)
pub(super) struct Fetched {
    message: Message,
    receipt: Receipt,
}

impl Fetched {
    fn into_delivery(self) -> Delivery {
        Delivery {
            message: Arc::new(self.message),
            receipt: self.receipt,
        }
    }
}

/// Polls once, serving rebalance events; a message comes back tracked, as a delivery.
fn poll_one(
    consumer: &BaseConsumer<KafkaContext>,
    shared: &Shared,
    copies: &mut CopyBuffer,
    wait: Duration,
) -> Option<Fetched> {
    loop {
        let message = match consumer.poll(wait)? {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "kafka consumer error");
                return None;
            }
        };
        let tracked = shared
            .lock()
            .track(message.topic(), message.partition(), message.offset());
        // A message of a partition no longer owned is dropped; poll again.
        if let Some((receipt, topic, ids)) = tracked {
            return Some(Fetched {
                message: to_message(&message, topic, ids, copies),
                receipt,
            });
        }
    }
}

/// Pauses or resumes fetching for the consumer's whole current assignment.
fn set_paused(consumer: &BaseConsumer<KafkaContext>, pause: bool) {
    let assignment = match consumer.assignment() {
        Ok(a) if a.count() > 0 => a,
        Ok(_) => return,
        Err(e) => return tracing::warn!(error = %e, "cannot read the assignment"),
    };
    let result = if pause {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, pause, "cannot pause or resume fetching");
    }
}

fn seek(consumer: &BaseConsumer<KafkaContext>, seeks: Vec<Seek>) {
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
    pub(super) rx: mpsc::Receiver<Vec<Fetched>>,
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
            out.extend(first.into_iter().map(Fetched::into_delivery));
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
