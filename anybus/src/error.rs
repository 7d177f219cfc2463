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

/// The error a handler returns. Any `std::error::Error` converts into a transient one with `?`;
/// say [`HandlerError::permanent`] when retrying cannot help.
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

impl<E: StdError + Send + Sync + 'static> From<E> for HandlerError {
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
