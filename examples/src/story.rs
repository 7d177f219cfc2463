//! The story of a run: every service writes down what it did, per user or order, so that the
//! runner can print a readable account and wait for the flows to finish without sleeping.
//!
//! A real system would not share such a recorder between services; here it stands in for the
//! logs and traces you would read afterwards.

use std::sync::Arc;

use tokio::sync::watch;

/// What happened, as a machine-readable step. The order of the variants is the order of the
/// flows; [`Story::line`] prints a subject's steps in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// The account service opened an account.
    Registered,
    /// The mail service sent the welcome mail.
    WelcomeMailSent,
    /// The recommendation service built the user's profile.
    ProfileBuilt,
    /// The order service accepted an order.
    Placed,
    /// The inventory reserved the order's items.
    StockReserved,
    /// The inventory had too few items; the order ends.
    OutOfStock,
    /// The payment service charged the card.
    PaymentTaken,
    /// The card was declined.
    PaymentDeclined,
    /// Shipping arranged the delivery; the order ends.
    ShipmentArranged,
    /// The inventory released the reservation of a declined order; the order ends.
    StockReleased,
}

impl Step {
    /// Whether an order's flow ends with this step.
    pub fn ends_order(self) -> bool {
        matches!(
            self,
            Self::OutOfStock | Self::ShipmentArranged | Self::StockReleased
        )
    }
}

/// One thing that happened to one user or order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The user id or order id.
    pub subject: String,
    /// What happened.
    pub step: Step,
    /// The same, for people.
    pub text: String,
}

/// The shared recorder; cheap to clone (every clone writes to the same story).
///
/// Register it with `AppBuilder::state` and take it as `State<Story>` in a handler.
#[derive(Clone, Debug)]
pub struct Story {
    entries: Arc<watch::Sender<Vec<Entry>>>,
}

impl Default for Story {
    fn default() -> Self {
        Self {
            entries: Arc::new(watch::Sender::new(Vec::new())),
        }
    }
}

impl Story {
    /// Writes down that `step` happened to `subject`, and wakes whoever waits on the story.
    pub fn record(&self, subject: &str, step: Step, text: impl Into<String>) {
        let text = text.into();
        tracing::info!(subject, ?step, "{text}");
        self.entries.send_modify(|entries| {
            entries.push(Entry {
                subject: subject.to_owned(),
                step,
                text,
            });
        });
    }

    /// Everything recorded so far, in the order it was recorded.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries.borrow().clone()
    }

    /// The steps recorded for `subject`, in the order they were recorded.
    pub fn steps(&self, subject: &str) -> Vec<Step> {
        self.entries
            .borrow()
            .iter()
            .filter(|e| e.subject == subject)
            .map(|e| e.step)
            .collect()
    }

    /// The steps of `subject` as one line, `placed → stock reserved → …`, in flow order (steps
    /// that ran in parallel, like the welcome mail and the profile, come out the same way on
    /// every run).
    pub fn line(&self, subject: &str) -> String {
        let mut mine: Vec<Entry> = self
            .entries
            .borrow()
            .iter()
            .filter(|e| e.subject == subject)
            .cloned()
            .collect();
        mine.sort_by_key(|e| e.step);
        mine.iter()
            .map(|e| e.text.as_str())
            .collect::<Vec<_>>()
            .join(" → ")
    }

    /// Resolves once `done` holds for the entries; checks again after every record. Pair it
    /// with `tokio::time::timeout`.
    pub async fn wait_until(&self, mut done: impl FnMut(&[Entry]) -> bool) {
        let mut changes = self.entries.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = changes.wait_for(|entries| done(entries)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_follow_the_flow_order() {
        let story = Story::default();
        story.record("u-1", Step::ProfileBuilt, "profile built");
        story.record("o-1", Step::Placed, "placed");
        story.record("u-1", Step::Registered, "registered");
        story.record("u-1", Step::WelcomeMailSent, "mail sent");
        assert_eq!(story.line("u-1"), "registered → mail sent → profile built");
        assert_eq!(
            story.steps("u-1"),
            [Step::ProfileBuilt, Step::Registered, Step::WelcomeMailSent]
        );
        assert_eq!(story.line("nobody"), "");
    }

    #[tokio::test]
    async fn waiting_wakes_on_the_record_that_completes_it() {
        let story = Story::default();
        let waiter = tokio::spawn({
            let story = story.clone();
            async move {
                story
                    .wait_until(|entries| entries.iter().any(|e| e.step.ends_order()))
                    .await;
            }
        });
        story.record("o-1", Step::Placed, "placed");
        story.record("o-1", Step::ShipmentArranged, "shipped");
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter woke up")
            .unwrap();
    }
}
