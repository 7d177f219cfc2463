//! Topics as in-memory logs: partitions of messages addressed by offset.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::message::{Message, Origin};

/// One partition: an append-only list whose index is the offset.
#[derive(Default)]
pub(super) struct PartitionLog {
    entries: Mutex<Vec<Arc<Message>>>,
}

impl PartitionLog {
    /// Appends and returns the offset.
    fn append(&self, build: impl FnOnce(i64) -> Message) -> i64 {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let offset = entries.len() as i64;
        entries.push(Arc::new(build(offset)));
        offset
    }

    /// Calls `each` on up to `max` messages from `from` on; returns how many.
    pub(super) fn read(&self, from: i64, max: usize, mut each: impl FnMut(&Arc<Message>)) -> usize {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let start = (from.max(0) as usize).min(entries.len());
        let end = start.saturating_add(max).min(entries.len());
        for message in &entries[start..end] {
            each(message);
        }
        end - start
    }

    /// One past the last offset.
    pub(super) fn end(&self) -> i64 {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len() as i64
    }
}

/// A topic: a fixed set of partitions.
pub(super) struct Topic {
    pub(super) name: Arc<str>,
    pub(super) partitions: Vec<PartitionLog>,
    round_robin: AtomicUsize,
}

impl Topic {
    pub(super) fn new(name: &str, partitions: u32) -> Self {
        Self {
            name: Arc::from(name),
            partitions: (0..partitions.max(1))
                .map(|_| PartitionLog::default())
                .collect(),
            round_robin: AtomicUsize::new(0),
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
        let offset = self.partitions[partition].append(|offset| {
            origin.offset = Some(offset);
            message.with_origin(origin.clone())
        });
        origin.offset = Some(offset);
        origin
    }
}
