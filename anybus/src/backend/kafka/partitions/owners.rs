//! The owned partitions of a [`PartitionTable`](super::PartitionTable), by slot.

use super::Owned;

/// The owned partitions by slot: a slot's index into a list, since slots are dense and every
/// message looks its partition up here (a hash map's hashing showed in profiles).
#[derive(Debug, Default)]
pub(super) struct Owners(Vec<Option<Owned>>);

impl Owners {
    pub(super) fn insert(&mut self, slot: u32, owned: Owned) {
        let i = slot as usize;
        if self.0.len() <= i {
            self.0.resize_with(i + 1, || None);
        }
        self.0[i] = Some(owned);
    }

    pub(super) fn get(&self, slot: &u32) -> Option<&Owned> {
        self.0.get(*slot as usize)?.as_ref()
    }

    pub(super) fn get_mut(&mut self, slot: &u32) -> Option<&mut Owned> {
        self.0.get_mut(*slot as usize)?.as_mut()
    }

    pub(super) fn remove(&mut self, slot: &u32) -> Option<Owned> {
        self.0.get_mut(*slot as usize)?.take()
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Owned> {
        self.0.iter().flatten()
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = u32> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, o)| o.is_some())
            .map(|(i, _)| i as u32)
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (u32, &mut Owned)> {
        self.0
            .iter_mut()
            .enumerate()
            .filter_map(|(i, o)| Some((i as u32, o.as_mut()?)))
    }
}
