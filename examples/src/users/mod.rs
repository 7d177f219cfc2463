//! The user-registration flow.
//!
//! ```text
//! users.register (request) ──▶ accounts::register ──answers──▶ the user id
//!                                   │
//!                                   ▼ users.registered (UserRegistered, keyed by user id)
//!                   ┌───────────────┴────────────────┐
//!        mail::send_welcome_mail        recommendations::build_profile
//!           (group "mailer")               (group "recommendations")
//! ```

pub mod accounts;
pub mod mail;
pub mod recommendations;

use anybus::Subscription;

/// The subscriptions of the user-registration services.
pub fn services() -> Vec<Subscription> {
    vec![
        accounts::register::subscription(),
        mail::send_welcome_mail::subscription(),
        recommendations::build_profile::subscription(),
    ]
}
