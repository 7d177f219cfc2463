//! # anybus
//!
//! Consume and publish events on Kafka, RabbitMQ or an embedded broker, with one handler model.
//!
//! A handler is a plain `async fn`: its first argument is the event, decoded from the payload;
//! further arguments are extractors ([`Context`], [`Publisher`], [`State`], …); it returns
//! `Result<(), E>` (or `Result<R, E>` to answer a request). `#[subscriber]` turns it into a
//! [`Subscription`] and leaves the function callable on its own, for unit tests ([`testing`]
//! makes the extractors it takes, and runs a whole app on a private broker):
//!
//! ```
//! use anybus::{subscriber, App, HandlerError};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct UserRegistered { email: String }
//!
//! #[subscriber(topic = "users.registered", group = "mailer")]
//! async fn send_welcome(event: UserRegistered) -> Result<(), HandlerError> {
//!     println!("welcome, {}", event.email);
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The function is still a function:
//! assert!(send_welcome(UserRegistered { email: "ada@example.com".into() }).await.is_ok());
//!
//! // and its subscription runs on any broker the URL names:
//! let app = App::builder()
//!     .subscribe(send_welcome::subscription())
//!     .connect("memory://lib-doc")
//!     .await?;
//! app.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! The runtime owns the delivery guarantees: a message is acknowledged only after its handler
//! succeeded (at-least-once), a transient failure is delivered again, a permanent one (an
//! undecodable payload included) is logged with its origin and not retried, partitions change
//! hands only after in-flight work drained, and shutdown loses nothing.
//!
//! Backends are chosen by URL: `memory://` (always built), `kafka://…` (feature `kafka`),
//! `amqp://…` (feature `rabbitmq`).

#![warn(missing_docs)]

mod app;
pub mod backend;
pub mod codec;
mod context;
pub mod dedup;
mod error;
pub mod handler;
mod message;
mod names;
pub mod observe;
mod pipeline;
mod publish;
mod replay;
mod subscription;
pub mod testing;
mod url;

pub use anybus_macros::subscriber;

pub use crate::app::{
    App, AppBuilder, AppHandle, RunError, ShutdownHandle, StartError, SubscriptionHealth,
    SubscriptionReport,
};
pub use crate::codec::{Codec, DecodeError, EncodeError, Json, Raw};
pub use crate::context::{Context, Key, State, StateMap};
pub use crate::error::{FailureKind, HandlerError};
pub use crate::message::{header, Headers, Message, MessageId, Origin};
pub use crate::names::{dead_letter_topic, retry_topic};
pub use crate::observe::{StatsSnapshot, TopicPartition};
pub use crate::publish::{Publisher, RequestError};
pub use crate::replay::{replay, replay_group, restore_dead_letter, REPLAY_SUBSCRIPTION};
pub use crate::subscription::{
    Backoff, DeadLetter, DedupKey, KeyFunction, Ordering, RetryMode, RetrySpec, Subscription,
    SubscriptionBuilder, SubscriptionSpec,
};
pub use crate::url::{redact, BrokerUrl, ConnectError};

/// The README's example, compiled as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// What a service usually needs in scope.
pub mod prelude {
    pub use crate::{
        subscriber, App, Context, HandlerError, Headers, Key, Message, Publisher, State,
        Subscription,
    };
}
