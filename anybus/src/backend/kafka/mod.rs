//! The Kafka backend, on librdkafka through `rdkafka`.
//!
//! Each subscription is one member of its consumer group (`group.id` = the subscription's
//! group), assigned partitions by the broker's group protocol (`cooperative-sticky`, so a
//! rebalance moves only the partitions that change owner). Offsets are committed by anybus, never
//! by librdkafka's auto-commit: only the highest contiguous completed offset + 1 of each
//! partition, every `commit_interval`, on revoke and on close (see the `consumer` module). A new group
//! starts at the earliest offset.
//!
//! Publishing goes through one idempotent producer with `acks=all`; a publish resolves with the
//! delivery report. Keys and headers are carried as they are; the message id travels in the
//! `anybus-message-id` header. Topics are created through the admin API: those of subscriptions
//! when the app starts, others the first time something is published to them (an existing topic
//! is left as it is).
//!
//! The URL is `kafka://host:port[,host:port][?options]`; the `config` module lists the options.

mod config;
mod consumer;
mod partitions;
mod poll;
mod record;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use tokio::sync::mpsc;

use self::config::{KafkaUrl, Role};
use self::consumer::{KafkaConsumer, KafkaContext, Shared};
use super::{Backend, BackendError, Consumer, ConsumerConfig, PublishError, TopicSpec};
use crate::handler::BoxFuture;
use crate::message::{header, Message, Origin};
use crate::url::{BrokerUrl, ConnectError};

/// How long `connect` waits for the first broker to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to a Kafka cluster.
pub struct KafkaBackend {
    url: BrokerUrl,
    config: KafkaUrl,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// Topics known to exist, so that publishing declares each at most once.
    declared: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for KafkaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBackend")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl KafkaBackend {
    /// Connects: builds the producer and admin client and waits (at most 5 s) for the cluster's
    /// metadata, so that an unreachable broker fails here rather than in the background.
    pub async fn connect(url: &BrokerUrl) -> Result<Self, ConnectError> {
        let config = KafkaUrl::parse(url)?;
        let unreachable = |reason: String| ConnectError::Unreachable {
            url: url.to_string(),
            reason,
        };
        let mut producer_config = config.client_config(Role::Producer);
        KafkaUrl::require(&mut producer_config, "acks", "all");
        KafkaUrl::require(&mut producer_config, "enable.idempotence", "true");
        config.default(&mut producer_config, "message.timeout.ms", "30000");
        let producer: FutureProducer = producer_config
            .create()
            .map_err(|e| unreachable(format!("cannot create a producer: {e}")))?;
        let admin: AdminClient<DefaultClientContext> =
            config
                .client_config(Role::Admin)
                .create()
                .map_err(|e| unreachable(format!("cannot create an admin client: {e}")))?;
        let probe = producer.clone();
        let bootstrap = config.bootstrap.clone();
        tokio::task::spawn_blocking(move || {
            probe.client().fetch_metadata(None, CONNECT_TIMEOUT).map(drop)
        })
        .await
        .map_err(|e| unreachable(format!("the metadata request failed: {e}")))?
        .map_err(|e| {
            unreachable(format!(
                "no broker at {bootstrap} answered a metadata request within {CONNECT_TIMEOUT:?}: {e}"
            ))
        })?;
        Ok(Self {
            url: url.clone(),
            config,
            producer,
            admin,
            declared: Mutex::default(),
        })
    }

    fn is_declared(&self, topic: &str) -> bool {
        self.declared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(topic)
    }

    async fn create_topics(&self, topics: &[TopicSpec]) -> Result<(), BackendError> {
        let wanted: Vec<&TopicSpec> = topics
            .iter()
            .filter(|t| !self.is_declared(&t.name))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let new = wanted
            .iter()
            .map(|t| {
                let partitions = match t.partitions {
                    None => self.config.partitions,
                    // Kafka counts partitions in an INT32: refused, never truncated.
                    Some(n) => i32::try_from(n).map_err(|_| BackendError::Declare {
                        topic: t.name.clone(),
                        reason: format!("{n} partitions is more than Kafka allows ({})", i32::MAX),
                    })?,
                };
                Ok(NewTopic::new(
                    &t.name,
                    partitions,
                    TopicReplication::Fixed(self.config.replication),
                ))
            })
            .collect::<Result<Vec<NewTopic<'_>>, BackendError>>()?;
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = self
            .admin
            .create_topics(&new, &options)
            .await
            .map_err(|e| BackendError::Declare {
                topic: wanted
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                reason: e.to_string(),
            })?;
        let mut declared = self.declared.lock().unwrap_or_else(PoisonError::into_inner);
        for result in results {
            match result {
                Ok(name) | Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    declared.insert(name);
                }
                Err((name, code)) => {
                    return Err(BackendError::Declare {
                        topic: name,
                        reason: code.to_string(),
                    })
                }
            }
        }
        Ok(())
    }

    async fn send(&self, message: Message) -> Result<Origin, PublishError> {
        let topic = message.topic();
        let rejected = |reason: String| PublishError::Rejected {
            topic: topic.to_owned(),
            reason,
        };
        if !self.is_declared(topic) {
            self.create_topics(&[TopicSpec {
                name: topic.to_owned(),
                partitions: None,
                keep_for: None,
            }])
            .await
            .map_err(|e| rejected(e.to_string()))?;
        }
        // The id's text on the stack: no allocation per message for it.
        let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id = message.id().as_uuid().hyphenated().encode_lower(&mut id);
        let mut headers =
            OwnedHeaders::new_with_capacity(message.headers().len() + 1).insert(Header {
                key: header::MESSAGE_ID,
                value: Some(id.as_bytes()),
            });
        for (name, value) in message.headers().iter() {
            headers = headers.insert(Header {
                key: name,
                value: Some(&value[..]),
            });
        }
        let mut record = FutureRecord::to(topic)
            .payload(&message.payload()[..])
            .headers(headers);
        if let Some(key) = message.key() {
            record = record.key(&key[..]);
        }
        let delivered = self
            .producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| rejected(e.to_string()))?;
        Ok(Origin {
            topic: Arc::clone(&message.origin().topic),
            partition: Some(delivered.partition),
            offset: Some(delivered.offset),
            delivery_tag: None,
            timestamp_ms: delivered.timestamp.to_millis(),
        })
    }

    fn open(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>, BackendError> {
        let failed = |reason: String| BackendError::Broker {
            backend: "kafka",
            reason,
        };
        let mut client = self.config.client_config(Role::Consumer);
        KafkaUrl::require(&mut client, "group.id", &config.group);
        KafkaUrl::require(&mut client, "enable.auto.commit", "false");
        KafkaUrl::require(&mut client, "enable.auto.offset.store", "false");
        self.config
            .default(&mut client, "auto.offset.reset", "earliest");
        self.config.default(
            &mut client,
            "partition.assignment.strategy",
            "cooperative-sticky",
        );
        let shared = Arc::new(Shared::new(config.stats, config.drain_timeout));
        let consumer: BaseConsumer<KafkaContext> = client
            .create_with_context(KafkaContext {
                shared: Arc::clone(&shared),
            })
            .map_err(|e| failed(format!("cannot create a consumer: {e}")))?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| failed(format!("cannot subscribe to {topics:?}: {e}")))?;
        // Batches of up to `batch` deliveries; two in the channel keep the poll thread a batch
        // ahead of the runtime without buffering much more than one batch's worth.
        let (tx, rx) = mpsc::channel(2);
        let batch = config.batch.max(1);
        let commit_interval = self.config.commit_interval;
        let thread_shared = Arc::clone(&shared);
        let runtime = tokio::runtime::Handle::current();
        let consumer = Arc::new(consumer);
        let thread_consumer = Arc::clone(&consumer);
        let thread = std::thread::Builder::new()
            .name(format!("anybus-kafka-{}", config.group))
            .spawn(move || {
                poll::poll_loop(
                    thread_consumer,
                    thread_shared,
                    tx,
                    commit_interval,
                    batch,
                    runtime,
                )
            })
            .map_err(|e| failed(format!("cannot start the poll thread: {e}")))?;
        Ok(Box::new(KafkaConsumer {
            consumer: Some(consumer),
            rx,
            shared,
            thread: Some(thread),
        }))
    }
}

impl Backend for KafkaBackend {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn declare<'a>(&'a self, topics: &'a [TopicSpec]) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(self.create_topics(topics))
    }

    fn consume(
        &self,
        config: ConsumerConfig,
    ) -> BoxFuture<'_, Result<Box<dyn Consumer>, BackendError>> {
        Box::pin(std::future::ready(self.open(config)))
    }

    fn publish(&self, message: Message) -> BoxFuture<'_, Result<Origin, PublishError>> {
        Box::pin(self.send(message))
    }

    fn delete<'a>(&'a self, topics: &'a [String]) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            let failed = |topic: &str, reason: String| BackendError::Declare {
                topic: topic.to_owned(),
                reason: format!("cannot delete: {reason}"),
            };
            let results = self
                .admin
                .delete_topics(&names, &options)
                .await
                .map_err(|e| failed(&names.join(", "), e.to_string()))?;
            let mut declared = self.declared.lock().unwrap_or_else(PoisonError::into_inner);
            for result in results {
                match result {
                    Ok(name) | Err((name, RDKafkaErrorCode::UnknownTopicOrPartition)) => {
                        declared.remove(&name);
                    }
                    Err((name, code)) => return Err(failed(&name, code.to_string())),
                }
            }
            Ok(())
        })
    }
}
