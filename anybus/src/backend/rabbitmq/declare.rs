//! Declaring a [`Topology`] on a channel, and what the broker said when it refused.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use super::topology::{Argument, ExchangeType, Topology};

impl Topology {
    /// Declares everything on `channel`: exchanges, then queues, then bindings.
    pub(super) async fn declare(&self, channel: &Channel) -> Result<(), DeclareError> {
        for e in &self.exchanges {
            let kind = match e.kind {
                ExchangeType::Topic => ExchangeKind::Topic,
                ExchangeType::Fanout => ExchangeKind::Fanout,
                ExchangeType::Direct => ExchangeKind::Direct,
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
