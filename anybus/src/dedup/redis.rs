//! The Redis dedup store (feature `redis`, `redis://[user:password@]host:port[/db]`), shared by
//! every member of a group.
//!
//! A key is the Redis string `anybus:dedup:{group length}:{group}:{key}`: `lease:{holder}` while
//! a delivery holds it (expiring with the lease, `PX`), `done` once handled (expiring with the
//! TTL). `reserve`, `release` and `extend` are Lua scripts, so each transition is one atomic step
//! on the server; `complete` is a plain `SET … PX`. The connection manager reconnects by itself;
//! a command that fails is a [`DedupError`], which the pipeline turns into a transient failure.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::{DedupError, DedupStore, Reservation};
use crate::handler::BoxFuture;

/// How long opening the store may take before the app fails to start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Takes a lease (`ARGV[1]` ms, for holder `ARGV[2]`) unless the key is done or leased: 0
/// fresh, 1 in progress, 2 done.
const RESERVE: &str = r"
local v = redis.call('GET', KEYS[1])
if v == 'done' then return 2 end
if v then return 1 end
redis.call('SET', KEYS[1], 'lease:' .. ARGV[2], 'PX', ARGV[1])
return 0
";

/// Deletes a key only while it is holder `ARGV[1]`'s lease: a completion is never undone, and
/// another holder's lease never freed.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == 'lease:' .. ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
";

/// Renews a key's expiry (`ARGV[1]` ms) only while it is holder `ARGV[2]`'s lease.
const EXTEND: &str = r"
if redis.call('GET', KEYS[1]) == 'lease:' .. ARGV[2] then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 0
";

/// A [`DedupStore`] on Redis.
pub struct RedisDedupStore {
    connection: ConnectionManager,
    reserve: Script,
    release: Script,
    extend: Script,
    /// The URL with the password hidden, for errors.
    shown: String,
}

impl std::fmt::Debug for RedisDedupStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDedupStore")
            .field("store", &self.shown)
            .finish_non_exhaustive()
    }
}

impl RedisDedupStore {
    /// Connects to the Redis server of `url` and checks that it answers (`PING`), within five
    /// seconds; the error names the store with its password hidden. The password may come
    /// from `?password_env=NAME` or `?password_file=PATH` instead of the URL.
    pub async fn connect(url: &str) -> Result<Self, DedupError> {
        let resolved = super::resolve_url(url)?;
        let url = resolved.as_str();
        let shown = crate::url::redact(url);
        let failed = |reason: String| DedupError::new(url, reason);
        let client = redis::Client::open(url).map_err(|e| failed(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(CONNECT_TIMEOUT)
            .set_number_of_retries(1);
        let open = async {
            let mut connection = ConnectionManager::new_with_config(client, config).await?;
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await?;
            Ok::<_, redis::RedisError>(connection)
        };
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, open)
            .await
            .map_err(|_| failed(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| failed(e.to_string()))?;
        Ok(Self {
            connection,
            reserve: Script::new(RESERVE),
            release: Script::new(RELEASE),
            extend: Script::new(EXTEND),
            shown,
        })
    }

    fn failed(&self, e: &redis::RedisError) -> DedupError {
        DedupError {
            store: self.shown.clone(),
            reason: e.to_string(),
        }
    }
}

/// The Redis key of `key` in `group`: the group's length first, so that no group and key can
/// spell another pair's name.
fn redis_key(group: &str, key: &str) -> String {
    format!("anybus:dedup:{}:{group}:{key}", group.len())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl DedupStore for RedisDedupStore {
    fn reserve<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
        holder: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Reservation, DedupError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let found: i64 = self
                .reserve
                .key(redis_key(group, key))
                .arg(millis(lease))
                .arg(holder)
                .invoke_async(&mut connection)
                .await
                .map_err(|e| self.failed(&e))?;
            Ok(match found {
                0 => Reservation::Fresh,
                2 => Reservation::Done,
                _ => Reservation::InProgress,
            })
        })
    }

    fn complete<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), DedupError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            redis::cmd("SET")
                .arg(redis_key(group, key))
                .arg("done")
                .arg("PX")
                .arg(millis(ttl))
                .query_async::<()>(&mut connection)
                .await
                .map_err(|e| self.failed(&e))
        })
    }

    fn release<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), DedupError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            self.release
                .key(redis_key(group, key))
                .arg(holder)
                .invoke_async::<i64>(&mut connection)
                .await
                .map(drop)
                .map_err(|e| self.failed(&e))
        })
    }

    fn extend<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
        holder: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), DedupError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            self.extend
                .key(redis_key(group, key))
                .arg(millis(lease))
                .arg(holder)
                .invoke_async::<i64>(&mut connection)
                .await
                .map(drop)
                .map_err(|e| self.failed(&e))
        })
    }
}
