//! A subscription: which topics a handler consumes, in which group, and how.
//!
//! [`SubscriptionSpec`] is plain data: what `#[subscriber(...)]` writes and what the builder
//! produces, so everything the macro can say, code can say too:
//!
//! ```
//! use anybus::{Ordering, Subscription, HandlerError};
//!
//! async fn audit(line: String) -> Result<(), HandlerError> {
//!     println!("{line}");
//!     Ok(())
//! }
//!
//! let sub = Subscription::builder(["audit.lines"])
//!     .group("auditor")
//!     .ordering(Ordering::None)
//!     .concurrency(8)
//!     .handler(audit);
//! assert_eq!(sub.spec().group, "auditor");
//! ```

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::codec::{Codec, Json};
use crate::context::StateMap;
use crate::handler::{Handler, IntoHandler};

/// How much of a subscription's work may run at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Ordering {
    /// One message in flight per partition (RabbitMQ: per queue): the broker's order is kept.
    #[default]
    Partition,
    /// One message in flight per key, many keys in parallel.
    Key,
    /// Up to `concurrency` messages in flight, in any order.
    None,
}

impl Ordering {
    /// `partition`, `key` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Partition => "partition",
            Self::Key => "key",
            Self::None => "none",
        }
    }
}

/// How retries are spaced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backoff {
    /// Each wait doubles, up to the cap.
    #[default]
    Exponential,
    /// Every wait is the initial delay.
    Fixed,
}

/// Where a retried message waits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RetryMode {
    /// The message waits in the consumer and is tried again; it holds back only its own lane.
    #[default]
    InProcess,
    /// The message is republished to a retry destination and comes back after the delay.
    Redeliver,
}

/// The retry policy of a subscription.
///
/// A subscription that names none gets [`RetrySpec::default`]: 3 attempts in all, in process,
/// 100 ms then 200 ms apart (each wait doubled, capped at 30 s, plus a random part of up to the
/// wait again), then the dead letter with reason `attempts-exhausted`. Nothing is ever tried
/// again without a backoff, and nothing is tried forever unless asked: [`RetrySpec::forever`].
///
/// ```
/// use anybus::{RetryMode, RetrySpec};
///
/// let patient = RetrySpec { max_attempts: 10, ..RetrySpec::default() };
/// assert_eq!(patient.mode, RetryMode::InProcess);
/// assert_eq!(RetrySpec::forever().max_attempts, u32::MAX);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrySpec {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// How waits grow.
    pub backoff: Backoff,
    /// The first wait.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
    /// Whether waits are randomised.
    pub jitter: bool,
    /// Where a retried message waits.
    pub mode: RetryMode,
}

impl RetrySpec {
    /// Retries a transient failure for as long as it lasts (`u32::MAX` attempts), with the
    /// default backoff: for a handler whose failures always pass (a database that comes back),
    /// where holding its partition or key back is better than a dead letter. A permanent
    /// failure still goes to the dead letter at once.
    pub fn forever() -> Self {
        Self {
            max_attempts: u32::MAX,
            ..Self::default()
        }
    }
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: Backoff::Exponential,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            jitter: true,
            mode: RetryMode::InProcess,
        }
    }
}

/// Where messages that cannot be handled go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DeadLetter {
    /// `{topic}.dlq`.
    #[default]
    Default,
    /// A named destination.
    Topic(String),
    /// Nowhere: the failure is logged with full context and the message skipped.
    Disabled,
}

/// What identifies a duplicate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DedupKey {
    /// The message id anybus writes on every published message.
    MessageId,
    /// A field of the JSON payload: a top-level name (`"order_id"`), or a path through nested
    /// objects with dots (`"order.order_id"`).
    Field(String),
    /// A header.
    Header(String),
    /// What a function of the message says (`DedupKey::function(order_key)`, or
    /// `dedup = order_key` in `#[subscriber]`); `None` means the message has no key.
    Function(KeyFunction),
}

impl DedupKey {
    /// The key `f` computes from each message; a message for which it returns `None` is a
    /// permanent failure that names the function.
    pub fn function<F>(f: F) -> Self
    where
        F: Fn(&crate::Message) -> Option<String> + Send + Sync + 'static,
    {
        Self::Function(KeyFunction {
            name: std::any::type_name::<F>(),
            f: Arc::new(f),
        })
    }
}

/// A function that computes a dedup key, with its name for errors. Two are equal when they are
/// the same function value.
#[derive(Clone)]
pub struct KeyFunction {
    name: &'static str,
    f: Arc<KeyFn>,
}

/// The dedup key of a message, computed.
type KeyFn = dyn Fn(&crate::Message) -> Option<String> + Send + Sync;

impl KeyFunction {
    /// The function's (type) name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The key of `message`, if it has one.
    pub fn key(&self, message: &crate::Message) -> Option<String> {
        (self.f)(message)
    }
}

impl std::fmt::Debug for KeyFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("KeyFunction").field(&self.name).finish()
    }
}

impl PartialEq for KeyFunction {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.f, &other.f)
    }
}

impl Eq for KeyFunction {}

/// Everything a subscription says about how its handler is fed. Plain data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionSpec {
    /// The handler's name, for logs and errors.
    pub name: String,
    /// The topics consumed.
    pub topics: Vec<String>,
    /// The consumer group: every group gets every message once; members of a group share them.
    /// Defaults to the handler's name.
    pub group: String,
    /// The codec's name (`json`, `raw`).
    pub codec: &'static str,
    /// The most messages in flight at once (for [`Ordering::None`] and [`Ordering::Key`]).
    pub concurrency: usize,
    /// What may run in parallel.
    pub ordering: Ordering,
    /// Partitions to create a topic with when it does not exist yet.
    pub partitions: Option<u32>,
    /// Retry policy; `None` means the default one, [`RetrySpec::default`].
    pub retry: Option<RetrySpec>,
    /// Where messages given up on go: `{topic}.dlq` by default.
    pub dead_letter: DeadLetter,
    /// Duplicate suppression, if any.
    pub dedup: Option<DedupKey>,
}

impl SubscriptionSpec {
    /// Default for [`SubscriptionSpec::concurrency`].
    pub const DEFAULT_CONCURRENCY: usize = 16;

    /// A spec with defaults for everything but the topics.
    pub fn new<T: Into<String>>(topics: impl IntoIterator<Item = T>) -> Self {
        let topics: Vec<String> = topics.into_iter().map(Into::into).collect();
        let name = topics.join(",");
        Self {
            group: name.clone(),
            name,
            topics,
            codec: Json::NAME,
            concurrency: Self::DEFAULT_CONCURRENCY,
            ordering: Ordering::default(),
            partitions: None,
            retry: None,
            dead_letter: DeadLetter::default(),
            dedup: None,
        }
    }
}

/// A spec plus its handler: what an app subscribes.
#[derive(Clone)]
pub struct Subscription {
    spec: SubscriptionSpec,
    handler: Arc<dyn Handler>,
    check: fn(&StateMap) -> Result<(), String>,
}

impl Subscription {
    /// Starts a subscription to `topics` with default options and the JSON codec.
    pub fn builder<T: Into<String>>(topics: impl IntoIterator<Item = T>) -> SubscriptionBuilder {
        SubscriptionBuilder {
            spec: SubscriptionSpec::new(topics),
            group_set: false,
            _codec: PhantomData,
        }
    }

    /// The options.
    pub fn spec(&self) -> &SubscriptionSpec {
        &self.spec
    }

    pub(crate) fn handler(&self) -> &Arc<dyn Handler> {
        &self.handler
    }

    pub(crate) fn check_extractors(&self, state: &StateMap) -> Result<(), String> {
        (self.check)(state)
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Subscription`]; `C` is the codec.
#[must_use = "a subscription builder does nothing until `.handler(...)` is called"]
pub struct SubscriptionBuilder<C = Json> {
    spec: SubscriptionSpec,
    group_set: bool,
    _codec: PhantomData<fn() -> C>,
}

impl<C: Codec> SubscriptionBuilder<C> {
    /// Names the subscription (the handler's name, used in logs and as the default group).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.spec.name = name.into();
        if !self.group_set {
            self.spec.group = self.spec.name.clone();
        }
        self
    }

    /// Sets the consumer group.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.spec.group = group.into();
        self.group_set = true;
        self
    }

    /// Decodes payloads with another codec.
    pub fn codec<D: Codec>(self) -> SubscriptionBuilder<D> {
        let mut spec = self.spec;
        spec.codec = D::NAME;
        SubscriptionBuilder {
            spec,
            group_set: self.group_set,
            _codec: PhantomData,
        }
    }

    /// Sets the most messages in flight at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.spec.concurrency = n;
        self
    }

    /// Sets what may run in parallel.
    pub fn ordering(mut self, ordering: Ordering) -> Self {
        self.spec.ordering = ordering;
        self
    }

    /// Sets how many partitions a topic is created with if it does not exist.
    pub fn partitions(mut self, n: u32) -> Self {
        self.spec.partitions = Some(n);
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, retry: RetrySpec) -> Self {
        self.spec.retry = Some(retry);
        self
    }

    /// Sets the dead-letter destination.
    pub fn dead_letter(mut self, dead_letter: DeadLetter) -> Self {
        self.spec.dead_letter = dead_letter;
        self
    }

    /// Turns on duplicate suppression.
    pub fn dedup(mut self, key: DedupKey) -> Self {
        self.spec.dedup = Some(key);
        self
    }

    /// Finishes with the handler: an `async fn` whose first argument is the payload.
    pub fn handler<Args, F: IntoHandler<C, Args>>(self, f: F) -> Subscription {
        Subscription {
            spec: self.spec,
            handler: f.into_handler(),
            check: F::check,
        }
    }
}
