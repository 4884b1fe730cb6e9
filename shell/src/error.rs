//! Errors: the shell's wrapper around the user's error type, and a comparable I/O error.

use std::fmt;
use std::io;
use std::time::Duration;

/// Which user callback misbehaved (R13).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Callback {
    /// `get_address`.
    GetAddress,
    /// `connect`.
    Connect,
}

impl fmt::Display for Callback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Callback::GetAddress => "get_address",
            Callback::Connect => "connect",
        })
    }
}

/// Why an attempt failed: the user's own error `E`, or something the shell observed.
///
/// This is the error type the core machine sees, so equality decides de-duplication of
/// `FailedToConnect` events (R4): two panics with the same message in the same callback
/// are the same failure, as are two timeouts of the same length.
///
/// ```
/// use std::time::Duration;
/// use persistent_connection::{Callback, Error};
///
/// let e: Error<&str> = Error::TimedOut(Duration::from_secs(1));
/// assert_eq!(e.to_string(), "connect timed out after 1s");
/// let p: Error<&str> = Error::Panicked { callback: Callback::Connect, message: "boom".into() };
/// assert_eq!(p.to_string(), "connect panicked: boom");
/// assert_eq!(Error::User("refused").user(), Some(&"refused"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Error<E> {
    /// `get_address` or `connect` returned this error.
    User(E),
    /// `get_address` or `connect` panicked (R13); the loop goes on.
    Panicked {
        /// The callback that panicked.
        callback: Callback,
        /// The panic's message, when it was a string.
        message: String,
    },
    /// `connect` did not finish within the configured connect timeout (S5).
    TimedOut(Duration),
    /// `get_address` did not finish within the configured lookup timeout (S5).
    LookupTimedOut(Duration),
}

impl<E> Error<E> {
    /// The user's error, if this is one.
    pub fn user(&self) -> Option<&E> {
        match self {
            Error::User(e) => Some(e),
            _ => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::User(e) => e.fmt(f),
            Error::Panicked { callback, message } => write!(f, "{callback} panicked: {message}"),
            Error::TimedOut(d) => write!(f, "connect timed out after {d:?}"),
            Error::LookupTimedOut(d) => write!(f, "address lookup timed out after {d:?}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for Error<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::User(e) => Some(e),
            _ => None,
        }
    }
}

/// An [`io::Error`] reduced to what identifies it, its kind and message, so that it is
/// `Clone + PartialEq` as the machine needs (docs/behaviour.md §1: equality compares the error itself).
///
/// ```
/// use std::io;
/// use persistent_connection::IoError;
///
/// let a = IoError::from(io::Error::new(io::ErrorKind::ConnectionRefused, "refused"));
/// let b = IoError::from(io::Error::new(io::ErrorKind::ConnectionRefused, "refused"));
/// assert_eq!(a, b);
/// assert_eq!(a.kind(), io::ErrorKind::ConnectionRefused);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IoError {
    kind: io::ErrorKind,
    message: String,
}

impl IoError {
    /// An error of this kind with this message.
    pub fn new(kind: io::ErrorKind, message: impl Into<String>) -> IoError {
        IoError {
            kind,
            message: message.into(),
        }
    }

    /// The error's kind.
    pub fn kind(&self) -> io::ErrorKind {
        self.kind
    }

    /// The error's message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<io::Error> for IoError {
    fn from(e: io::Error) -> IoError {
        IoError {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

impl From<IoError> for io::Error {
    fn from(e: IoError) -> io::Error {
        io::Error::new(e.kind, e.message)
    }
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for IoError {}

/// The text of a caught panic's payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
