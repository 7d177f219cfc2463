//! What a handler's failure means to the runtime: try again, or give up on this message.

use std::error::Error as StdError;
use std::fmt;

use crate::codec::DecodeError;

/// Whether a failure may go away on another attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// Worth another attempt (a timeout, a database that is down): the message is delivered again.
    Transient,
    /// Will fail the same way every time (bad data, a rule violated): the message is not retried.
    Permanent,
    /// The payload did not decode; a permanent failure found before the handler ran.
    Decode,
}

impl FailureKind {
    /// `transient`, `permanent` or `decode`: the words used in logs and dead-letter headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Permanent => "permanent",
            Self::Decode => "decode",
        }
    }
}

/// The error a handler returns. Any `std::error::Error`, `Box<dyn Error + Send + Sync>` and
/// `anyhow::Error` converts into a transient one with `?` (a handler may also return
/// `Result<_, anyhow::Error>` as it is); say [`HandlerError::permanent`] when retrying cannot
/// help.
///
/// ```
/// use anybus::HandlerError;
/// let e: HandlerError = std::io::Error::other("db down").into();
/// assert!(e.is_transient());
/// let p = HandlerError::permanent(std::io::Error::other("unknown sku"));
/// assert!(!p.is_transient());
/// assert_eq!(p.to_string(), "permanent failure: unknown sku");
/// ```
pub struct HandlerError {
    kind: FailureKind,
    source: Box<dyn StdError + Send + Sync>,
    type_name: &'static str,
}

impl HandlerError {
    /// A failure that another attempt may not repeat.
    pub fn transient<S: Into<Box<dyn StdError + Send + Sync>>>(source: S) -> Self {
        Self {
            kind: FailureKind::Transient,
            source: source.into(),
            type_name: std::any::type_name::<S>(),
        }
    }

    /// A failure that every attempt would repeat.
    pub fn permanent<S: Into<Box<dyn StdError + Send + Sync>>>(source: S) -> Self {
        Self {
            kind: FailureKind::Permanent,
            source: source.into(),
            type_name: std::any::type_name::<S>(),
        }
    }

    /// The payload did not decode.
    pub fn decode(source: DecodeError) -> Self {
        Self {
            kind: FailureKind::Decode,
            source: Box::new(source),
            type_name: std::any::type_name::<DecodeError>(),
        }
    }

    /// Which kind of failure this is.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// Whether another attempt may succeed.
    pub fn is_transient(&self) -> bool {
        self.kind == FailureKind::Transient
    }

    /// The Rust type the failure was made from (`std::io::error::Error`, `&str`): what a dead
    /// letter reports as the error type.
    ///
    /// ```
    /// use anybus::HandlerError;
    /// let e: HandlerError = std::io::Error::other("db down").into();
    /// assert_eq!(e.type_name(), "std::io::error::Error");
    /// ```
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// The underlying error.
    pub fn source_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.source
    }
}

/// Whatever converts into a boxed `std::error::Error` converts into a transient failure: any
/// `std::error::Error`, a `Box<dyn Error + Send + Sync>`, `anyhow::Error` (through anyhow's own
/// conversion, so anybus needs no anyhow), a `String` or a `&str`.
///
/// ```
/// use anybus::HandlerError;
/// let boxed: Box<dyn std::error::Error + Send + Sync> = "db down".into();
/// let e = HandlerError::from(boxed);
/// assert!(e.is_transient());
/// assert_eq!(e.to_string(), "transient failure: db down");
/// ```
///
/// `HandlerError` itself is no `std::error::Error`, so that this impl and `From<T> for T` never
/// overlap (a `std::error::Error` impl here would make every handler error ambiguous).
impl<E: Into<Box<dyn StdError + Send + Sync>>> From<E> for HandlerError {
    fn from(e: E) -> Self {
        Self::transient(e)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failure: {}", self.kind.as_str(), self.source)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::IntoOutcome;

    #[test]
    fn an_anyhow_error_converts_into_a_transient_failure_with_its_message() {
        let error = anyhow::anyhow!("stock service unreachable").context("reserving o-1");
        let e = HandlerError::from(error);
        assert_eq!(e.kind(), FailureKind::Transient);
        assert_eq!(e.type_name(), "anyhow::Error");
        assert_eq!(e.to_string(), "transient failure: reserving o-1");
        let cause = e.source_error().source().map(ToString::to_string);
        assert_eq!(cause.as_deref(), Some("stock service unreachable"));
    }

    #[test]
    fn a_boxed_error_converts_into_a_transient_failure() {
        let boxed: Box<dyn StdError + Send + Sync> = Box::new(std::io::Error::other("db down"));
        let e = HandlerError::from(boxed);
        assert!(e.is_transient());
        assert_eq!(e.to_string(), "transient failure: db down");
    }

    #[test]
    fn anyhow_and_boxed_errors_can_still_be_permanent() {
        let e = HandlerError::permanent(anyhow::anyhow!("unknown sku"));
        assert_eq!(e.kind(), FailureKind::Permanent);
        assert_eq!(e.to_string(), "permanent failure: unknown sku");
        let boxed: Box<dyn StdError + Send + Sync> = "bad order".into();
        assert_eq!(
            HandlerError::permanent(boxed).kind(),
            FailureKind::Permanent
        );
    }

    #[test]
    fn a_handler_returning_anyhow_fails_transiently() {
        async fn handle(n: u64) -> Result<(), anyhow::Error> {
            anyhow::ensure!(n > 0, "empty order");
            Ok(())
        }
        let outcome = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(handle(0))
            .into_outcome::<crate::Json>(false);
        match outcome {
            crate::handler::Outcome::Failed(e) => {
                assert_eq!(e.to_string(), "transient failure: empty order");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }
}
