//! Panics in user callbacks (the handler, the dedup key function) become permanent failures
//! that say what panicked, rather than taking a lane down.

use std::future::Future;

use crate::error::HandlerError;
use crate::handler::Outcome;

/// Runs a handler's future, turning a panic into a permanent failure: a bug in one handler
/// call must not take down its lane (and with it the subscription).
pub(super) async fn unwound<Fut: Future<Output = Outcome>>(call: impl FnOnce() -> Fut) -> Outcome {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    // A closure handler runs its body when called, an async one when polled: catch both.
    let handler = match catch_unwind(AssertUnwindSafe(call)) {
        Ok(handler) => handler,
        Err(panic) => return panicked(&*panic),
    };
    let mut handler = std::pin::pin!(handler);
    std::future::poll_fn(|cx| {
        catch_unwind(AssertUnwindSafe(|| handler.as_mut().poll(cx)))
            .unwrap_or_else(|panic| std::task::Poll::Ready(panicked(&*panic)))
    })
    .await
}

/// The permanent failure of a handler that panicked with `panic`.
pub(super) fn panicked(panic: &(dyn std::any::Any + Send)) -> Outcome {
    Outcome::Failed(HandlerError::permanent(Panicked {
        what: "the handler",
        message: panic_message(panic),
    }))
}

/// What a panic said.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// A user callback (the handler, the dedup key function) that panicked, as the error of its
/// message's permanent failure.
#[derive(Debug)]
pub(super) struct Panicked {
    /// What panicked: `the handler`, `the dedup key function`.
    pub(super) what: &'static str,
    /// What the panic said.
    pub(super) message: String,
}

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} panicked: {}", self.what, self.message)
    }
}

impl std::error::Error for Panicked {}
