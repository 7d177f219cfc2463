//! Duplicate suppression tied to acknowledgement: a [`DedupStore`] remembers which messages a
//! consumer group finished, so that a redelivery of one is acknowledged without calling the
//! handler again.
//!
//! The pipeline of a subscription with `dedup` runs **reserve → handler → complete → ack**
//! (the code that drives it is `anybus/src/pipeline/dedup.rs`, beside the pipeline's other
//! steps; this module holds the stores):
//!
//! - [`Reservation::Fresh`]: this delivery holds a lease on the key; the handler runs. On
//!   success the key is completed (remembered for the store's TTL) and then the message acked;
//!   on failure the lease is released and the retry policy decides.
//! - [`Reservation::Done`]: the message was handled before (a crash came between complete and
//!   ack, or the broker delivered it twice); it is acked without calling the handler, and
//!   counted (`duplicates`).
//! - [`Reservation::InProgress`]: another delivery holds a live lease (another member is
//!   handling it right now); this one is left for redelivery (nacked) without calling the
//!   handler. The lease is renewed while the handler runs ([`DedupStore::extend`]); a member
//!   that crashed after reserving lets its lease expire, and the next delivery takes over.
//!
//! A store that fails before the handler is counted (`store_failures`) and the delivery comes
//! again, after a backoff; it is never skipped. A completion that fails is tried again, with backoff, until the
//! store takes it (the message is not acked meanwhile; if the partition moves to another
//! member, the completion goes on in the background), so a store outage delays work but does
//! not repeat it. What is left is a crash between the handler's effect and the completion, or
//! an outage that outlasts the lease of a partition that moved: the lease runs out and the
//! handler runs again. With PostgreSQL, the `Inbox` (feature `postgres`)
//! closes that gap by making the completion part of the handler's own transaction. Keys are
//! scoped by consumer group, so two groups never suppress each other.

mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::handler::BoxFuture;
use crate::message::Message;
use crate::subscription::DedupKey;

pub use self::memory::MemoryDedupStore;
#[cfg(feature = "postgres")]
pub use self::postgres::{Inbox, InboxError, InboxTransaction, PostgresDedupStore};
#[cfg(feature = "redis")]
pub use self::redis::RedisDedupStore;
/// The PostgreSQL driver the store and the [`Inbox`] use, for the handler's own queries.
#[cfg(feature = "postgres")]
pub use sqlx;

/// What a reservation found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reservation {
    /// Nobody handled the key and nobody holds it: the caller holds it now, for the lease.
    Fresh,
    /// Another delivery holds a lease on the key that has not expired.
    InProgress,
    /// The key was completed and is still remembered.
    Done,
}

/// A store that failed.
#[derive(Clone, Debug, thiserror::Error)]
#[error("dedup store {store}: {reason}")]
pub struct DedupError {
    /// The store (its URL, password redacted).
    pub store: String,
    /// What went wrong.
    pub reason: String,
}

impl DedupError {
    /// The failure `reason` of the store at `url`: the store named with its password hidden,
    /// and the password scrubbed from the reason too (client errors may quote the URL).
    pub(crate) fn new(url: &str, reason: impl fmt::Display) -> Self {
        Self {
            store: crate::url::redact(url),
            reason: crate::url::scrub(url, &reason.to_string()),
        }
    }
}

/// A store's URL as its client gets it: a password from `password_env` or `password_file` put
/// in place, and the user-info checked to read as the redactor reads it.
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) fn resolve_url(url: &str) -> Result<String, DedupError> {
    let resolved = crate::url::resolve_credentials(url).map_err(|e| DedupError::new(url, e))?;
    crate::url::check_credentials(&resolved).map_err(|e| DedupError::new(&resolved, e))?;
    Ok(resolved.into_owned())
}

/// Remembers which keys a consumer group reserved and finished.
///
/// Every operation is scoped by `group`. Implementations make each transition atomic: of many
/// concurrent `reserve` calls on one free key exactly one gets [`Reservation::Fresh`].
///
/// A lease belongs to the `holder` that took it, a token the pipeline makes for each
/// delivery: only that holder renews or releases it. A holder whose lease ran out (its member
/// was cut off from the store for longer than the lease) and was taken over by another
/// delivery therefore cannot free or prolong the new holder's lease.
pub trait DedupStore: Send + Sync + fmt::Debug + 'static {
    /// Takes a lease on `key` for `lease`, for `holder`, unless the key is done or leased by
    /// someone else. An expired lease is taken over.
    fn reserve<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
        holder: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Reservation, DedupError>>;

    /// Marks `key` done, remembered for `ttl`.
    fn complete<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), DedupError>>;

    /// Gives up `holder`'s lease on `key`, so that the next delivery may take it at once. A
    /// key that is done, or leased by another holder, is left alone.
    fn release<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), DedupError>>;

    /// Renews `holder`'s live lease on `key` for another `lease`; a key that is done, leased
    /// by another holder, or whose lease ran out, is left alone. The pipeline renews the lease
    /// of a delivery while its handler (and its in-process retries) run, so a member that is
    /// alive keeps its key however long the handler takes, and only a member that died lets
    /// it go after `lease`. The default renews nothing: a store without it lets a lease run
    /// out under a slow handler.
    fn extend<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
        holder: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), DedupError>> {
        let _ = (group, key, holder, lease);
        Box::pin(std::future::ready(Ok(())))
    }

    /// The store as the PostgreSQL store, which alone can give an [`Inbox`]. Not for other
    /// implementations.
    #[cfg(feature = "postgres")]
    #[doc(hidden)]
    fn as_postgres(self: Arc<Self>) -> Option<Arc<PostgresDedupStore>> {
        None
    }
}

/// Opens the store `url` names: `memory://[?max_entries=N]`, `redis://…` (feature `redis`) or
/// `postgres://…` (feature `postgres`).
pub async fn connect(url: &str) -> Result<Arc<dyn DedupStore>, DedupError> {
    let refused = |reason: String| DedupError::new(url, reason);
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| refused("not a URL: write memory://".into()))?;
    match scheme {
        "memory" => {
            let mut max_entries = memory::DEFAULT_MAX_ENTRIES;
            if let Some((_, query)) = rest.split_once('?') {
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    match pair.split_once('=') {
                        Some(("max_entries", n)) => {
                            max_entries = n.parse().map_err(|_| {
                                refused(format!("max_entries `{n}` is not a number"))
                            })?;
                        }
                        _ => return Err(refused(format!("unknown option `{pair}`"))),
                    }
                }
            }
            Ok(Arc::new(MemoryDedupStore::new(max_entries)))
        }
        #[cfg(feature = "redis")]
        "redis" | "rediss" => Ok(Arc::new(RedisDedupStore::connect(url).await?)),
        #[cfg(not(feature = "redis"))]
        "redis" | "rediss" => Err(refused(
            "the Redis store needs anybus's cargo feature `redis`".into(),
        )),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Ok(PostgresDedupStore::connect(url).await?),
        #[cfg(not(feature = "postgres"))]
        "postgres" | "postgresql" => Err(refused(
            "the PostgreSQL store needs anybus's cargo feature `postgres`".into(),
        )),
        other => Err(refused(format!(
            "unknown scheme `{other}`: the dedup stores are memory://, redis:// and postgres://"
        ))),
    }
}

/// The dedup key of `message` under `by`, or why it has none. (A Kafka record from a producer
/// other than anybus has no message id header; its id is made from its topic, partition and
/// offset, so redeliveries of the record share it, but the same event produced twice does not.
/// A RabbitMQ message without a `message-id` has none, [`MessageId::missing`], and no key:
/// deduplicate such topics by a field or a header.)
///
/// [`MessageId::missing`]: crate::MessageId::missing
pub fn key_of(message: &Message, by: &DedupKey) -> Result<String, KeyError> {
    match by {
        DedupKey::MessageId if message.id().is_missing() => Err(KeyError::Missing(
            "the message has no message id to deduplicate by (it came without one, as a \
             RabbitMQ message without `message-id` does)"
                .into(),
        )),
        DedupKey::MessageId => Ok(message.id().to_string()),
        DedupKey::Header(name) => message
            .headers()
            .get_str(name)
            .map(str::to_owned)
            .ok_or_else(|| {
                KeyError::Missing(format!(
                    "the message has no header `{name}` to deduplicate by"
                ))
            }),
        DedupKey::Function(f) => f.key(message).ok_or_else(|| {
            KeyError::Missing(format!(
                "the dedup key function `{}` found no key",
                f.name()
            ))
        }),
        DedupKey::Field(field) => {
            let value: serde_json::Value =
                serde_json::from_slice(message.payload()).map_err(|e| KeyError::NotJson {
                    field: field.clone(),
                    reason: e.to_string(),
                })?;
            let found = field
                .split('.')
                .try_fold(&value, |inside, name| inside.get(name));
            match found {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(serde_json::Value::Null) | None => Err(KeyError::Missing(format!(
                    "the payload has no field `{field}` to deduplicate by"
                ))),
                Some(other) => Ok(other.to_string()),
            }
        }
    }
}

/// Why a message has no dedup key ([`key_of`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key is a field of the JSON payload, and the payload is not JSON: an undecodable
    /// payload, dead-lettered as one (reason `decode`).
    #[error("the payload is not JSON, so it has no field `{field}`: {reason}")]
    NotJson {
        /// The field the key is read from.
        field: String,
        /// What the JSON parser said.
        reason: String,
    },
    /// The message lacks what its key is made from (a field, a header, the function's answer).
    #[error("{0}")]
    Missing(String),
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::message::Headers;

    #[test]
    fn keys_come_from_the_id_a_header_or_a_field() {
        let mut headers = Headers::new();
        headers.append("x-request-id", Bytes::from_static(b"r-1"));
        let m = Message::new(
            "orders",
            r#"{"order_id":"o-9","n":3,"order":{"order_id":"o-7","lines":{"n":2}}}"#,
        )
        .with_headers(headers);
        assert_eq!(key_of(&m, &DedupKey::MessageId), Ok(m.id().to_string()));
        let without_id = m.clone().with_id(crate::MessageId::missing());
        let no_id = key_of(&without_id, &DedupKey::MessageId)
            .expect_err("no id")
            .to_string();
        assert!(no_id.contains("no message id"), "{no_id}");
        assert_eq!(
            key_of(&m, &DedupKey::Header("x-request-id".into())),
            Ok("r-1".into())
        );
        assert_eq!(
            key_of(&m, &DedupKey::Field("order_id".into())),
            Ok("o-9".into())
        );
        assert_eq!(key_of(&m, &DedupKey::Field("n".into())), Ok("3".into()));
        assert_eq!(
            key_of(&m, &DedupKey::Field("order.order_id".into())),
            Ok("o-7".into())
        );
        assert_eq!(
            key_of(&m, &DedupKey::Field("order.lines.n".into())),
            Ok("2".into())
        );
        let not_nested = key_of(&m, &DedupKey::Field("n.order_id".into()))
            .expect_err("none")
            .to_string();
        assert!(not_nested.contains("`n.order_id`"), "{not_nested}");
        let missing = key_of(&m, &DedupKey::Field("sku".into()))
            .expect_err("no sku")
            .to_string();
        assert!(missing.contains("`sku`"), "{missing}");
        let no_header = key_of(&m, &DedupKey::Header("x-other".into()))
            .expect_err("none")
            .to_string();
        assert!(no_header.contains("`x-other`"), "{no_header}");
        let not_json = Message::new("orders", "not json");
        assert!(matches!(
            key_of(&not_json, &DedupKey::Field("order_id".into())),
            Err(KeyError::NotJson { .. })
        ));
        fn topic_and_key(m: &Message) -> Option<String> {
            let key = std::str::from_utf8(m.key()?).ok()?;
            Some(format!("{}/{key}", m.topic()))
        }
        let by_function = DedupKey::function(topic_and_key);
        assert_eq!(
            key_of(&m, &by_function),
            Err(KeyError::Missing(format!(
                "the dedup key function `{}` found no key",
                std::any::type_name_of_val(&topic_and_key)
            )))
        );
        assert_eq!(
            key_of(&m.clone().with_key("k-1"), &by_function),
            Ok("orders/k-1".into())
        );
    }
}
