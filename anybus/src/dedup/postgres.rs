//! The PostgreSQL dedup store (feature `postgres`,
//! `postgres://user:password@host:port/database[?max_connections=N]`), shared by every member of
//! a group, and the [`Inbox`] that makes a handler's own writes and its dedup mark one
//! transaction.
//!
//! The store keeps one row per key in the table `anybus_dedup`, which it creates when it
//! connects: `(consumer_group, dedup_key)` is the primary key, `done` says whether the key was
//! handled, and `expires_at` (the database's clock) ends a lease or, for a done key, the TTL.
//! `reserve` is one `INSERT … ON CONFLICT DO UPDATE … WHERE expires_at <= now`, so taking a free
//! or expired key is atomic and of many concurrent reservers exactly one wins. Expired rows are
//! deleted by the store in the background, a bounded batch a minute.

use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres, Row};

use super::{DedupError, DedupStore, Reservation};
use crate::context::{Context, StateMap};
use crate::handler::{BoxFuture, FromContext};

/// How long opening the store may take before the app fails to start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections of the pool when the URL does not say (`?max_connections=N`).
const DEFAULT_MAX_CONNECTIONS: u32 = 16;
/// How often expired rows are deleted, and how many at most each time.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
const SWEEP_BATCH: i64 = 10_000;

/// Creates the table once, whichever member starts first: the advisory lock keeps two members
/// from racing on `CREATE TABLE IF NOT EXISTS` (which is not safe against itself).
const LOCK: &str = "SELECT pg_advisory_xact_lock(7309456207541317491)";
const CREATE: &str = "CREATE TABLE IF NOT EXISTS anybus_dedup (
    consumer_group text NOT NULL,
    dedup_key text NOT NULL,
    done boolean NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (consumer_group, dedup_key)
)";

/// 0 when this call took the key (new, or its lease or TTL ran out), else 2 for done and 1 for
/// leased. No row at all means another reserver inserted the key after this statement's
/// snapshot was taken: it holds a lease.
const RESERVE: &str = "WITH taken AS (
    INSERT INTO anybus_dedup AS d (consumer_group, dedup_key, done, expires_at)
    VALUES ($1, $2, false, clock_timestamp() + make_interval(secs => $3))
    ON CONFLICT (consumer_group, dedup_key) DO UPDATE
        SET done = false, expires_at = EXCLUDED.expires_at
        WHERE d.expires_at <= clock_timestamp()
    RETURNING 0 AS found
)
SELECT found FROM taken
UNION ALL
SELECT CASE WHEN done THEN 2 ELSE 1 END FROM anybus_dedup
    WHERE consumer_group = $1 AND dedup_key = $2 AND NOT EXISTS (SELECT 1 FROM taken)";

const COMPLETE: &str = "INSERT INTO anybus_dedup (consumer_group, dedup_key, done, expires_at)
    VALUES ($1, $2, true, clock_timestamp() + make_interval(secs => $3))
    ON CONFLICT (consumer_group, dedup_key) DO UPDATE
        SET done = true, expires_at = EXCLUDED.expires_at";

/// Marks a leased key done inside the handler's transaction. It locks the row until that
/// transaction ends, and matches nothing if another delivery completed the key first.
const MARK: &str = "UPDATE anybus_dedup
    SET done = true, expires_at = clock_timestamp() + make_interval(secs => $3)
    WHERE consumer_group = $1 AND dedup_key = $2 AND NOT done";

/// Deletes a key only while it is a lease: a completion is never undone.
const RELEASE: &str =
    "DELETE FROM anybus_dedup WHERE consumer_group = $1 AND dedup_key = $2 AND NOT done";

const SWEEP: &str = "DELETE FROM anybus_dedup WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM anybus_dedup WHERE expires_at < clock_timestamp() LIMIT $1))";

/// A [`DedupStore`] on PostgreSQL, and the pool an [`Inbox`] takes its transactions from.
pub struct PostgresDedupStore {
    pool: PgPool,
    /// The URL with the password hidden, for errors.
    shown: String,
    /// The password, to scrub from error texts.
    url: String,
}

impl std::fmt::Debug for PostgresDedupStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresDedupStore")
            .field("store", &self.shown)
            .finish_non_exhaustive()
    }
}

impl PostgresDedupStore {
    /// Connects to the database of `url`, creates the table `anybus_dedup` if it is missing,
    /// and starts sweeping expired rows, within five seconds; the error names the store with its
    /// password hidden. `?max_connections=N` sizes the pool (default 16); other query
    /// parameters go to the PostgreSQL driver.
    pub async fn connect(url: &str) -> Result<Arc<Self>, DedupError> {
        let shown = crate::url::redact(url);
        let failed = |reason: String| DedupError {
            store: shown.clone(),
            reason: super::scrub(url, &reason),
        };
        let (url_for_driver, max_connections) = split_options(url).map_err(&failed)?;
        let open = async {
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(CONNECT_TIMEOUT)
                .connect(&url_for_driver)
                .await?;
            let mut tx = pool.begin().await?;
            sqlx::query(LOCK).execute(&mut *tx).await?;
            sqlx::query(CREATE).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(pool)
        };
        let pool = tokio::time::timeout(CONNECT_TIMEOUT, open)
            .await
            .map_err(|_| failed(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| failed(e.to_string()))?;
        let store = Arc::new(Self {
            pool,
            shown,
            url: url.to_owned(),
        });
        tokio::spawn(sweep(Arc::downgrade(&store)));
        Ok(store)
    }

    /// The pool of connections to the store's database, for queries of the application's own
    /// outside an [`Inbox`].
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn failed(&self, e: &sqlx::Error) -> DedupError {
        DedupError {
            store: self.shown.clone(),
            reason: super::scrub(&self.url, &e.to_string()),
        }
    }
}

/// Takes anybus's own `max_connections` out of the query, leaving the rest to the driver.
fn split_options(url: &str) -> Result<(String, u32), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), DEFAULT_MAX_CONNECTIONS));
    };
    let mut max_connections = DEFAULT_MAX_CONNECTIONS;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("max_connections", n)) => {
                max_connections = n
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("max_connections `{n}` is not a positive number"))?;
            }
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, max_connections))
}

/// Deletes expired rows now and then, for as long as the store lives.
async fn sweep(store: Weak<PostgresDedupStore>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(store) = store.upgrade() else { return };
        if let Err(e) = sqlx::query(SWEEP)
            .bind(SWEEP_BATCH)
            .execute(&store.pool)
            .await
        {
            tracing::debug!(error = %store.failed(&e), "could not sweep expired dedup keys");
        }
    }
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64().max(0.001)
}

impl DedupStore for PostgresDedupStore {
    fn reserve<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Reservation, DedupError>> {
        Box::pin(async move {
            let found = sqlx::query(RESERVE)
                .bind(group)
                .bind(key)
                .bind(seconds(lease))
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.failed(&e))?;
            let found: i32 = match found {
                Some(row) => row.try_get(0).map_err(|e| self.failed(&e))?,
                None => 1,
            };
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
            sqlx::query(COMPLETE)
                .bind(group)
                .bind(key)
                .bind(seconds(ttl))
                .execute(&self.pool)
                .await
                .map(drop)
                .map_err(|e| self.failed(&e))
        })
    }

    fn release<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), DedupError>> {
        Box::pin(async move {
            sqlx::query(RELEASE)
                .bind(group)
                .bind(key)
                .execute(&self.pool)
                .await
                .map(drop)
                .map_err(|e| self.failed(&e))
        })
    }

    fn as_postgres(self: Arc<Self>) -> Option<Arc<PostgresDedupStore>> {
        Some(self)
    }
}

/// The transactional inbox: a handler argument that opens a PostgreSQL transaction in which
/// the message's dedup key is already marked done. What the handler writes in it and the mark
/// commit together or not at all, so the handler's effect happens once even when the message is
/// delivered twice, also if the process dies anywhere between the commit and the ack.
///
/// Available to subscriptions with `dedup` in an app whose dedup store is PostgreSQL
/// ([`AppBuilder::dedup_store`](crate::AppBuilder::dedup_store) with a `postgres://` URL);
/// taking it anywhere else stops the app at start, naming what is missing.
///
/// A handler that begins the transaction must [`commit`](InboxTransaction::commit) it before
/// it returns `Ok`: one that returns `Ok` with the transaction rolled back would leave the
/// message unhandled, so that is a permanent failure. A handler that does not begin it at
/// all is deduplicated as usual (the key is completed after it returns).
///
/// ```no_run
/// use anybus::dedup::{sqlx, Inbox};
/// use anybus::HandlerError;
///
/// #[derive(serde::Deserialize)]
/// struct OrderPlaced {
///     order_id: String,
///     sku: String,
///     quantity: i32,
/// }
///
/// #[anybus::subscriber(topic = "orders", group = "inventory", dedup = "order_id")]
/// async fn reserve_stock(order: OrderPlaced, inbox: Inbox) -> Result<(), HandlerError> {
///     let mut tx = inbox.begin().await?;
///     sqlx::query("INSERT INTO reservations (order_id, sku, quantity) VALUES ($1, $2, $3)")
///         .bind(&order.order_id)
///         .bind(&order.sku)
///         .bind(order.quantity)
///         .execute(&mut *tx)
///         .await?;
///     tx.commit().await?;
///     Ok(())
/// }
/// ```
pub struct Inbox {
    ticket: Arc<crate::pipeline::DedupTicket>,
    store: Arc<PostgresDedupStore>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("key", &self.ticket.key)
            .finish_non_exhaustive()
    }
}

/// Why an inbox transaction could not begin or commit; a transient failure as a handler
/// error, so the message is retried.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] DedupError),
    /// Another delivery of the message completed its key while this one ran (this delivery's
    /// lease had run out): this one must not write.
    #[error("dedup key `{0}` was completed by another delivery; this one must not act on it")]
    AlreadyDone(String),
}

impl Inbox {
    /// Begins the transaction and marks the message's dedup key done in it.
    pub async fn begin(&self) -> Result<InboxTransaction, InboxError> {
        let store = &self.store;
        let mut tx = store.pool.begin().await.map_err(|e| store.failed(&e))?;
        let marked = sqlx::query(MARK)
            .bind(self.ticket.group.as_ref())
            .bind(&self.ticket.key)
            .bind(seconds(self.ticket.ttl))
            .execute(&mut *tx)
            .await
            .map_err(|e| store.failed(&e))?;
        if marked.rows_affected() == 0 {
            return Err(InboxError::AlreadyDone(self.ticket.key.clone()));
        }
        self.ticket.inbox_begun();
        Ok(InboxTransaction {
            tx,
            ticket: Arc::clone(&self.ticket),
            store: Arc::clone(store),
        })
    }

    /// The message's dedup key.
    pub fn key(&self) -> &str {
        &self.ticket.key
    }
}

impl FromContext for Inbox {
    fn check(state: &StateMap) -> Result<(), String> {
        crate::pipeline::DedupTicket::check_inbox(state)
    }

    fn from_context(ctx: &Context) -> Option<Self> {
        let ticket = Arc::clone(ctx.dedup()?);
        let store = Arc::clone(&ticket.store).as_postgres()?;
        Some(Self { ticket, store })
    }
}

/// A transaction of the [`Inbox`]: run the handler's queries on it (`&mut *tx` is a
/// [`PgConnection`]) and [`commit`](Self::commit). Dropped without a commit, it rolls back,
/// dedup mark included.
pub struct InboxTransaction {
    tx: sqlx::Transaction<'static, Postgres>,
    ticket: Arc<crate::pipeline::DedupTicket>,
    store: Arc<PostgresDedupStore>,
}

impl std::fmt::Debug for InboxTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxTransaction")
            .field("key", &self.ticket.key)
            .finish_non_exhaustive()
    }
}

impl InboxTransaction {
    /// Commits the handler's writes and the dedup mark together.
    pub async fn commit(self) -> Result<(), InboxError> {
        self.tx.commit().await.map_err(|e| self.store.failed(&e))?;
        self.ticket.inbox_committed();
        Ok(())
    }

    /// Rolls back the handler's writes and the dedup mark. A handler that rolls back on
    /// purpose and returns `Ok` has its key completed as if it had not begun a transaction.
    pub async fn rollback(self) -> Result<(), InboxError> {
        self.tx
            .rollback()
            .await
            .map_err(|e| self.store.failed(&e))?;
        self.ticket.inbox_rolled_back();
        Ok(())
    }
}

impl std::ops::Deref for InboxTransaction {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for InboxTransaction {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}
