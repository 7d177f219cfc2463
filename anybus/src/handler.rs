//! How a plain `async fn` becomes something the runtime can call.
//!
//! A handler's first argument is the payload, decoded by the subscription's codec (any
//! `serde::Deserialize` type, or [`Message`] for the raw message). Further arguments are
//! extractors taken from the delivery ([`Context`], [`Publisher`], [`Headers`], [`Key`],
//! [`State<T>`]), in any order, as in axum. The return type is `Result<R, E>` with
//! `R: Serialize` (the answer when the message is a request; `()` otherwise) and
//! `E: Into<HandlerError>`: `HandlerError` itself, or any `std::error::Error`,
//! `Box<dyn Error + Send + Sync>`, `anyhow::Error` or `String`, which fail transiently.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{Codec, DecodeError};
use crate::context::{Context, Key, State, StateMap};
use crate::error::HandlerError;
use crate::message::{Headers, Message};
use crate::pipeline::Lane;
use crate::publish::Publisher;

/// A boxed, sendable future: what type-erased handlers and backends return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What became of one call of a handler.
#[derive(Debug)]
pub enum Outcome {
    /// The handler succeeded; `reply` holds the encoded answer when the message was a request.
    Done {
        /// The encoded answer, present only when the message asked for one.
        reply: Option<Reply>,
    },
    /// The handler (or decoding before it) failed.
    Failed(HandlerError),
}

/// The encoded answer to a request, with the media type of the codec that wrote it.
#[derive(Debug)]
pub struct Reply {
    /// The encoded answer.
    pub payload: Bytes,
    /// The media type of `payload` ([`Codec::CONTENT_TYPE`]).
    pub content_type: &'static str,
}

/// A handler with its types erased: what a [`Subscription`](crate::Subscription) holds.
pub trait Handler: Send + Sync + 'static {
    /// Decodes the payload, extracts the arguments and runs the handler.
    fn call(&self, ctx: Context) -> BoxFuture<'static, Outcome>;

    /// Handles every delivery of one lane, calling the handler's future in place rather than
    /// boxing one per delivery. Used by the runtime.
    #[doc(hidden)]
    fn serve(self: Arc<Self>, lane: Lane) -> BoxFuture<'static, ()>;
}

/// The payload argument of a handler, decoded with codec `C`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the payload argument of a handler",
    label = "the first argument is the payload: it must implement `serde::Deserialize` (or be `anybus::Message`)"
)]
pub trait Payload<C: Codec>: Sized + Send + 'static {
    /// Decodes the payload of `message`.
    fn decode(message: &Message) -> Result<Self, DecodeError>;
}

impl<C: Codec, T: DeserializeOwned + Send + 'static> Payload<C> for T {
    fn decode(message: &Message) -> Result<Self, DecodeError> {
        C::decode(message.payload())
    }
}

impl<C: Codec> Payload<C> for Message {
    fn decode(message: &Message) -> Result<Self, DecodeError> {
        Ok(message.clone())
    }
}

/// A handler argument after the payload, taken from the delivery.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a handler argument",
    label = "arguments after the payload must be extractors: Context, Publisher, Headers, Key or State<T>"
)]
pub trait FromContext: Sized + Send + 'static {
    /// Checked once when the app starts: can this argument always be extracted?
    /// An `Err` names what is missing and stops the app before anything is consumed.
    fn check(_state: &StateMap) -> Result<(), String> {
        Ok(())
    }

    /// Extracts the argument. `None` only when [`FromContext::check`] would have failed.
    fn from_context(ctx: &Context) -> Option<Self>;
}

impl FromContext for Context {
    fn from_context(ctx: &Context) -> Option<Self> {
        Some(ctx.clone())
    }
}

impl FromContext for Publisher {
    fn from_context(ctx: &Context) -> Option<Self> {
        Some(ctx.publisher().clone())
    }
}

impl FromContext for Headers {
    fn from_context(ctx: &Context) -> Option<Self> {
        Some(ctx.headers().clone())
    }
}

impl FromContext for Key {
    fn from_context(ctx: &Context) -> Option<Self> {
        Some(Key(ctx.key().cloned()))
    }
}

impl<T: Send + Sync + 'static> FromContext for State<T> {
    fn check(state: &StateMap) -> Result<(), String> {
        if state.contains::<T>() {
            Ok(())
        } else {
            Err(format!(
                "the handler takes State<{0}> but no {0} was registered; call AppBuilder::state",
                std::any::type_name::<T>()
            ))
        }
    }

    fn from_context(ctx: &Context) -> Option<Self> {
        ctx.state::<T>()
    }
}

/// What a handler's return value means: success with an optional answer, or a failure.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the return type of a handler",
    label = "handlers return `Result<(), E>`, or `Result<R, E>` with `R: Serialize` to answer a request, where `E: Into<HandlerError>`"
)]
pub trait IntoOutcome: Send + 'static {
    /// Converts; `wants_reply` says whether the message was a request, so that an answer is
    /// encoded only when someone waits for it.
    fn into_outcome<C: Codec>(self, wants_reply: bool) -> Outcome;
}

impl<R, E> IntoOutcome for Result<R, E>
where
    R: Serialize + Send + 'static,
    E: Into<HandlerError> + Send + 'static,
{
    fn into_outcome<C: Codec>(self, wants_reply: bool) -> Outcome {
        match self {
            Ok(value) if wants_reply => match C::encode(&value) {
                Ok(payload) => Outcome::Done {
                    reply: Some(Reply {
                        payload,
                        content_type: C::CONTENT_TYPE,
                    }),
                },
                Err(e) => Outcome::Failed(HandlerError::permanent(e)),
            },
            Ok(_) => Outcome::Done { reply: None },
            Err(e) => Outcome::Failed(e.into()),
        }
    }
}

/// An `async fn` (or closure returning a future) that can handle deliveries of codec `C`.
/// `Args` is the tuple of its argument types; it is inferred.
pub trait IntoHandler<C: Codec, Args>: Send + Sync + Sized + 'static {
    /// Checks at start that every extractor argument can be provided.
    fn check(state: &StateMap) -> Result<(), String>;
    /// Erases the types.
    fn into_handler(self) -> Arc<dyn Handler>;
}

struct FnHandler<C, F, Args> {
    f: F,
    _types: PhantomData<fn() -> (C, Args)>,
}

macro_rules! impl_handler {
    ($($x:ident),*) => {
        impl<C, F, Fut, P, $($x,)*> IntoHandler<C, (P, $($x,)*)> for F
        where
            C: Codec,
            F: Fn(P, $($x,)*) -> Fut + Send + Sync + 'static,
            Fut: Future + Send + 'static,
            Fut::Output: IntoOutcome,
            P: Payload<C>,
            $($x: FromContext,)*
        {
            fn check(_state: &StateMap) -> Result<(), String> {
                $($x::check(_state)?;)*
                Ok(())
            }

            fn into_handler(self) -> Arc<dyn Handler> {
                Arc::new(FnHandler::<C, F, (P, $($x,)*)> { f: self, _types: PhantomData })
            }
        }

        impl<C, F, Fut, P, $($x,)*> Handler for FnHandler<C, F, (P, $($x,)*)>
        where
            C: Codec,
            F: Fn(P, $($x,)*) -> Fut + Send + Sync + 'static,
            Fut: Future + Send + 'static,
            Fut::Output: IntoOutcome,
            P: Payload<C>,
            $($x: FromContext,)*
        {
            fn call(&self, ctx: Context) -> BoxFuture<'static, Outcome> {
                Box::pin(self.call_in_place(ctx))
            }

            fn serve(self: Arc<Self>, lane: Lane) -> BoxFuture<'static, ()> {
                Box::pin(lane.run(move |ctx| self.call_in_place(ctx)))
            }
        }

        impl<C, F, Fut, P, $($x,)*> FnHandler<C, F, (P, $($x,)*)>
        where
            C: Codec,
            F: Fn(P, $($x,)*) -> Fut + Send + Sync + 'static,
            Fut: Future + Send + 'static,
            Fut::Output: IntoOutcome,
            P: Payload<C>,
            $($x: FromContext,)*
        {
            /// Decodes and extracts now; the returned future runs the handler.
            #[allow(non_snake_case)]
            fn call_in_place(&self, ctx: Context) -> impl Future<Output = Outcome> + Send + 'static {
                let prepared = (|| {
                    let payload = P::decode(ctx.message())
                        .map_err(|e| Outcome::Failed(HandlerError::decode(e)))?;
                    $(
                        let $x = $x::from_context(&ctx).ok_or_else(|| {
                            Outcome::Failed(HandlerError::permanent(format!(
                                "handler argument {} is not available",
                                std::any::type_name::<$x>()
                            )))
                        })?;
                    )*
                    Ok(((self.f)(payload, $($x,)*), ctx.wants_reply()))
                })();
                async move {
                    match prepared {
                        Ok((fut, wants_reply)) => fut.await.into_outcome::<C>(wants_reply),
                        Err(outcome) => outcome,
                    }
                }
            }
        }
    };
}

impl_handler!();
impl_handler!(X1);
impl_handler!(X1, X2);
impl_handler!(X1, X2, X3);
impl_handler!(X1, X2, X3, X4);
impl_handler!(X1, X2, X3, X4, X5);
impl_handler!(X1, X2, X3, X4, X5, X6);
