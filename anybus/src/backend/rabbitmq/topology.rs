//! The exchanges, queues and bindings a subscription needs, as plain data.
//!
//! Every event goes through one durable topic exchange, [`EVENTS_EXCHANGE`], with its topic as
//! the routing key. A consumer group owns one durable queue per topic, `{topic}.{group}`, bound
//! to that exchange with the topic as binding key: every group gets every event once, and the
//! members of a group share the queue. An event whose topic no queue is bound to is not lost: the
//! events exchange hands it to its alternate exchange, [`UNROUTED_EXCHANGE`], which keeps it in
//! [`UNROUTED_QUEUE`] (bounded: once full, publishing such events is refused with an error).
//! The app's private reply topic (`anybus.replies.<uuid>`, consumed by a group of the same
//! name) gets a non-durable queue of that name which the broker deletes a minute after its app
//! is gone.
//!
//! A [`Topology`] is what one consumer declares before it consumes; the connection remembers
//! every topology declared through it and declares them all again on each new connection, so a
//! broker restart or a deleted queue heals. Declaring is idempotent: the broker accepts a
//! declaration equal to what exists. Dead-letter and retry destinations will be more values
//! here, built from the same subscription.
//!
//! ```
//! use anybus::backend::rabbitmq::topology::{Binding, Topology, EVENTS_EXCHANGE};
//!
//! let (topology, sources) = Topology::for_group("inventory", &["orders.created".into()]).unwrap();
//! assert_eq!(sources[0].queue, "orders.created.inventory");
//! assert!(topology.bindings.contains(&Binding {
//!     queue: "orders.created.inventory".into(),
//!     exchange: EVENTS_EXCHANGE.into(),
//!     routing_key: "orders.created".into(),
//! }));
//! ```

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::subscription::SubscriptionSpec;

/// The topic exchange every event is published to, with its topic as routing key.
pub const EVENTS_EXCHANGE: &str = "anybus";
/// The alternate exchange of [`EVENTS_EXCHANGE`]: where events go that no queue is bound for.
pub const UNROUTED_EXCHANGE: &str = "anybus.unrouted";
/// The queue that keeps unrouted events, for an operator to inspect or move.
pub const UNROUTED_QUEUE: &str = "anybus.unrouted";
/// How many unrouted events [`UNROUTED_QUEUE`] keeps; beyond it the broker refuses the publish.
pub const UNROUTED_LIMIT: i32 = 100_000;
/// The prefix of the reply topics the runtime gives each app for request/reply.
pub const REPLY_TOPIC_PREFIX: &str = "anybus.replies.";
/// How long a reply queue outlives its last consumer, in milliseconds.
pub const REPLY_QUEUE_EXPIRY_MS: i32 = 60_000;

/// AMQP names (exchanges, queues, routing keys) are at most 255 bytes.
const MAX_NAME: usize = 255;

/// Why a topology cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// A name is longer than AMQP allows.
    #[error("the {what} `{name}` is longer than the 255 bytes AMQP allows")]
    NameTooLong {
        /// What the name is of (`topic`, `queue`).
        what: &'static str,
        /// The name.
        name: String,
    },
}

/// The kind of an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeType {
    /// Routes by routing key against binding patterns.
    Topic,
    /// Routes to every bound queue.
    Fanout,
}

/// A value in a declaration's arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Argument {
    /// A 32-bit integer.
    Int(i32),
    /// A string.
    Text(String),
}

/// An exchange to declare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: ExchangeType,
    /// Whether it survives a broker restart.
    pub durable: bool,
    /// Its arguments (`alternate-exchange`, …).
    pub arguments: Vec<(String, Argument)>,
}

/// A queue to declare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queue {
    /// Its name.
    pub name: String,
    /// Whether it (and its persistent messages) survives a broker restart.
    pub durable: bool,
    /// Its arguments (`x-expires`, `x-max-length`, …).
    pub arguments: Vec<(String, Argument)>,
}

/// A binding of a queue to an exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The queue.
    pub queue: String,
    /// The exchange.
    pub exchange: String,
    /// The binding key: for the events exchange, the topic.
    pub routing_key: String,
}

/// A queue a consumer reads, and the topic that fills it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The topic.
    pub topic: String,
    /// The queue.
    pub queue: String,
}

/// Exchanges, queues and bindings, declared in that order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    /// Exchanges.
    pub exchanges: Vec<Exchange>,
    /// Queues.
    pub queues: Vec<Queue>,
    /// Bindings.
    pub bindings: Vec<Binding>,
}

impl Topology {
    /// What every connection declares first: the events exchange and where unrouted events go.
    pub fn base() -> Self {
        Self {
            exchanges: vec![
                Exchange {
                    name: UNROUTED_EXCHANGE.into(),
                    kind: ExchangeType::Fanout,
                    durable: true,
                    arguments: Vec::new(),
                },
                Exchange {
                    name: EVENTS_EXCHANGE.into(),
                    kind: ExchangeType::Topic,
                    durable: true,
                    arguments: vec![(
                        "alternate-exchange".into(),
                        Argument::Text(UNROUTED_EXCHANGE.into()),
                    )],
                },
            ],
            queues: vec![Queue {
                name: UNROUTED_QUEUE.into(),
                durable: true,
                arguments: vec![
                    ("x-max-length".into(), Argument::Int(UNROUTED_LIMIT)),
                    ("x-overflow".into(), Argument::Text("reject-publish".into())),
                ],
            }],
            bindings: vec![Binding {
                queue: UNROUTED_QUEUE.into(),
                exchange: UNROUTED_EXCHANGE.into(),
                routing_key: String::new(),
            }],
        }
    }

    /// What a member of `group` consuming `topics` needs (the base included), and the queue of
    /// each topic, in the order of `topics`.
    pub fn for_group(group: &str, topics: &[String]) -> Result<(Self, Vec<Source>), TopologyError> {
        let mut topology = Self::base();
        let mut sources = Vec::with_capacity(topics.len());
        for topic in topics {
            check_name("topic", topic)?;
            let reply = topic.starts_with(REPLY_TOPIC_PREFIX) && topic == group;
            let queue = if reply {
                topic.clone()
            } else {
                queue_name(topic, group)
            };
            check_name("queue", &queue)?;
            let (durable, arguments) = if reply {
                let expiry = ("x-expires".into(), Argument::Int(REPLY_QUEUE_EXPIRY_MS));
                (false, vec![expiry])
            } else {
                (true, Vec::new())
            };
            topology.add_queue(Queue {
                name: queue.clone(),
                durable,
                arguments,
            });
            topology.add_binding(Binding {
                queue: queue.clone(),
                exchange: EVENTS_EXCHANGE.into(),
                routing_key: topic.clone(),
            });
            sources.push(Source {
                topic: topic.clone(),
                queue,
            });
        }
        Ok((topology, sources))
    }

    /// Adds the wait queue of `topic` (see [`wait_queue`]): a durable queue bound to the events
    /// exchange with the routing key `{topic}.wait`, whose messages, once their per-message TTL
    /// (`expiration`) ran out, are dead-lettered back to the events exchange with `topic` as
    /// routing key. Redeliver-later retry copies wait there instead of in a consumer.
    pub fn add_wait(&mut self, topic: &str) -> Result<(), TopologyError> {
        let queue = wait_queue(topic);
        check_name("queue", &queue)?;
        self.add_queue(Queue {
            name: queue.clone(),
            durable: true,
            arguments: vec![
                (
                    "x-dead-letter-exchange".into(),
                    Argument::Text(EVENTS_EXCHANGE.into()),
                ),
                (
                    "x-dead-letter-routing-key".into(),
                    Argument::Text(topic.into()),
                ),
            ],
        });
        self.add_binding(Binding {
            queue: queue.clone(),
            exchange: EVENTS_EXCHANGE.into(),
            routing_key: queue,
        });
        Ok(())
    }

    /// Whether this topology has the wait queue of `topic`.
    pub fn waits_for(&self, topic: &str) -> bool {
        let queue = wait_queue(topic);
        self.queues.iter().any(|q| q.name == queue)
    }

    /// What a subscription needs: [`Topology::for_group`] of its group and topics.
    pub fn for_subscription(spec: &SubscriptionSpec) -> Result<Self, TopologyError> {
        Self::for_group(&spec.group, &spec.topics).map(|(topology, _)| topology)
    }

    /// Adds what `other` has and this lacks.
    pub fn merge(&mut self, other: &Topology) {
        for exchange in &other.exchanges {
            if !self.exchanges.contains(exchange) {
                self.exchanges.push(exchange.clone());
            }
        }
        for queue in &other.queues {
            self.add_queue(queue.clone());
        }
        for binding in &other.bindings {
            self.add_binding(binding.clone());
        }
    }

    fn add_queue(&mut self, queue: Queue) {
        if !self.queues.contains(&queue) {
            self.queues.push(queue);
        }
    }

    fn add_binding(&mut self, binding: Binding) {
        if !self.bindings.contains(&binding) {
            self.bindings.push(binding);
        }
    }

    /// Declares everything on `channel`: exchanges, then queues, then bindings.
    pub(super) async fn declare(&self, channel: &Channel) -> Result<(), DeclareError> {
        for e in &self.exchanges {
            let kind = match e.kind {
                ExchangeType::Topic => ExchangeKind::Topic,
                ExchangeType::Fanout => ExchangeKind::Fanout,
            };
            let options = ExchangeDeclareOptions {
                durable: e.durable,
                ..ExchangeDeclareOptions::default()
            };
            channel
                .exchange_declare(short_name(&e.name)?, kind, options, table(&e.arguments)?)
                .await
                .map_err(|source| DeclareError::new("exchange", &e.name, source))?;
        }
        for q in &self.queues {
            let options = QueueDeclareOptions {
                durable: q.durable,
                ..QueueDeclareOptions::default()
            };
            channel
                .queue_declare(short_name(&q.name)?, options, table(&q.arguments)?)
                .await
                .map_err(|source| DeclareError::new("queue", &q.name, source))?;
        }
        for b in &self.bindings {
            channel
                .queue_bind(
                    short_name(&b.queue)?,
                    short_name(&b.exchange)?,
                    short_name(&b.routing_key)?,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|source| {
                    let what = format!("{} -> {} ({})", b.exchange, b.queue, b.routing_key);
                    DeclareError::new("binding", &what, source)
                })?;
        }
        Ok(())
    }
}

/// The wait queue of `topic`, also its routing key: `{topic}.wait`.
pub fn wait_queue(topic: &str) -> String {
    format!("{topic}.wait")
}

/// The queue of `group` on `topic`.
pub fn queue_name(topic: &str, group: &str) -> String {
    format!("{topic}.{group}")
}

/// Checks that `name` fits AMQP's 255 bytes.
pub(super) fn check_name(what: &'static str, name: &str) -> Result<(), TopologyError> {
    if name.len() > MAX_NAME {
        return Err(TopologyError::NameTooLong {
            what,
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Why the broker did not accept part of a topology.
#[derive(Debug, thiserror::Error)]
#[error("cannot declare {what} `{name}`: {reason}")]
pub(super) struct DeclareError {
    what: &'static str,
    pub(super) name: String,
    reason: String,
    #[source]
    pub(super) source: Option<Box<lapin::Error>>,
}

impl DeclareError {
    fn new(what: &'static str, name: &str, source: lapin::Error) -> Self {
        Self {
            what,
            name: name.to_owned(),
            reason: source.to_string(),
            source: Some(Box::new(source)),
        }
    }
}

/// `text` as an AMQP short string (exchange, queue and routing key names).
pub(super) fn short_name(text: &str) -> Result<ShortString, DeclareError> {
    ShortString::try_new(text).map_err(|_| DeclareError {
        what: "name",
        name: text.to_owned(),
        reason: "longer than the 255 bytes AMQP allows".into(),
        source: None,
    })
}

fn table(arguments: &[(String, Argument)]) -> Result<FieldTable, DeclareError> {
    let mut table = FieldTable::default();
    for (key, value) in arguments {
        let value = match value {
            Argument::Int(n) => AMQPValue::LongInt(*n),
            Argument::Text(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        };
        table.insert(short_name(key)?, value);
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_group_owns_a_queue_per_topic_bound_by_topic() {
        let topics = ["orders.created".to_owned(), "orders.paid".to_owned()];
        let (t, sources) = Topology::for_group("billing", &topics).unwrap();
        let queues: Vec<&str> = sources.iter().map(|s| s.queue.as_str()).collect();
        assert_eq!(queues, ["orders.created.billing", "orders.paid.billing"]);
        assert!(t
            .queues
            .iter()
            .filter(|q| q.name != UNROUTED_QUEUE)
            .all(|q| q.durable));
        for s in &sources {
            assert!(t.bindings.contains(&Binding {
                queue: s.queue.clone(),
                exchange: EVENTS_EXCHANGE.into(),
                routing_key: s.topic.clone(),
            }));
        }
    }

    #[test]
    fn the_events_exchange_parks_what_no_queue_is_bound_for() {
        let base = Topology::base();
        let events = base
            .exchanges
            .iter()
            .find(|e| e.name == EVENTS_EXCHANGE)
            .unwrap();
        assert_eq!(events.kind, ExchangeType::Topic);
        assert!(events.arguments.contains(&(
            "alternate-exchange".into(),
            Argument::Text(UNROUTED_EXCHANGE.into())
        )));
        let declared_first = base
            .exchanges
            .iter()
            .position(|e| e.name == UNROUTED_EXCHANGE);
        assert_eq!(
            declared_first,
            Some(0),
            "the alternate exchange exists before its user"
        );
        assert!(base.bindings.iter().any(|b| b.queue == UNROUTED_QUEUE));
    }

    #[test]
    fn a_reply_topic_gets_a_private_expiring_queue() {
        let reply = format!("{REPLY_TOPIC_PREFIX}0190");
        let (t, sources) = Topology::for_group(&reply, std::slice::from_ref(&reply)).unwrap();
        assert_eq!(sources[0].queue, reply);
        let queue = t.queues.iter().find(|q| q.name == reply).unwrap();
        assert!(!queue.durable);
        assert_eq!(
            queue.arguments,
            [("x-expires".into(), Argument::Int(REPLY_QUEUE_EXPIRY_MS))]
        );
    }

    #[test]
    fn merging_keeps_one_of_each() {
        let (a, _) = Topology::for_group("g", &["t".into()]).unwrap();
        let (b, _) = Topology::for_group("h", &["t".into()]).unwrap();
        let mut all = Topology::base();
        all.merge(&a);
        all.merge(&b);
        all.merge(&a);
        assert_eq!(all.exchanges.len(), 2);
        assert_eq!(all.queues.len(), 3, "{:?}", all.queues);
        assert_eq!(all.bindings.len(), 3);
    }

    #[test]
    fn a_subscription_builds_the_same_topology_as_its_group() {
        let mut spec = SubscriptionSpec::new(["users.registered"]);
        spec.group = "mailer".into();
        let (by_group, _) = Topology::for_group("mailer", &spec.topics).unwrap();
        assert_eq!(Topology::for_subscription(&spec).unwrap(), by_group);
    }

    #[test]
    fn overlong_names_are_refused() {
        let topic = "t".repeat(250);
        let err = Topology::for_group("group", &[topic]).unwrap_err();
        assert!(matches!(
            err,
            TopologyError::NameTooLong { what: "queue", .. }
        ));
    }
}
