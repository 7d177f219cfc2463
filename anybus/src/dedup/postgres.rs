//! The PostgreSQL dedup store (feature `postgres`,
//! `postgres://user:password@host:port/database[?max_connections=N]`), shared by every member of
//! a group, and the [`Inbox`] that makes a handler's own writes and its dedup mark one
//! transaction.
//!
//! The store keeps one row per key in the table `anybus_dedup`, which it creates when it
//! connects: `(consumer_group, dedup_key)` is the primary key, `done` says whether the key was
//! handled, `holder` who holds a lease, and `expires_at` (the database's clock) ends a lease or,
//! for a done key, the TTL. A table an earlier version created gains the `holder` column at
//! connect; members of an earlier version, still running beside this one, neither set nor check
//! holders, so a lease is its holder's alone only once every member runs this version.
//! `reserve` is one `INSERT … ON CONFLICT DO UPDATE … WHERE expires_at <= now`, so taking a free
//! or expired key is atomic and of many concurrent reservers exactly one wins. Expired rows are
//! deleted by the store in the background, every minute.
//!
//! Keys are stored as they are, unless they hold a zero byte or are longer than 1 KiB (which
//! PostgreSQL's text or its index would refuse): those are stored as a 128-bit hash.
//!
//! Reservations and completions that arrive while others are on their way to the database are
//! sent together, as one statement over arrays (`unnest`): one round trip and one commit for a
//! batch, which is what lets one database keep up with many concurrent deliveries. A lone
//! operation goes at once, so batching adds no wait.

use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres, Row};

use super::{DedupError, DedupStore, Reservation};
use crate::context::{Context, StateMap};
use crate::handler::{BoxFuture, FromContext};

/// How long opening the store may take before the app fails to start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections of the pool when the URL does not say (`?max_connections=N`).
const DEFAULT_MAX_CONNECTIONS: u32 = 16;
/// Batches of each kind in flight at once, and the most operations in one.
const BATCHERS: usize = 2;
const MAX_BATCH: usize = 512;
/// How often expired rows are deleted, and how many at most each time.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
const SWEEP_BATCH: i64 = 10_000;
/// How long a batch statement waits for a row another transaction holds (an inbox transaction
/// of a duplicate delivery still open) before the batch goes one operation at a time.
const LOCK_TIMEOUT_MS: &str = "200";
/// Longer keys are stored hashed.
const MAX_KEY_LEN: usize = 1024;

/// Creates the table once, whichever member starts first: the advisory lock keeps two members
/// from racing on `CREATE TABLE IF NOT EXISTS` (which is not safe against itself).
const LOCK: &str = "SELECT pg_advisory_xact_lock(7309456207541317491)";
const CREATE: &str = "CREATE TABLE IF NOT EXISTS anybus_dedup (
    consumer_group text NOT NULL,
    dedup_key text NOT NULL,
    done boolean NOT NULL,
    expires_at timestamptz NOT NULL,
    holder text,
    PRIMARY KEY (consumer_group, dedup_key)
)";
/// Whether the table has the holder column: a table an earlier version created lacks it.
/// Asked first because `ALTER TABLE` locks the whole table even when it has nothing to do,
/// which would stall every member's statements behind any open inbox transaction. When the
/// column is missing, the `ALTER` waits at most [`ALTER_LOCK_TIMEOUT`] for the table (all
/// members' statements wait behind it meanwhile), and the start fails, saying what to run by
/// hand, if the table stays busy.
const HAS_HOLDER: &str = "SELECT EXISTS (SELECT 1 FROM pg_attribute
    WHERE attrelid = to_regclass('anybus_dedup') AND attname = 'holder' AND NOT attisdropped)";
const ADD_HOLDER: &str = "ALTER TABLE anybus_dedup ADD COLUMN IF NOT EXISTS holder text";
const ALTER_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '1s'";

/// Takes each `(group, key, lease, holder)` of the arrays that is free or expired. For each
/// input row (by its position, from 1): 0 when this statement took it, else 2 for done and 1
/// for leased. A key that another reserver inserted or took after this statement's snapshot
/// shows neither as taken nor as a live row: it comes out as leased, which it is. Rows are
/// inserted in key order, so two batches never wait on each other's rows in a cycle.
const RESERVE: &str = "WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::float8[], $4::text[])
        WITH ORDINALITY AS i(grp, key, lease, holder, n)
), taken AS (
    INSERT INTO anybus_dedup AS d (consumer_group, dedup_key, done, expires_at, holder)
    SELECT grp, key, false, clock_timestamp() + make_interval(secs => lease), holder
        FROM input ORDER BY grp, key
    ON CONFLICT (consumer_group, dedup_key) DO UPDATE
        SET done = false, expires_at = EXCLUDED.expires_at, holder = EXCLUDED.holder
        WHERE d.expires_at <= clock_timestamp()
    RETURNING consumer_group, dedup_key
)
SELECT input.n,
    CASE WHEN t.dedup_key IS NOT NULL THEN 0
         WHEN e.done AND e.expires_at > clock_timestamp() THEN 2
         ELSE 1 END
FROM input
LEFT JOIN taken t ON t.consumer_group = input.grp AND t.dedup_key = input.key
LEFT JOIN anybus_dedup e ON e.consumer_group = input.grp AND e.dedup_key = input.key";

/// Marks each `(group, key)` of the arrays done for its TTL.
const COMPLETE: &str = "INSERT INTO anybus_dedup (consumer_group, dedup_key, done, expires_at)
    SELECT grp, key, true, clock_timestamp() + make_interval(secs => ttl)
        FROM unnest($1::text[], $2::text[], $3::float8[]) AS i(grp, key, ttl)
        ORDER BY grp, key
    ON CONFLICT (consumer_group, dedup_key) DO UPDATE
        SET done = true, expires_at = EXCLUDED.expires_at, holder = NULL";

/// Marks a key done inside the handler's transaction (also when its lease row was swept while
/// the handler ran long). It locks the row until that transaction ends, and affects nothing if
/// another delivery completed the key first.
const MARK: &str = "INSERT INTO anybus_dedup AS d (consumer_group, dedup_key, done, expires_at)
    VALUES ($1, $2, true, clock_timestamp() + make_interval(secs => $3))
    ON CONFLICT (consumer_group, dedup_key) DO UPDATE
        SET done = true, expires_at = EXCLUDED.expires_at, holder = NULL
        WHERE NOT d.done";

/// Renews a key's lease while it is holder `$4`'s live lease. A row that a transaction holds is
/// skipped, not waited for: that is the handler's own inbox transaction, whose lock already
/// keeps every other reserver out until it ends.
const EXTEND: &str = "UPDATE anybus_dedup
    SET expires_at = clock_timestamp() + make_interval(secs => $3)
    WHERE (consumer_group, dedup_key) IN (
        SELECT consumer_group, dedup_key FROM anybus_dedup
        WHERE consumer_group = $1 AND dedup_key = $2 AND NOT done AND holder = $4
            AND expires_at > clock_timestamp()
        FOR UPDATE SKIP LOCKED)";

/// Deletes a key only while it is holder `$3`'s lease: a completion is never undone, and another
/// holder's lease never freed.
const RELEASE: &str = "DELETE FROM anybus_dedup
    WHERE consumer_group = $1 AND dedup_key = $2 AND NOT done AND holder = $3";

/// Deletes up to `$1` expired rows, in key order like the batches and skipping rows that
/// someone holds, so that it never waits on (or deadlocks with) the store's own statements.
const SWEEP: &str = "DELETE FROM anybus_dedup WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM anybus_dedup WHERE expires_at < clock_timestamp()
        ORDER BY consumer_group, dedup_key LIMIT $1 FOR UPDATE SKIP LOCKED))";

/// A [`DedupStore`] on PostgreSQL, and the pool an [`Inbox`] takes its transactions from.
pub struct PostgresDedupStore {
    /// Inbox transactions, releases and the sweep.
    pool: PgPool,
    /// The batched reservations and completions: connections whose statements wait at most
    /// [`LOCK_TIMEOUT_MS`] for a held row.
    batch_pool: PgPool,
    /// Reservations and completions on their way to the batchers.
    reserves: async_channel::Sender<Op<Reservation>>,
    completes: async_channel::Sender<Op<()>>,
    /// The URL as the driver got it: errors name it with the password hidden, and scrub the
    /// password.
    url: String,
}

impl std::fmt::Debug for PostgresDedupStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresDedupStore")
            .field("store", &crate::url::redact(&self.url))
            .finish_non_exhaustive()
    }
}

impl PostgresDedupStore {
    /// Connects to the database of `url`, creates the table `anybus_dedup` if it is missing,
    /// and starts sweeping expired rows, within five seconds; the error names the store with its
    /// password hidden. `?max_connections=N` sizes the pool (default 16); the password may come
    /// from `?password_env=NAME` or `?password_file=PATH` instead of the URL; other query
    /// parameters go to the PostgreSQL driver.
    pub async fn connect(url: &str) -> Result<Arc<Self>, DedupError> {
        let resolved = super::resolve_url(url)?;
        let url = resolved.as_str();
        let failed = |reason: String| DedupError::new(url, reason);
        let (url_for_driver, max_connections) = split_options(url).map_err(&failed)?;
        let open = async {
            let options: PgConnectOptions = url_for_driver.parse()?;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(CONNECT_TIMEOUT)
                .connect_with(options.clone())
                .await?;
            let mut tx = pool.begin().await?;
            sqlx::query(LOCK).execute(&mut *tx).await?;
            sqlx::query(CREATE).execute(&mut *tx).await?;
            let has_holder: bool = sqlx::query_scalar(HAS_HOLDER).fetch_one(&mut *tx).await?;
            if !has_holder {
                sqlx::query(ALTER_LOCK_TIMEOUT).execute(&mut *tx).await?;
                if let Err(e) = sqlx::query(ADD_HOLDER).execute(&mut *tx).await {
                    return Ok(Err(format!(
                        "the table anybus_dedup of an earlier version needs the column `holder`, \
                         and adding it failed ({e}); run `ALTER TABLE anybus_dedup ADD COLUMN \
                         holder text` when no transaction holds the table"
                    )));
                }
            }
            tx.commit().await?;
            let batch_pool = PgPoolOptions::new()
                .max_connections(2 * BATCHERS as u32)
                .acquire_timeout(CONNECT_TIMEOUT)
                .connect_with(options.options([("lock_timeout", LOCK_TIMEOUT_MS)]))
                .await?;
            Ok::<_, sqlx::Error>(Ok((pool, batch_pool)))
        };
        let (pool, batch_pool) = tokio::time::timeout(CONNECT_TIMEOUT, open)
            .await
            .map_err(|_| failed(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| failed(e.to_string()))?
            .map_err(failed)?;
        let (reserves, reserve_ops) = async_channel::unbounded();
        let (completes, complete_ops) = async_channel::unbounded();
        let store = Arc::new(Self {
            pool,
            batch_pool,
            reserves,
            completes,
            url: url.to_owned(),
        });
        for _ in 0..BATCHERS {
            tokio::spawn(batches(
                reserve_ops.clone(),
                Arc::downgrade(&store),
                reserve_batch,
            ));
            tokio::spawn(batches(
                complete_ops.clone(),
                Arc::downgrade(&store),
                complete_batch,
            ));
        }
        tokio::spawn(sweep(Arc::downgrade(&store)));
        Ok(store)
    }

    /// The pool of connections to the store's database, for queries of the application's own
    /// outside an [`Inbox`].
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn failed(&self, e: &sqlx::Error) -> DedupError {
        DedupError::new(&self.url, e)
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
        // Batch after batch until the expired rows are gone, so the table keeps up with any
        // message rate.
        loop {
            match sqlx::query(SWEEP)
                .bind(SWEEP_BATCH)
                .execute(&store.pool)
                .await
            {
                Ok(done) if done.rows_affected() >= SWEEP_BATCH as u64 => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(error = %store.failed(&e), "could not sweep expired dedup keys");
                    break;
                }
            }
        }
    }
}

/// One reservation or completion waiting for its batch, and where its answer goes.
struct Op<T> {
    group: String,
    key: String,
    /// Who takes the lease (empty for a completion).
    holder: String,
    /// The lease or the TTL.
    time: Duration,
    answer: tokio::sync::oneshot::Sender<Result<T, DedupError>>,
}

/// Takes what is waiting (at least one operation, at most [`MAX_BATCH`]) and runs it as one
/// statement, until the store is dropped.
async fn batches<T, F>(
    ops: async_channel::Receiver<Op<T>>,
    store: Weak<PostgresDedupStore>,
    run: fn(Arc<PostgresDedupStore>, Vec<Op<T>>) -> F,
) where
    F: std::future::Future<Output = ()>,
{
    while let Ok(first) = ops.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let Some(store) = store.upgrade() else { return };
        run(store, batch).await;
    }
}

/// The columns of a batch statement: one entry per distinct key.
#[derive(Default)]
struct Rows {
    groups: Vec<String>,
    keys: Vec<String>,
    times: Vec<f64>,
    holders: Vec<String>,
}

impl Rows {
    fn len(&self) -> usize {
        self.groups.len()
    }

    /// The `i`-th row alone.
    fn one(&self, i: usize) -> Rows {
        Rows {
            groups: self.groups[i..=i].to_vec(),
            keys: self.keys[i..=i].to_vec(),
            times: self.times[i..=i].to_vec(),
            holders: self.holders[i..=i].to_vec(),
        }
    }
}

/// The operations of `batch` with their first occurrence only: one statement may not touch a
/// row twice. `repeats[i]` is the index in the result of the i-th operation.
fn distinct<T>(batch: &[Op<T>]) -> (Rows, Vec<usize>) {
    let mut first: std::collections::HashMap<(&str, &str), usize> =
        std::collections::HashMap::with_capacity(batch.len());
    let mut rows = Rows::default();
    let repeats = batch
        .iter()
        .map(|op| {
            *first.entry((&op.group, &op.key)).or_insert_with(|| {
                rows.groups.push(op.group.clone());
                rows.keys.push(op.key.clone());
                rows.times.push(seconds(op.time));
                rows.holders.push(op.holder.clone());
                rows.len() - 1
            })
        })
        .collect();
    (rows, repeats)
}

/// Runs the reservation statement for the given keys; one state per key, in order.
async fn reserve_rows(
    store: &PostgresDedupStore,
    rows: &Rows,
) -> Result<Vec<Reservation>, sqlx::Error> {
    let returned = sqlx::query(RESERVE)
        .bind(&rows.groups)
        .bind(&rows.keys)
        .bind(&rows.times)
        .bind(&rows.holders)
        .fetch_all(&store.batch_pool)
        .await?;
    // A row the statement did not return (none should be missing) stays in progress: the
    // delivery comes again rather than run unguarded.
    let mut found = vec![Reservation::InProgress; rows.len()];
    for row in returned {
        let (n, state): (i64, i32) = (row.try_get(0)?, row.try_get(1)?);
        if let Some(slot) = usize::try_from(n - 1).ok().and_then(|i| found.get_mut(i)) {
            *slot = match state {
                0 => Reservation::Fresh,
                2 => Reservation::Done,
                _ => Reservation::InProgress,
            };
        }
    }
    Ok(found)
}

/// Whether `e` is PostgreSQL's `lock_not_available`: a row is held by another transaction
/// (an open inbox transaction) for longer than the batch statements wait.
fn lock_held(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code == "55P03")
}

async fn reserve_batch(store: Arc<PostgresDedupStore>, batch: Vec<Op<Reservation>>) {
    let (rows, at) = distinct(&batch);
    let found: Vec<Result<Reservation, DedupError>> = match reserve_rows(&store, &rows).await {
        Ok(found) => found.into_iter().map(Ok).collect(),
        // One key the batch could not take (a held row, a value PostgreSQL refuses) must not
        // fail the others: the batch goes again one key at a time.
        Err(e) if rows.len() == 1 => vec![one_reservation(&store, Err(e))],
        Err(_) => {
            let mut found = Vec::with_capacity(rows.len());
            for i in 0..rows.len() {
                let one = reserve_rows(&store, &rows.one(i)).await.map(|v| v[0]);
                found.push(one_reservation(&store, one));
            }
            found
        }
    };
    let mut answered = vec![false; batch.len()];
    for (op, i) in batch.into_iter().zip(at) {
        let answer = match &found[i] {
            // The same key twice in one batch: the first may take it, the rest find it taken.
            Ok(Reservation::Done) => Ok(Reservation::Done),
            Ok(_) if std::mem::replace(&mut answered[i], true) => Ok(Reservation::InProgress),
            Ok(found) => Ok(*found),
            Err(e) => Err(e.clone()),
        };
        let _ = op.answer.send(answer);
    }
}

/// The answer for one key alone: a row held by an open transaction is a delivery in progress.
fn one_reservation(
    store: &PostgresDedupStore,
    found: Result<Reservation, sqlx::Error>,
) -> Result<Reservation, DedupError> {
    match found {
        Ok(found) => Ok(found),
        Err(e) if lock_held(&e) => Ok(Reservation::InProgress),
        Err(e) => Err(store.failed(&e)),
    }
}

async fn complete_rows(store: &PostgresDedupStore, rows: &Rows) -> Result<(), sqlx::Error> {
    sqlx::query(COMPLETE)
        .bind(&rows.groups)
        .bind(&rows.keys)
        .bind(&rows.times)
        .execute(&store.batch_pool)
        .await
        .map(drop)
}

async fn complete_batch(store: Arc<PostgresDedupStore>, batch: Vec<Op<()>>) {
    let (rows, at) = distinct(&batch);
    let done: Vec<Result<(), DedupError>> = match complete_rows(&store, &rows).await {
        Ok(()) => vec![Ok(()); rows.len()],
        Err(e) if rows.len() == 1 => vec![Err(store.failed(&e))],
        Err(_) => {
            let mut done = Vec::with_capacity(rows.len());
            for i in 0..rows.len() {
                let one = complete_rows(&store, &rows.one(i))
                    .await
                    .map_err(|e| store.failed(&e));
                done.push(one);
            }
            done
        }
    };
    for (op, i) in batch.into_iter().zip(at) {
        let _ = op.answer.send(done[i].clone());
    }
}

/// The form a key is stored in: itself, or, if it holds a zero byte or is longer than
/// [`MAX_KEY_LEN`] (which PostgreSQL's text or its index refuses), `#` and the hex of its
/// 128-bit FNV-1a hash. A key that starts with `#` is hashed too, so the two forms never meet.
fn stored_key(key: &str) -> std::borrow::Cow<'_, str> {
    if key.len() <= MAX_KEY_LEN && !key.contains('\0') && !key.starts_with('#') {
        return std::borrow::Cow::Borrowed(key);
    }
    let hash = key
        .bytes()
        .fold(0x6c62_272e_07bb_0142_62b8_2175_6295_c58d_u128, |h, b| {
            (h ^ u128::from(b)).wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b)
        });
    std::borrow::Cow::Owned(format!("#{hash:032x}"))
}

impl PostgresDedupStore {
    /// Queues `op` for its batch and waits for the answer.
    async fn queued<T>(
        &self,
        to: &async_channel::Sender<Op<T>>,
        group: &str,
        key: &str,
        holder: &str,
        time: Duration,
    ) -> Result<T, DedupError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let op = Op {
            group: group.to_owned(),
            key: stored_key(key).into_owned(),
            holder: holder.to_owned(),
            time,
            answer,
        };
        let gone = || DedupError::new(&self.url, "the store's batcher stopped");
        to.send(op).await.map_err(|_| gone())?;
        answered.await.map_err(|_| gone())?
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
        holder: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Reservation, DedupError>> {
        Box::pin(self.queued(&self.reserves, group, key, holder, lease))
    }

    fn complete<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), DedupError>> {
        Box::pin(self.queued(&self.completes, group, key, "", ttl))
    }

    fn release<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), DedupError>> {
        Box::pin(async move {
            sqlx::query(RELEASE)
                .bind(group)
                .bind(stored_key(key))
                .bind(holder)
                .execute(&self.pool)
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
            sqlx::query(EXTEND)
                .bind(group)
                .bind(stored_key(key))
                .bind(seconds(lease))
                .bind(holder)
                .execute(&self.batch_pool)
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
    /// The message's key is done already: an earlier attempt committed and then failed (its
    /// ack was lost), or another delivery took over this one's expired lease and completed
    /// it. This delivery must not write; returned from the handler, the message is acked as a
    /// duplicate.
    #[error("dedup key `{0}` is done already; this delivery must not act on it")]
    AlreadyDone(String),
}

impl Inbox {
    /// Begins the transaction and marks the message's dedup key done in it. Once per delivery:
    /// it takes the inbox. [`InboxError::AlreadyDone`] means the message was handled before;
    /// return it (with `?`) and the message is acked as a duplicate.
    pub async fn begin(self) -> Result<InboxTransaction, InboxError> {
        let store = &self.store;
        let mut tx = store.pool.begin().await.map_err(|e| store.failed(&e))?;
        let marked = sqlx::query(MARK)
            .bind(self.ticket.group.as_ref())
            .bind(stored_key(&self.ticket.key))
            .bind(seconds(self.ticket.ttl))
            .execute(&mut *tx)
            .await
            .map_err(|e| store.failed(&e))?;
        if marked.rows_affected() == 0 {
            // Handled already (by an earlier attempt whose ack was lost, or by a delivery that
            // took over an expired lease): the pipeline acks the message as a duplicate.
            self.ticket.inbox_found_done();
            return Err(InboxError::AlreadyDone(self.ticket.key.clone()));
        }
        self.ticket.inbox_begun();
        Ok(InboxTransaction {
            tx,
            ticket: self.ticket,
            store: self.store,
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
