//! The two seed flows of anybus, as a shop would write them.
//!
//! - **User registration** ([`users`]): a `users.register` request is answered with the new
//!   user id; the `UserRegistered` event then has the mail service send a welcome mail and the
//!   recommendation service build a profile.
//! - **Orders** ([`orders`]): an `orders.place` request is answered with the order id;
//!   `OrderCreated` has the inventory reserve stock, the payment service take the payment and
//!   shipping arrange the delivery. A declined payment emits `PaymentFailed`, and the inventory
//!   releases the stock again (the compensating step).
//!
//! Each service is a handful of `#[anybus::subscriber]` functions with its own consumer group
//! and its own in-memory store, taken as [`anybus::State`]. Nothing in a handler names a
//! broker: [`services`] lists the subscriptions and [`app`] wires them with the stores, and the
//! broker is whatever URL the app connects to. Every handler is idempotent: it keeps its
//! decision per user or order id, so a redelivered event changes nothing twice (the runtime
//! delivers at least once).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use anybus_examples::{app, orders::inventory::Inventory, scenario, Stores};
//!
//! let stores = Stores::new(Inventory::with_stock(scenario::STOCK.iter().copied()));
//! let app = app(&stores).connect("memory://").await?;
//! let run = scenario::start(&app.publisher(), std::time::Duration::from_secs(10)).await?;
//! scenario::finish(&run, &stores.story, std::time::Duration::from_secs(30)).await?;
//! for line in run.report(&stores.story) {
//!     println!("{line}");
//! }
//! app.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! `cargo run -p anybus-examples --bin flows` runs exactly that and prints the story; set
//! `ANYBUS_URL` for another broker.

#![warn(missing_docs)]

pub mod events;
pub mod orders;
pub mod scenario;
pub mod story;
pub mod users;

use std::sync::{Mutex, MutexGuard, PoisonError};

use anybus::{App, AppBuilder, Subscription};

pub use crate::story::{Entry, Step, Story};

use crate::orders::checkout::OrderBook;
use crate::orders::inventory::Inventory;
use crate::orders::payment::Payments;
use crate::orders::shipping::Shipments;
use crate::users::accounts::Accounts;
use crate::users::mail::Mailbox;
use crate::users::recommendations::Profiles;

/// The subscriptions of every service of both flows.
pub fn services() -> Vec<Subscription> {
    let mut all = users::services();
    all.extend(orders::services());
    all
}

/// The in-memory stores of every service, and the story they write. Each field is a cheap
/// handle: clone the struct, register it with [`Stores::register`], and keep a clone to look
/// at the stores while (and after) the app runs.
#[derive(Clone, Debug)]
pub struct Stores {
    /// What happened, per user and order.
    pub story: Story,
    /// The account service's accounts.
    pub accounts: Accounts,
    /// The mail service's sent mail.
    pub mailbox: Mailbox,
    /// The recommendation service's profiles.
    pub profiles: Profiles,
    /// The order service's orders.
    pub orders: OrderBook,
    /// The inventory's stock levels and reservations.
    pub inventory: Inventory,
    /// The payment service's charges.
    pub payments: Payments,
    /// Shipping's parcels.
    pub shipments: Shipments,
}

impl Stores {
    /// Empty stores, with `inventory` on the shelf.
    pub fn new(inventory: Inventory) -> Self {
        Self {
            story: Story::default(),
            accounts: Accounts::default(),
            mailbox: Mailbox::default(),
            profiles: Profiles::default(),
            orders: OrderBook::default(),
            inventory,
            payments: Payments::default(),
            shipments: Shipments::default(),
        }
    }

    /// Registers every store as app state, for the handlers' `State<…>` arguments.
    pub fn register(&self, builder: AppBuilder) -> AppBuilder {
        builder
            .state(self.story.clone())
            .state(self.accounts.clone())
            .state(self.mailbox.clone())
            .state(self.profiles.clone())
            .state(self.orders.clone())
            .state(self.inventory.clone())
            .state(self.payments.clone())
            .state(self.shipments.clone())
    }
}

/// An app builder with every service of both flows and their stores: add options if you like,
/// then `.connect(url)`.
pub fn app(stores: &Stores) -> AppBuilder {
    services()
        .into_iter()
        .fold(stores.register(App::builder()), AppBuilder::subscribe)
}

/// [`app`] with the inventory on PostgreSQL ([`orders::stock_db`]): its stock in `db`, and the
/// dedup marks that its handlers' inbox transactions complete in the database of `url` (a
/// `postgres://` URL, that of `db`), in `db`'s schema. The in-memory inventory of `stores` is
/// not used.
#[cfg(feature = "postgres")]
pub fn app_with_stock_db(stores: &Stores, db: &orders::stock_db::StockDb, url: &str) -> AppBuilder {
    let mut services = users::services();
    services.extend(orders::services_with_stock_db());
    services.into_iter().fold(
        stores
            .register(App::builder())
            .state(db.clone())
            .dedup_store(&db.dedup_store_url(url)),
        AppBuilder::subscribe,
    )
}

/// Locks a store; a handler that panicked while holding the lock left it consistent (every
/// store changes in one step), so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::events::topics;

    #[test]
    fn handlers_consume_the_topics_the_publishers_use() {
        let topic_of = |name: &str| {
            let all = services();
            let sub = all
                .iter()
                .find(|s| s.spec().name == name)
                .unwrap_or_else(|| panic!("no subscription {name}"));
            sub.spec().topics.clone()
        };
        assert_eq!(topic_of("register"), [topics::REGISTER_USER]);
        assert_eq!(topic_of("send_welcome_mail"), [topics::USER_REGISTERED]);
        assert_eq!(topic_of("build_profile"), [topics::USER_REGISTERED]);
        assert_eq!(topic_of("place_order"), [topics::PLACE_ORDER]);
        assert_eq!(topic_of("reserve_stock"), [topics::ORDER_CREATED]);
        assert_eq!(topic_of("take_payment"), [topics::STOCK_RESERVED]);
        assert_eq!(topic_of("arrange_shipping"), [topics::PAYMENT_TAKEN]);
        assert_eq!(topic_of("release_stock"), [topics::PAYMENT_FAILED]);
    }

    /// The PostgreSQL inventory replaces the in-memory one topic for topic and group for group.
    #[cfg(feature = "postgres")]
    #[test]
    fn the_postgres_inventory_takes_the_same_places() {
        let places = |subs: Vec<Subscription>| -> Vec<(Vec<String>, String)> {
            subs.iter()
                .map(|s| (s.spec().topics.clone(), s.spec().group.clone()))
                .collect()
        };
        assert_eq!(
            places(orders::services_with_stock_db()),
            places(orders::services())
        );
    }

    #[test]
    fn every_service_has_its_own_group() {
        let all = services();
        let groups: HashSet<&str> = all.iter().map(|s| s.spec().group.as_str()).collect();
        assert_eq!(groups.len(), all.len(), "{groups:?}");
    }
}
