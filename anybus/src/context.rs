//! What a handler may know about the delivery it is handling, and the shared state it may use.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;

use bytes::Bytes;

use crate::message::{header, Headers, Message, MessageId};
use crate::pipeline::DedupTicket;
use crate::publish::Publisher;

/// The delivery being handled: where it came from, its key, headers and id, which attempt this
/// is, and a [`Publisher`] to emit follow-up events. Taken as a handler argument.
///
/// Cloning is cheap (reference counts).
#[derive(Clone)]
pub struct Context {
    message: Arc<Message>,
    group: Arc<str>,
    attempt: u32,
    publisher: Publisher,
    state: Arc<StateMap>,
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    dedup: Option<Arc<DedupTicket>>,
}

impl Context {
    pub(crate) fn new(
        message: Arc<Message>,
        group: Arc<str>,
        attempt: u32,
        publisher: Publisher,
        state: Arc<StateMap>,
        dedup: Option<Arc<DedupTicket>>,
    ) -> Self {
        Self {
            message,
            group,
            attempt,
            publisher,
            state,
            dedup,
        }
    }

    /// The dedup key this delivery holds, when its subscription deduplicates.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn dedup(&self) -> Option<&Arc<DedupTicket>> {
        self.dedup.as_ref()
    }

    /// The topic the message was read from.
    pub fn topic(&self) -> &str {
        self.message.topic()
    }

    /// The partition, where the broker has partitions.
    pub fn partition(&self) -> Option<i32> {
        self.message.origin().partition
    }

    /// The offset, where the broker has offsets.
    pub fn offset(&self) -> Option<i64> {
        self.message.origin().offset
    }

    /// The key, if the message has one.
    pub fn key(&self) -> Option<&Bytes> {
        self.message.key()
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        self.message.headers()
    }

    /// The message id anybus gave the message when it was published.
    pub fn message_id(&self) -> MessageId {
        self.message.id()
    }

    /// The consumer group handling it.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Which attempt this is, counted by anybus itself: 1 for the first.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The whole message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// A publisher for follow-up events.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Shared state registered with [`AppBuilder::state`](crate::AppBuilder::state).
    pub fn state<T: Send + Sync + 'static>(&self) -> Option<State<T>> {
        self.state.get::<T>()
    }

    pub(crate) fn wants_reply(&self) -> bool {
        self.message.headers().get(header::REPLY_TO).is_some()
    }
}

/// Shared application state of type `T`, registered once with
/// [`AppBuilder::state`](crate::AppBuilder::state) and handed to every handler that takes
/// `State<T>`. A handler asking for a type that was not registered stops the app at start.
pub struct State<T>(pub Arc<T>);

impl<T> Clone for State<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T> Deref for State<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// The message key as a handler argument (`None` for a keyless message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key(pub Option<Bytes>);

/// Registered shared state, by type.
#[derive(Clone, Default)]
pub struct StateMap(HashMap<TypeId, Arc<dyn Any + Send + Sync>>);

impl StateMap {
    pub(crate) fn insert<T: Send + Sync + 'static>(&mut self, value: Arc<T>) {
        self.0.insert(TypeId::of::<T>(), value);
    }

    pub(crate) fn contains<T: 'static>(&self) -> bool {
        self.0.contains_key(&TypeId::of::<T>())
    }

    pub(crate) fn get<T: Send + Sync + 'static>(&self) -> Option<State<T>> {
        let any = Arc::clone(self.0.get(&TypeId::of::<T>())?);
        any.downcast::<T>().ok().map(State)
    }
}
