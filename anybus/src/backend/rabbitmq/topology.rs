//! The exchanges, queues and bindings a subscription needs, as plain data.
//!
//! Every event goes through one durable topic exchange, [`EVENTS_EXCHANGE`], with its topic as
//! the routing key. A consumer group owns one durable queue per topic, `{topic}.{group}` (with
//! `%` and `.` of the group encoded, see [`group_queue`]: no two pairs share a queue), bound to
//! that exchange with the topic as binding key: every group gets every event once, and the
//! members of a group share the queue. An event whose topic no queue is bound to is not lost: the
//! events exchange hands it to its alternate exchange, [`UNROUTED_EXCHANGE`], which keeps it in
//! [`UNROUTED_QUEUE`] (bounded: once full, publishing such events is refused with an error).
//! The app's private reply topic (`anybus.replies.<uuid>`, consumed by a group of the same
//! name) gets a non-durable queue, [`reply_queue`], which the broker deletes a minute after its
//! app is gone. Retry copies that are not due yet go to [`WAIT_EXCHANGE`], apart from the events,
//! so that no topic and no pattern subscription ever routes into a wait queue.
//!
//! A [`Topology`] is what one consumer declares before it consumes; the connection remembers
//! every topology declared through it and declares them all again on each new connection, so a
//! broker restart or a deleted queue heals. Declaring is idempotent: the broker accepts a
//! declaration equal to what exists. A group queue that earlier versions named otherwise is
//! listed in [`Topology::superseded`], for the connection to unbind from its topic.
//!
//! ```
//! use anybus::backend::rabbitmq::topology::{Binding, Topology, EVENTS_EXCHANGE};
//!
//! let (topology, sources) = Topology::for_group("inventory", &["orders.created".into()]).unwrap();
//! assert_eq!(sources[0].queue, "orders.created.inventory");
//! let (_, dotted) = Topology::for_group("eu.inventory", &["orders.created".into()]).unwrap();
//! assert_eq!(dotted[0].queue, "orders.created.eu%2Einventory");
//! assert!(topology.bindings.contains(&Binding {
//!     queue: "orders.created.inventory".into(),
//!     exchange: EVENTS_EXCHANGE.into(),
//!     routing_key: "orders.created".into(),
//! }));
//! ```

pub use super::naming::{group_queue, reply_queue, wait_queue};
use crate::subscription::SubscriptionSpec;

/// The topic exchange every event is published to, with its topic as routing key.
pub const EVENTS_EXCHANGE: &str = "anybus";
/// The direct exchange retry copies wait through: each wait queue is bound to it with its retry
/// topic as routing key.
pub const WAIT_EXCHANGE: &str = "anybus.wait";
/// The alternate exchange of [`EVENTS_EXCHANGE`]: where events go that no queue is bound for.
pub const UNROUTED_EXCHANGE: &str = "anybus.unrouted";
/// The queue that keeps unrouted events, for an operator to inspect or move.
pub const UNROUTED_QUEUE: &str = "anybus.unrouted";
/// How many unrouted events [`UNROUTED_QUEUE`] keeps; beyond it the broker refuses the publish.
pub const UNROUTED_LIMIT: i32 = 100_000;
/// How long a reply queue outlives its last consumer, in milliseconds.
pub const REPLY_QUEUE_EXPIRY_MS: i32 = 60_000;

/// AMQP names (exchanges, queues, routing keys) are at most 255 bytes.
pub(super) const MAX_NAME: usize = 255;

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
    /// A group's queue would be one anybus keeps for itself.
    #[error("the queue of group `{group}` on topic `{topic}` would be `{queue}`, which anybus keeps for itself")]
    Reserved {
        /// The topic.
        topic: String,
        /// The group.
        group: String,
        /// The queue.
        queue: String,
    },
}

/// The kind of an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeType {
    /// Routes by routing key against binding patterns.
    Topic,
    /// Routes to every bound queue.
    Fanout,
    /// Routes by routing key equal to the binding key.
    Direct,
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

/// A group queue under the name earlier versions gave it (`{topic}.{group}`, which could be
/// another pair's), and the queue that replaces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superseded {
    /// The binding earlier versions made: the old name, the events exchange, the topic.
    pub binding: Binding,
    /// The queue the group consumes now.
    pub replacement: String,
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
    /// Bindings of earlier versions' group queues, to remove.
    pub superseded: Vec<Superseded>,
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
                    name: WAIT_EXCHANGE.into(),
                    kind: ExchangeType::Direct,
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
            superseded: Vec::new(),
        }
    }

    /// What a member of `group` consuming `topics` needs (the base included), and the queue of
    /// each topic, in the order of `topics`.
    pub fn for_group(group: &str, topics: &[String]) -> Result<(Self, Vec<Source>), TopologyError> {
        let mut topology = Self::base();
        let mut sources = Vec::with_capacity(topics.len());
        for topic in topics {
            check_name("topic", topic)?;
            let reply = crate::names::is_reply_topic(topic) && topic == group;
            let queue = if reply {
                reply_queue(topic)
            } else {
                group_queue(topic, group)
            };
            check_name("queue", &queue)?;
            if queue == UNROUTED_QUEUE {
                return Err(TopologyError::Reserved {
                    topic: topic.clone(),
                    group: group.to_owned(),
                    queue,
                });
            }
            let superseded = if reply {
                // A reply queue of an earlier version expired a minute after its app stopped.
                None
            } else {
                super::naming::superseded_group_queue(topic, group)
            };
            if let Some(old) = superseded {
                let superseded = Superseded {
                    binding: Binding {
                        queue: old,
                        exchange: EVENTS_EXCHANGE.into(),
                        routing_key: topic.clone(),
                    },
                    replacement: queue.clone(),
                };
                if !topology.superseded.contains(&superseded) {
                    topology.superseded.push(superseded);
                }
            }
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

    /// Adds the wait queue of `topic` (see [`wait_queue`]): a durable queue bound to
    /// [`WAIT_EXCHANGE`] with `topic` as routing key, whose messages, once their per-message TTL
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
            queue,
            exchange: WAIT_EXCHANGE.into(),
            routing_key: topic.into(),
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
        for superseded in &other.superseded {
            if !self.superseded.contains(superseded) {
                self.superseded.push(superseded.clone());
            }
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
        let reply = format!("{}0190", crate::names::REPLY_TOPIC_PREFIX);
        let (t, sources) = Topology::for_group(&reply, std::slice::from_ref(&reply)).unwrap();
        assert_eq!(sources[0].queue, reply_queue(&reply));
        assert!(t.superseded.is_empty(), "a reply queue expires by itself");
        let queue = t
            .queues
            .iter()
            .find(|q| q.name == sources[0].queue)
            .unwrap();
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
        assert_eq!(all.exchanges.len(), 3);
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
    fn groups_whose_names_run_into_each_other_get_queues_of_their_own() {
        let (_, a) = Topology::for_group("b.c", &["a".into()]).unwrap();
        let (_, b) = Topology::for_group("c", &["a.b".into()]).unwrap();
        assert_ne!(a[0].queue, b[0].queue);
        assert_eq!(
            b[0].queue, "a.b.c",
            "a group without `.` keeps its queue's name"
        );
    }

    #[test]
    fn a_dotted_groups_old_queue_is_superseded_by_its_new_one() {
        let (t, sources) = Topology::for_group("b.c", &["a".into()]).unwrap();
        assert_eq!(
            t.superseded,
            [Superseded {
                binding: Binding {
                    queue: "a.b.c".into(),
                    exchange: EVENTS_EXCHANGE.into(),
                    routing_key: "a".into(),
                },
                replacement: sources[0].queue.clone(),
            }]
        );
        let (plain, _) = Topology::for_group("c", &["a.b".into()]).unwrap();
        assert!(plain.superseded.is_empty());
        let mut all = plain;
        all.merge(&t);
        all.merge(&t);
        assert_eq!(all.superseded, t.superseded);
    }

    #[test]
    fn a_wait_queue_is_bound_to_the_wait_exchange_by_its_topic() {
        let mut t = Topology::base();
        t.add_wait("o.retry.g").unwrap();
        assert!(t.waits_for("o.retry.g"));
        assert_eq!(
            t.bindings.last(),
            Some(&Binding {
                queue: wait_queue("o.retry.g"),
                exchange: WAIT_EXCHANGE.into(),
                routing_key: "o.retry.g".into(),
            }),
            "no routing key of the events exchange leads into a wait queue"
        );
        let (_, group) = Topology::for_group("wait", &["o.retry.g".into()]).unwrap();
        assert_ne!(group[0].queue, wait_queue("o.retry.g"));
    }

    #[test]
    fn a_group_cannot_take_the_unrouted_queue() {
        let err = Topology::for_group("unrouted", &["anybus".into()]).unwrap_err();
        assert!(matches!(err, TopologyError::Reserved { .. }), "{err:?}");
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
