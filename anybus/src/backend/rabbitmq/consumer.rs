//! One member of a consumer group: reads what the feed task received, and settles through it.
//!
//! The feed task (see `feed.rs`) owns the channel. Deliveries come from it over a queue whose
//! length the broker bounds with the prefetch; acks and nacks go back to it in order, so that
//! every settlement sent before [`Consumer::close`] reaches the broker before the channel is
//! closed. A settlement stamped with a generation that is no longer live is dropped and counted
//! here already, and again in the feed if the channel died while it was on its way.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::connection::Link;
use super::feed::{Feed, Plan};
use super::generation::ChannelGeneration;
use super::superseded;
use super::topology::{self, Topology};
use crate::backend::{BackendError, Consumer, ConsumerConfig, Delivery, Receipt, Settler};
use crate::handler::BoxFuture;
use crate::observe::SubscriptionStats;

/// What the feed task is asked to do.
pub(super) enum Command {
    Ack(Receipt),
    Nack(Receipt),
    /// Close the channel (what is unacknowledged goes back to the queue), then answer.
    Close(oneshot::Sender<()>),
}

/// Settles deliveries of one consumer through its feed task.
pub(super) struct QueueSettler {
    pub(super) generation: ChannelGeneration,
    commands: mpsc::UnboundedSender<Command>,
    pub(super) stats: Arc<SubscriptionStats>,
}

impl QueueSettler {
    fn settle(&self, receipt: &Receipt, command: Command, what: &str) {
        if !self.generation.is_live(receipt.generation) || self.commands.send(command).is_err() {
            self.count_stale(receipt, what);
        }
    }

    /// Counts a settlement that was dropped because its channel is gone.
    pub(super) fn count_stale(&self, receipt: &Receipt, what: &str) {
        SubscriptionStats::count(&self.stats.stale_settlements);
        tracing::debug!(
            queue_slot = receipt.slot,
            delivery_tag = receipt.offset,
            generation = receipt.generation,
            "dropped the {what} of a delivery from a channel that is gone; \
             the broker delivers it again"
        );
    }
}

impl Settler for QueueSettler {
    fn is_current(&self, receipt: &Receipt) -> bool {
        self.generation.is_live(receipt.generation)
    }

    fn ack(&self, receipt: &Receipt) {
        self.settle(receipt, Command::Ack(*receipt), "ack");
    }

    fn nack(&self, receipt: &Receipt) {
        self.settle(receipt, Command::Nack(*receipt), "nack");
    }
}

/// A [`Consumer`] on RabbitMQ.
pub(super) struct RabbitConsumer {
    deliveries: mpsc::UnboundedReceiver<Delivery>,
    settler: Arc<QueueSettler>,
    batch: usize,
    feed: JoinHandle<()>,
}

impl RabbitConsumer {
    /// Declares the group's queues and starts consuming them. Fails if the broker refuses the
    /// topology or the consumers, so that a bad subscription stops the app before it starts.
    pub(super) async fn open(
        link: Arc<Link>,
        config: ConsumerConfig,
    ) -> Result<Self, BackendError> {
        let refused = |e: topology::TopologyError| BackendError::Declare {
            topic: config.topics.join(","),
            reason: e.to_string(),
        };
        let (mut topology, sources) =
            Topology::for_group(&config.group, &config.topics).map_err(refused)?;
        for topic in &config.delayed {
            topology.add_wait(topic).map_err(refused)?;
        }
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (delivery_tx, deliveries) = mpsc::unbounded_channel();
        let settler = Arc::new(QueueSettler {
            generation: ChannelGeneration::default(),
            commands,
            stats: config.stats,
        });
        let plan = Plan::new(topology, sources, prefetch(config.prefetch));
        let feed = Feed::new(
            Arc::clone(&link),
            plan,
            Arc::clone(&settler),
            command_rx,
            delivery_tx,
        );
        let first = match link.current() {
            Some(session) => {
                let opened = feed
                    .open(&session)
                    .await
                    .map_err(|e| BackendError::Declare {
                        topic: config.topics.join(","),
                        reason: link.target().scrub(&e.to_string()),
                    })?;
                superseded::retire(&session.connection, feed.topology()).await;
                Some(opened)
            }
            // Reconnecting: the feed opens the channel when the connection is back.
            None => None,
        };
        link.remember(feed.topology());
        Ok(Self {
            deliveries,
            settler,
            batch: config.batch.max(1),
            feed: tokio::spawn(feed.run(first)),
        })
    }

    async fn next(&mut self, out: &mut Vec<Delivery>) -> Result<(), BackendError> {
        let first = self.deliveries.recv().await.ok_or(BackendError::Closed {
            backend: "rabbitmq",
        })?;
        out.push(first);
        while out.len() < self.batch {
            match self.deliveries.try_recv() {
                Ok(delivery) => out.push(delivery),
                Err(_) => break,
            }
        }
        Ok(())
    }
}

/// The prefetch (`basic.qos`) of a consumer from the window the runtime asks for (twice the
/// subscription's concurrency): the broker keeps at most that many unacknowledged deliveries on
/// the channel, per queue.
fn prefetch(window: usize) -> u16 {
    u16::try_from(window.max(1)).unwrap_or(u16::MAX)
}

impl Consumer for RabbitConsumer {
    fn poll<'a>(
        &'a mut self,
        out: &'a mut Vec<Delivery>,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(self.next(out))
    }

    fn settler(&self) -> Arc<dyn Settler> {
        Arc::clone(&self.settler) as Arc<dyn Settler>
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, Result<(), BackendError>> {
        let Self { settler, feed, .. } = *self;
        Box::pin(async move {
            let (done, closed) = oneshot::channel();
            if settler.commands.send(Command::Close(done)).is_ok() {
                let _ = closed.await;
            }
            let _ = feed.await;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_follows_the_window_within_amqp_limits() {
        assert_eq!(prefetch(0), 1);
        assert_eq!(prefetch(256), 256);
        assert_eq!(prefetch(1 << 20), u16::MAX);
    }

    #[test]
    fn a_stale_settlement_is_counted_and_not_sent() {
        let (commands, mut sent) = mpsc::unbounded_channel();
        let settler = QueueSettler {
            generation: ChannelGeneration::default(),
            commands,
            stats: Arc::new(SubscriptionStats::default()),
        };
        let old = settler.generation.open();
        let receipt = Receipt::new(0, 1, old);
        settler.generation.close(old);
        let new = settler.generation.open();
        assert!(!settler.is_current(&receipt));
        settler.ack(&receipt);
        settler.nack(&receipt);
        assert!(sent.try_recv().is_err(), "nothing reaches the channel");
        assert_eq!(settler.stats.snapshot().stale_settlements, 2);

        settler.ack(&Receipt::new(0, 1, new));
        assert!(matches!(sent.try_recv(), Ok(Command::Ack(r)) if r.generation == new));
    }
}
