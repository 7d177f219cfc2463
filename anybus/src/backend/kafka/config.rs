//! `kafka://host:port[,host:port][?option=value&…]`: where the brokers are, and how to talk to
//! them.
//!
//! Options anybus reads itself: `partitions` (for topics it creates, default 4), `replication`
//! (their replication factor, default 1), `commit_interval_ms` (how often completed offsets are
//! committed, default 1000). Every other option is a librdkafka property given to the
//! producer, the consumers and the admin client as it is, e.g. `fetch.wait.max.ms=10` or
//! `security.protocol=SASL_SSL&sasl.password=…` (redacted in every message).

use std::time::Duration;

use rdkafka::ClientConfig;

use crate::url::{BrokerUrl, ConnectError};

/// A parsed `kafka://` URL.
#[derive(Clone, Debug)]
pub(super) struct KafkaUrl {
    pub(super) bootstrap: String,
    pub(super) partitions: u32,
    pub(super) replication: i32,
    pub(super) commit_interval: Duration,
    properties: Vec<(String, String)>,
}

impl KafkaUrl {
    pub(super) fn parse(url: &BrokerUrl) -> Result<Self, ConnectError> {
        let malformed = |reason: String| ConnectError::MalformedUrl {
            url: url.to_string(),
            reason,
        };
        let (hosts, query) = match url.rest().split_once('?') {
            Some((hosts, query)) => (hosts, Some(query)),
            None => (url.rest(), None),
        };
        let hosts = hosts.trim_end_matches('/');
        if hosts.is_empty() {
            return Err(malformed(
                "no bootstrap server: write kafka://host:port[,host:port]".into(),
            ));
        }
        for host in hosts.split(',') {
            match host.rsplit_once(':') {
                Some((name, port)) if !name.is_empty() && port.parse::<u16>().is_ok() => {}
                _ => {
                    return Err(malformed(format!(
                        "`{host}` is not host:port (a bootstrap server needs its port)"
                    )))
                }
            }
        }
        let mut parsed = Self {
            bootstrap: hosts.to_owned(),
            partitions: 4,
            replication: 1,
            commit_interval: Duration::from_secs(1),
            properties: Vec::new(),
        };
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(malformed(format!("option `{pair}` has no `=value`")));
            };
            let number = |what: &str| {
                value.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    malformed(format!("`{what}` must be a positive number, not `{value}`"))
                })
            };
            match key {
                "partitions" => parsed.partitions = number(key)? as u32,
                "replication" => parsed.replication = number(key)? as i32,
                "commit_interval_ms" => {
                    parsed.commit_interval = Duration::from_millis(number(key)?)
                }
                _ => parsed.properties.push((key.to_owned(), value.to_owned())),
            }
        }
        Ok(parsed)
    }

    /// Settings for one kind of client: the brokers and those of the user's properties that
    /// apply to it (librdkafka warns about a consumer property given to a producer).
    pub(super) fn client_config(&self, role: Role) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (key, value) in &self.properties {
            if Role::of(key).is_none_or(|r| r == role) {
                config.set(key, value);
            }
        }
        config
    }

    /// Sets `key` unless the user's URL set it.
    pub(super) fn default(&self, config: &mut ClientConfig, key: &str, value: &str) {
        if !self.properties.iter().any(|(k, _)| k == key) {
            config.set(key, value);
        }
    }

    /// Sets `key`, whatever the URL said: settings our delivery promise depends on.
    pub(super) fn require(config: &mut ClientConfig, key: &str, value: &str) {
        config.set(key, value);
    }
}

/// The kind of client a property is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    Consumer,
    Producer,
    Admin,
}

impl Role {
    /// Which client a librdkafka property belongs to only, if it belongs to one only.
    fn of(key: &str) -> Option<Self> {
        const CONSUMER: &[&str] = &[
            "fetch.",
            "group.",
            "session.timeout.ms",
            "heartbeat.interval.ms",
            "max.poll.",
            "auto.offset.reset",
            "auto.commit",
            "enable.auto.",
            "partition.assignment.strategy",
            "isolation.level",
            "queued.",
            "check.crcs",
            "enable.partition.eof",
        ];
        const PRODUCER: &[&str] = &[
            "acks",
            "request.required.acks",
            "linger.ms",
            "queue.buffering.",
            "batch.",
            "compression.",
            "message.timeout.ms",
            "delivery.timeout.ms",
            "enable.idempotence",
            "retries",
            "message.send.max.retries",
            "retry.backoff",
            "transactional.id",
            "partitioner",
            "sticky.partitioning",
        ];
        if CONSUMER.iter().any(|p| key.starts_with(p)) {
            Some(Self::Consumer)
        } else if PRODUCER.iter().any(|p| key.starts_with(p)) {
            Some(Self::Producer)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<KafkaUrl, ConnectError> {
        KafkaUrl::parse(&BrokerUrl::parse(url).unwrap())
    }

    #[test]
    fn reads_hosts_and_options() {
        let k = parse("kafka://a:9092,b:9093?partitions=6&fetch.wait.max.ms=10").unwrap();
        assert_eq!(k.bootstrap, "a:9092,b:9093");
        assert_eq!(k.partitions, 6);
        assert_eq!(k.properties, [("fetch.wait.max.ms".into(), "10".into())]);
    }

    #[test]
    fn properties_go_to_the_clients_they_are_for() {
        let k = parse("kafka://a:1?fetch.wait.max.ms=10&linger.ms=5&client.id=x").unwrap();
        let consumer = k.client_config(Role::Consumer);
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("10"));
        assert_eq!(consumer.get("linger.ms"), None);
        assert_eq!(consumer.get("client.id"), Some("x"));
        let producer = k.client_config(Role::Producer);
        assert_eq!(producer.get("fetch.wait.max.ms"), None);
        assert_eq!(producer.get("linger.ms"), Some("5"));
        assert_eq!(k.client_config(Role::Admin).get("linger.ms"), None);
    }

    #[test]
    fn a_host_without_port_is_refused_by_name() {
        let err = parse("kafka://a:9092,b").unwrap_err().to_string();
        assert!(err.contains("`b` is not host:port"), "{err}");
        assert!(parse("kafka://").is_err());
        assert!(parse("kafka://a:1?partitions=0").is_err());
    }
}
