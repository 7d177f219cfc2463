//! What an app refuses at start, before it connects: subscriptions whose options make no sense,
//! and subscriptions that would quietly split one group's messages between them.

use std::sync::Arc;

use super::StartError;
use crate::context::StateMap;
use crate::pipeline::InboxAvailability;
use crate::subscription::{DeadLetter, RetryMode, Subscription, SubscriptionSpec};

/// Rejects what cannot be honoured in one subscription, naming the option, before anything is
/// consumed.
pub(super) fn subscription(
    sub: &Subscription,
    state: &StateMap,
    dedup_store: &str,
) -> Result<(), StartError> {
    let spec: &SubscriptionSpec = sub.spec();
    let name = || spec.name.clone();
    if spec.topics.is_empty() || spec.topics.iter().any(String::is_empty) {
        return Err(StartError::Invalid {
            subscription: name(),
            reason: "it names no topic, or an empty one".into(),
        });
    }
    if spec.group.is_empty() {
        return Err(StartError::Invalid {
            subscription: name(),
            reason: "the consumer group is empty".into(),
        });
    }
    if spec.concurrency == 0 {
        return Err(StartError::Invalid {
            subscription: name(),
            reason: "concurrency must be at least 1".into(),
        });
    }
    if let Some(retry) = &spec.retry {
        if retry.mode == RetryMode::Redeliver && spec.topics.iter().any(|t| t.contains('#')) {
            return Err(StartError::Invalid {
                subscription: name(),
                reason: "retry(mode = \"redeliver\") cannot be combined with a `#` pattern topic: the pattern would also match the group's retry topic".into(),
            });
        }
        if retry.max_attempts == 0 {
            return Err(StartError::Invalid {
                subscription: name(),
                reason: "retry: max_attempts must be at least 1".into(),
            });
        }
    }
    if matches!(&spec.dead_letter, DeadLetter::Topic(t) if t.is_empty()) {
        return Err(StartError::Invalid {
            subscription: name(),
            reason: "dead_letter: the destination name is empty".into(),
        });
    }
    let mut state = state.clone();
    state.insert(Arc::new(InboxAvailability(inbox_availability(
        spec,
        dedup_store,
    ))));
    sub.check_extractors(&state)
        .map_err(|reason| StartError::Invalid {
            subscription: name(),
            reason,
        })
}

/// Whether a handler of `spec` may take an `Inbox`, and if not, why not.
fn inbox_availability(spec: &SubscriptionSpec, dedup_store: &str) -> Result<(), String> {
    if spec.dedup.is_none() {
        return Err("the handler takes an Inbox, which needs `dedup` on its subscription".into());
    }
    if !(dedup_store.starts_with("postgres://") || dedup_store.starts_with("postgresql://")) {
        return Err(format!(
            "the handler takes an Inbox, which needs a PostgreSQL dedup store, but the store is {}; call AppBuilder::dedup_store(\"postgres://…\")",
            crate::url::redact(dedup_store)
        ));
    }
    Ok(())
}

/// Refuses two subscriptions of one app that consume a topic in the same group: the broker
/// would split that topic's messages between them, each seeing some, which is never what two
/// handlers are written for. Give each its own group (each then gets every message), or merge
/// them.
pub(super) fn distinct(subscriptions: &[Subscription]) -> Result<(), StartError> {
    for (i, first) in subscriptions.iter().enumerate() {
        let first = first.spec();
        for second in subscriptions[i + 1..].iter().map(Subscription::spec) {
            if first.group != second.group {
                continue;
            }
            if let Some(topic) = first.topics.iter().find(|t| second.topics.contains(t)) {
                return Err(StartError::Invalid {
                    subscription: second.name.clone(),
                    reason: format!(
                        "it consumes `{topic}` in group `{}`, as subscription `{}` does: the two would split the topic's messages between them; give one of them its own group",
                        first.group, first.name
                    ),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HandlerError;

    fn sub(name: &str, group: &str, topics: &[&str]) -> Subscription {
        Subscription::builder(topics.iter().copied())
            .name(name)
            .group(group)
            .handler(|_: String| async { Ok::<(), HandlerError>(()) })
    }

    #[test]
    fn two_subscriptions_of_one_group_and_topic_are_refused_naming_both() {
        let err = distinct(&[
            sub("audit", "billing", &["orders", "refunds"]),
            sub("charge", "billing", &["payments", "orders"]),
        ])
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("`charge`") && text.contains("`audit`") && text.contains("`orders`"),
            "{text}"
        );
    }

    #[test]
    fn other_groups_or_other_topics_are_fine() {
        distinct(&[
            sub("audit", "audit", &["orders"]),
            sub("charge", "billing", &["orders"]),
            sub("refund", "billing", &["refunds"]),
        ])
        .expect("no topic is shared within a group");
    }
}
