//! The app: subscriptions and shared state, connected to a broker by URL, run until told to stop.
//!
//! ```
//! use anybus::{App, HandlerError, Subscription};
//!
//! async fn greet(name: String) -> Result<String, HandlerError> {
//!     Ok(format!("hello, {name}"))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app = App::builder()
//!     .subscribe(Subscription::builder(["greet"]).group("greeter").handler(greet))
//!     .connect("memory://app-doc")
//!     .await?;
//! let answer: String = app
//!     .publisher()
//!     .request("greet", "ada", std::time::Duration::from_secs(5))
//!     .await?;
//! assert_eq!(answer, "hello, ada");
//! app.shutdown().await?;
//! # Ok(())
//! # }
//! ```

mod check;
mod handle;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::backend::{self, Backend, BackendError, ConsumerConfig, TopicSpec};
use crate::context::StateMap;
use crate::dedup::{self, DedupError};
use crate::message::MessageId;
use crate::observe::{SubscriptionStats, TopicPartition};

use self::handle::Watched;
pub use self::handle::{AppHandle, SubscriptionHealth, SubscriptionReport};
use crate::pipeline::ordering::Dispatch;
use crate::pipeline::{dead_letter, Dedup, Worker};
use crate::publish::{Publisher, Replies};
use crate::replay::replay_group;
use crate::subscription::{DeadLetter, Ordering, RetryMode, Subscription, SubscriptionSpec};
use crate::url::{BrokerUrl, ConnectError};

/// Why an app did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The broker URL is bad or the broker cannot be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A subscription's options do not make sense.
    #[error("subscription `{subscription}`: {reason}")]
    Invalid {
        /// The subscription.
        subscription: String,
        /// What is wrong.
        reason: String,
    },
    /// The dedup store cannot be opened.
    #[error(transparent)]
    DedupStore(#[from] DedupError),
    /// The broker refused to declare topics or open a consumer.
    #[error("subscription `{subscription}`: {source}")]
    Backend {
        /// The subscription (or `replies` for the app's reply consumer).
        subscription: String,
        /// What the backend said.
        source: BackendError,
    },
}

/// Why an app stopped with an error.
#[derive(Debug, thiserror::Error)]
#[error("subscription `{subscription}` stopped: {source}")]
pub struct RunError {
    /// The subscription.
    pub subscription: String,
    /// What the backend said.
    pub source: BackendError,
}

/// Collects subscriptions and state; [`AppBuilder::connect`] starts them.
#[must_use = "an app builder does nothing until `.connect(url)` is awaited"]
pub struct AppBuilder {
    subscriptions: Vec<Subscription>,
    state: StateMap,
    drain_timeout: Duration,
    batch: usize,
    max_buffered: usize,
    dedup: DedupSettings,
    /// Wraps the connected backend (`anybus::testing` watches publishes and settlements).
    pub(crate) wrap_backend: Option<BackendWrapper>,
}

pub(crate) type BackendWrapper = Box<dyn FnOnce(Arc<dyn Backend>) -> Arc<dyn Backend> + Send>;

/// Where and how long subscriptions with `dedup` remember what they handled.
struct DedupSettings {
    store: String,
    lease: Duration,
    ttl: Duration,
}

impl AppBuilder {
    /// Adds a subscription (from `#[subscriber]`'s `name::subscription()` or
    /// [`Subscription::builder`]).
    pub fn subscribe(mut self, subscription: Subscription) -> Self {
        self.subscriptions.push(subscription);
        self
    }

    /// Registers shared state that handlers take as [`State<T>`](crate::State).
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.state.insert(Arc::new(value));
        self
    }

    /// How long shutdown and rebalances wait for running handlers (default 30 s). A partition
    /// asked back in a rebalance waits for the handlers running on it; deliveries fetched
    /// behind them, or waiting for an in-process retry, are given up as they come up, not
    /// started, and go to the partition's next owner. Shutdown gives up retry waits too.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// The most deliveries taken from the broker at once per subscription (default 256).
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Under `ordering = "key"`, the most deliveries a subscription holds that are not finished
    /// yet, running or waiting behind their key (default 1024, and never less than its
    /// concurrency). When it is reached, the subscription stops fetching until some finish (one
    /// batch already fetched may still be admitted), so a hot key cannot make the buffer grow
    /// without bound. [`App::held_back`] tells when that happens.
    pub fn max_buffered(mut self, max: usize) -> Self {
        self.max_buffered = max.max(1);
        self
    }

    /// The dedup store of the subscriptions with `dedup`, by URL: `memory://[?max_entries=N]`
    /// (the default: one process only). Opened when the app starts, which fails with
    /// [`StartError::DedupStore`] if it cannot be.
    pub fn dedup_store(mut self, url: &str) -> Self {
        self.dedup.store = url.to_owned();
        self
    }

    /// The term of the lease a delivery takes on its dedup key (default 60 s). The pipeline
    /// renews it every third of the term while the handler and its in-process retries run, so
    /// a slow handler keeps its key; a member that dies mid-handler lets the next delivery take
    /// over after at most this long.
    pub fn dedup_lease(mut self, lease: Duration) -> Self {
        self.dedup.lease = lease;
        self
    }

    /// How long a handled key is remembered (default 24 h): duplicates that come later than
    /// that are handled again.
    pub fn dedup_ttl(mut self, ttl: Duration) -> Self {
        self.dedup.ttl = ttl;
        self
    }

    /// Connects to the broker `url` names, checks every subscription, declares topics, and
    /// starts consuming. Fails before consuming anything if a subscription cannot be honoured.
    pub async fn connect(mut self, url: &str) -> Result<App, StartError> {
        let url = BrokerUrl::parse(url)?;
        for sub in &self.subscriptions {
            check::subscription(sub, &self.state, &self.dedup.store)?;
        }
        check::distinct(&self.subscriptions)?;
        let mut backend = backend::connect(&url).await?;
        if let Some(wrap) = self.wrap_backend.take() {
            backend = wrap(backend);
        }
        let dedup_store = if self.subscriptions.iter().any(|s| s.spec().dedup.is_some()) {
            Some(dedup::connect(&self.dedup.store).await?)
        } else {
            None
        };
        let mut topics: Vec<TopicSpec> = Vec::new();
        for spec in self.subscriptions.iter().map(Subscription::spec) {
            // Each topic, and its dead-letter destination, so that the first dead letter does
            // not wait for the topic to be created. A pattern (RabbitMQ's `orders.*`) has no
            // destination of its own: its dead letters go by the topic they came from.
            // Dead letters are kept for their replay group from the start.
            let dead_letters = spec
                .topics
                .iter()
                .filter(|t| !t.contains(['*', '#']))
                .filter_map(|t| dead_letter::destination(&spec.dead_letter, t))
                .map(|d| (Some(replay_group(&d)), d));
            // A pattern's retry topic is a pattern too: nothing to declare.
            let retries = retry_topics(spec)
                .into_iter()
                .filter(|t| !t.contains(['*', '#']));
            let consumed = spec.topics.iter().cloned().chain(retries);
            for (keep_for, topic) in consumed.map(|t| (None, t)).chain(dead_letters) {
                if !topics.iter().any(|t| t.name == topic) {
                    topics.push(TopicSpec {
                        name: topic,
                        partitions: spec.partitions,
                        keep_for,
                    });
                }
            }
        }
        let reply_topic = crate::names::reply_topic(MessageId::new());
        topics.push(TopicSpec {
            name: reply_topic.clone(),
            partitions: Some(1),
            keep_for: None,
        });
        backend
            .declare(&topics)
            .await
            .map_err(|source| StartError::Backend {
                subscription: "topics".into(),
                source,
            })?;

        let replies = Arc::new(Replies::new(reply_topic.clone()));
        let publisher = Publisher::new(Arc::clone(&backend), Arc::clone(&replies));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        let dead_letters: Arc<[String]> = self
            .subscriptions
            .iter()
            .filter_map(|s| match &s.spec().dead_letter {
                DeadLetter::Topic(name) => Some(name.clone()),
                _ => None,
            })
            .collect();
        let state = Arc::new(self.state);
        let mut running = Vec::new();
        let mut watchers = Vec::new();

        let reply_stats = Arc::new(SubscriptionStats::default());
        let reply_consumer = backend
            .consume(ConsumerConfig {
                group: reply_topic.clone(),
                topics: vec![reply_topic.clone()],
                batch: self.batch,
                prefetch: self.batch,
                drain_timeout: self.drain_timeout,
                stats: reply_stats,
                delayed: Vec::new(),
            })
            .await
            .map_err(|source| StartError::Backend {
                subscription: "replies".into(),
                source,
            })?;
        let reply_task = tokio::spawn(watched(
            "replies".into(),
            receive_replies(reply_consumer, replies, stop_rx.clone()),
            stop_rx.clone(),
            ended_tx.clone(),
            Arc::new(AtomicBool::new(false)),
        ));

        for sub in self.subscriptions {
            let spec = sub.spec().clone();
            let stats = Arc::new(SubscriptionStats::default());
            let retries = retry_topics(&spec);
            let consumer = backend
                .consume(ConsumerConfig {
                    group: spec.group.clone(),
                    topics: spec.topics.iter().chain(&retries).cloned().collect(),
                    batch: batch(&spec, self.batch, self.max_buffered),
                    prefetch: prefetch(&spec, self.max_buffered),
                    drain_timeout: self.drain_timeout,
                    stats: Arc::clone(&stats),
                    delayed: retries.clone(),
                })
                .await
                .map_err(|source| StartError::Backend {
                    subscription: spec.name.clone(),
                    source,
                })?;
            let dispatch = Dispatch {
                worker: Arc::new(Worker {
                    name: Arc::from(spec.name.as_str()),
                    group: Arc::from(spec.group.as_str()),
                    handler: Arc::clone(sub.handler()),
                    settler: consumer.settler(),
                    publisher: publisher.clone(),
                    state: Arc::clone(&state),
                    stats: Arc::clone(&stats),
                    retry: spec.retry.clone().unwrap_or_default(),
                    dead_letter: spec.dead_letter.clone(),
                    retry_topics: retries.clone(),
                    patterns: spec.topics.iter().any(|t| t.contains(['*', '#'])),
                    dead_letters: Arc::clone(&dead_letters),
                    shutdown: stop_rx.clone(),
                    dedup: spec
                        .dedup
                        .clone()
                        .zip(dedup_store.clone())
                        .map(|(by, store)| Dedup {
                            by,
                            store,
                            lease: self.dedup.lease,
                            ttl: self.dedup.ttl,
                        }),
                }),
                ordering: spec.ordering,
                concurrency: spec.concurrency,
                batch: batch(&spec, self.batch, self.max_buffered),
                drain_timeout: self.drain_timeout,
                max_buffered: self.max_buffered,
            };
            let finished = Arc::new(AtomicBool::new(false));
            let task = tokio::spawn(watched(
                spec.name.clone(),
                dispatch.run(consumer, stop_rx.clone()),
                stop_rx.clone(),
                ended_tx.clone(),
                Arc::clone(&finished),
            ));
            tracing::info!(subscription = %spec.name, group = %spec.group, topics = ?spec.topics, "subscribed");
            running.push(Running {
                name: spec.name.clone(),
                task,
            });
            watchers.push(Watched {
                name: spec.name,
                group: spec.group,
                stats,
                finished,
            });
        }
        tracing::info!(broker = %url, subscriptions = running.len(), "anybus app started");
        Ok(App {
            backend,
            handle: AppHandle {
                subscriptions: watchers.into(),
                publisher,
                stop: stop_tx,
            },
            running,
            reply_task,
            reply_topic,
            ended: ended_rx,
        })
    }
}

/// Runs a subscription's consuming task, and tells `ended` (with the subscription's name) when
/// it ends before the app was told to stop: that is a failure whatever the task returned, and
/// [`App::run`] must not go on as if the subscription were consuming.
async fn watched(
    name: String,
    task: impl std::future::Future<Output = Result<(), BackendError>>,
    stop: watch::Receiver<bool>,
    ended: mpsc::UnboundedSender<String>,
    finished: Arc<AtomicBool>,
) -> Result<(), BackendError> {
    let result = task.await;
    finished.store(true, std::sync::atomic::Ordering::Release);
    if *stop.borrow() {
        return result;
    }
    let result = result.and(Err(BackendError::Stopped {
        reason: "its consuming task ended before the app was shut down".into(),
    }));
    let _ = ended.send(name);
    result
}

/// The retry topics a subscription consumes beside its own under redeliver-later retries: its
/// group's of each topic ([`crate::names::retry_topic`]); none otherwise.
fn retry_topics(spec: &SubscriptionSpec) -> Vec<String> {
    let redeliver = spec
        .retry
        .as_ref()
        .is_some_and(|r| r.mode == RetryMode::Redeliver);
    if !redeliver {
        return Vec::new();
    }
    spec.topics
        .iter()
        .map(|t| crate::names::retry_topic(t, &spec.group))
        .collect()
}

/// The most deliveries one poll returns for a subscription: the app's batch, and under key
/// ordering never more than the buffer cap, which a poll must fit under whole.
fn batch(spec: &SubscriptionSpec, batch: usize, max_buffered: usize) -> usize {
    match spec.ordering {
        Ordering::Key => batch.min(max_buffered.max(spec.concurrency)),
        _ => batch,
    }
}

/// The window of unacknowledged deliveries a subscription asks the broker for: twice its
/// concurrency, so the next deliveries are on their way while the current ones run; under key
/// ordering the buffer cap, since deliveries waiting behind a busy key hold a place in the window
/// and must not starve the other keys.
fn prefetch(spec: &SubscriptionSpec, max_buffered: usize) -> usize {
    let window = spec.concurrency.saturating_mul(2);
    match spec.ordering {
        Ordering::Key => window.max(max_buffered),
        _ => window,
    }
}

/// Hands each answer on the app's reply topic to the request that waits for it.
async fn receive_replies(
    mut consumer: Box<dyn backend::Consumer>,
    replies: Arc<Replies>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), BackendError> {
    let settler = consumer.settler();
    let mut batch = Vec::new();
    let mut result = Ok(());
    while !*stop.borrow() {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            polled = consumer.poll(&mut batch) => if let Err(e) = polled {
                result = Err(e);
                break;
            },
        }
        for delivery in batch.drain(..) {
            replies.resolve(delivery.message);
            settler.ack(&delivery.receipt);
        }
    }
    result.and(consumer.close().await)
}

/// A subscription's consuming task.
struct Running {
    name: String,
    task: JoinHandle<Result<(), BackendError>>,
}

/// A running app. Drop it only after [`App::shutdown`] or [`App::run`]: dropping it stops
/// nothing gracefully.
pub struct App {
    backend: Arc<dyn Backend>,
    handle: AppHandle,
    running: Vec<Running>,
    reply_task: JoinHandle<Result<(), BackendError>>,
    reply_topic: String,
    /// Names the subscriptions whose consuming task ended before shutdown.
    ended: mpsc::UnboundedReceiver<String>,
}

/// Asks a running app to shut down gracefully; cheap to clone.
#[derive(Clone, Debug)]
pub struct ShutdownHandle(watch::Sender<bool>);

impl ShutdownHandle {
    /// Starts the shutdown; [`App::run`] then drains and returns.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

impl App {
    /// Starts building an app.
    pub fn builder() -> AppBuilder {
        AppBuilder {
            subscriptions: Vec::new(),
            state: StateMap::default(),
            drain_timeout: Duration::from_secs(30),
            batch: 256,
            max_buffered: 1024,
            dedup: DedupSettings {
                store: "memory://".into(),
                lease: Duration::from_secs(60),
                ttl: Duration::from_secs(24 * 3600),
            },
            wrap_backend: None,
        }
    }

    /// A publisher on this app's broker.
    pub fn publisher(&self) -> Publisher {
        self.handle.publisher()
    }

    /// `memory`, `kafka` or `rabbitmq`.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// A handle that starts the shutdown from anywhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.handle.stop.clone())
    }

    /// A handle that reads stats and health, publishes and shuts down while [`App::run`] owns
    /// the app.
    pub fn handle(&self) -> AppHandle {
        self.handle.clone()
    }

    /// The counters of every subscription.
    pub fn stats(&self) -> Vec<SubscriptionReport> {
        self.handle.stats()
    }

    /// Whether each subscription can receive deliveries right now (see [`AppHandle::health`]).
    pub fn health(&self) -> Vec<SubscriptionHealth> {
        self.handle.health()
    }

    /// The partitions a subscription's member owns, as a watch that changes with every
    /// rebalance; `None` for an unknown subscription name.
    pub fn assignment(&self, subscription: &str) -> Option<watch::Receiver<Vec<TopicPartition>>> {
        self.handle.assignment(subscription)
    }

    /// Whether a key-ordered subscription holds back fetching because it holds its
    /// [`AppBuilder::max_buffered`] unfinished deliveries, as a watch; `None` for an unknown
    /// subscription name.
    pub fn held_back(&self, subscription: &str) -> Option<watch::Receiver<bool>> {
        self.handle.held_back(subscription)
    }

    /// Runs until Ctrl-C, SIGTERM or a [`ShutdownHandle`], then shuts down gracefully.
    ///
    /// A subscription that stops consuming for any other reason (its broker connection failed
    /// for good, a task of the runtime ended) ends the run too: the app shuts down the others
    /// and returns the [`RunError`] that names it, so that the process exits instead of
    /// running on without consuming.
    pub async fn run(mut self) -> Result<(), RunError> {
        let mut stop = self.handle.stop.subscribe();
        tokio::select! {
            () = signal() => tracing::info!("shutdown signal received"),
            _ = stop.wait_for(|s| *s) => {}
            Some(name) = self.ended.recv() => {
                tracing::error!(subscription = %name, "a subscription stopped consuming; shutting the app down");
            }
        }
        self.shutdown().await
    }

    /// Stops consuming, lets in-flight handlers finish (up to the drain timeout), commits what
    /// completed, leaves every group, and closes the app's own connection to the broker where it
    /// has one (RabbitMQ: the app's publishers fail from then on). What was not completed is
    /// delivered again later.
    pub async fn shutdown(self) -> Result<(), RunError> {
        self.handle.stop.send_replace(true);
        let mut first_error = None;
        for r in self.running {
            let outcome = match r.task.await {
                Ok(outcome) => outcome,
                Err(join) => Err(BackendError::Broker {
                    backend: "runtime",
                    reason: format!("the dispatch task failed: {join}"),
                }),
            };
            if let Err(source) = outcome {
                tracing::error!(subscription = %r.name, error = %source, "subscription stopped with an error");
                first_error.get_or_insert(RunError {
                    subscription: r.name,
                    source,
                });
            }
        }
        if let Ok(Err(source)) = self.reply_task.await {
            first_error.get_or_insert(RunError {
                subscription: "replies".into(),
                source,
            });
        }
        // The reply topic belongs to this instance alone; on a broker that keeps topics, leaving
        // it behind would leak one topic per app start.
        if let Err(error) = self.backend.delete(&[self.reply_topic]).await {
            tracing::warn!(%error, "could not delete the reply topic");
        }
        self.backend.close().await;
        first_error.map_or(Ok(()), Err)
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("backend", &self.backend.name())
            .field("subscriptions", &self.running.len())
            .finish_non_exhaustive()
    }
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM.
async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
