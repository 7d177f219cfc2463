//! `kafka://host:port[,host:port][?option=value&…]`: where the brokers are, and how to talk to
//! them.
//!
//! Options anybus reads itself: `partitions` (for topics it creates, default 4, at most
//! 2³¹−1), `replication` (their replication factor, default 1, at most 32767),
//! `commit_interval_ms` (how often completed offsets are committed, default 1000). A number
//! out of range is refused with the option named. Every other option is a librdkafka property
//! given to the producer, the consumers and the admin client, percent-decoded, e.g.
//! `fetch.wait.max.ms=10` or `security.protocol=SASL_SSL&sasl.password=…` (redacted in every
//! message). A value runs up to the next `&name=`, so an unencoded `&` stays in it.

use std::fmt;
use std::time::Duration;

use rdkafka::ClientConfig;

use crate::url::{decode, is_secret, query_options, BrokerUrl, ConnectError};

/// A parsed `kafka://` URL. `Debug` shows the value of a secret property as `***`.
#[derive(Clone)]
pub(super) struct KafkaUrl {
    pub(super) bootstrap: String,
    /// Kafka's partition count is an `INT32` on the wire.
    pub(super) partitions: i32,
    /// Kafka's replication factor is an `INT16` on the wire; rdkafka takes it as `i32`.
    pub(super) replication: i32,
    pub(super) commit_interval: Duration,
    properties: Vec<(String, String)>,
}

impl KafkaUrl {
    /// Reads the URL. Nothing of a secret is quoted in an error: every piece of the URL that
    /// an error names goes through [`BrokerUrl::show`].
    pub(super) fn parse(url: &BrokerUrl) -> Result<Self, ConnectError> {
        let malformed = |reason: String| ConnectError::MalformedUrl {
            url: url.to_string(),
            reason,
        };
        let (hosts, query) = match url.rest().split_once('?') {
            Some((hosts, query)) => (hosts, Some(query)),
            None => (url.rest(), None),
        };
        if hosts.contains('@') {
            return Err(malformed(
                "a kafka:// URL takes no user or password before the brokers: give SASL \
                 credentials as options, `?sasl.username=…&sasl.password=…`"
                    .into(),
            ));
        }
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
                        "`{}` is not host:port (a bootstrap server needs its port)",
                        url.show(host)
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
        let query_at = url.expose().len() - query.map_or(0, str::len);
        for option in query
            .map(|q| query_options(q, query_at))
            .unwrap_or_default()
        {
            let Some((key, value)) = option.text.split_once('=') else {
                return Err(malformed(format!(
                    "option `{}` has no `=value`",
                    url.show(option.text)
                )));
            };
            let Ok(value) = decode(value) else {
                return Err(malformed(format!(
                    "the value of option `{}` is not UTF-8 once percent-decoded",
                    url.show(key)
                )));
            };
            // A number outside what Kafka's protocol carries is refused, never truncated.
            let number = |what: &str, max: u64| {
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| {
                        malformed(format!(
                            "`{what}` must be a whole number from 1 to {max}, not `{}`",
                            url.show(&option.text[key.len() + 1..])
                        ))
                    })
            };
            match key {
                "partitions" => {
                    parsed.partitions = number(key, i32::MAX as u64)?.try_into().expect("checked")
                }
                "replication" => {
                    parsed.replication = number(key, i16::MAX as u64)?.try_into().expect("checked")
                }
                "commit_interval_ms" => {
                    parsed.commit_interval = Duration::from_millis(number(key, u64::MAX)?)
                }
                _ => parsed.properties.push((key.to_owned(), value.into_owned())),
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

impl fmt::Debug for KafkaUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let properties: Vec<(&str, &str)> = self
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret(k) { "***" } else { v.as_str() }))
            .collect();
        f.debug_struct("KafkaUrl")
            .field("bootstrap", &self.bootstrap)
            .field("partitions", &self.partitions)
            .field("replication", &self.replication)
            .field("commit_interval", &self.commit_interval)
            .field("properties", &properties)
            .finish()
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

    #[test]
    fn values_are_percent_decoded_and_keep_an_unencoded_ampersand() {
        let k = parse("kafka://a:1?sasl.password=p%40ss%26w&sasl.username=u&x=abc&xyz").unwrap();
        let config = k.client_config(Role::Consumer);
        assert_eq!(config.get("sasl.password"), Some("p@ss&w"));
        assert_eq!(config.get("x"), Some("abc&xyz"));
        assert!(!format!("{k:?}").contains("p@ss"), "{k:?}");
    }

    #[test]
    fn a_malformed_option_or_host_shows_nothing_of_a_password() {
        let err = parse("kafka://a:1?flag&sasl.password=abc&xyz")
            .unwrap_err()
            .to_string();
        assert!(err.contains("option `flag` has no `=value`"), "{err}");
        assert!(!err.contains("abc") && !err.contains("xyz"), "{err}");
        let err = parse("kafka://u:pa?ss@h:1").unwrap_err().to_string();
        assert!(err.contains("`u:***` is not host:port"), "{err}");
        assert!(!err.contains("pa") && !err.contains("ss@"), "{err}");
        let err = parse("kafka://u:secret@h:1").unwrap_err().to_string();
        assert!(err.contains("sasl.username"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Neither a parsed Kafka URL's `Debug` nor an error about one shows a piece of the
        /// SASL password, whatever its characters (a raw `&name=` excepted: that starts the
        /// next option, by the URL's own rules).
        #[test]
        fn no_sasl_password_is_ever_shown((secret, written) in crate::url::leaks::password()) {
            proptest::prop_assume!(secret == written || !written.contains('&'));
            let query = format!("x={written}");
            proptest::prop_assume!(crate::url::query_options(&query, 0).len() == 1);
            for url in [
                format!("kafka://h:9092?sasl.password={written}&linger.ms=5"),
                format!("kafka://h:9092?sasl.password={written}&flag&partitions=0"),
                format!("kafka://h:9092?sasl.password={written}&partitions=99999999999"),
                format!("kafka://h:9092,h2?sasl.password={written}"),
                format!("kafka://u:{written}@h:9092"),
            ] {
                let Ok(broker) = BrokerUrl::parse(&url) else { continue };
                let shown = match KafkaUrl::parse(&broker) {
                    Ok(k) => format!("{k:?}"),
                    Err(e) => format!("{e} {e:?}"),
                };
                crate::url::leaks::assert_hidden(&shown, &secret, &written);
            }
        }
    }

    #[test]
    fn numbers_kafka_cannot_carry_are_refused_with_the_option_named() {
        // 2^32 + 4 was read as 4 partitions, and 65537 as a replication factor of 1.
        for (url, option) in [
            ("kafka://a:1?partitions=4294967300", "`partitions`"),
            ("kafka://a:1?partitions=2147483648", "`partitions`"),
            ("kafka://a:1?replication=65537", "`replication`"),
            ("kafka://a:1?replication=32768", "`replication`"),
            ("kafka://a:1?commit_interval_ms=-5", "`commit_interval_ms`"),
        ] {
            let err = parse(url).unwrap_err().to_string();
            assert!(err.contains(option), "{url}: {err}");
        }
        let k = parse("kafka://a:1?partitions=2147483647&replication=32767").unwrap();
        assert_eq!(
            (k.partitions, k.replication),
            (i32::MAX, i32::from(i16::MAX))
        );
    }
}
