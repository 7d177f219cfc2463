//! An app on a private embedded broker, with waits for what its handlers did.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Notify;

use crate::app::{App, AppBuilder, RunError, StartError};
use crate::backend::memory::MemoryBroker;
use crate::backend::{Backend, PublishError};
use crate::codec::{Codec, DecodeError, Json};
use crate::message::{Message, MessageId, Origin};
use crate::observe::StatsSnapshot;
use crate::publish::Publisher;
use crate::testing::observed::Observed;

/// How long a [`TestApp`] wait waits before it fails, unless [`TestApp::with_deadline`] says.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// Why a [`TestApp`] wait failed. Its `Debug` is its message, so `.unwrap()` says it plainly.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The deadline passed before the outcome.
    #[error("waited {deadline:?} for {what}, but {seen}")]
    Deadline {
        /// What was awaited.
        what: String,
        /// How long.
        deadline: Duration,
        /// What there was when the deadline passed.
        seen: String,
    },
    /// The app has no subscription of that name.
    #[error("the app has no subscription `{name}`; it has {known:?}")]
    UnknownSubscription {
        /// The name asked for.
        name: String,
        /// The names it has.
        known: Vec<String>,
    },
    /// A message that came does not decode as the type asked for.
    #[error("message {index} on `{topic}` does not decode as {type_name}: {source}")]
    Decode {
        /// The topic.
        topic: String,
        /// Its place among the topic's messages, from 0.
        index: usize,
        /// The type asked for.
        type_name: &'static str,
        /// The decoder's error.
        source: DecodeError,
    },
}

impl fmt::Debug for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An [`App`] on an embedded broker of its own (`memory://`, under a fresh name), and waits for
/// what its handlers did: deliveries handled or dead-lettered, events published. A wait looks
/// each time the app settles a delivery or the broker confirms a publish, never on a timer, and
/// fails with [`WaitError`] (saying what it waited for and what there was) once its deadline
/// ([`DEFAULT_DEADLINE`] unless told) passed.
///
/// ```
/// use anybus::testing::TestApp;
/// use anybus::{header, App, HandlerError, Publisher};
///
/// #[anybus::subscriber(topic = "orders.created", group = "inventory")]
/// async fn reserve(order_id: String, publisher: Publisher) -> Result<(), HandlerError> {
///     if order_id.is_empty() {
///         return Err(HandlerError::permanent(std::io::Error::other("no order id")));
///     }
///     publisher.publish("stock.reserved", &order_id).await?;
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = TestApp::start(App::builder().subscribe(reserve::subscription())).await?;
/// bus.publish("orders.created", "o-1").await?;
/// bus.publish("orders.created", "").await?;
/// let reserved: Vec<String> = bus.events("stock.reserved", 1).await?;
/// assert_eq!(reserved, ["o-1"]);
/// let letters = bus.dead_letters("orders.created", 1).await?;
/// assert_eq!(letters[0].headers().get_str(header::DLQ_REASON), Some("permanent"));
/// bus.handled("reserve", 1).await?;
/// assert_eq!(bus.dead_lettered("reserve", 1).await?.permanent_failures, 1);
/// bus.shutdown().await?;
/// # Ok(())
/// # }
/// ```
pub struct TestApp {
    app: App,
    broker: Arc<MemoryBroker>,
    changed: Arc<Notify>,
    deadline: Duration,
}

impl TestApp {
    /// Connects `builder`'s app to a new private embedded broker, with the broker's defaults.
    pub async fn start(builder: AppBuilder) -> Result<Self, StartError> {
        Self::start_with(builder, "").await
    }

    /// As [`TestApp::start`], with `memory://` URL options (`"partitions=1"`, see
    /// [`memory`](crate::backend::memory)).
    pub async fn start_with(mut builder: AppBuilder, options: &str) -> Result<Self, StartError> {
        let name = format!("anybus-testing-{}", MessageId::new());
        let url = match options {
            "" => format!("memory://{name}"),
            options => format!("memory://{name}?{options}"),
        };
        let changed = Arc::new(Notify::new());
        let notify = Arc::clone(&changed);
        builder.wrap_backend = Some(Box::new(move |inner| {
            Arc::new(Observed::new(inner, notify)) as Arc<dyn Backend>
        }));
        let app = builder.connect(&url).await?;
        Ok(Self {
            app,
            broker: MemoryBroker::named(&name),
            changed,
            deadline: DEFAULT_DEADLINE,
        })
    }

    /// Sets how long each wait waits before it fails.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The running app.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// Its private broker: every topic, message and committed offset.
    pub fn broker(&self) -> &MemoryBroker {
        &self.broker
    }

    /// A publisher on the private broker.
    pub fn publisher(&self) -> Publisher {
        self.app.publisher()
    }

    /// Publishes `event` as JSON to `topic`, as [`Publisher::publish`] does.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        event: &T,
    ) -> Result<Origin, PublishError> {
        self.app.publisher().publish(topic, event).await
    }

    /// The counters of the subscription named `subscription` now.
    pub fn stats(&self, subscription: &str) -> Result<StatsSnapshot, WaitError> {
        let reports = self.app.stats();
        reports
            .iter()
            .find(|r| r.name == subscription)
            .map(|r| r.stats)
            .ok_or_else(|| WaitError::UnknownSubscription {
                name: subscription.to_owned(),
                known: reports.iter().map(|r| r.name.clone()).collect(),
            })
    }

    /// Waits until the subscription named `subscription` has handled `n` deliveries (its
    /// handler succeeded and the delivery was acknowledged), and returns its counters then.
    pub async fn handled(&self, subscription: &str, n: u64) -> Result<StatsSnapshot, WaitError> {
        self.stats(subscription)?;
        let what = format!(
            "subscription `{subscription}` to handle {}",
            count(n, "delivery", "deliveries")
        );
        self.wait(what, || {
            let stats = self.stats(subscription).map_err(|e| e.to_string())?;
            if stats.handled >= n {
                Ok(stats)
            } else {
                Err(format!("it handled {}; {}", stats.handled, summary(&stats)))
            }
        })
        .await
    }

    /// Waits until the subscription named `subscription` has sent `n` messages to their
    /// dead-letter destination (confirmed by the broker, the original acknowledged), and returns
    /// its counters then.
    pub async fn dead_lettered(
        &self,
        subscription: &str,
        n: u64,
    ) -> Result<StatsSnapshot, WaitError> {
        self.stats(subscription)?;
        let what = format!(
            "subscription `{subscription}` to dead-letter {}",
            count(n, "message", "messages")
        );
        self.wait(what, || {
            let stats = self.stats(subscription).map_err(|e| e.to_string())?;
            if stats.dead_lettered >= n {
                Ok(stats)
            } else {
                Err(format!(
                    "it dead-lettered {}; {}",
                    stats.dead_lettered,
                    summary(&stats)
                ))
            }
        })
        .await
    }

    /// Waits until `topic` holds at least `n` messages, and returns all it holds, partition by
    /// partition, in offset order.
    pub async fn published(&self, topic: &str, n: usize) -> Result<Vec<Arc<Message>>, WaitError> {
        let what = format!("{} on `{topic}`", count(n as u64, "message", "messages"));
        self.wait(what, || {
            let messages = self.broker.messages(topic);
            if messages.len() >= n {
                Ok(messages)
            } else {
                Err(format!("it holds {}", messages.len()))
            }
        })
        .await
    }

    /// [`TestApp::published`], each payload decoded from JSON as `T`.
    pub async fn events<T: DeserializeOwned>(
        &self,
        topic: &str,
        n: usize,
    ) -> Result<Vec<T>, WaitError> {
        self.published(topic, n)
            .await?
            .iter()
            .enumerate()
            .map(|(index, m)| {
                Json::decode(m.payload()).map_err(|source| WaitError::Decode {
                    topic: topic.to_owned(),
                    index,
                    type_name: std::any::type_name::<T>(),
                    source,
                })
            })
            .collect()
    }

    /// Waits until `topic`'s default dead-letter destination, `{topic}.dlq`, holds `n` dead
    /// letters, and returns them (their `anybus-dlq-*` headers say why, see
    /// [`header`](crate::header)). For a named destination (`dead_letter = "name"`) wait with
    /// [`TestApp::published`] on it.
    pub async fn dead_letters(
        &self,
        topic: &str,
        n: usize,
    ) -> Result<Vec<Arc<Message>>, WaitError> {
        self.published(&crate::names::dead_letter_topic(topic), n)
            .await
    }

    /// Waits until `done` holds, looking again after every settlement and confirmed publish;
    /// `what` names the wait in the error.
    pub async fn until(
        &self,
        what: impl Into<String>,
        mut done: impl FnMut(&Self) -> bool,
    ) -> Result<(), WaitError> {
        self.wait(what.into(), || {
            if done(self) {
                Ok(())
            } else {
                Err("it did not hold".to_owned())
            }
        })
        .await
    }

    /// Shuts the app down as [`App::shutdown`] does, then empties its private broker.
    pub async fn shutdown(self) -> Result<(), RunError> {
        let result = self.app.shutdown().await;
        self.broker.delete(&self.broker.topics());
        result
    }

    /// Looks until `look` gives a value, each time the app settles or publishes something, up to
    /// the deadline; `look`'s `Err` says what there is instead.
    async fn wait<T>(
        &self,
        what: String,
        mut look: impl FnMut() -> Result<T, String>,
    ) -> Result<T, WaitError> {
        let mut found = None;
        let mut seen = String::new();
        let waited = tokio::time::timeout(
            self.deadline,
            crate::backend::once(&self.changed, || match look() {
                Ok(value) => {
                    found = Some(value);
                    true
                }
                Err(now) => {
                    seen = now;
                    false
                }
            }),
        )
        .await;
        match (waited, found) {
            (Ok(()), Some(value)) => Ok(value),
            _ => Err(WaitError::Deadline {
                what,
                deadline: self.deadline,
                seen,
            }),
        }
    }
}

/// `1 delivery`, `2 deliveries`.
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The failure counters, for a wait's error.
fn summary(stats: &StatsSnapshot) -> String {
    format!(
        "transient failures {}, permanent failures {} (decode {}), dead-lettered {}, duplicates {}",
        stats.transient_failures,
        stats.permanent_failures,
        stats.decode_failures,
        stats.dead_lettered,
        stats.duplicates
    )
}

impl fmt::Debug for TestApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestApp")
            .field("broker", &self.broker.name())
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}
