//! The account service: answers registration requests with a user id and announces the new
//! account as [`UserRegistered`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anybus::{HandlerError, Publisher, State};

use crate::events::{topics, RegisterUser, Registered, UserRegistered};
use crate::lock;
use crate::story::{Step, Story};

/// An account as the account service keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// `u-1`, `u-2`, …
    pub user_id: String,
    /// The address.
    pub email: String,
    /// The name.
    pub name: String,
    /// The interests.
    pub interests: Vec<String>,
}

/// The account store (in memory), keyed by address; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Accounts(Arc<Mutex<AccountsInner>>);

#[derive(Debug, Default)]
struct AccountsInner {
    by_email: HashMap<String, Account>,
    opened: u64,
}

impl Accounts {
    /// The account of `email`, if there is one.
    pub fn get(&self, email: &str) -> Option<Account> {
        lock(&self.0).by_email.get(email).cloned()
    }

    /// How many accounts exist.
    pub fn count(&self) -> usize {
        lock(&self.0).by_email.len()
    }

    /// Opens an account for the request's address, or finds the one it already has; says
    /// which.
    fn open(&self, request: &RegisterUser) -> (Account, bool) {
        let mut inner = lock(&self.0);
        if let Some(existing) = inner.by_email.get(&request.email) {
            return (existing.clone(), false);
        }
        inner.opened += 1;
        let account = Account {
            user_id: format!("u-{}", inner.opened),
            email: request.email.clone(),
            name: request.name.clone(),
            interests: request.interests.clone(),
        };
        inner
            .by_email
            .insert(account.email.clone(), account.clone());
        (account, true)
    }
}

/// Why a registration was refused. Retrying cannot help, so it fails permanently and the
/// requester gets the message.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The address has no `@`, or nothing on one side of it.
    #[error("`{0}` is not an email address")]
    InvalidEmail(String),
}

fn is_email(text: &str) -> bool {
    matches!(text.split_once('@'), Some((user, domain)) if !user.is_empty() && domain.contains('.'))
}

/// Registers a user: opens the account (once per address: a repeated or redelivered request
/// answers the same id), publishes [`UserRegistered`] keyed by the user id, and answers the id.
///
/// The event is published on every call, after the account is stored: if publishing fails, the
/// request is delivered again and the event goes out then. Its consumers skip repeats.
#[anybus::subscriber(topic = "users.register", group = "accounts")]
pub async fn register(
    request: RegisterUser,
    accounts: State<Accounts>,
    story: State<Story>,
    publisher: Publisher,
) -> Result<Registered, HandlerError> {
    if !is_email(&request.email) {
        return Err(HandlerError::permanent(RegisterError::InvalidEmail(
            request.email,
        )));
    }
    let (account, opened) = accounts.open(&request);
    if opened {
        story.record(
            &account.user_id,
            Step::Registered,
            format!("registered as {}", account.user_id),
        );
    }
    let event = UserRegistered {
        user_id: account.user_id.clone(),
        email: account.email,
        name: account.name,
        interests: account.interests,
    };
    publisher
        .publish_keyed(topics::USER_REGISTERED, account.user_id.clone(), &event)
        .await?;
    Ok(Registered {
        user_id: account.user_id,
    })
}

#[cfg(test)]
mod tests {
    use anybus::testing::Recorder;
    use anybus::FailureKind;

    use super::*;

    fn ada() -> RegisterUser {
        RegisterUser {
            email: "ada@example.com".into(),
            name: "Ada".into(),
            interests: vec!["reading".into()],
        }
    }

    #[tokio::test]
    async fn registering_answers_the_id_and_announces_the_account() {
        let recorder = Recorder::new();
        let (accounts, story) = (Accounts::default(), Story::default());
        let answer = register(
            ada(),
            State(Arc::new(accounts.clone())),
            State(Arc::new(story.clone())),
            recorder.publisher(),
        )
        .await
        .unwrap();
        assert_eq!(answer.user_id, "u-1");
        assert_eq!(accounts.get("ada@example.com").unwrap().name, "Ada");
        let events: Vec<UserRegistered> = recorder.events(topics::USER_REGISTERED).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].user_id, "u-1");
        assert_eq!(story.steps("u-1"), [Step::Registered]);
    }

    #[tokio::test]
    async fn registering_twice_answers_the_same_id() {
        let recorder = Recorder::new();
        let accounts = State(Arc::new(Accounts::default()));
        let story = State(Arc::new(Story::default()));
        let first = register(ada(), accounts.clone(), story.clone(), recorder.publisher())
            .await
            .unwrap();
        let again = register(ada(), accounts.clone(), story.clone(), recorder.publisher())
            .await
            .unwrap();
        assert_eq!(first, again);
        assert_eq!(accounts.count(), 1);
        assert_eq!(story.steps("u-1"), [Step::Registered]);
    }

    #[tokio::test]
    async fn a_bad_address_is_refused_for_good() {
        let recorder = Recorder::new();
        let request = RegisterUser {
            email: "ada.example.com".into(),
            ..ada()
        };
        let error = register(
            request,
            State(Arc::new(Accounts::default())),
            State(Arc::new(Story::default())),
            recorder.publisher(),
        )
        .await
        .unwrap_err();
        assert_eq!(error.kind(), FailureKind::Permanent);
        assert!(recorder
            .events::<UserRegistered>(topics::USER_REGISTERED)
            .unwrap()
            .is_empty());
    }
}
