//! A cloneable view of a running app: its counters and health, its publisher, and its shutdown,
//! for tasks that run beside [`App::run`](super::App::run) (an HTTP health endpoint, a metrics
//! exporter, a test).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::observe::{StatsSnapshot, SubscriptionStats, TopicPartition};
use crate::publish::Publisher;

/// The counters of one subscription, with its name and group.
#[derive(Clone, Debug)]
pub struct SubscriptionReport {
    /// The subscription's name.
    pub name: String,
    /// Its consumer group.
    pub group: String,
    /// Its counters.
    pub stats: StatsSnapshot,
}

/// Whether one subscription is consuming, and what it owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionHealth {
    /// The subscription's name.
    pub name: String,
    /// Its consumer group.
    pub group: String,
    /// Whether deliveries can arrive right now.
    pub consuming: bool,
    /// The partitions (RabbitMQ: queues, as partition 0) it owns.
    pub assignment: Vec<TopicPartition>,
}

/// What the app knows of one running subscription, shared with every handle.
#[derive(Debug)]
pub(super) struct Watched {
    pub(super) name: String,
    pub(super) group: String,
    pub(super) stats: Arc<SubscriptionStats>,
    /// Set when its consuming task has ended, for whatever reason.
    pub(super) finished: Arc<AtomicBool>,
}

/// Reads a running app's stats and health, publishes, and asks it to shut down, from any task,
/// while [`App::run`](super::App::run) owns the app. Cheap to clone; get one with
/// [`App::handle`](super::App::handle).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use anybus::{App, HandlerError, Subscription};
///
/// let app = App::builder()
///     .subscribe(
///         Subscription::builder(["pings"])
///             .group("pinger")
///             .handler(|_: String| async { Ok::<(), HandlerError>(()) }),
///     )
///     .connect("memory://handle-doc")
///     .await?;
/// let handle = app.handle();
/// let watcher = tokio::spawn(async move {
///     handle.publisher().publish("pings", "hello").await?;
///     while handle.stats()[0].stats.handled == 0 {
///         tokio::task::yield_now().await;
///     }
///     assert!(handle.health().iter().all(|s| s.consuming));
///     handle.shutdown();
///     Ok::<(), anybus::backend::PublishError>(())
/// });
/// app.run().await?;
/// watcher.await??;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct AppHandle {
    pub(super) subscriptions: Arc<[Watched]>,
    pub(super) publisher: Publisher,
    pub(super) stop: watch::Sender<bool>,
}

impl AppHandle {
    /// The counters of every subscription.
    pub fn stats(&self) -> Vec<SubscriptionReport> {
        self.subscriptions
            .iter()
            .map(|s| SubscriptionReport {
                name: s.name.clone(),
                group: s.group.clone(),
                stats: s.stats.snapshot(),
            })
            .collect()
    }

    /// Whether each subscription can receive deliveries right now: its dispatch task runs and
    /// its member owns at least one partition (Kafka, memory) or has its queue consumer open
    /// (RabbitMQ). A member of a group with more members than partitions is idle, not
    /// consuming.
    pub fn health(&self) -> Vec<SubscriptionHealth> {
        self.subscriptions
            .iter()
            .map(|s| {
                let assignment = s.stats.assignment.borrow().clone();
                SubscriptionHealth {
                    name: s.name.clone(),
                    group: s.group.clone(),
                    consuming: !s.finished.load(Ordering::Acquire) && !assignment.is_empty(),
                    assignment,
                }
            })
            .collect()
    }

    /// A publisher on the app's broker.
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// Starts the graceful shutdown: [`App::run`](super::App::run) then drains and returns.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Whether a shutdown was asked for.
    pub fn is_shutting_down(&self) -> bool {
        *self.stop.borrow()
    }

    fn find(&self, subscription: &str) -> Option<&Watched> {
        self.subscriptions.iter().find(|s| s.name == subscription)
    }

    /// The partitions a subscription's member owns, as a watch that changes with every
    /// rebalance; `None` for an unknown subscription name.
    pub fn assignment(&self, subscription: &str) -> Option<watch::Receiver<Vec<TopicPartition>>> {
        self.find(subscription)
            .map(|s| s.stats.assignment.subscribe())
    }

    /// Whether a key-ordered subscription holds back fetching because it holds its
    /// [`AppBuilder::max_buffered`](super::AppBuilder::max_buffered) unfinished deliveries, as a
    /// watch; `None` for an unknown subscription name.
    pub fn held_back(&self, subscription: &str) -> Option<watch::Receiver<bool>> {
        self.find(subscription)
            .map(|s| s.stats.held_back.subscribe())
    }
}
