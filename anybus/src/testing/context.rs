//! Contexts built by hand, so that a handler taking [`Context`] can be called outside an app.

use std::sync::Arc;

use bytes::Bytes;

use crate::context::{Context, StateMap};
use crate::message::{Headers, Message, MessageId, Origin};
use crate::publish::Publisher;
use crate::testing::Recorder;

/// Starts a [`Context`] for a delivery from `topic`: first attempt, group `test`, no key, no
/// headers, an empty payload and a [`Recorder`]'s publisher, until told otherwise.
///
/// ```
/// use anybus::testing;
///
/// let ctx = testing::context("orders.created")
///     .key("o-1")
///     .header("x-tenant", "acme")
///     .attempt(2)
///     .build();
/// assert_eq!(ctx.topic(), "orders.created");
/// assert_eq!(ctx.key().map(|k| &k[..]), Some(&b"o-1"[..]));
/// assert_eq!(ctx.headers().get_str("x-tenant"), Some("acme"));
/// assert_eq!((ctx.attempt(), ctx.group()), (2, "test"));
/// ```
pub fn context(topic: &str) -> ContextBuilder {
    ContextBuilder {
        id: MessageId::new(),
        key: None,
        headers: Headers::new(),
        payload: Bytes::new(),
        origin: Origin::topic(topic),
        group: "test".into(),
        attempt: 1,
        publisher: None,
        state: StateMap::default(),
    }
}

/// Sets what a hand-made [`Context`] says; [`context`] starts one, [`ContextBuilder::build`]
/// ends it.
#[must_use = "a context builder does nothing until `.build()`"]
pub struct ContextBuilder {
    id: MessageId,
    key: Option<Bytes>,
    headers: Headers,
    payload: Bytes,
    origin: Origin,
    group: String,
    attempt: u32,
    publisher: Option<Publisher>,
    state: StateMap,
}

impl ContextBuilder {
    /// The message key ([`Context::key`]).
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header ([`Context::headers`]).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Replaces every header.
    pub fn headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// The payload bytes ([`Context::message`]); a handler called directly takes its payload as
    /// its first argument, so this matters only to handlers that read the raw message.
    pub fn payload(mut self, payload: impl Into<Bytes>) -> Self {
        self.payload = payload.into();
        self
    }

    /// The message id ([`Context::message_id`]); a fresh one unless told.
    pub fn message_id(mut self, id: MessageId) -> Self {
        self.id = id;
        self
    }

    /// The partition the message was read from ([`Context::partition`]).
    pub fn partition(mut self, partition: i32) -> Self {
        self.origin.partition = Some(partition);
        self
    }

    /// Its offset in that partition ([`Context::offset`]).
    pub fn offset(mut self, offset: i64) -> Self {
        self.origin.offset = Some(offset);
        self
    }

    /// The consumer group handling it ([`Context::group`]); `test` unless told.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// Which attempt this is ([`Context::attempt`]); 1 unless told.
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// The publisher the context hands out ([`Context::publisher`]), usually
    /// [`Recorder::publisher`]; a recorder nobody reads unless told.
    pub fn publisher(mut self, publisher: Publisher) -> Self {
        self.publisher = Some(publisher);
        self
    }

    /// Registers shared state, as [`AppBuilder::state`](crate::AppBuilder::state) does, for
    /// [`Context::state`].
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.state.insert(Arc::new(value));
        self
    }

    /// The context.
    pub fn build(self) -> Context {
        let publisher = self
            .publisher
            .unwrap_or_else(|| Recorder::new().publisher());
        Context::new(
            Arc::new(Message::from_parts(
                self.id,
                self.key,
                self.headers,
                self.payload,
                self.origin,
            )),
            Arc::from(self.group),
            self.attempt,
            publisher,
            Arc::new(self.state),
            None,
        )
    }
}
