//! The dedup runtime: a delivery's dedup key is reserved before its handler runs (a key done
//! before means a duplicate, acked without the handler; a key another delivery holds means
//! later), its lease renewed while the handler runs, and the key completed (or released, on a
//! failure) after. The stores behind it are in [`crate::dedup`]; the inbox, which completes the
//! key inside the handler's own transaction, reports back through [`DedupTicket`].

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering as AtomicOrdering};
use std::sync::Arc;

use super::panics::{panic_message, Panicked};
use super::Worker;
use crate::backend::Receipt;
use crate::dedup::{self, DedupStore, Reservation};
use crate::error::HandlerError;
use crate::handler::Outcome;
use crate::observe::SubscriptionStats;
use crate::publish::Answer;
use crate::subscription::DedupKey;

impl Worker {
    /// Reserves the message's dedup key, when the subscription deduplicates; settles the
    /// delivery itself when the handler must not run.
    pub(super) async fn gate(&self, message: &crate::Message, receipt: &Receipt) -> Gate {
        let Some(dedup) = &self.dedup else {
            return Gate::Run(None);
        };
        let key = match dedup_key(message, &dedup.by) {
            Ok(key) => key,
            Err(error) => return Gate::NoKey(error),
        };
        // This delivery's own token: a lease it lost (it outlived the lease, cut off from the
        // store) and another delivery took is not this one's to renew or release.
        let holder = crate::MessageId::new().to_string();
        match dedup
            .store
            .reserve(&self.group, &key, &holder, dedup.lease)
            .await
        {
            Ok(Reservation::Fresh) => Gate::Run(Some(Held { key, holder })),
            Ok(Reservation::Done) => {
                tracing::debug!(origin = %message.origin(), key, "duplicate of a handled message; acked without handling");
                SubscriptionStats::count(&self.stats.duplicates);
                // A repeated request is told at once, rather than left to wait for its timeout.
                self.answer(message, Answer::Duplicate).await;
                self.settler.ack(receipt);
                Gate::Settled
            }
            Ok(Reservation::InProgress) => {
                tracing::debug!(origin = %message.origin(), key, "another delivery is handling this message; it comes again");
                SubscriptionStats::count(&self.stats.dedup_in_progress);
                // Not at once: the other holder needs time, and on Kafka a nack rewinds the
                // partition.
                tokio::time::sleep(GATE_BACKOFF).await;
                self.settler.nack(receipt);
                Gate::Settled
            }
            Err(error) => {
                tracing::warn!(origin = %message.origin(), %error, "dedup store failed; the message will be delivered again");
                SubscriptionStats::count(&self.stats.store_failures);
                tokio::time::sleep(GATE_BACKOFF).await;
                self.settler.nack(receipt);
                Gate::Settled
            }
        }
    }

    /// Runs `work`, renewing the delivery's dedup lease every third of the lease while it runs,
    /// so that a live member keeps its key however long its handler and its retries take.
    /// Work that is done at its first poll (most handlers) sets no timer.
    pub(super) async fn holding<T>(&self, held: Option<&Held>, work: impl Future<Output = T>) -> T {
        let mut work = std::pin::pin!(work);
        let (Some(dedup), Some(Held { key, holder })) = (&self.dedup, held) else {
            return work.await;
        };
        if let std::task::Poll::Ready(out) =
            std::future::poll_fn(|cx| std::task::Poll::Ready(work.as_mut().poll(cx))).await
        {
            return out;
        }
        // Not more often than every 10 ms, whatever lease was configured.
        let every = (dedup.lease / 3).max(std::time::Duration::from_millis(10));
        loop {
            tokio::select! {
                biased;
                out = &mut work => return out,
                () = tokio::time::sleep(every) => {
                    let renew = dedup.store.extend(&self.group, key, holder, dedup.lease);
                    tokio::select! {
                        biased;
                        out = &mut work => return out,
                        renewed = renew => if let Err(error) = renewed {
                            SubscriptionStats::count(&self.stats.store_failures);
                            tracing::warn!(%error, key, "dedup store failed to renew a lease; it may run out while the handler runs");
                        },
                    }
                }
            }
        }
    }

    /// What a handler's [`Context`] knows of the dedup key its delivery holds.
    pub(super) fn ticket(&self, held: Option<&Held>) -> Option<Arc<DedupTicket>> {
        let (Some(dedup), Some(Held { key, .. })) = (&self.dedup, held) else {
            return None;
        };
        Some(Arc::new(DedupTicket {
            store: Arc::clone(&dedup.store),
            group: Arc::clone(&self.group),
            key: key.clone(),
            ttl: dedup.ttl,
            inbox: AtomicU8::new(INBOX_UNUSED),
        }))
    }

    /// Marks a handled message's dedup key done, trying again with backoff for as long as the
    /// store fails and the delivery is still this member's: nacking instead would let the
    /// redelivery run the handler a second time once the lease ran out. `false` only when the
    /// partition moved to another member meanwhile; the completion then goes on in the
    /// background for up to ten minutes.
    pub(super) async fn complete(&self, held: Option<&Held>, receipt: &Receipt) -> bool {
        let (Some(dedup), Some(Held { key, .. })) = (&self.dedup, held) else {
            return true;
        };
        let mut wait = std::time::Duration::from_millis(10);
        loop {
            match dedup.store.complete(&self.group, key, dedup.ttl).await {
                Ok(()) => return true,
                Err(error) => {
                    tracing::warn!(%error, key, ?wait, "dedup store failed to complete a key; trying again");
                    SubscriptionStats::count(&self.stats.store_failures);
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(1));
                    if !self.settler.is_current(receipt) {
                        // The handler ran, so completing stays right: go on in the background
                        // (for a while), so the new owner finds the key done once the store
                        // answers, rather than only a lease that runs out.
                        let (store, group, key, ttl) = (
                            Arc::clone(&dedup.store),
                            Arc::clone(&self.group),
                            key.to_owned(),
                            dedup.ttl,
                        );
                        tokio::spawn(async move {
                            let give_up = tokio::time::Instant::now() + COMPLETE_IN_BACKGROUND;
                            while tokio::time::Instant::now() < give_up {
                                if store.complete(&group, &key, ttl).await.is_ok() {
                                    return;
                                }
                                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                            }
                            tracing::error!(key, "dedup store failed to complete a key for 10 minutes; its message may be handled again");
                        });
                        return false;
                    }
                }
            }
        }
    }

    /// Gives up a dedup lease, so that the next delivery may take the key at once. A failure
    /// only means the lease runs out on its own.
    pub(super) async fn release(&self, held: Option<&Held>) {
        let (Some(dedup), Some(Held { key, holder })) = (&self.dedup, held) else {
            return;
        };
        if let Err(error) = dedup.store.release(&self.group, key, holder).await {
            tracing::warn!(%error, key, "dedup store failed to release a key; its lease will run out");
        }
    }
}

/// The dedup key of `message`, or the failure of a message that has none: an undecodable
/// payload when the key is a field of a payload that is not JSON, a permanent failure when the
/// key is missing, or when the user's key function panicked (which must not take its lane down).
pub(super) fn dedup_key(message: &crate::Message, by: &DedupKey) -> Result<String, HandlerError> {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    match catch_unwind(AssertUnwindSafe(|| dedup::key_of(message, by))) {
        Ok(Ok(key)) => Ok(key),
        Ok(Err(dedup::KeyError::NotJson { field, reason })) => {
            Err(HandlerError::decode(crate::codec::DecodeError {
                codec: <crate::codec::Json as crate::codec::Codec>::NAME,
                target: "the dedup key field",
                reason: format!("cannot read field `{field}`: {reason}"),
            }))
        }
        Ok(Err(missing)) => Err(HandlerError::permanent(missing)),
        Err(panic) => Err(HandlerError::permanent(Panicked {
            what: "the dedup key function",
            message: panic_message(&*panic),
        })),
    }
}

/// How long a completion goes on in the background once its partition moved to another
/// member.
pub(super) const COMPLETE_IN_BACKGROUND: std::time::Duration = std::time::Duration::from_secs(600);

/// How long a delivery whose dedup key is held elsewhere, or whose store failed, waits before
/// it is nacked to come again.
pub(super) const GATE_BACKOFF: std::time::Duration = std::time::Duration::from_millis(250);

/// A subscription's duplicate suppression.
pub(crate) struct Dedup {
    /// What identifies a duplicate.
    pub(crate) by: DedupKey,
    /// Where keys are remembered.
    pub(crate) store: Arc<dyn DedupStore>,
    /// How long a delivery holds its key while its handler runs.
    pub(crate) lease: std::time::Duration,
    /// How long a handled key is remembered.
    pub(crate) ttl: std::time::Duration,
}

/// The dedup key one handler call holds, as its [`Context`] carries it (for the inbox).
pub(crate) struct DedupTicket {
    /// The store that holds the key.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) store: Arc<dyn DedupStore>,
    /// The consumer group that holds it.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) group: Arc<str>,
    /// The key.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) key: String,
    /// How long it is remembered once done.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) ttl: std::time::Duration,
    /// What the handler did with its inbox transaction: [`INBOX_UNUSED`], [`INBOX_BEGUN`] or
    /// [`INBOX_COMMITTED`].
    inbox: AtomicU8,
}

pub(super) const INBOX_UNUSED: u8 = 0;
pub(super) const INBOX_BEGUN: u8 = 1;
pub(super) const INBOX_COMMITTED: u8 = 2;
/// The inbox found the key done already: the message was handled before.
pub(super) const INBOX_FOUND_DONE: u8 = 3;

/// What the app tells the `Inbox` extractor's start check about one subscription: why it
/// cannot have an inbox, if it cannot.
pub(crate) struct InboxAvailability(pub(crate) Result<(), String>);

impl DedupTicket {
    /// The handler began an inbox transaction (which marked the key done in it).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn inbox_begun(&self) {
        self.inbox.store(INBOX_BEGUN, AtomicOrdering::Release);
    }

    /// The handler's inbox found the key done already.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn inbox_found_done(&self) {
        self.inbox.store(INBOX_FOUND_DONE, AtomicOrdering::Release);
    }

    /// The handler committed its inbox transaction: the key is done.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn inbox_committed(&self) {
        self.inbox.store(INBOX_COMMITTED, AtomicOrdering::Release);
    }

    /// The handler rolled its inbox transaction back on purpose: as if it had not begun one.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn inbox_rolled_back(&self) {
        self.inbox.store(INBOX_UNUSED, AtomicOrdering::Release);
    }

    /// Whether the subscription being checked may take an inbox (see [`InboxAvailability`]).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn check_inbox(state: &crate::StateMap) -> Result<(), String> {
        match state.get::<InboxAvailability>() {
            Some(availability) => availability.0 .0.clone(),
            None => Err("the handler takes an Inbox outside an app".into()),
        }
    }
}

/// What a handler's inbox transaction did to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum InboxEnd {
    /// Nothing: the pipeline completes the key as usual.
    Untouched,
    /// The transaction committed: the key is done.
    Completed,
    /// The key was done before the handler began: the message is a duplicate.
    FoundDone,
}

/// A handler's outcome in the light of its inbox transaction. `Ok` from a handler that began a
/// transaction and neither committed nor rolled it back means its writes were dropped: a
/// permanent failure, not a success. A handler whose inbox found its key done (whatever it
/// returned) handled the message before: a success, as a duplicate.
pub(super) fn inbox_outcome(outcome: Outcome, ticket: Option<&DedupTicket>) -> (Outcome, InboxEnd) {
    let used = ticket.map_or(INBOX_UNUSED, |t| t.inbox.load(AtomicOrdering::Acquire));
    match (outcome, used) {
        (_, INBOX_FOUND_DONE) => (Outcome::Done { reply: None }, InboxEnd::FoundDone),
        (outcome, INBOX_COMMITTED) => (outcome, InboxEnd::Completed),
        (Outcome::Done { .. }, INBOX_BEGUN) => (
            Outcome::Failed(HandlerError::permanent(
                "the handler returned Ok without committing its inbox transaction, so its writes were rolled back",
            )),
            InboxEnd::Untouched,
        ),
        (outcome, _) => (outcome, InboxEnd::Untouched),
    }
}

/// A dedup key a delivery holds a lease on, and the token it holds it under.
pub(super) struct Held {
    key: String,
    holder: String,
}

/// What the dedup gate decided for a delivery.
pub(super) enum Gate {
    /// Run the handler, holding this key (if the subscription deduplicates).
    Run(Option<Held>),
    /// The delivery was settled without the handler.
    Settled,
    /// The message has no dedup key: a permanent failure, or an undecodable payload.
    NoKey(HandlerError),
}
