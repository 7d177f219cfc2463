//! The connection to the broker, kept alive.
//!
//! A [`Link`] owns the current AMQP connection and a supervisor task. When the connection dies
//! (broker restart, `rabbitmqctl close_all_connections`, a missed heartbeat, a network cut), the
//! supervisor marks the link down, reconnects with capped exponential backoff and jitter,
//! declares the base topology and every topology a consumer declared through the link, and only
//! then announces the new connection. Consumers and the publisher wait for that announcement,
//! open their channels on the new connection and carry on.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use lapin::{Connection, Event};
use tokio::sync::{watch, Notify};

use super::declare::DeclareError;
use super::target::Target;
use super::topology::Topology;
use crate::url::ConnectError;

/// The first wait before reconnecting.
pub const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(100);
/// The longest wait between two reconnection attempts, jitter included: a restarted broker is
/// found at most this long after it answers again.
pub const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(5);

/// Waits between attempts: exponential from [`RECONNECT_MIN_DELAY`], with jitter, never longer
/// than [`RECONNECT_MAX_DELAY`], never giving up.
///
/// backon's jitter adds up to the delay again on top of it, so the exponential part is capped
/// at half the cap: the waits near the top spread over the upper half of the cap (many clients
/// of a restarted broker do not come back at once) and never pass it.
pub(super) fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(RECONNECT_MIN_DELAY)
        .with_max_delay(RECONNECT_MAX_DELAY / 2)
        .with_jitter()
        .without_max_times()
        .build()
        // backon's jitter is `delay × (1 + r)` with `r < 1` in f32; the clamp covers rounding.
        .map(|delay| delay.min(RECONNECT_MAX_DELAY))
}

/// One connection, numbered so that users can tell a new one from the one they had.
#[derive(Clone)]
pub(super) struct Session {
    pub(super) connection: Arc<Connection>,
    pub(super) number: u64,
}

#[derive(Clone)]
enum State {
    Up(Session),
    Down,
    Closed,
}

/// The link was closed: the backend is gone.
#[derive(Debug, thiserror::Error)]
#[error("the rabbitmq backend is closed")]
pub(super) struct LinkClosed;

/// Why a channel could not be set up on a connection.
#[derive(Debug, thiserror::Error)]
pub(super) enum SetupError {
    #[error("cannot open a channel: {0}")]
    Channel(#[source] lapin::Error),
    #[error("cannot set the prefetch (basic.qos): {0}")]
    Qos(#[source] lapin::Error),
    #[error("cannot turn on publisher confirms: {0}")]
    Confirms(#[source] lapin::Error),
    #[error(transparent)]
    Declare(#[from] DeclareError),
    #[error("cannot consume from queue `{queue}`: {source}")]
    Consume {
        queue: String,
        #[source]
        source: lapin::Error,
    },
}

/// The current connection, its supervisor, and every topology declared through it.
pub(super) struct Link {
    target: Target,
    state: watch::Sender<State>,
    remembered: Mutex<Vec<Topology>>,
    suspect: Notify,
    closing: watch::Sender<bool>,
    /// Set once the supervisor stopped: whether the connection was closed cleanly (the broker
    /// answered `connection.close`, or there was no connection left to close).
    finished: watch::Sender<Option<bool>>,
}

impl Link {
    /// Connects, declares the base topology, and starts the supervisor.
    pub(super) async fn open(target: Target) -> Result<Arc<Self>, ConnectError> {
        let connection = target.connect().await?;
        if let Err(e) = declare(&connection, &Topology::base()).await {
            let _ = connection.close(200, "anybus: setup failed".into()).await;
            return Err(target.unreachable(target.scrub(&e.to_string())));
        }
        let session = Session {
            connection: Arc::new(connection),
            number: 1,
        };
        let link = Arc::new(Self {
            target,
            state: watch::Sender::new(State::Up(session)),
            remembered: Mutex::default(),
            suspect: Notify::new(),
            closing: watch::Sender::new(false),
            finished: watch::Sender::new(None),
        });
        let supervised = Arc::clone(&link);
        tokio::spawn(async move {
            let clean = supervise(Arc::clone(&supervised)).await;
            supervised.finished.send_replace(Some(clean));
        });
        Ok(link)
    }

    /// Where the link connects to (redacted when printed).
    pub(super) fn target(&self) -> &Target {
        &self.target
    }

    /// The connection, if one is up right now.
    pub(super) fn current(&self) -> Option<Session> {
        match &*self.state.borrow() {
            State::Up(session) if session.connection.status().connected() => Some(session.clone()),
            State::Up(_) | State::Down | State::Closed => None,
        }
    }

    /// The connection, once one is up. One that died but is not replaced yet is skipped.
    pub(super) async fn session(&self) -> Result<Session, LinkClosed> {
        let mut state = self.state.subscribe();
        let state = state
            .wait_for(|s| match s {
                State::Up(session) if session.connection.status().connected() => true,
                State::Up(_) => {
                    self.suspect();
                    false
                }
                State::Down => false,
                State::Closed => true,
            })
            .await
            .map_err(|_| LinkClosed)?;
        match &*state {
            State::Up(session) => Ok(session.clone()),
            State::Down | State::Closed => Err(LinkClosed),
        }
    }

    /// Declares `topology` again on every new connection.
    pub(super) fn remember(&self, topology: &Topology) {
        let mut remembered = self
            .remembered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !remembered.contains(topology) {
            remembered.push(topology.clone());
        }
    }

    /// Whether a remembered topology has the wait queue of `topic`.
    pub(super) fn waits_for(&self, topic: &str) -> bool {
        self.remembered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|t| t.waits_for(topic))
    }

    /// Something failed on the connection: the supervisor checks whether it is still open.
    pub(super) fn suspect(&self) {
        self.suspect.notify_one();
    }

    /// Closes the connection and stops reconnecting.
    pub(super) fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Closes the connection and waits until it is closed (`connection.close` answered), so
    /// that the broker sees a clean close rather than a dropped socket when the process exits
    /// next; gives up after [`CLOSE_WAIT`]. Returns whether it closed cleanly.
    pub(super) async fn close_and_wait(&self) -> bool {
        self.close();
        let mut finished = self.finished.subscribe();
        let closed = tokio::time::timeout(CLOSE_WAIT, finished.wait_for(Option::is_some)).await;
        matches!(closed, Ok(Ok(clean)) if *clean == Some(true))
    }

    async fn reconnect(&self) -> Result<Connection, String> {
        let connection = self.target.connect().await.map_err(|e| e.to_string())?;
        if let Err(e) = declare(&connection, &Topology::base()).await {
            let _ = connection.close(200, "anybus: setup failed".into()).await;
            return Err(self.target.scrub(&e.to_string()));
        }
        let remembered = self
            .remembered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for topology in &remembered {
            // One consumer's topology that the broker refuses must not keep the others (and the
            // publisher) offline; that consumer reports it when it reopens.
            if let Err(e) = declare(&connection, topology).await {
                tracing::warn!(broker = %self.target, error = %self.target.scrub(&e.to_string()),
                    "could not declare a subscription's topology again after reconnecting");
            }
        }
        Ok(connection)
    }
}

/// Declares `topology` on a channel of its own, and cuts its superseded queues off.
pub(super) async fn declare(
    connection: &Connection,
    topology: &Topology,
) -> Result<(), SetupError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(SetupError::Channel)?;
    let declared = topology.declare(&channel).await;
    if channel.status().connected() {
        let _ = channel.close(200, "declared".into()).await;
    }
    declared?;
    super::superseded::retire(connection, topology).await;
    Ok(())
}

/// How long closing waits for the broker's answer (the close itself gives up after 2 s).
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Watches the connection; when it dies, reconnects until it succeeds or the link closes.
/// Returns whether the close was clean.
async fn supervise(link: Arc<Link>) -> bool {
    let mut closing = link.closing.subscribe();
    let mut number = 1;
    loop {
        let session = match &*link.state.borrow() {
            State::Up(session) => session.clone(),
            State::Down | State::Closed => return true,
        };
        let mut events = session.connection.events_listener();
        let mut last_error = None;
        let lost = loop {
            if !session.connection.status().connected() {
                break last_error.unwrap_or_else(|| "the connection is no longer open".to_owned());
            }
            tokio::select! {
                () = closed(&mut closing) => {
                    link.state.send_replace(State::Closed);
                    let close = session.connection.close(200, "anybus shut down".into());
                    let closed = tokio::time::timeout(Duration::from_secs(2), close).await;
                    return matches!(closed, Ok(Ok(())));
                }
                event = events.next() => match event {
                    // A channel closed with an error (a refused declaration, say) reports here
                    // too; only a connection that is no longer open is lost.
                    Some(Event::Error(error)) => {
                        last_error = Some(link.target.scrub(&error.to_string()));
                    }
                    Some(_) => {}
                    None => break "the connection's event stream ended".to_owned(),
                },
                () = link.suspect.notified() => {}
            }
        };
        link.state.send_replace(State::Down);
        drop(session);
        tracing::warn!(
            broker = %link.target,
            reason = %lost,
            "lost the connection to RabbitMQ; reconnecting"
        );

        let mut delays = backoff();
        let mut attempt = 0u32;
        loop {
            let delay = delays.next().unwrap_or(RECONNECT_MAX_DELAY);
            tokio::select! {
                () = closed(&mut closing) => {
                    link.state.send_replace(State::Closed);
                    return true;
                }
                () = tokio::time::sleep(delay) => {}
            }
            attempt += 1;
            match link.reconnect().await {
                Ok(connection) => {
                    number += 1;
                    link.state.send_replace(State::Up(Session {
                        connection: Arc::new(connection),
                        number,
                    }));
                    tracing::info!(broker = %link.target, attempt, "reconnected to RabbitMQ");
                    break;
                }
                Err(error) => {
                    tracing::warn!(
                        broker = %link.target,
                        attempt,
                        %error,
                        next_in = ?delay,
                        "reconnecting to RabbitMQ failed"
                    );
                }
            }
        }
    }
}

/// Resolves once the link is asked to close (or its sender is gone).
async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_from_its_first_delay_and_never_passes_its_cap() {
        for _ in 0..1_000 {
            let delays: Vec<Duration> = backoff().take(40).collect();
            assert_eq!(delays.len(), 40, "it never gives up");
            assert!(
                delays.iter().all(|d| *d <= RECONNECT_MAX_DELAY),
                "a wait passed the cap: {delays:?}"
            );
            assert!(
                delays[0] >= RECONNECT_MIN_DELAY && delays[0] < RECONNECT_MIN_DELAY * 2,
                "{delays:?}"
            );
            // Without jitter the n-th wait would be 100 ms × 2ⁿ up to half the cap; jitter
            // only lengthens it.
            for (n, delay) in delays.iter().enumerate() {
                let floor =
                    (RECONNECT_MIN_DELAY * 2u32.pow(n.min(10) as u32)).min(RECONNECT_MAX_DELAY / 2);
                assert!(*delay >= floor, "wait {n} is {delay:?}: {delays:?}");
            }
        }
    }
}
