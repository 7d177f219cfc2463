//! What happens to each delivery, from the broker to the acknowledgement.
//!
//! [`ordering`] decides what may run at once and feeds deliveries to [`Worker::process`], which
//! skips deliveries whose partition moved on, opens the delivery's span, runs the handler
//! (which decodes the payload first), answers requests, and settles: ack on success; and for a
//! message given up on (a permanent failure, an undecodable payload, the last attempt failed)
//! ack only once its dead letter (see [`dead_letter`]) was confirmed by the broker, or nack it,
//! after a backoff, if it was not. With dead letters disabled the failure is logged with the
//! message's origin and the message acked. Nothing is nacked at once: a nack is a redelivery,
//! and a redelivery without a backoff is a hot loop.
//!
//! Every subscription has a retry policy (its own, or [`RetrySpec::default`]). In process, a
//! transient failure is tried again in place after a backoff, up to the policy's attempts: the
//! message holds back only its own lane (partition, or key under key ordering). With a
//! redeliver-later policy it is published to its group's retry topic instead (see
//! [`redeliver`]). The attempt number is anybus's own count, never the broker's.

pub(crate) mod dead_letter;
pub(crate) mod keys;
mod lanes;
pub(crate) mod ordering;
pub(crate) mod redeliver;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::backend::{Delivery, Receipt, Settler};
use crate::context::{Context, StateMap};
use crate::dedup::{self, DedupStore, Reservation};
use crate::error::{FailureKind, HandlerError};
use crate::handler::{Handler, Outcome};
use crate::observe::{delivery_span, SubscriptionStats};
use crate::publish::Publisher;
use crate::subscription::{Backoff, DeadLetter, DedupKey, RetryMode, RetrySpec};

use self::dead_letter::{Failure, Reason};
use self::redeliver::RetryCopy;

/// Everything needed to handle one subscription's deliveries; shared by its lanes.
pub(crate) struct Worker {
    pub(crate) name: Arc<str>,
    pub(crate) group: Arc<str>,
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) settler: Arc<dyn Settler>,
    pub(crate) publisher: Publisher,
    pub(crate) state: Arc<StateMap>,
    pub(crate) stats: Arc<SubscriptionStats>,
    /// The retry policy: the subscription's, or the default one.
    pub(crate) retry: RetrySpec,
    /// Where messages given up on go.
    pub(crate) dead_letter: DeadLetter,
    /// The group's retry topics that the subscription consumes (redeliver-later retries).
    pub(crate) retry_topics: Vec<String>,
    /// Duplicate suppression, if any.
    pub(crate) dedup: Option<Dedup>,
    /// Whether a topic of the subscription is a pattern (RabbitMQ's `orders.*`, `orders.#`),
    /// which may also match anybus's own dead-letter, retry and wait topics.
    pub(crate) patterns: bool,
    /// The named dead-letter destinations of the app's subscriptions, which a pattern may
    /// match too.
    pub(crate) dead_letters: Arc<[String]>,
    /// Turns true when the app shuts down.
    pub(crate) shutdown: watch::Receiver<bool>,
}

impl Worker {
    /// Handles one delivery with `call` (the handler) and settles it.
    pub(crate) async fn process<Fut>(&self, delivery: Delivery, call: &impl Fn(Context) -> Fut)
    where
        Fut: Future<Output = Outcome>,
    {
        let Delivery { message, receipt } = delivery;
        if !self.may_start(&receipt) {
            return;
        }
        if self.patterns && self.is_foreign_helper(&message) {
            // A dead letter, or another group's retry copy, that a pattern matched: handling it
            // would dead-letter a dead letter, or run another group's retry.
            tracing::debug!(
                topic = message.topic(),
                "a pattern matched an anybus helper topic; skipped"
            );
            self.settler.ack(&receipt);
            return;
        }
        // A redeliver-later copy waits in its lane until it is due.
        if let Some(wait) = self.due_wait(&message) {
            self.wait(&receipt, wait).await;
            if !self.goes_on(&receipt) {
                return;
            }
        }
        let span = delivery_span(&message, &self.group, &self.name);
        // One span around all the rest, rather than around each step: every wrapper moves
        // the (large) future it wraps, and callgrind counted those copies per message.
        self.handle(message, receipt, call).instrument(span).await;
    }

    /// Runs the handler (and its retries) for a delivery that may start, inside the
    /// delivery's span, and settles the delivery.
    async fn handle<Fut>(
        &self,
        message: Arc<crate::Message>,
        receipt: Receipt,
        call: &impl Fn(Context) -> Fut,
    ) where
        Fut: Future<Output = Outcome>,
    {
        let copy = RetryCopy::of(&message, &self.group);
        let mut attempt = copy.map_or(1, |c| c.attempt);
        let original = copy.map_or_else(|| message.topic(), |c| c.original);
        let mut delays = None;
        let mut first_failure = copy.and_then(|c| c.first_failure);
        let (held, unkeyed) = match self.gate(&message, &receipt).await {
            Gate::Run(held) => (held, None),
            Gate::Settled => return,
            Gate::NoKey(error) => (None, Some(error)),
        };
        // Whether the handler's inbox transaction completed the key (or found it done).
        let mut inbox = InboxEnd::Untouched;
        let outcome = if let Some(error) = unkeyed {
            first_failure.get_or_insert_with(SystemTime::now);
            Outcome::Failed(error)
        } else {
            loop {
                let ticket = self.ticket(held.as_ref());
                let ctx = Context::new(
                    Arc::clone(&message),
                    Arc::clone(&self.group),
                    attempt,
                    self.publisher.clone(),
                    Arc::clone(&self.state),
                    ticket.clone(),
                );
                let outcome = self.holding(held.as_ref(), unwound(|| call(ctx))).await;
                let (outcome, end) = inbox_outcome(outcome, ticket.as_deref());
                inbox = end;
                if matches!(outcome, Outcome::Failed(_)) {
                    first_failure.get_or_insert_with(SystemTime::now);
                }
                let policy = &self.retry;
                let Outcome::Failed(error) = &outcome else {
                    break outcome;
                };
                if policy.mode != RetryMode::InProcess
                    || error.kind() != FailureKind::Transient
                    || attempt >= policy.max_attempts
                    || inbox == InboxEnd::Completed
                {
                    break outcome;
                }
                let Some(wait) = delays.get_or_insert_with(|| backoff(policy)).next() else {
                    break outcome;
                };
                tracing::warn!(origin = %message.origin(), %error, attempt, ?wait, "handler failed; retrying");
                SubscriptionStats::count(&self.stats.retries);
                // The key stays held while the retry waits.
                self.holding(held.as_ref(), self.wait(&receipt, wait)).await;
                if !self.goes_on(&receipt) {
                    // The partition moved on, or is being handed over, or the app shuts down,
                    // while this waited: the partition's next reader gets the message.
                    self.release(held.as_ref()).await;
                    return;
                }
                attempt += 1;
            }
        };
        match &outcome {
            // A key the inbox committed is done, whatever the handler said after.
            Outcome::Failed(_) if inbox == InboxEnd::Completed => {}
            Outcome::Failed(_) => self.release(held.as_ref()).await,
            Outcome::Done { .. } => {
                if inbox == InboxEnd::Untouched && !self.complete(held.as_ref(), &receipt).await {
                    // Its new owner has the message (and meets the lease until it runs out).
                    SubscriptionStats::count(&self.stats.skipped_stale);
                    return;
                }
            }
        }
        if let Outcome::Failed(error) = &outcome {
            if let Some(policy) = self
                .redeliver_policy(error, attempt)
                .filter(|_| inbox != InboxEnd::Completed)
            {
                let later = Later {
                    error,
                    original,
                    attempt,
                    wait: redeliver::delay(policy, attempt),
                    first_failure,
                };
                return self.retry_later(&message, &receipt, later).await;
            }
        }
        match outcome {
            Outcome::Done { reply } => {
                if let Some(reply) = reply {
                    self.answer(&message, Ok(reply)).await;
                }
                if inbox == InboxEnd::FoundDone {
                    tracing::debug!(origin = %message.origin(), "the inbox found the message handled before; acked as a duplicate");
                    SubscriptionStats::count(&self.stats.duplicates);
                } else {
                    SubscriptionStats::count(&self.stats.handled);
                }
                self.settler.ack(&receipt);
            }
            Outcome::Failed(error) if inbox == InboxEnd::Completed => {
                // Its writes and its dedup mark are committed: another attempt, or a
                // redelivery, could only find the key done.
                tracing::warn!(origin = %message.origin(), %error, "handler failed after its inbox transaction committed; its writes stand, so the message is acked as handled before");
                SubscriptionStats::count(&self.stats.transient_failures);
                SubscriptionStats::count(&self.stats.duplicates);
                self.settler.ack(&receipt);
            }
            Outcome::Failed(error) => {
                if error.kind() == FailureKind::Decode {
                    SubscriptionStats::count(&self.stats.decode_failures);
                }
                SubscriptionStats::count(&self.stats.permanent_failures);
                let failure = Failure {
                    error: &error,
                    topic: original,
                    group: &self.group,
                    attempts: attempt,
                    first_failure: first_failure.unwrap_or_else(SystemTime::now),
                    now: SystemTime::now(),
                };
                if !self.give_up(&message, &failure).await {
                    // The dead letter was not confirmed: keep the message, it comes again.
                    self.nack_later(&receipt).await;
                    return;
                }
                self.answer(&message, Err(error.to_string())).await;
                self.settler.ack(&receipt);
            }
        }
    }

    /// Waits `wait`, or less if the delivery's partition is being handed over (or moved on),
    /// or the app shuts down, meanwhile: neither need wait for a backoff of work that will not
    /// go on here.
    async fn wait(&self, receipt: &Receipt, wait: std::time::Duration) {
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            biased;
            () = self.settler.stopped(receipt) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
            () = tokio::time::sleep(wait) => {}
        }
    }

    /// Asks for the delivery again after [`NACK_BACKOFF`]: a broker that refuses a dead letter
    /// or a retry copy must not turn into a hot redelivery loop.
    async fn nack_later(&self, receipt: &Receipt) {
        self.wait(receipt, NACK_BACKOFF).await;
        self.settler.nack(receipt);
    }

    /// After a wait: whether the delivery's work goes on here. Not once the app shuts down
    /// (the message, not acknowledged, is delivered again after the restart), nor when
    /// [`Worker::may_start`] says no.
    fn goes_on(&self, receipt: &Receipt) -> bool {
        !*self.shutdown.borrow() && self.may_start(receipt)
    }

    /// Whether the delivery's work may start, or go on to another attempt. If not (its
    /// partition moved on, or is being handed over), the delivery is given up, unacknowledged,
    /// to the partition's next owner, and counted.
    fn may_start(&self, receipt: &Receipt) -> bool {
        if self.settler.try_start(receipt) {
            return true;
        }
        SubscriptionStats::count(&self.stats.skipped_stale);
        false
    }

    /// Whether `message`, which a pattern matched, came from an anybus helper topic that is
    /// not this group's to handle: a dead letter (by its header and the name the header
    /// implies, or a custom destination of this app), or another group's retry copy.
    fn is_foreign_helper(&self, message: &crate::Message) -> bool {
        redeliver::is_foreign_helper(message, &self.group)
            || self.dead_letters.iter().any(|d| d == message.topic())
    }

    /// How long a retry copy of this group's still waits until it is due; `None` for any
    /// other message, and for a copy that is due. A due time further off than the policy's
    /// longest wait (a clock that jumped, a bad copy) waits only that long.
    fn due_wait(&self, message: &crate::Message) -> Option<std::time::Duration> {
        let due = RetryCopy::of(message, &self.group)?.due?;
        let wait = due.duration_since(SystemTime::now()).ok()?;
        Some(wait.min(self.retry.max))
    }

    /// Reserves the message's dedup key, when the subscription deduplicates; settles the
    /// delivery itself when the handler must not run.
    async fn gate(&self, message: &crate::Message, receipt: &Receipt) -> Gate {
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
                SubscriptionStats::count(&self.stats.transient_failures);
                tokio::time::sleep(GATE_BACKOFF).await;
                self.settler.nack(receipt);
                Gate::Settled
            }
        }
    }

    /// Runs `work`, renewing the delivery's dedup lease every third of the lease while it runs,
    /// so that a live member keeps its key however long its handler and its retries take.
    /// Work that is done at its first poll (most handlers) sets no timer.
    async fn holding<T>(&self, held: Option<&Held>, work: impl Future<Output = T>) -> T {
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
                            tracing::warn!(%error, key, "dedup store failed to renew a lease; it may run out while the handler runs");
                        },
                    }
                }
            }
        }
    }

    /// What a handler's [`Context`] knows of the dedup key its delivery holds.
    fn ticket(&self, held: Option<&Held>) -> Option<Arc<DedupTicket>> {
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
    async fn complete(&self, held: Option<&Held>, receipt: &Receipt) -> bool {
        let (Some(dedup), Some(Held { key, .. })) = (&self.dedup, held) else {
            return true;
        };
        let mut wait = std::time::Duration::from_millis(10);
        loop {
            match dedup.store.complete(&self.group, key, dedup.ttl).await {
                Ok(()) => return true,
                Err(error) => {
                    tracing::warn!(%error, key, ?wait, "dedup store failed to complete a key; trying again");
                    SubscriptionStats::count(&self.stats.transient_failures);
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
    async fn release(&self, held: Option<&Held>) {
        let (Some(dedup), Some(Held { key, holder })) = (&self.dedup, held) else {
            return;
        };
        if let Err(error) = dedup.store.release(&self.group, key, holder).await {
            tracing::warn!(%error, key, "dedup store failed to release a key; its lease will run out");
        }
    }

    /// Publishes the retry copy of a message that failed transiently, and acks the message once
    /// the copy is confirmed; nacks it if the copy was not.
    async fn retry_later(&self, message: &crate::Message, receipt: &Receipt, later: Later<'_>) {
        let now = SystemTime::now();
        let copy = redeliver::retry_copy(
            message,
            later.original,
            &self.group,
            later.attempt + 1,
            now + later.wait,
            later.first_failure.unwrap_or(now),
        );
        let to = copy.topic().to_owned();
        let (error, attempt, wait) = (later.error, later.attempt, later.wait);
        match self.publisher.send(copy).await {
            Ok(_) => {
                tracing::warn!(origin = %message.origin(), %error, attempt, ?wait, retry_topic = %to, "handler failed; the message comes back later");
                SubscriptionStats::count(&self.stats.retries);
                self.settler.ack(receipt);
            }
            Err(publish) => {
                tracing::error!(origin = %message.origin(), %error, %publish, retry_topic = %to, "handler failed and its retry copy was not confirmed; the message will be delivered again");
                SubscriptionStats::count(&self.stats.transient_failures);
                self.nack_later(receipt).await;
            }
        }
    }

    /// The redeliver-later policy under which `error` on attempt `attempt` is tried again.
    fn redeliver_policy(&self, error: &HandlerError, attempt: u32) -> Option<&RetrySpec> {
        Some(&self.retry).filter(|p| {
            p.mode == RetryMode::Redeliver
                && error.kind() == FailureKind::Transient
                && attempt < p.max_attempts
        })
    }

    /// Sends a message given up on to its dead-letter destination, or logs and skips it when
    /// dead letters are disabled. `false` when the dead letter could not be published.
    async fn give_up(&self, message: &crate::Message, failure: &Failure<'_>) -> bool {
        let error = failure.error;
        let reason = Reason::of(error.kind()).as_str();
        let Some(to) = dead_letter::destination(&self.dead_letter, failure.topic) else {
            tracing::error!(
                origin = %message.origin(),
                key = ?message.key(),
                reason,
                attempts = failure.attempts,
                %error,
                "message cannot be handled; dead letters are disabled, so it is skipped",
            );
            return true;
        };
        let letter = dead_letter::dead_letter(message, &to, failure);
        match self.publisher.send(letter).await {
            Ok(_) => {
                SubscriptionStats::count(&self.stats.dead_lettered);
                tracing::warn!(
                    origin = %message.origin(),
                    key = ?message.key(),
                    reason,
                    attempts = failure.attempts,
                    dead_letter = %to,
                    %error,
                    "message cannot be handled; it went to its dead-letter destination",
                );
                true
            }
            Err(publish) => {
                tracing::error!(
                    origin = %message.origin(),
                    reason,
                    dead_letter = %to,
                    %error,
                    %publish,
                    "message cannot be handled and its dead letter was not confirmed; it will be delivered again",
                );
                false
            }
        }
    }

    async fn answer(&self, request: &crate::Message, answer: Result<bytes::Bytes, String>) {
        if let Err(error) = self.publisher.answer(request, answer).await {
            tracing::warn!(%error, "could not send the answer to a request");
        }
    }
}

/// The dedup key of `message`, or the failure of a message that has none: an undecodable
/// payload when the key is a field of a payload that is not JSON, a permanent failure when the
/// key is missing, or when the user's key function panicked (which must not take its lane down).
fn dedup_key(message: &crate::Message, by: &DedupKey) -> Result<String, HandlerError> {
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

/// Runs a handler's future, turning a panic into a permanent failure: a bug in one handler
/// call must not take down its lane (and with it the subscription).
async fn unwound<Fut: Future<Output = Outcome>>(call: impl FnOnce() -> Fut) -> Outcome {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    // A closure handler runs its body when called, an async one when polled: catch both.
    let handler = match catch_unwind(AssertUnwindSafe(call)) {
        Ok(handler) => handler,
        Err(panic) => return panicked(&*panic),
    };
    let mut handler = std::pin::pin!(handler);
    std::future::poll_fn(|cx| {
        catch_unwind(AssertUnwindSafe(|| handler.as_mut().poll(cx)))
            .unwrap_or_else(|panic| std::task::Poll::Ready(panicked(&*panic)))
    })
    .await
}

/// The permanent failure of a handler that panicked with `panic`.
fn panicked(panic: &(dyn std::any::Any + Send)) -> Outcome {
    Outcome::Failed(HandlerError::permanent(Panicked {
        what: "the handler",
        message: panic_message(panic),
    }))
}

/// What a panic said.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// A user callback (the handler, the dedup key function) that panicked, as the error of its
/// message's permanent failure.
#[derive(Debug)]
struct Panicked {
    what: &'static str,
    message: String,
}

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} panicked: {}", self.what, self.message)
    }
}

impl std::error::Error for Panicked {}

/// How long a completion goes on in the background once its partition moved to another
/// member.
const COMPLETE_IN_BACKGROUND: std::time::Duration = std::time::Duration::from_secs(600);

/// How long a delivery whose dead letter or retry copy the broker did not confirm waits before
/// it is nacked to come again.
const NACK_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a delivery whose dedup key is held elsewhere, or whose store failed, waits before
/// it is nacked to come again.
const GATE_BACKOFF: std::time::Duration = std::time::Duration::from_millis(250);

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

const INBOX_UNUSED: u8 = 0;
const INBOX_BEGUN: u8 = 1;
const INBOX_COMMITTED: u8 = 2;
/// The inbox found the key done already: the message was handled before.
const INBOX_FOUND_DONE: u8 = 3;

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
enum InboxEnd {
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
fn inbox_outcome(outcome: Outcome, ticket: Option<&DedupTicket>) -> (Outcome, InboxEnd) {
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
struct Held {
    key: String,
    holder: String,
}

/// What the dedup gate decided for a delivery.
enum Gate {
    /// Run the handler, holding this key (if the subscription deduplicates).
    Run(Option<Held>),
    /// The delivery was settled without the handler.
    Settled,
    /// The message has no dedup key: a permanent failure, or an undecodable payload.
    NoKey(HandlerError),
}

/// A transient failure to be retried by redelivery.
struct Later<'a> {
    error: &'a HandlerError,
    /// The topic the message was first consumed from.
    original: &'a str,
    attempt: u32,
    wait: std::time::Duration,
    first_failure: Option<SystemTime>,
}

/// The waits between attempts under `policy`: exponential (or fixed) from `initial` up to `max`;
/// jitter adds a random part of up to the wait again.
fn backoff(policy: &RetrySpec) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    let factor = match policy.backoff {
        Backoff::Exponential => 2.0,
        Backoff::Fixed => 1.0,
    };
    let builder = backon::ExponentialBuilder::default()
        .with_factor(factor)
        .with_min_delay(policy.initial)
        .with_max_delay(policy.max)
        .without_max_times();
    if policy.jitter {
        builder.with_jitter().build()
    } else {
        builder.build()
    }
}

/// Where one lane or pool worker takes its deliveries from.
enum Source {
    /// A partition's lane, and how it tells the dispatch loop it took a delivery.
    Lane(mpsc::Receiver<Delivery>, lanes::Room),
    Pool(async_channel::Receiver<Delivery>),
    /// A pool worker under key ordering: reports each finished key back to the dispatch loop,
    /// which starts the next delivery of that key.
    Keyed {
        rx: async_channel::Receiver<(u64, Delivery)>,
        finished: mpsc::UnboundedSender<u64>,
    },
}

/// One lane (or pool worker) of a subscription: handles its deliveries one at a time until
/// its source closes or the subscription stops. Run by [`Handler::serve`], so that the
/// handler's future is awaited in place, not boxed per delivery.
#[doc(hidden)]
pub struct Lane {
    worker: Arc<Worker>,
    source: Source,
    stopping: Arc<AtomicBool>,
}

impl Lane {
    pub(crate) fn of_partition(
        worker: Arc<Worker>,
        rx: mpsc::Receiver<Delivery>,
        room: lanes::Room,
        stopping: Arc<AtomicBool>,
    ) -> Self {
        Self {
            worker,
            source: Source::Lane(rx, room),
            stopping,
        }
    }

    pub(crate) fn of_pool(
        worker: Arc<Worker>,
        rx: async_channel::Receiver<Delivery>,
        stopping: Arc<AtomicBool>,
    ) -> Self {
        Self {
            worker,
            source: Source::Pool(rx),
            stopping,
        }
    }

    pub(crate) fn of_keys(
        worker: Arc<Worker>,
        rx: async_channel::Receiver<(u64, Delivery)>,
        finished: mpsc::UnboundedSender<u64>,
        stopping: Arc<AtomicBool>,
    ) -> Self {
        Self {
            worker,
            source: Source::Keyed { rx, finished },
            stopping,
        }
    }

    /// Handles deliveries with `call` until the source closes or the subscription stops;
    /// what was not started then stays unacknowledged and is delivered again.
    pub(crate) async fn run<Fut>(mut self, call: impl Fn(Context) -> Fut)
    where
        Fut: Future<Output = Outcome>,
    {
        loop {
            let (next, key) = match &mut self.source {
                Source::Lane(rx, room) => {
                    let next = rx.recv().await;
                    room.took_one(rx.len());
                    (next, None)
                }
                Source::Pool(rx) => (rx.recv().await.ok(), None),
                Source::Keyed { rx, .. } => match rx.recv().await {
                    Ok((key, delivery)) => (Some(delivery), Some(key)),
                    Err(_) => (None, None),
                },
            };
            let Some(delivery) = next else { break };
            if self.stopping.load(AtomicOrdering::Acquire) {
                break;
            }
            self.worker.process(delivery, &call).await;
            if let (Some(key), Source::Keyed { finished, .. }) = (key, &self.source) {
                if finished.send(key).is_err() {
                    break;
                }
            }
        }
    }
}
