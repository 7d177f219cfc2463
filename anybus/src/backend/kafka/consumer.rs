//! One Kafka consumer-group member: the state its poll thread ([`poll`](super::poll)), its
//! rebalance callbacks, its settler and the runtime share, and the [`Consumer`] the runtime
//! reads from.
//!
//! Offsets are never committed by librdkafka on its own (`enable.auto.commit=false`): the poll
//! thread commits, asynchronously every `commit_interval`, the commit points the
//! [`PartitionTable`] computes from completed work, and synchronously when partitions are
//! revoked and when the consumer closes; an offset counts as committed once the broker
//! confirmed it, and a failed commit is sent again. A revoke stops new work on the revoked
//! partitions, gives up their deliveries that no handler started (wherever they are: in the
//! poll thread's hands, the channel, or the runtime's buffers), waits (up to the drain timeout)
//! until none of their work runs, commits what completed, and then lets the partitions go with
//! their generation retired, so a late ack from this member can commit nothing for them.
//!
//! The runtime can hold back one partition ([`Consumer::pause`]) while the others go on; that
//! and the poll thread's pause of the whole assignment are reconciled in one place
//! ([`Shared::hold`], [`Shared::pause_fetching`], [`Shared::assigned`]), under the table's lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::partitions::PartitionTable;
use super::poll::{commit_sync, Fetched};
use crate::backend::{BackendError, Consumer, Delivery, Receipt, Settler};
use crate::handler::BoxFuture;
use crate::observe::SubscriptionStats;

/// State shared by the poll thread, its callbacks and the settler.
pub(super) struct Shared {
    table: Mutex<PartitionTable>,
    /// Signalled when work on a revoking partition completes.
    drained: Condvar,
    /// Signalled when a partition starts to be revoked, or is rewound: work waiting to go on
    /// ([`Settler::stopped`]) looks whether it still may.
    stopped: tokio::sync::Notify,
    pub(super) closing: AtomicBool,
    pub(super) stats: Arc<SubscriptionStats>,
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

    pub(super) fn lock(&self) -> MutexGuard<'_, PartitionTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes a revoke waiting for its partitions' work, once none is left.
    fn notify_if_drained(&self, table: &PartitionTable) {
        if table.revoking_in_flight() == 0 && table.any_revoking() {
            self.drained.notify_all();
        }
    }

    pub(super) fn report_assignment(&self, table: &PartitionTable) {
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
        let mut commits = Vec::new();
        for tp in revoked.elements() {
            if let Some(offset) = table.finish_revoke(tp.topic(), tp.partition()) {
                commits.push((Arc::from(tp.topic()), tp.partition(), offset));
            }
        }
        self.report_assignment(&table);
        drop(table);
        commit_sync(consumer, self, commits);
    }

    fn assign(&self, assigned: &TopicPartitionList) {
        let mut table = self.lock();
        for tp in assigned.elements() {
            table.assign(tp.topic(), tp.partition());
        }
        self.report_assignment(&table);
    }

    /// After librdkafka took the assigned partitions on: pauses those that must not be
    /// fetched (held by the runtime, or everything while fetching is paused) and resumes the
    /// others. librdkafka keeps a partition's pause across a revoke, so a partition paused
    /// when it was revoked would otherwise stay paused when it comes back.
    fn assigned(&self, consumer: &BaseConsumer<KafkaContext>, assigned: &TopicPartitionList) {
        let table = self.lock();
        let (mut pause, mut resume) = (TopicPartitionList::new(), TopicPartitionList::new());
        for tp in assigned.elements() {
            let list = if table.is_paused(tp.topic(), tp.partition()) {
                &mut pause
            } else {
                &mut resume
            };
            list.add_partition(tp.topic(), tp.partition());
        }
        apply(consumer, &pause, true);
        apply(consumer, &resume, false);
    }

    /// Pauses or resumes fetching of the whole assignment, for the poll thread. Resuming
    /// leaves paused the partitions the runtime holds back.
    pub(super) fn pause_fetching(&self, consumer: &BaseConsumer<KafkaContext>, pause: bool) {
        let mut table = self.lock();
        table.set_fetch_paused(pause);
        let assignment = match consumer.assignment() {
            Ok(a) => a,
            Err(e) => return tracing::warn!(error = %e, "cannot read the assignment"),
        };
        if pause {
            return apply(consumer, &assignment, true);
        }
        let mut resume = TopicPartitionList::new();
        for tp in assignment.elements() {
            if !table.is_paused(tp.topic(), tp.partition()) {
                resume.add_partition(tp.topic(), tp.partition());
            }
        }
        apply(consumer, &resume, false);
    }

    /// Holds back (or lets go on) the partition of `slot`, for the runtime. Applied at once, on
    /// the caller's thread: librdkafka's pause is thread-safe, and once it returns, nothing the
    /// consumer had fetched of the partition is returned any more, so the partition stops
    /// within the deliveries already on their way. (The call waits for librdkafka's fetcher
    /// thread to take the pause, a short wait, and only when the runtime's lane fills.)
    pub(super) fn hold(&self, consumer: &BaseConsumer<KafkaContext>, slot: u32, hold: bool) {
        let mut table = self.lock();
        let change = if hold {
            table.hold(slot)
        } else {
            table.release(slot)
        };
        if let Some((topic, partition)) = change {
            let mut list = TopicPartitionList::new();
            list.add_partition(&topic, partition);
            apply(consumer, &list, hold);
        }
    }
}

/// Pauses or resumes fetching of `partitions`.
fn apply(consumer: &BaseConsumer<KafkaContext>, partitions: &TopicPartitionList, pause: bool) {
    if partitions.count() == 0 {
        return;
    }
    let result = if pause {
        consumer.pause(partitions)
    } else {
        consumer.resume(partitions)
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, pause, "cannot pause or resume fetching");
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

/// Hooks the rebalance and commit callbacks of librdkafka into [`Shared`].
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

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            self.shared.assigned(consumer, assigned);
        }
    }

    /// The broker's answer to a commit: what it confirmed is committed; what failed is taken
    /// again by the next periodic commit.
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = &result {
            tracing::warn!(error = %e, "commit failed; trying again");
        }
        let mut table = self.shared.lock();
        for tp in offsets.elements() {
            if let Offset::Offset(offset) = tp.offset() {
                let ok = result.is_ok() && tp.error().is_ok();
                if let (true, Err(e)) = (result.is_ok(), tp.error()) {
                    tracing::warn!(
                        topic = tp.topic(),
                        partition = tp.partition(),
                        error = %e,
                        "commit of a partition failed; trying again"
                    );
                }
                table.commit_answered(tp.topic(), tp.partition(), offset, ok);
            }
        }
    }
}

/// The [`Consumer`] the runtime reads from.
pub(super) struct KafkaConsumer {
    /// For pausing and resuming one partition. Declared before `rx`, so that a consumer
    /// dropped without `close` lets go of it before the poll thread can see the channel
    /// closed and end: the poll thread, not a runtime worker, closes the librdkafka consumer.
    pub(super) consumer: Option<Arc<BaseConsumer<KafkaContext>>>,
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

    fn pause(&mut self, slot: u32) {
        if let Some(consumer) = &self.consumer {
            self.shared.hold(consumer, slot, true);
        }
    }

    fn resume(&mut self, slot: u32) {
        if let Some(consumer) = &self.consumer {
            self.shared.hold(consumer, slot, false);
        }
    }

    fn close(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BackendError>> {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.drained.notify_all();
        // Unblocks a poll thread waiting for room in the channel.
        self.rx.close();
        let thread = self.thread.take();
        let consumer = self.consumer.take();
        Box::pin(async move {
            drop(self);
            let Some(thread) = thread else {
                return Ok(());
            };
            tokio::task::spawn_blocking(move || {
                // If the poll thread ended already, this closes the librdkafka consumer,
                // which blocks: here on a blocking thread, not on a runtime worker.
                drop(consumer);
                thread.join()
            })
            .await
            .map_err(|e| BackendError::Broker {
                backend: "kafka",
                reason: format!("the poll thread could not be joined: {e}"),
            })?
            .map_err(|_| BackendError::Broker {
                backend: "kafka",
                reason: "the poll thread panicked".into(),
            })
        })
    }
}
