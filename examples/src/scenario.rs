//! The run the `flows` binary makes, and the end-to-end test checks: two users sign up, then
//! place three orders, one of them with a card that is declined.
//!
//! [`start`] sends the requests and returns the ids the services answered; [`finish`] waits,
//! on the [`Story`], until every flow reached its end; [`Run::report`] tells the story.

use std::time::Duration;

use anybus::{MessageId, Publisher, RequestError};

use crate::events::{topics, OrderPlaced, PlaceOrder, RegisterUser, Registered};
use crate::orders::payment::DECLINED_CARD;
use crate::story::{Entry, Step, Story};

/// A card every charge on goes through (up to the limit).
pub const GOOD_CARD: &str = "4242424242424242";

/// What is on the shelf when the run starts.
pub const STOCK: &[(&str, u32)] = &[("book", 10), ("lamp", 5), ("mug", 20)];

/// A user to register.
#[derive(Clone, Copy, Debug)]
pub struct Signup {
    /// The name.
    pub name: &'static str,
    /// The address.
    pub email: &'static str,
    /// The interests.
    pub interests: &'static [&'static str],
}

/// An order to place.
#[derive(Clone, Copy, Debug)]
pub struct Purchase {
    /// The buyer, by [`Signup::name`].
    pub customer: &'static str,
    /// The product.
    pub sku: &'static str,
    /// How many.
    pub quantity: u32,
    /// The card to charge.
    pub card: &'static str,
}

/// The users of the run.
pub const SIGNUPS: &[Signup] = &[
    Signup {
        name: "Ada",
        email: "ada@example.com",
        interests: &["reading", "design"],
    },
    Signup {
        name: "Grace",
        email: "grace@example.com",
        interests: &["coffee"],
    },
];

/// The orders of the run; Ada's second is paid with a card that is declined.
pub const PURCHASES: &[Purchase] = &[
    Purchase {
        customer: "Ada",
        sku: "lamp",
        quantity: 1,
        card: GOOD_CARD,
    },
    Purchase {
        customer: "Ada",
        sku: "book",
        quantity: 2,
        card: DECLINED_CARD,
    },
    Purchase {
        customer: "Grace",
        sku: "mug",
        quantity: 3,
        card: GOOD_CARD,
    },
];

/// Why a run did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// A registration request failed.
    #[error("registering {email}: {source}")]
    Register {
        /// The address.
        email: String,
        /// What went wrong.
        source: RequestError,
    },
    /// An order request failed.
    #[error("placing {quantity} × {sku} for {customer}: {source}")]
    Order {
        /// The buyer's name.
        customer: String,
        /// The product.
        sku: String,
        /// How many.
        quantity: u32,
        /// What went wrong.
        source: RequestError,
    },
    /// A purchase names a customer who did not sign up.
    #[error("{0} did not sign up, so cannot order")]
    UnknownCustomer(String),
    /// Some flows had not ended when the time was up.
    #[error("the flows did not finish within {timeout:?}; still open:\n  {}", unfinished.join("\n  "))]
    Timeout {
        /// How long [`finish`] waited.
        timeout: Duration,
        /// Each unfinished user or order, with the story so far.
        unfinished: Vec<String>,
    },
}

/// The users and orders a run started, with the ids the services gave them.
#[derive(Clone, Debug)]
pub struct Run {
    /// Each signup with its user id.
    pub users: Vec<(Signup, String)>,
    /// Each purchase with its order id.
    pub orders: Vec<(Purchase, String)>,
}

impl Run {
    /// Whether every user got the welcome mail and a profile, and every order ended.
    pub fn is_complete(&self, entries: &[Entry]) -> bool {
        self.users
            .iter()
            .all(|(_, id)| user_done(id, entries.iter()))
            && self
                .orders
                .iter()
                .all(|(_, id)| order_done(id, entries.iter()))
    }

    /// The story, one line per user and order.
    pub fn report(&self, story: &Story) -> Vec<String> {
        let users = self
            .users
            .iter()
            .map(|(signup, id)| format!("user {}: {}", signup.email, steps(story, id)));
        let orders = self.orders.iter().map(|(purchase, id)| {
            format!(
                "order {id} ({}, {} × {}): {}",
                purchase.customer,
                purchase.quantity,
                purchase.sku,
                steps(story, id)
            )
        });
        users.chain(orders).collect()
    }

    /// The lines of [`Run::report`] whose flow has not ended, each saying what it waits for.
    pub fn unfinished(&self, story: &Story) -> Vec<String> {
        let entries = story.entries();
        let report = self.report(story);
        let done = self
            .users
            .iter()
            .map(|(_, id)| user_done(id, entries.iter()))
            .chain(
                self.orders
                    .iter()
                    .map(|(_, id)| order_done(id, entries.iter())),
            );
        report
            .into_iter()
            .zip(done)
            .filter(|(_, done)| !done)
            .map(|(line, _)| format!("{line} …"))
            .collect()
    }
}

/// The story of `id`, or `nothing yet`.
fn steps(story: &Story, id: &str) -> String {
    let line = story.line(id);
    if line.is_empty() {
        "nothing yet".to_owned()
    } else {
        line
    }
}

fn steps_of<'a>(
    id: &'a str,
    entries: impl Iterator<Item = &'a Entry> + 'a,
) -> impl Iterator<Item = Step> + 'a {
    entries.filter(move |e| e.subject == id).map(|e| e.step)
}

fn user_done<'a>(id: &'a str, entries: impl Iterator<Item = &'a Entry> + 'a) -> bool {
    let steps: Vec<Step> = steps_of(id, entries).collect();
    steps.contains(&Step::WelcomeMailSent) && steps.contains(&Step::ProfileBuilt)
}

fn order_done<'a>(id: &'a str, entries: impl Iterator<Item = &'a Entry> + 'a) -> bool {
    steps_of(id, entries).any(Step::ends_order)
}

/// Registers [`SIGNUPS`] and places [`PURCHASES`], one request after the other, each waiting
/// up to `timeout` for its answer.
pub async fn start(publisher: &Publisher, timeout: Duration) -> Result<Run, ScenarioError> {
    let mut users = Vec::new();
    for signup in SIGNUPS {
        let request = RegisterUser {
            email: signup.email.to_owned(),
            name: signup.name.to_owned(),
            interests: signup.interests.iter().map(|i| (*i).to_owned()).collect(),
        };
        let answer: Registered = publisher
            .request(topics::REGISTER_USER, &request, timeout)
            .await
            .map_err(|source| ScenarioError::Register {
                email: signup.email.to_owned(),
                source,
            })?;
        users.push((*signup, answer.user_id));
    }
    let mut orders = Vec::new();
    for purchase in PURCHASES {
        let customer = users
            .iter()
            .find(|(signup, _)| signup.name == purchase.customer)
            .map(|(_, id)| id.clone())
            .ok_or_else(|| ScenarioError::UnknownCustomer(purchase.customer.to_owned()))?;
        let request = PlaceOrder {
            // Fresh per intended order; resending this same request would not order twice.
            request_id: MessageId::new().to_string(),
            customer,
            sku: purchase.sku.to_owned(),
            quantity: purchase.quantity,
            card: purchase.card.to_owned(),
        };
        let answer: OrderPlaced = publisher
            .request(topics::PLACE_ORDER, &request, timeout)
            .await
            .map_err(|source| ScenarioError::Order {
                customer: purchase.customer.to_owned(),
                sku: purchase.sku.to_owned(),
                quantity: purchase.quantity,
                source,
            })?;
        orders.push((*purchase, answer.order_id));
    }
    Ok(Run { users, orders })
}

/// Waits until every flow of `run` ended, as the services record it in `story`; fails with
/// what is still open after `timeout`.
pub async fn finish(run: &Run, story: &Story, timeout: Duration) -> Result<(), ScenarioError> {
    match tokio::time::timeout(timeout, story.wait_until(|e| run.is_complete(e))).await {
        Ok(()) => Ok(()),
        Err(_) => Err(ScenarioError::Timeout {
            timeout,
            unfinished: run.unfinished(story),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> Run {
        Run {
            users: vec![(SIGNUPS[0], "u-1".into())],
            orders: vec![(PURCHASES[1], "o-2".into())],
        }
    }

    #[test]
    fn a_run_completes_when_every_flow_ended() {
        let story = Story::default();
        let run = run();
        story.record("u-1", Step::Registered, "registered as u-1");
        story.record("u-1", Step::WelcomeMailSent, "welcome mail sent");
        story.record("o-2", Step::Placed, "placed");
        story.record("o-2", Step::StockReserved, "stock reserved");
        story.record("o-2", Step::PaymentDeclined, "payment declined");
        assert!(!run.is_complete(&story.entries()));
        assert_eq!(
            run.unfinished(&story),
            [
                "user ada@example.com: registered as u-1 → welcome mail sent …",
                "order o-2 (Ada, 2 × book): placed → stock reserved → payment declined …",
            ]
        );
        story.record("u-1", Step::ProfileBuilt, "profile built");
        story.record("o-2", Step::StockReleased, "stock released");
        assert!(run.is_complete(&story.entries()));
        assert!(run.unfinished(&story).is_empty());
    }

    #[tokio::test]
    async fn finishing_times_out_with_what_is_open() {
        let story = Story::default();
        story.record("u-1", Step::Registered, "registered as u-1");
        let error = finish(&run(), &story, Duration::from_millis(20))
            .await
            .unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with("the flows did not finish within 20ms"),
            "{text}"
        );
        assert!(
            text.contains("\n  user ada@example.com: registered as u-1 …"),
            "{text}"
        );
        assert!(
            text.contains("\n  order o-2 (Ada, 2 × book): nothing yet …"),
            "{text}"
        );
    }
}
