//! Publishing with publisher confirms: a publish resolves once the broker took responsibility
//! for the message, or fails with a typed error saying why it did not.
//!
//! Every publish goes to the events exchange with the topic as routing key (or, for a topic
//! that names a queue, `amqp-queue:{queue}`, to the default exchange with the queue as routing
//! key: an answer to another AMQP client's request), `mandatory` set, on one confirm-mode
//! channel shared by all publishes of the backend (they pipeline; each
//! waits for its own confirm). The broker's answer decides:
//! - ack: the message is stored (in a group's queue, or parked in the unrouted queue);
//! - ack with the message returned: nothing could take it, not even the unrouted queue (or the
//!   queue named does not exist), an error naming the topic;
//! - nack: the broker refused it (the unrouted queue is full, a queue limit), an error.
//!
//! While the connection is down, a publish waits for the next one, up to [`PUBLISH_PATIENCE`].
//! If the channel dies after the message was sent but before it was confirmed, the message is
//! published again on the next channel: at least once, so it may arrive twice.

use std::sync::Arc;
use std::time::Duration;

use lapin::message::BasicReturnMessage;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Confirmation};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::connection::{backoff, Link, SetupError};
use super::properties::{self, Outgoing};
use super::topology::{Topology, EVENTS_EXCHANGE, UNROUTED_QUEUE, WAIT_EXCHANGE};
use crate::backend::PublishError;
use crate::message::{Message, Origin};

/// How long a publish waits for the broker (connection, channel, confirm) before it fails.
pub const PUBLISH_PATIENCE: Duration = Duration::from_secs(30);

/// How long until a retry copy is due; `None` for a message that is not one, or is due.
fn not_due_yet(message: &Message) -> Option<Duration> {
    let due_ms: u64 = message
        .headers()
        .get_str(crate::header::RETRY_DUE_MS)?
        .parse()
        .ok()?;
    let due = std::time::UNIX_EPOCH + Duration::from_millis(due_ms);
    due.duration_since(std::time::SystemTime::now()).ok()
}

/// Why one publish attempt did not succeed.
enum Attempt {
    /// The broker answered no: final.
    Refused(String),
    /// The backend is closed: final.
    Closed,
    /// The channel or connection failed: worth another try.
    Lost(String),
}

/// Publishes on a confirm-mode channel of the current connection.
pub(super) struct Publisher {
    link: Arc<Link>,
    /// The channel and the number of the connection it belongs to.
    channel: Mutex<Option<(u64, Channel)>>,
}

impl Publisher {
    pub(super) fn new(link: Arc<Link>) -> Self {
        Self {
            link,
            channel: Mutex::new(None),
        }
    }

    /// Publishes `message` and waits for the broker's confirmation.
    pub(super) async fn publish(&self, message: Message) -> Result<Origin, PublishError> {
        let topic = message.topic().to_owned();
        let mut outgoing = properties::outgoing(&message).map_err(|e| PublishError::Rejected {
            topic: topic.clone(),
            reason: e.to_string(),
        })?;
        // A retry copy that is not due yet waits in its topic's wait queue, when a consumer of
        // this app declared one, and comes back to the topic when its TTL runs out. It goes
        // through an exchange of its own, so that no subscription (a `#` pattern) sees it early.
        let mut exchange = if outgoing.to_queue {
            DEFAULT_EXCHANGE
        } else {
            EVENTS_EXCHANGE
        };
        if let Some(wait) = not_due_yet(&message).filter(|_| !outgoing.to_queue) {
            if self.link.waits_for(&topic) {
                exchange = WAIT_EXCHANGE;
                let ms = wait.as_millis().max(1).to_string();
                outgoing.properties = outgoing.properties.with_expiration(ms.into());
            }
        }
        let deadline = Instant::now() + PUBLISH_PATIENCE;
        let mut delays = backoff();
        loop {
            let attempt = self.attempt(exchange, &outgoing, message.payload(), deadline);
            let failure = match attempt.await {
                Ok(()) => return Ok(Origin::topic(Arc::clone(&message.origin().topic))),
                Err(Attempt::Refused(reason)) => {
                    return Err(PublishError::Rejected { topic, reason })
                }
                Err(Attempt::Closed) => return Err(PublishError::Closed { topic }),
                Err(Attempt::Lost(reason)) => reason,
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(PublishError::Rejected {
                    topic,
                    reason: format!("not confirmed within {PUBLISH_PATIENCE:?}: {failure}"),
                });
            }
            tracing::debug!(topic, reason = %failure, "publish not confirmed; trying again");
            let delay = delays.next().unwrap_or(Duration::from_secs(1));
            tokio::time::sleep_until(deadline.min(now + delay)).await;
        }
    }

    async fn attempt(
        &self,
        exchange: &str,
        outgoing: &Outgoing,
        payload: &[u8],
        deadline: Instant,
    ) -> Result<(), Attempt> {
        let channel = match tokio::time::timeout_at(deadline, self.channel()).await {
            Ok(channel) => channel?,
            Err(_) => return Err(Attempt::Lost("no connection to the broker".into())),
        };
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let published = channel
            .basic_publish(
                exchange.into(),
                outgoing.routing_key.clone(),
                options,
                payload,
                outgoing.properties.clone(),
            )
            .await;
        let confirm = match published {
            Ok(confirm) => confirm,
            Err(e) => return Err(self.lost(&channel, &e).await),
        };
        let confirmation = match tokio::time::timeout_at(deadline, confirm).await {
            Ok(Ok(confirmation)) => confirmation,
            Ok(Err(e)) => return Err(self.lost(&channel, &e).await),
            Err(_) => return Err(Attempt::Lost("the broker did not confirm in time".into())),
        };
        let to = if outgoing.to_queue {
            Destination::Queue(outgoing.routing_key.as_str())
        } else {
            Destination::Topic(outgoing.routing_key.as_str())
        };
        judge(confirmation, to)
    }

    /// The confirm-mode channel of the current connection, opened if needed.
    async fn channel(&self) -> Result<Channel, Attempt> {
        let session = self.link.session().await.map_err(|_| Attempt::Closed)?;
        let mut slot = self.channel.lock().await;
        if let Some((number, channel)) = slot.as_ref() {
            if *number == session.number && channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        let open = async {
            let channel = session
                .connection
                .create_channel()
                .await
                .map_err(SetupError::Channel)?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(SetupError::Confirms)?;
            // A new channel often follows a failed one: make sure the exchanges it publishes
            // to exist (someone may have deleted one, which fails every publish with 404).
            Topology::base().declare(&channel).await?;
            Ok::<_, SetupError>(channel)
        };
        match open.await {
            Ok(channel) => {
                *slot = Some((session.number, channel.clone()));
                Ok(channel)
            }
            Err(e) => {
                self.link.suspect();
                Err(Attempt::Lost(self.link.target().scrub(&e.to_string())))
            }
        }
    }

    /// Forgets a channel that failed, so that the next attempt opens a new one.
    async fn lost(&self, channel: &Channel, error: &lapin::Error) -> Attempt {
        let mut slot = self.channel.lock().await;
        if slot.as_ref().is_some_and(|(_, c)| c.id() == channel.id()) {
            *slot = None;
        }
        self.link.suspect();
        Attempt::Lost(self.link.target().scrub(&error.to_string()))
    }
}

/// The default exchange, through which every queue is reached by its name.
const DEFAULT_EXCHANGE: &str = "";

/// Where a publish goes.
#[derive(Clone, Copy)]
enum Destination<'a> {
    /// A topic, on the events exchange.
    Topic(&'a str),
    /// A queue, by its name on the default exchange.
    Queue(&'a str),
}

/// What the broker's confirmation means for a publish to `to`.
fn judge(confirmation: Confirmation, to: Destination<'_>) -> Result<(), Attempt> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(Attempt::Refused(unroutable(&returned, to))),
        Confirmation::Nack(returned) => Err(Attempt::Refused(match returned {
            Some(returned) => unroutable(&returned, to),
            None => "the broker refused the message (negative publisher confirm); is a queue \
                     full, such as the unrouted-events queue?"
                .into(),
        })),
        Confirmation::NotRequested => Err(Attempt::Lost(
            "publisher confirms are not on for this channel".into(),
        )),
    }
}

fn unroutable(returned: &BasicReturnMessage, to: Destination<'_>) -> String {
    match to {
        Destination::Topic(topic) => format!(
            "no queue is bound to topic `{topic}`, and the unrouted-events queue \
             `{UNROUTED_QUEUE}` that keeps such events is missing: the broker returned the \
             message ({} {})",
            returned.reply_code, returned.reply_text
        ),
        Destination::Queue(queue) => format!(
            "the queue `{queue}` does not exist (did the client that asked for an answer \
             there go away?): the broker returned the message ({} {})",
            returned.reply_code, returned.reply_text
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(confirmation: Confirmation) -> String {
        match judge(confirmation, Destination::Topic("orders.created")) {
            Err(Attempt::Refused(reason)) => reason,
            _ => panic!("expected a refusal"),
        }
    }

    #[test]
    fn only_a_plain_ack_is_a_success() {
        let to = Destination::Topic("t");
        assert!(judge(Confirmation::Ack(None), to).is_ok());
        assert!(matches!(
            judge(Confirmation::NotRequested, to),
            Err(Attempt::Lost(_))
        ));
        let nack = refused(Confirmation::Nack(None));
        assert!(nack.contains("refused"), "{nack}");
    }
}
