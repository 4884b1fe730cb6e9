//! How an HTTP/2 connection ended ([`Http2End`]) and why a call failed ([`Http2Error`]),
//! including whether the call was sent at all.

use std::error::Error as StdError;
use std::fmt;
use std::sync::atomic::Ordering;

use super::*;

/// Why an [`Http2Connection`] stopped taking calls.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Http2End {
    /// [`close`](Closable::close) was called: calls in flight failed.
    Closed,
    /// The server sent `GOAWAY`: no new call is taken; calls in flight that the server
    /// accepted go on to their end on this connection. `error_code` 0 (`NO_ERROR`) is a
    /// graceful shutdown (tonic's `serve_with_shutdown`, hyper's `graceful_shutdown`, a
    /// server's maximum connection age); another code is the server's complaint
    /// (`ENHANCE_YOUR_CALM` for too many PINGs, `PROTOCOL_ERROR`, …).
    GoAway {
        /// The HTTP/2 error code of the `GOAWAY` frame (RFC 9113 §7).
        error_code: u32,
    },
    /// The connection ended without an error and without a `GOAWAY`: every handle was
    /// dropped, or the server closed it cleanly.
    Finished,
    /// The connection failed: a reset, the peer closing with calls in flight, a PING
    /// unanswered (`keep-alive timed out`), a protocol error. The text is hyper's, with its
    /// causes.
    Failed(String),
    /// The stream under it (TCP, TLS) closed first: the peer closed or reset it.
    TransportClosed,
}

/// The name RFC 9113 §7 gives an HTTP/2 error code.
pub(super) fn error_code_name(code: u32) -> &'static str {
    match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x4 => "SETTINGS_TIMEOUT",
        0x5 => "STREAM_CLOSED",
        0x6 => "FRAME_SIZE_ERROR",
        0x7 => "REFUSED_STREAM",
        0x8 => "CANCEL",
        0x9 => "COMPRESSION_ERROR",
        0xa => "CONNECT_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        0xc => "INADEQUATE_SECURITY",
        0xd => "HTTP_1_1_REQUIRED",
        _ => "unknown error code",
    }
}

impl fmt::Display for Http2End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Http2End::Closed => f.write_str("closed by the client"),
            Http2End::GoAway { error_code } => write!(
                f,
                "the server sent GOAWAY ({} {error_code:#x})",
                error_code_name(*error_code)
            ),
            Http2End::Finished => f.write_str("the connection ended"),
            Http2End::Failed(e) => write!(f, "the connection failed: {e}"),
            Http2End::TransportClosed => f.write_str("the stream under it closed"),
        }
    }
}

/// A call's failure on an [`Http2Connection`]: the connection took no new call (nothing was
/// sent, so the call may go to another connection as it is), or hyper's error (its
/// [`source`](std::error::Error::source), so tonic's own mapping to a gRPC status applies).
/// [`is_not_sent`](Http2Error::is_not_sent) tells the calls that may be made again.
#[derive(Debug)]
pub struct Http2Error {
    pub(super) repr: Repr,
}

#[derive(Debug)]
pub(super) enum Repr {
    NotSent(Http2End),
    Hyper {
        error: hyper::Error,
        /// The connection ended before the server sent a single byte: it never began
        /// HTTP/2 on it, so it processed no call.
        server_silent: bool,
    },
}

impl Http2Error {
    /// True when the call was not sent or not processed, so it is safe to make again on
    /// another connection: the connection took no new calls any more (draining after a
    /// `GOAWAY`, failed, closed); it ended before hyper had sent the request (hyper's
    /// "canceled" errors, which its HTTP/2 client returns only for requests it never
    /// sent); or it ended before the server had sent anything at all (a server resets the
    /// connections it has not begun HTTP/2 on when it shuts down: its preface, the first
    /// thing an HTTP/2 server sends, never came, so it processed nothing).
    pub fn is_not_sent(&self) -> bool {
        match &self.repr {
            Repr::NotSent(_) => true,
            Repr::Hyper {
                error,
                server_silent,
            } => *server_silent || error.is_canceled(),
        }
    }

    /// Why the connection took no new call, when it refused the call itself.
    pub fn end(&self) -> Option<&Http2End> {
        match &self.repr {
            Repr::NotSent(end) => Some(end),
            Repr::Hyper { .. } => None,
        }
    }

    /// hyper's error, for the others.
    pub fn hyper_error(&self) -> Option<&hyper::Error> {
        match &self.repr {
            Repr::Hyper { error, .. } => Some(error),
            Repr::NotSent(_) => None,
        }
    }

    pub(super) fn hyper(error: hyper::Error, shared: &Shared) -> Http2Error {
        Http2Error {
            repr: Repr::Hyper {
                error,
                server_silent: !shared.heard.load(Ordering::Acquire),
            },
        }
    }
}

impl fmt::Display for Http2Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::NotSent(end) => write!(
                f,
                "the HTTP/2 connection takes no new calls ({end}); the call was not sent"
            ),
            Repr::Hyper {
                error,
                server_silent,
            } => {
                f.write_str(&with_causes(error))?;
                if *server_silent {
                    f.write_str(
                        " (the server sent nothing on this connection: the call was not processed)",
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl StdError for Http2Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.repr {
            Repr::Hyper { error, .. } => Some(error),
            Repr::NotSent(_) => None,
        }
    }
}

/// True when `error` or one of its causes is an [`Http2Error`] whose call was not sent
/// ([`Http2Error::is_not_sent`]): the connection was already draining or closed, so the
/// call can be made again on the next connection as it is, without risk of doing it twice.
/// Works on what tonic returns (`tonic::Status` keeps the transport's error as its source).
///
/// ```
/// use persistent_connection::conn::http2::call_was_not_sent;
///
/// let other = std::io::Error::other("connection reset");
/// assert!(!call_was_not_sent(&other));
/// ```
pub fn call_was_not_sent(error: &(dyn StdError + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(h) = e.downcast_ref::<Http2Error>() {
            return h.is_not_sent();
        }
        cause = e.source();
    }
    false
}

/// An error's text followed by its causes' (hyper's own says only "http2 error").
pub(super) fn with_causes(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}
