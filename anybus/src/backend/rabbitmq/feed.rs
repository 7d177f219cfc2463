//! The task that owns one consumer's channel.
//!
//! It opens the channel on the current connection (prefetch, the group's topology, one
//! `basic.consume` per queue, manual acks), stamps every delivery with the channel's
//! generation and passes it on, and sends the acks and nacks of that generation in the order
//! they were asked for. When the channel dies, with its connection or alone (a queue deleted,
//! a consumer cancelled by the broker), it marks the generation dead, reports that it is not
//! consuming, and opens a new channel once the connection is back: the broker delivers what
//! was not acknowledged again, on the new channel, under the new generation.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, SelectAll, Stream, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::Channel;
use tokio::sync::{mpsc, oneshot};

use super::connection::{backoff, Link, Session, SetupError};
use super::consumer::{Command, QueueSettler};
use super::declare::short_name;
use super::properties;
use super::topology::{Source, Topology};
use crate::backend::{Delivery, Receipt};
use crate::observe::{SubscriptionStats, TopicPartition};

/// How long closing a channel may take before it is given up on.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What one consumer declares and consumes.
pub(super) struct Plan {
    topology: Topology,
    sources: Vec<Source>,
    topics: Vec<Arc<str>>,
    prefetch: u16,
}

impl Plan {
    pub(super) fn new(topology: Topology, sources: Vec<Source>, prefetch: u16) -> Self {
        let topics = sources
            .iter()
            .map(|s| Arc::from(s.topic.as_str()))
            .collect();
        Self {
            topology,
            sources,
            topics,
            prefetch,
        }
    }
}

type Deliveries =
    Pin<Box<dyn Stream<Item = (usize, Option<lapin::Result<lapin::message::Delivery>>)> + Send>>;

/// An open channel, its consumers, and its generation.
pub(super) struct Open {
    channel: Channel,
    deliveries: SelectAll<Deliveries>,
    generation: u64,
}

/// How serving a channel ended.
enum Outcome {
    /// The channel or its connection died.
    Lost(String),
    /// The consumer was closed or dropped; answer the closer once the channel is closed.
    Closed(Option<oneshot::Sender<()>>),
}

/// The feed of one consumer.
pub(super) struct Feed {
    link: Arc<Link>,
    plan: Plan,
    settler: Arc<QueueSettler>,
    commands: mpsc::UnboundedReceiver<Command>,
    deliveries: mpsc::UnboundedSender<Delivery>,
}

impl Feed {
    pub(super) fn new(
        link: Arc<Link>,
        plan: Plan,
        settler: Arc<QueueSettler>,
        commands: mpsc::UnboundedReceiver<Command>,
        deliveries: mpsc::UnboundedSender<Delivery>,
    ) -> Self {
        Self {
            link,
            plan,
            settler,
            commands,
            deliveries,
        }
    }

    pub(super) fn topology(&self) -> &Topology {
        &self.plan.topology
    }

    /// Opens a channel on `session` and starts consuming every queue of the plan.
    pub(super) async fn open(&self, session: &Session) -> Result<Open, SetupError> {
        let channel = session
            .connection
            .create_channel()
            .await
            .map_err(SetupError::Channel)?;
        match self.consume(&channel).await {
            Ok(deliveries) => {
                let generation = self.settler.generation.open();
                self.report(true);
                Ok(Open {
                    channel,
                    deliveries,
                    generation,
                })
            }
            Err(e) => {
                close(&channel).await;
                Err(e)
            }
        }
    }

    async fn consume(&self, channel: &Channel) -> Result<SelectAll<Deliveries>, SetupError> {
        channel
            .basic_qos(self.plan.prefetch, BasicQosOptions::default())
            .await
            .map_err(SetupError::Qos)?;
        self.plan.topology.declare(channel).await?;
        let mut all = SelectAll::new();
        for (slot, source) in self.plan.sources.iter().enumerate() {
            // An empty consumer tag lets the broker pick one; no_ack stays false: manual acks.
            let consumer = channel
                .basic_consume(
                    short_name(&source.queue)?,
                    ShortString::default(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| SetupError::Consume {
                    queue: source.queue.clone(),
                    source: e,
                })?;
            // A marker after the stream's end tells the cancellation of one consumer apart.
            let deliveries = consumer
                .map(move |d| (slot, Some(d)))
                .chain(stream::iter([(slot, None)]));
            all.push(Box::pin(deliveries) as Deliveries);
        }
        Ok(all)
    }

    /// Serves `first` (if any), then every channel after it, until the consumer is closed or
    /// the backend goes away.
    pub(super) async fn run(mut self, mut first: Option<Open>) {
        let mut delays = backoff();
        loop {
            let mut open = match first.take() {
                Some(open) => open,
                None => {
                    let Some(session) = self.next_session().await else {
                        return;
                    };
                    match self.open(&session).await {
                        Ok(open) => {
                            delays = backoff();
                            tracing::info!(queues = ?self.queues(), "consuming again");
                            open
                        }
                        Err(e) => {
                            let delay = delays.next().unwrap_or(Duration::from_secs(5));
                            tracing::warn!(
                                queues = ?self.queues(),
                                error = %self.link.target().scrub(&e.to_string()),
                                next_in = ?delay,
                                "cannot consume; trying again"
                            );
                            self.link.suspect();
                            if !self.idle(delay).await {
                                return;
                            }
                            continue;
                        }
                    }
                }
            };
            let outcome = self.serve(&mut open).await;
            self.settler.generation.close(open.generation);
            self.report(false);
            close(&open.channel).await;
            match outcome {
                Outcome::Lost(reason) => {
                    tracing::warn!(queues = ?self.queues(), %reason,
                        "stopped consuming; unacknowledged deliveries will come again");
                    self.link.suspect();
                }
                Outcome::Closed(done) => {
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
            }
        }
    }

    /// Passes deliveries on and settles them until the channel ends or the consumer closes.
    async fn serve(&mut self, open: &mut Open) -> Outcome {
        loop {
            tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    Some(Command::Ack(receipt)) => {
                        let sent = self.settle(&open.channel, open.generation, &receipt, true);
                        if let Err(e) = sent.await {
                            return Outcome::Lost(e);
                        }
                    }
                    Some(Command::Nack(receipt)) => {
                        let sent = self.settle(&open.channel, open.generation, &receipt, false);
                        if let Err(e) = sent.await {
                            return Outcome::Lost(e);
                        }
                    }
                    Some(Command::Close(done)) => return Outcome::Closed(Some(done)),
                    None => return Outcome::Closed(None),
                },
                next = open.deliveries.next() => match next {
                    Some((slot, Some(Ok(delivery)))) => {
                        let delivery = self.delivery(slot, delivery, open.generation);
                        if self.deliveries.send(delivery).is_err() {
                            return Outcome::Closed(None);
                        }
                    }
                    Some((slot, Some(Err(e)))) => return Outcome::Lost(format!(
                        "the consumer of queue `{}` failed: {}",
                        self.plan.sources[slot].queue,
                        self.link.target().scrub(&e.to_string()),
                    )),
                    Some((slot, None)) => return Outcome::Lost(format!(
                        "the broker cancelled the consumer of queue `{}`",
                        self.plan.sources[slot].queue,
                    )),
                    None => return Outcome::Lost("no consumer left on the channel".into()),
                },
            }
        }
    }

    /// Acks or nacks (requeueing) on the channel, if the receipt is of this channel.
    async fn settle(
        &self,
        channel: &Channel,
        generation: u64,
        receipt: &Receipt,
        ack: bool,
    ) -> Result<(), String> {
        let what = if ack { "ack" } else { "nack" };
        if receipt.generation != generation || !self.settler.generation.is_live(receipt.generation)
        {
            self.settler.count_stale(receipt, what);
            return Ok(());
        }
        // Receipts of this backend carry the delivery tag, a u64, in the i64 offset.
        let tag = receipt.offset as u64;
        let sent = if ack {
            channel.basic_ack(tag, BasicAckOptions::default()).await
        } else {
            let requeue = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            channel.basic_nack(tag, requeue).await
        };
        match sent {
            Ok(()) => {
                if !ack {
                    SubscriptionStats::count(&self.settler.stats.redeliveries);
                }
                Ok(())
            }
            Err(e) => {
                self.settler.count_stale(receipt, what);
                Err(format!("cannot {what} delivery {tag}: {e}"))
            }
        }
    }

    fn delivery(
        &self,
        slot: usize,
        delivery: lapin::message::Delivery,
        generation: u64,
    ) -> Delivery {
        let planned = &self.plan.topics[slot];
        // The routing key is the topic the event was published to (a binding may be a pattern).
        let topic = if delivery.routing_key.as_str() == &**planned {
            Arc::clone(planned)
        } else {
            Arc::from(delivery.routing_key.as_str())
        };
        let tag = delivery.delivery_tag;
        let message = properties::incoming(topic, tag, &delivery.properties, delivery.data);
        Delivery {
            message: Arc::new(message),
            receipt: Receipt::new(slot as u32, tag as i64, generation),
        }
    }

    /// Waits for a connection, dropping settlements meanwhile (no channel can take them).
    /// `None`: the consumer was closed or the backend is gone.
    async fn next_session(&mut self) -> Option<Session> {
        loop {
            tokio::select! {
                session = self.link.session() => return session.ok(),
                command = self.commands.recv() => if !self.drop_command(command) {
                    return None;
                },
            }
        }
    }

    /// Waits `delay` the same way; `false`: the consumer was closed.
    async fn idle(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                command = self.commands.recv() => if !self.drop_command(command) {
                    return false;
                },
            }
        }
    }

    /// Handles a command while no channel is open; `false` if it closes the consumer.
    fn drop_command(&self, command: Option<Command>) -> bool {
        match command {
            Some(Command::Ack(receipt)) => self.settler.count_stale(&receipt, "ack"),
            Some(Command::Nack(receipt)) => self.settler.count_stale(&receipt, "nack"),
            Some(Command::Close(done)) => {
                let _ = done.send(());
                return false;
            }
            None => return false,
        }
        true
    }

    /// Health: the consumer's queues while it consumes, nothing while it does not.
    fn report(&self, consuming: bool) {
        let mut now: Vec<TopicPartition> = if consuming {
            self.plan
                .topics
                .iter()
                .map(|topic| TopicPartition {
                    topic: Arc::clone(topic),
                    partition: 0,
                })
                .collect()
        } else {
            Vec::new()
        };
        now.sort();
        now.dedup();
        self.settler.stats.report_assignment(now);
    }

    fn queues(&self) -> Vec<&str> {
        self.plan.sources.iter().map(|s| s.queue.as_str()).collect()
    }
}

/// Closes a channel if it is still open: the broker requeues what it had not acknowledged.
async fn close(channel: &Channel) {
    if channel.status().connected() {
        let closing = channel.close(200, "anybus consumer closed".into());
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
    }
}
