//! The mail service: welcomes every new user, once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use anybus::{HandlerError, State};

use crate::events::UserRegistered;
use crate::lock;
use crate::story::{Step, Story};

/// A sent mail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mail {
    /// The recipient.
    pub to: String,
    /// The subject line.
    pub subject: String,
    /// The text.
    pub body: String,
}

/// The outgoing mail (in memory) and the users already welcomed; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Mailbox(Arc<Mutex<MailboxInner>>);

#[derive(Debug, Default)]
struct MailboxInner {
    sent: Vec<Mail>,
    welcomed: HashSet<String>,
}

impl Mailbox {
    /// Every mail sent so far, oldest first.
    pub fn sent(&self) -> Vec<Mail> {
        lock(&self.0).sent.clone()
    }

    /// Sends `mail` unless `user_id` was welcomed before; says whether it sent.
    fn welcome_once(&self, user_id: &str, mail: Mail) -> bool {
        let mut inner = lock(&self.0);
        if !inner.welcomed.insert(user_id.to_owned()) {
            return false;
        }
        inner.sent.push(mail);
        true
    }
}

/// The welcome mail for a new user.
pub fn welcome_mail(user: &UserRegistered) -> Mail {
    Mail {
        to: user.email.clone(),
        subject: format!("Welcome, {}!", user.name),
        body: format!(
            "Hello {},\n\nyour account {} is ready.\n",
            user.name, user.user_id
        ),
    }
}

/// Sends the welcome mail of a new user. A redelivered [`UserRegistered`] sends nothing.
#[anybus::subscriber(topic = "users.registered", group = "mailer")]
pub async fn send_welcome_mail(
    event: UserRegistered,
    mailbox: State<Mailbox>,
    story: State<Story>,
) -> Result<(), HandlerError> {
    if mailbox.welcome_once(&event.user_id, welcome_mail(&event)) {
        story.record(&event.user_id, Step::WelcomeMailSent, "welcome mail sent");
    } else {
        tracing::debug!(user_id = %event.user_id, "welcome mail already sent");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_user_is_welcomed_once() {
        let (mailbox, story) = (Mailbox::default(), Story::default());
        let event = UserRegistered {
            user_id: "u-7".into(),
            email: "grace@example.com".into(),
            name: "Grace".into(),
            interests: vec![],
        };
        for _ in 0..2 {
            send_welcome_mail(
                event.clone(),
                State(Arc::new(mailbox.clone())),
                State(Arc::new(story.clone())),
            )
            .await
            .unwrap();
        }
        let sent = mailbox.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].to, "grace@example.com");
        assert_eq!(sent[0].subject, "Welcome, Grace!");
        assert_eq!(story.steps("u-7"), [Step::WelcomeMailSent]);
    }
}
