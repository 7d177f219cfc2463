//! Topics as in-memory logs: partitions of messages addressed by offset, of which only the
//! newest are kept.
//!
//! A partition keeps the messages from its base offset (the first retained) to its end.
//! Messages leave from the front, never from the middle, so offsets stay absolute and are never
//! used twice: when the partition is over its size bound or its oldest message is older than
//! the age bound (both checked as it is appended to), and when every consumer group that reads
//! the topic has committed past them (checked every [`TRIM_EVERY`] committed offsets, and
//! whenever a member hands a partition over or leaves). A topic no group reads keeps what its
//! bounds allow, for a group that starts later.

use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use tokio::time::Instant;

use super::retention::{stored_size, Retention};
use crate::message::{Message, Origin};

/// How many offsets a group commits between two looks at what every group has consumed: the
/// look takes the partition's lock, so the commit path does not take it for every message.
const TRIM_EVERY: i64 = 512;

/// One partition: the retained messages, the first of which is at the base offset.
#[derive(Default)]
pub(super) struct PartitionLog {
    entries: Mutex<Entries>,
    /// The committed offset from which the next look at what was consumed is due.
    trim_at: AtomicI64,
}

#[derive(Default)]
struct Entries {
    /// The offset of `list[0]`: the first retained one.
    base: i64,
    list: VecDeque<Entry>,
    /// [`stored_size`] of `list`, summed.
    bytes: u64,
    /// When `list[0]` gets older than the age bound; `None` when nothing is retained (or never,
    /// for a bound too long for the clock). Kept so that an append compares two instants
    /// instead of working out the oldest message's age.
    expires: Option<Instant>,
}

struct Entry {
    message: Arc<Message>,
    appended: Instant,
    size: u64,
}

impl Entries {
    /// Drops the oldest message; the caller sets `expires` after the last it drops.
    fn pop_front(&mut self) {
        if let Some(entry) = self.list.pop_front() {
            self.bytes -= entry.size;
            self.base += 1;
        }
    }

    fn reset_expiry(&mut self, retention: &Retention) {
        self.expires = self
            .list
            .front()
            .and_then(|e| e.appended.checked_add(retention.age));
    }

    /// Drops from the front what is over the size bound (never the newest message) or older
    /// than the age bound.
    fn expire(&mut self, retention: &Retention, now: Instant) {
        loop {
            let over = self.list.len() > 1 && retention.exceeded(self.list.len(), self.bytes);
            let old = self.expires.is_some_and(|at| now >= at);
            if !(over || old) {
                break;
            }
            self.pop_front();
            self.reset_expiry(retention);
        }
    }
}

impl PartitionLog {
    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends, applies the bounds, and returns the offset.
    fn append(
        &self,
        build: impl FnOnce(i64) -> Message,
        retention: &Retention,
        now: Instant,
    ) -> i64 {
        let mut log = self.lock();
        let offset = log.base + log.list.len() as i64;
        let message = Arc::new(build(offset));
        let size = stored_size(&message);
        log.bytes += size;
        log.list.push_back(Entry {
            message,
            appended: now,
            size,
        });
        if log.list.len() == 1 {
            log.reset_expiry(retention);
        }
        log.expire(retention, now);
        offset
    }

    /// Calls `each` with the offset of up to `max` messages from `from` on, or from the first
    /// retained one if `from` was dropped; returns where it started.
    pub(super) fn read(
        &self,
        from: i64,
        max: usize,
        mut each: impl FnMut(i64, &Arc<Message>),
    ) -> i64 {
        let log = self.lock();
        let start = from.max(log.base);
        let skip = ((start - log.base) as usize).min(log.list.len());
        let end = skip.saturating_add(max).min(log.list.len());
        for (i, entry) in log.list.range(skip..end).enumerate() {
            each(start + i as i64, &entry.message);
        }
        start
    }

    /// One past the last offset.
    pub(super) fn end(&self) -> i64 {
        let log = self.lock();
        log.base + log.list.len() as i64
    }

    /// The first retained offset (the end, when nothing is retained).
    pub(super) fn base(&self) -> i64 {
        self.lock().base
    }

    /// Drops every message below `offset`.
    fn drop_below(&self, offset: i64, retention: &Retention) {
        let mut log = self.lock();
        if log.base >= offset {
            return;
        }
        while log.base < offset && !log.list.is_empty() {
            log.pop_front();
        }
        log.reset_expiry(retention);
    }
}

/// A topic: a fixed set of partitions.
pub(super) struct Topic {
    pub(super) name: Arc<str>,
    pub(super) partitions: Vec<PartitionLog>,
    round_robin: AtomicUsize,
    retention: Retention,
    /// The committed offsets of every consumer group that reads the topic, per partition.
    readers: RwLock<Vec<Arc<[AtomicI64]>>>,
}

impl Topic {
    pub(super) fn new(name: &str, partitions: u32, retention: Retention) -> Self {
        Self {
            name: Arc::from(name),
            partitions: (0..partitions.max(1))
                .map(|_| PartitionLog::default())
                .collect(),
            round_robin: AtomicUsize::new(0),
            retention,
            readers: RwLock::default(),
        }
    }

    /// Appends `message`: keyed messages go to the partition their key hashes to (stable
    /// across runs), keyless ones round-robin. Returns where it landed.
    pub(super) fn append(&self, message: Message) -> Origin {
        let n = self.partitions.len();
        let partition = match message.key() {
            Some(key) => {
                let mut h = DefaultHasher::new();
                key.hash(&mut h);
                (h.finish() % n as u64) as usize
            }
            None => self.round_robin.fetch_add(1, Ordering::Relaxed) % n,
        };
        let mut origin = Origin::topic(Arc::clone(&self.name));
        origin.partition = Some(partition as i32);
        let build = |offset| {
            origin.offset = Some(offset);
            message.with_origin(origin.clone())
        };
        let offset = self.partitions[partition].append(build, &self.retention, Instant::now());
        origin.offset = Some(offset);
        origin
    }

    /// Registers a new consumer group of the topic: its committed offsets, which start at the
    /// first retained message of each partition (where a new group reads from) and hold back
    /// what is dropped for being consumed.
    pub(super) fn add_reader(&self) -> Arc<[AtomicI64]> {
        let mut readers = self.readers.write().unwrap_or_else(PoisonError::into_inner);
        let committed: Arc<[AtomicI64]> = self
            .partitions
            .iter()
            .map(|p| AtomicI64::new(p.base()))
            .collect();
        readers.push(Arc::clone(&committed));
        committed
    }

    /// Tells the topic a group committed `offset` in `partition`: drops what every group has
    /// committed, at once if `now`, else every [`TRIM_EVERY`] offsets.
    pub(super) fn consumed(&self, partition: usize, offset: i64, now: bool) {
        let log = &self.partitions[partition];
        if !now && offset < log.trim_at.load(Ordering::Relaxed) {
            return;
        }
        log.trim_at.store(offset + TRIM_EVERY, Ordering::Relaxed);
        // Held while dropping, so that a group registering meanwhile does not start below the
        // new base.
        let readers = self.readers.read().unwrap_or_else(PoisonError::into_inner);
        let everyone = readers
            .iter()
            .map(|committed| committed[partition].load(Ordering::Acquire))
            .min();
        if let Some(offset) = everyone {
            log.drop_below(offset, &self.retention);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn topic(retention: Retention) -> Topic {
        Topic::new("t", 1, retention)
    }

    fn offsets(log: &PartitionLog, from: i64) -> (i64, Vec<i64>) {
        let mut seen = Vec::new();
        let start = log.read(from, usize::MAX, |o, m| {
            assert_eq!(m.origin().offset, Some(o));
            seen.push(o);
        });
        (start, seen)
    }

    #[test]
    fn a_count_bound_drops_the_oldest_and_offsets_stay_absolute() {
        let t = topic(Retention {
            messages: Some(3),
            ..Retention::default()
        });
        for _ in 0..5 {
            t.append(Message::new("t", "x"));
        }
        let log = &t.partitions[0];
        assert_eq!((log.base(), log.end()), (2, 5));
        assert_eq!(
            offsets(log, 0),
            (2, vec![2, 3, 4]),
            "a read below the base starts at it"
        );
        assert_eq!(offsets(log, 4), (4, vec![4]));
        assert_eq!(t.append(Message::new("t", "x")).offset, Some(5));
    }

    #[test]
    fn a_byte_bound_keeps_at_most_that_many_bytes_but_always_the_newest() {
        let one = stored_size(&Message::new("t", vec![0u8; 100]));
        let t = topic(Retention {
            bytes: 2 * one + one / 2,
            ..Retention::default()
        });
        for _ in 0..4 {
            t.append(Message::new("t", vec![0u8; 100]));
        }
        assert_eq!(offsets(&t.partitions[0], 0).1, [2, 3]);
        t.append(Message::new("t", vec![0u8; 10_000]));
        assert_eq!(
            offsets(&t.partitions[0], 0).1,
            [4],
            "kept alone, though bigger"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_age_bound_drops_what_is_older_when_the_partition_is_appended_to() {
        let t = topic(Retention {
            age: Duration::from_secs(60),
            ..Retention::default()
        });
        t.append(Message::new("t", "old"));
        tokio::time::advance(Duration::from_secs(30)).await;
        t.append(Message::new("t", "younger"));
        tokio::time::advance(Duration::from_secs(30)).await;
        t.append(Message::new("t", "new"));
        assert_eq!(offsets(&t.partitions[0], 0).1, [1, 2]);
        tokio::time::advance(Duration::from_secs(31)).await;
        t.append(Message::new("t", "newer"));
        assert_eq!(
            offsets(&t.partitions[0], 0).1,
            [2, 3],
            "the next oldest goes in turn"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_age_bound_counts_from_the_oldest_message_left_after_consumption() {
        let t = topic(Retention {
            age: Duration::from_secs(60),
            ..Retention::default()
        });
        let reader = t.add_reader();
        t.append(Message::new("t", "consumed"));
        tokio::time::advance(Duration::from_secs(50)).await;
        t.append(Message::new("t", "left"));
        reader[0].store(1, Ordering::Release);
        t.consumed(0, 1, true);
        tokio::time::advance(Duration::from_secs(20)).await;
        t.append(Message::new("t", "new"));
        assert_eq!(
            offsets(&t.partitions[0], 0).1,
            [1, 2],
            "1 is 20 s old, not 70"
        );
    }

    #[test]
    fn an_age_bound_beyond_the_clock_never_expires() {
        let t = topic(Retention {
            age: Duration::from_millis(u64::MAX),
            ..Retention::default()
        });
        t.append(Message::new("t", "x"));
        t.append(Message::new("t", "y"));
        assert_eq!(offsets(&t.partitions[0], 0).1, [0, 1]);
    }

    #[test]
    fn what_every_group_committed_is_dropped_and_a_new_group_starts_at_the_base() {
        let t = topic(Retention::default());
        for _ in 0..10 {
            t.append(Message::new("t", "x"));
        }
        let (a, b) = (t.add_reader(), t.add_reader());
        a[0].store(8, Ordering::Release);
        t.consumed(0, 8, true);
        assert_eq!(t.partitions[0].base(), 0, "b has committed nothing");
        b[0].store(5, Ordering::Release);
        t.consumed(0, 5, true);
        assert_eq!(t.partitions[0].base(), 5);
        assert_eq!(t.add_reader()[0].load(Ordering::Acquire), 5);
    }

    #[test]
    fn a_topic_no_group_reads_keeps_everything_within_its_bounds() {
        let t = topic(Retention::default());
        for _ in 0..10 {
            t.append(Message::new("t", "x"));
        }
        t.consumed(0, 10, true);
        assert_eq!(t.partitions[0].base(), 0);
    }

    #[test]
    fn commits_look_at_what_was_consumed_only_every_so_many_offsets() {
        let t = topic(Retention::default());
        let a = t.add_reader();
        for _ in 0..TRIM_EVERY * 2 {
            t.append(Message::new("t", "x"));
        }
        a[0].store(1, Ordering::Release);
        t.consumed(0, 1, false);
        assert_eq!(t.partitions[0].base(), 1, "the first commit looks");
        a[0].store(TRIM_EVERY, Ordering::Release);
        t.consumed(0, TRIM_EVERY, false);
        assert_eq!(t.partitions[0].base(), 1, "too soon to look again");
        a[0].store(TRIM_EVERY + 1, Ordering::Release);
        t.consumed(0, TRIM_EVERY + 1, false);
        assert_eq!(t.partitions[0].base(), TRIM_EVERY + 1);
    }
}
