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
//!
//! One job per file: this one the delivery's way through the steps; `dedup` the dedup gate,
//! lease and completion; `retry` the backoff and the retry copy; `dead_letter` what a dead
//! letter carries; `panics` a panicking callback; `lane` the loop of one lane or pool worker;
//! `lanes` the dispatch side's per-partition backpressure; `ordering` the dispatch loop.

pub(crate) mod dead_letter;
mod dedup;
pub(crate) mod keys;
mod lane;
mod lanes;
pub(crate) mod ordering;
mod panics;
pub(crate) mod redeliver;
mod retry;

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;
use tracing::Instrument;

use crate::backend::{Delivery, Receipt, Settler};
use crate::context::{Context, StateMap};
use crate::error::{FailureKind, HandlerError};
use crate::handler::{Handler, Outcome};
use crate::observe::{delivery_span, SubscriptionStats};
use crate::publish::{Answer, Publisher};
use crate::subscription::{DeadLetter, RetryMode, RetrySpec};

use self::dead_letter::{Failure, Reason};
use self::dedup::{inbox_outcome, Gate, InboxEnd};
pub(crate) use self::dedup::{Dedup, DedupTicket, InboxAvailability};
pub use self::lane::Lane;
use self::panics::unwound;
use self::redeliver::RetryCopy;
use self::retry::{backoff, Later};

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
            self.count_failure(&error);
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
                self.count_failure(error);
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
                    self.answer(&message, Answer::Value(reply)).await;
                } else if inbox == InboxEnd::FoundDone {
                    self.answer(&message, Answer::Duplicate).await;
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
                SubscriptionStats::count(&self.stats.duplicates);
                self.settler.ack(&receipt);
            }
            Outcome::Failed(error) => {
                if error.kind() == FailureKind::Transient {
                    SubscriptionStats::count(&self.stats.exhausted);
                }
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
                self.answer(&message, Answer::Failed(error.to_string()))
                    .await;
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
                SubscriptionStats::count(&self.stats.publish_failures);
                false
            }
        }
    }

    /// Counts one failed call by its kind (see [`crate::observe`]).
    fn count_failure(&self, error: &HandlerError) {
        match error.kind() {
            FailureKind::Transient => SubscriptionStats::count(&self.stats.transient_failures),
            FailureKind::Permanent => SubscriptionStats::count(&self.stats.permanent_failures),
            FailureKind::Decode => {
                SubscriptionStats::count(&self.stats.permanent_failures);
                SubscriptionStats::count(&self.stats.decode_failures);
            }
        }
    }

    async fn answer(&self, request: &crate::Message, answer: Answer) {
        if let Err(error) = self.publisher.answer(request, answer).await {
            SubscriptionStats::count(&self.stats.publish_failures);
            tracing::warn!(%error, "could not send the answer to a request");
        }
    }
}

/// How long a delivery whose dead letter or retry copy the broker did not confirm waits before
/// it is nacked to come again.
const NACK_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);
