//! The poll thread of a Kafka consumer: it fetches, hands batches to the runtime, performs the
//! seeks nacks ask for, commits, and pauses fetching while the runtime has no room.
//!
//! The thread is a plain OS thread because the rebalance callbacks it serves block while
//! draining, and they must not block a runtime worker.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::consumer::{KafkaContext, Shared};
use super::partitions::Seek;
use super::record::{to_message, CopyBuffer};
use crate::backend::{Delivery, Receipt};
use crate::message::Message;
use crate::observe::SubscriptionStats;

/// How long the poll thread waits for room in the runtime's channel before it pauses fetching.
pub(super) const PAUSE_AFTER: Duration = Duration::from_millis(250);

/// How often a synchronous commit (on revoke and close) is tried before it is given up.
const SYNC_COMMIT_ATTEMPTS: u32 = 3;
/// The wait before the second attempt of a synchronous commit; it grows by as much each time.
const SYNC_COMMIT_BACKOFF: Duration = Duration::from_millis(100);

/// Polls until closed: performs seeks asked for by nacks, commits periodically, and hands
/// fetched messages to the runtime.
///
/// When the runtime's channel stays full for [`PAUSE_AFTER`] (the subscription holds as much as
/// it may buffer, e.g. a hot key is stuck), the thread does not go on blocking on it, which would
/// also stop it from serving rebalances and committing: it pauses fetching for the whole
/// assignment and keeps polling for rebalance events and committing, then resumes once the
/// runtime made room (all but the partitions the runtime holds back itself,
/// [`Shared::hold`]). librdkafka drops what it had fetched ahead for paused partitions and
/// fetches again from the last message it returned, so nothing is skipped.
pub(super) fn poll_loop(
    consumer: Arc<BaseConsumer<KafkaContext>>,
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
            shared.pause_fetching(&consumer, false);
            paused = false;
        }
        // Seeks go on while a partition is paused: librdkafka (since 2.1, #3567) keeps the
        // position a seek set when the partition resumes, rather than going back to where it
        // was paused.
        let seeks = shared.lock().take_seeks();
        seek(&consumer, &shared, seeks);
        if last_commit.elapsed() >= commit_interval {
            let commits = shared.lock().take_commits();
            commit_async(&consumer, &shared, commits);
            last_commit = Instant::now();
        }
        if full {
            if !paused {
                // Partitions a rebalance assigns while paused are paused as they come
                // (`Shared::assigned`).
                shared.pause_fetching(&consumer, true);
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
        // (A revoke in a later poll gives up the tracked messages of its partitions that no
        // handler started, these among them: it does not wait for them.)
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
    // Closing: commit everything the broker has not confirmed. Leaving the group then revokes
    // everything, which commits only what this commit did not get confirmed.
    let commits = shared.lock().take_unconfirmed();
    commit_sync(&consumer, &shared, commits);
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
    pub(super) fn into_delivery(self) -> Delivery {
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
        // `topic()` cannot panic here: the consumer subscribed to these names, which are
        // Rust strings, and librdkafka hands back the names it was given.
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

/// Performs the seeks of rewound partitions; a failed one is asked for again, and until it
/// succeeds nothing read of its partition is handed out or committed.
fn seek(consumer: &BaseConsumer<KafkaContext>, shared: &Shared, seeks: Vec<Seek>) {
    for seek in seeks {
        if let Err(e) = consumer.seek(
            &seek.topic,
            seek.partition,
            Offset::Offset(seek.offset),
            Duration::from_secs(10),
        ) {
            tracing::warn!(
                topic = &*seek.topic,
                partition = seek.partition,
                offset = seek.offset,
                error = %e,
                "seek failed; trying again"
            );
            shared.lock().seek_failed(&seek);
        }
    }
}

fn list(offsets: &[(Arc<str>, i32, i64)]) -> TopicPartitionList {
    let mut list = TopicPartitionList::with_capacity(offsets.len());
    for (topic, partition, offset) in offsets {
        if let Err(e) = list.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
            tracing::warn!(error = %e, "cannot list an offset to commit");
        }
    }
    list
}

/// Commits in the background; the broker's answer arrives in [`KafkaContext`]'s commit
/// callback, and a failed commit is taken again.
///
/// Not through rdkafka's `CommitMode::Async`: librdkafka reports the result of such a commit
/// only to a commit callback set in the client's configuration, which rdkafka does not set, so
/// the answer would be lost. `rd_kafka_commit_queue` with the consumer's own queue posts it
/// there as an event, which rdkafka's poll hands to the context's commit callback.
fn commit_async(
    consumer: &BaseConsumer<KafkaContext>,
    shared: &Shared,
    offsets: Vec<(Arc<str>, i32, i64)>,
) {
    if offsets.is_empty() {
        return;
    }
    let list = list(&offsets);
    let rk = consumer.client().native_ptr();
    // SAFETY: `rk` is the live consumer's handle and `list` a valid list, both outliving the
    // calls. `rd_kafka_queue_get_consumer` returns a new reference to the consumer queue (null
    // if there is none); the commit takes a reference of its own for its reply, so ours is
    // released right after. librdkafka copies the list.
    let err = unsafe {
        let queue = rdsys::rd_kafka_queue_get_consumer(rk);
        if queue.is_null() {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__STATE
        } else {
            let err =
                rdsys::rd_kafka_commit_queue(rk, list.ptr(), queue, None, std::ptr::null_mut());
            rdsys::rd_kafka_queue_destroy(queue);
            err
        }
    };
    if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        tracing::warn!(error = ?err, "commit failed; trying again");
        let mut table = shared.lock();
        for (topic, partition, offset) in &offsets {
            table.commit_answered(topic, *partition, *offset, false);
        }
    }
}

/// Commits and waits for the broker's answer, trying again a few times; what the broker
/// confirmed is recorded. Used on revoke and close, where no later commit can make up for it.
pub(super) fn commit_sync(
    consumer: &BaseConsumer<KafkaContext>,
    shared: &Shared,
    offsets: Vec<(Arc<str>, i32, i64)>,
) {
    let mut left = offsets;
    for attempt in 1..=SYNC_COMMIT_ATTEMPTS {
        if left.is_empty() {
            return;
        }
        // librdkafka fails the whole commit when any partition of it failed, without saying
        // which: then all of them are tried again (committing one twice is harmless).
        match consumer.commit(&list(&left), CommitMode::Sync) {
            Ok(()) => {
                let mut table = shared.lock();
                for (topic, partition, offset) in left.drain(..) {
                    table.commit_answered(&topic, partition, offset, true);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, "commit failed");
                if attempt < SYNC_COMMIT_ATTEMPTS {
                    // A coordinator that just moved or timed out needs a moment.
                    std::thread::sleep(SYNC_COMMIT_BACKOFF * attempt);
                }
            }
        }
    }
    if !left.is_empty() {
        tracing::warn!(
            partitions = left.len(),
            "commit given up; the next reader of these partitions starts at their last commit"
        );
        let mut table = shared.lock();
        for (topic, partition, offset) in &left {
            table.commit_answered(topic, *partition, *offset, false);
        }
    }
}
