//! Which channel of a consumer is live: the generation every receipt is stamped with.
//!
//! A delivery tag means something only on the channel that delivered it: sent on another
//! channel, it would acknowledge a different message or close the channel with an error. So
//! each channel a consumer opens gets a new generation, receipts carry it, and a settlement
//! whose generation is not the live one is dropped (and counted) instead of sent. The broker
//! delivers what such a dead channel had not acknowledged again, on the next channel.

use std::sync::atomic::{AtomicU64, Ordering};

/// No channel is live.
const NONE: u64 = 0;

/// Numbers the channels of one consumer and remembers which one is live.
#[derive(Debug, Default)]
pub(super) struct ChannelGeneration {
    live: AtomicU64,
    last: AtomicU64,
}

impl ChannelGeneration {
    /// A channel was opened: returns its generation, which is live from now on.
    pub(super) fn open(&self) -> u64 {
        let generation = self.last.fetch_add(1, Ordering::AcqRel) + 1;
        self.live.store(generation, Ordering::Release);
        generation
    }

    /// The channel of `generation` died or was closed: its receipts are stale from now on. A
    /// later channel stays live.
    pub(super) fn close(&self, generation: u64) {
        let _ = self
            .live
            .compare_exchange(generation, NONE, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Whether a receipt stamped with `generation` may be settled.
    pub(super) fn is_live(&self, generation: u64) -> bool {
        generation != NONE && self.live.load(Ordering::Acquire) == generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_open_channel_is_live() {
        let g = ChannelGeneration::default();
        assert!(
            !g.is_live(0) && !g.is_live(1),
            "nothing is live before a channel opens"
        );
        let first = g.open();
        assert!(g.is_live(first));
        g.close(first);
        assert!(!g.is_live(first), "a closed channel's receipts are stale");
        let second = g.open();
        assert_ne!(first, second);
        assert!(g.is_live(second) && !g.is_live(first));
    }

    #[test]
    fn closing_an_old_channel_leaves_the_new_one_live() {
        let g = ChannelGeneration::default();
        let first = g.open();
        let second = g.open();
        g.close(first);
        assert!(g.is_live(second));
    }
}
