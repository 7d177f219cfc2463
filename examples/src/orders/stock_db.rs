//! The inventory on PostgreSQL, effectively once (feature `postgres`): the same two steps as
//! [`inventory`](super::inventory), but the stock and the reservations are rows, written in the
//! handler's [`Inbox`] transaction together with the event's dedup mark. An `OrderCreated`
//! delivered twice (a crash before the ack, a rebalance) takes the stock once: the second
//! delivery finds its order id done and is acked without running the handler.
//!
//! The handlers record their step and publish their follow-up event before they commit. If the
//! commit fails, both happen again on the redelivery: the next service skips the event as a
//! repeat (every handler is idempotent per order id), and the story shows the step twice. If
//! other orders took the stock in between, the redelivery decides differently and publishes
//! `OutOfStock` after the `StockReserved` that already went out: this example does not cover
//! that. Publishing after the commit could lose the event instead, because a redelivery of a
//! committed order does not run the handler; only a transactional outbox would do better.
//!
//! `flows` uses this inventory when `ANYBUS_STOCK_DB` names a database; see
//! [`crate::app_with_stock_db`].

use std::collections::BTreeMap;

use anybus::dedup::sqlx::{self, postgres::PgPoolOptions, AssertSqlSafe, PgPool, Row};
use anybus::dedup::Inbox;
use anybus::{HandlerError, MessageId, Publisher, State};

use crate::events::{
    topics, OrderCreated, OutOfStock, PaymentFailed, StockReleased, StockReserved,
};
use crate::story::{Step, Story};

/// The inventory's tables, in a schema of their own: `stock (sku, available)` and
/// `reservations (order_id, sku, quantity, released)`. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StockDb {
    pool: PgPool,
    schema: String,
}

impl StockDb {
    /// Connects to the database of `url` and creates a fresh schema `shop_<uuid>` with `stock`
    /// on the shelf and no reservations.
    pub async fn create<'a>(
        url: &str,
        stock: impl IntoIterator<Item = (&'a str, u32)>,
    ) -> Result<Self, sqlx::Error> {
        let pool = PgPoolOptions::new().max_connections(4).connect(url).await?;
        let schema = format!("shop_{}", MessageId::new().to_string().replace('-', "_"));
        let db = Self { pool, schema };
        for statement in [
            format!("CREATE SCHEMA {}", db.schema),
            db.sql("CREATE TABLE {s}.stock (sku text PRIMARY KEY, available integer NOT NULL CHECK (available >= 0))"),
            db.sql("CREATE TABLE {s}.reservations (order_id text PRIMARY KEY, sku text NOT NULL, quantity integer NOT NULL, released boolean NOT NULL)"),
        ] {
            sqlx::query(AssertSqlSafe(statement))
                .execute(&db.pool)
                .await?;
        }
        for (sku, n) in stock {
            sqlx::query(AssertSqlSafe(
                db.sql("INSERT INTO {s}.stock (sku, available) VALUES ($1, $2)"),
            ))
            .bind(sku)
            .bind(count(n))
            .execute(&db.pool)
            .await?;
        }
        Ok(db)
    }

    /// The dedup store URL for this inventory: the database of `url`, with the store's table
    /// in this inventory's schema (its search path), so that the dedup marks live and go with
    /// the stock they guard. (The scenario's order ids repeat from run to run; in one shared
    /// table, the second run's orders would be taken for duplicates of the first's.)
    pub fn dedup_store_url(&self, url: &str) -> String {
        let joint = if url.contains('?') { '&' } else { '?' };
        format!("{url}{joint}options=-c%20search_path%3D{}", self.schema)
    }

    /// `template` with `{s}` replaced by the schema.
    fn sql(&self, template: &str) -> String {
        template.replace("{s}", &self.schema)
    }

    /// Every product with how many are available (not reserved).
    pub async fn levels(&self) -> Result<BTreeMap<String, u32>, sqlx::Error> {
        let rows = sqlx::query(AssertSqlSafe(
            self.sql("SELECT sku, available FROM {s}.stock"),
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get::<i32, _>(1)?.unsigned_abs())))
            .collect()
    }

    /// How many reservation rows the order has (one at most, if each order is handled once),
    /// and whether its reservation was released.
    pub async fn reservations(&self, order_id: &str) -> Result<Vec<(u32, bool)>, sqlx::Error> {
        let rows = sqlx::query(AssertSqlSafe(
            self.sql("SELECT quantity, released FROM {s}.reservations WHERE order_id = $1"),
        ))
        .bind(order_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get::<i32, _>(0)?.unsigned_abs(), row.try_get(1)?)))
            .collect()
    }

    /// Drops the schema with its tables.
    pub async fn drop_schema(&self) -> Result<(), sqlx::Error> {
        sqlx::query(AssertSqlSafe(format!(
            "DROP SCHEMA {} CASCADE",
            self.schema
        )))
        .execute(&self.pool)
        .await
        .map(drop)
    }
}

fn count(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Reserves the items of a new order in the database and publishes [`StockReserved`], or
/// [`OutOfStock`] when too few are left: the stock update, the reservation row and the dedup
/// mark of the order id commit together.
#[anybus::subscriber(
    topic = "orders.created",
    group = "inventory",
    dedup = "order.order_id"
)]
pub async fn reserve_stock_once(
    event: OrderCreated,
    inbox: Inbox,
    db: State<StockDb>,
    story: State<Story>,
    publisher: Publisher,
) -> Result<(), HandlerError> {
    let order = event.order;
    let key = order.order_id.clone();
    let mut tx = inbox.begin().await?;
    let taken = sqlx::query(AssertSqlSafe(db.sql(
        "UPDATE {s}.stock SET available = available - $2 WHERE sku = $1 AND available >= $2",
    )))
    .bind(&order.sku)
    .bind(count(order.quantity))
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if taken {
        sqlx::query(AssertSqlSafe(db.sql(
            "INSERT INTO {s}.reservations (order_id, sku, quantity, released) VALUES ($1, $2, $3, false)",
        )))
        .bind(&order.order_id)
        .bind(&order.sku)
        .bind(count(order.quantity))
        .execute(&mut *tx)
        .await?;
        story.record(&order.order_id, Step::StockReserved, "stock reserved");
        publisher
            .publish_keyed(topics::STOCK_RESERVED, key, &StockReserved { order })
            .await?;
        tx.commit().await?;
    } else {
        let available: i32 = sqlx::query(AssertSqlSafe(
            db.sql("SELECT available FROM {s}.stock WHERE sku = $1"),
        ))
        .bind(&order.sku)
        .fetch_optional(&mut *tx)
        .await?
        .map(|row| row.try_get(0))
        .transpose()?
        .unwrap_or(0);
        let available = available.unsigned_abs();
        let event = OutOfStock {
            order_id: order.order_id.clone(),
            sku: order.sku,
            requested: order.quantity,
            available,
        };
        story.record(
            &event.order_id,
            Step::OutOfStock,
            format!("out of stock (only {available} left)"),
        );
        publisher
            .publish_keyed(topics::OUT_OF_STOCK, key, &event)
            .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// The compensating step in the database: a declined payment marks the order's reservation
/// released and puts its items back, in the same transaction as the dedup mark, and
/// [`StockReleased`] says so.
#[anybus::subscriber(
    topic = "payments.failed",
    group = "inventory-compensation",
    dedup = "order.order_id"
)]
pub async fn release_stock_once(
    event: PaymentFailed,
    inbox: Inbox,
    db: State<StockDb>,
    story: State<Story>,
    publisher: Publisher,
) -> Result<(), HandlerError> {
    let order = event.order;
    let mut tx = inbox.begin().await?;
    let released = sqlx::query(AssertSqlSafe(db.sql(
        "UPDATE {s}.reservations SET released = true WHERE order_id = $1 AND NOT released RETURNING sku, quantity",
    )))
    .bind(&order.order_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = released else {
        tracing::warn!(order_id = %order.order_id, "payment failed for an order without a reservation; nothing to release");
        tx.commit().await?;
        return Ok(());
    };
    let (sku, quantity): (String, i32) = (row.try_get(0)?, row.try_get(1)?);
    sqlx::query(AssertSqlSafe(db.sql(
        "UPDATE {s}.stock SET available = available + $2 WHERE sku = $1",
    )))
    .bind(&sku)
    .bind(quantity)
    .execute(&mut *tx)
    .await?;
    let event = StockReleased {
        order_id: order.order_id.clone(),
        sku,
        quantity: quantity.unsigned_abs(),
    };
    story.record(&order.order_id, Step::StockReleased, "stock released");
    publisher
        .publish_keyed(topics::STOCK_RELEASED, order.order_id.clone(), &event)
        .await?;
    tx.commit().await?;
    Ok(())
}
