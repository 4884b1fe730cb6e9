//! Errors: the shell's wrapper around the user's error type, and a comparable I/O error.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use persistent_connection_core::AttemptError;

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
/// let l: Error<&str> = Error::LookupTimedOut {
///     server: "echo".into(),
///     after: Duration::from_secs(10),
/// };
/// assert_eq!(l.to_string(), "address lookup for echo timed out after 10s");
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
    LookupTimedOut {
        /// Whose lookup: the persistent connection's server name (the name given to
        /// [`builder`](crate::PersistentConnection::builder)). A catalog's own timeout,
        /// shorter, names the catalog instead
        /// ([`CatalogError::TimedOut`](crate::catalog::CatalogError::TimedOut)).
        server: Arc<str>,
        /// The lookup timeout.
        after: Duration,
    },
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
            Error::LookupTimedOut { server, after } => {
                write!(f, "address lookup for {server} timed out after {after:?}")
            }
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
/// Its key for de-duplication (R4) is therefore kind and message: the same refusal from the
/// same address (a [`TcpConnection`](crate::TcpConnection) error names it) is one
/// `FailedToConnect` event per round. For a coarser key, say any refusal from any address,
/// wrap it in [`Keyed`]: `Keyed::new(e, IoError::kind)`.
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

/// An error `E` whose equality is decided by a key `K` you choose: what makes two failures
/// "the same" for de-duplication of `FailedToConnect` events (R4, I2).
///
/// The machine compares failures with `PartialEq`. Some errors have none (`io::Error`), and
/// some have one that does not help: `redis::RedisError`'s `eq` is false for any two I/O
/// errors, which turns de-duplication off (every failed attempt is reported). Wrap the
/// error in the callbacks with a key, and compare that instead. Clone, `Debug`, `Display`
/// and `source` are the error's own; only equality looks at the key.
///
/// ```
/// use std::io;
/// use std::sync::Arc;
/// use persistent_connection::Keyed;
///
/// // io::Error is neither Clone nor PartialEq: share it, and compare its kind.
/// let key = |e: &Arc<io::Error>| e.kind();
/// let a = Keyed::new(Arc::new(io::Error::new(io::ErrorKind::ConnectionRefused, "port 1")), key);
/// let b = Keyed::new(Arc::new(io::Error::new(io::ErrorKind::ConnectionRefused, "port 2")), key);
/// let c = Keyed::new(Arc::new(io::Error::from(io::ErrorKind::TimedOut)), key);
/// assert_eq!(a, b); // the same failure: one FailedToConnect event
/// assert_ne!(a, c);
/// assert_eq!(a.to_string(), "port 1");
/// assert_eq!(a.error().kind(), io::ErrorKind::ConnectionRefused);
/// ```
///
/// In a persistent connection, wrap in `get_address` and `connect`:
///
/// ```
/// use std::net::SocketAddr;
/// use persistent_connection::{IoError, Keyed, PersistentConnection, TcpConnection};
///
/// /// Two connect failures are the same when their kind is.
/// fn same_kind(e: IoError) -> Keyed<IoError, std::io::ErrorKind> {
///     Keyed::new(e, IoError::kind)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
/// let pc = PersistentConnection::builder(
///     "service",
///     move || async move { Ok(addr) },
///     |addr, _cx| async move { TcpConnection::connect(addr).await.map_err(same_kind) },
/// )
/// .build();
/// pc.close().await;
/// # }
/// ```
#[derive(Clone)]
pub struct Keyed<E, K> {
    error: E,
    key: K,
}

impl<E, K> Keyed<E, K> {
    /// Wraps `error`, keyed by `key(&error)`.
    pub fn new(error: E, key: impl FnOnce(&E) -> K) -> Keyed<E, K> {
        let key = key(&error);
        Keyed { error, key }
    }

    /// Wraps `error` with a key computed elsewhere.
    pub fn with_key(error: E, key: K) -> Keyed<E, K> {
        Keyed { error, key }
    }

    /// The error.
    pub fn error(&self) -> &E {
        &self.error
    }

    /// The key equality compares.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// The error, unwrapped.
    pub fn into_error(self) -> E {
        self.error
    }
}

impl<E, K: PartialEq> PartialEq for Keyed<E, K> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl<E, K: Eq> Eq for Keyed<E, K> {}

impl<E: fmt::Debug, K: fmt::Debug> fmt::Debug for Keyed<E, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyed")
            .field("error", &self.error)
            .field("key", &self.key)
            .finish()
    }
}

impl<E: fmt::Display, K> fmt::Display for Keyed<E, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl<E: std::error::Error, K: fmt::Debug> std::error::Error for Keyed<E, K> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// The outcome of an attempt, as `connected_or_failed_to_connect()` returns it (R10).
pub type AttemptOutcome<C, E> = Result<C, AttemptError<Error<E>>>;
