//! Retries: the waits between in-process attempts, and the redeliver-later copy that waits on
//! the group's retry topic instead (its topic and headers are in [`super::redeliver`]).

use std::time::SystemTime;

use super::{redeliver, Worker};
use crate::backend::Receipt;
use crate::error::{FailureKind, HandlerError};
use crate::observe::SubscriptionStats;
use crate::subscription::{Backoff, RetryMode, RetrySpec};

impl Worker {
    /// Publishes the retry copy of a message that failed transiently, and acks the message once
    /// the copy is confirmed; nacks it if the copy was not.
    pub(super) async fn retry_later(
        &self,
        message: &crate::Message,
        receipt: &Receipt,
        later: Later<'_>,
    ) {
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
                SubscriptionStats::count(&self.stats.publish_failures);
                self.nack_later(receipt).await;
            }
        }
    }

    /// The redeliver-later policy under which `error` on attempt `attempt` is tried again.
    pub(super) fn redeliver_policy(
        &self,
        error: &HandlerError,
        attempt: u32,
    ) -> Option<&RetrySpec> {
        Some(&self.retry).filter(|p| {
            p.mode == RetryMode::Redeliver
                && error.kind() == FailureKind::Transient
                && attempt < p.max_attempts
        })
    }
}

/// A transient failure to be retried by redelivery.
pub(super) struct Later<'a> {
    /// The failure.
    pub(super) error: &'a HandlerError,
    /// The topic the message was first consumed from.
    pub(super) original: &'a str,
    /// The attempt that failed.
    pub(super) attempt: u32,
    /// How long the copy waits.
    pub(super) wait: std::time::Duration,
    /// When its first attempt failed.
    pub(super) first_failure: Option<SystemTime>,
}

/// The waits between attempts under `policy`: exponential (or fixed) from `initial` up to `max`;
/// jitter adds a random part of up to the wait again.
pub(super) fn backoff(policy: &RetrySpec) -> backon::ExponentialBackoff {
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
