//! How events read in a log line: `Display` for [`Event`] and [`EventKind`].

use core::fmt;

use crate::machine::{Event, EventKind};

/// One line a person reads: `attempting to connect`, `obtained address 127.0.0.1:7000`,
/// `failed to connect: connection refused`, `connected: …`, `disconnected`,
/// `handed over to …: the copy was withdrawn from the catalog`. Addresses and connections print with `Debug`, failures
/// with `Display`.
///
/// ```
/// use persistent_connection_core::{Event, HandoverReason};
///
/// let e: Event<u16, &str, String> = Event::FailedToConnect("refused".into());
/// assert_eq!(e.to_string(), "failed to connect: refused");
/// let e: Event<u16, &str, String> = Event::ObtainedAddress(7000);
/// assert_eq!(e.to_string(), "obtained address 7000");
/// let e: Event<u16, &str, String> =
///     Event::HandedOver { connection: "b", reason: HandoverReason::Withdrawn };
/// assert_eq!(
///     e.to_string(),
///     "handed over to \"b\": the copy was withdrawn from the catalog"
/// );
/// ```
impl<A: fmt::Debug, C: fmt::Debug, E: fmt::Display> fmt::Display for Event<A, C, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::AttemptingToConnect => f.write_str("attempting to connect"),
            Event::ObtainedAddress(a) => write!(f, "obtained address {a:?}"),
            Event::FailedToConnect(e) => write!(f, "failed to connect: {e}"),
            Event::Connected(c) => write!(f, "connected: {c:?}"),
            Event::Disconnected => f.write_str("disconnected"),
            Event::HandedOver { connection, reason } => {
                write!(f, "handed over to {connection:?}: {reason}")
            }
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventKind::AttemptingToConnect => "AttemptingToConnect",
            EventKind::ObtainedAddress => "ObtainedAddress",
            EventKind::FailedToConnect => "FailedToConnect",
            EventKind::Connected => "Connected",
            EventKind::Disconnected => "Disconnected",
            EventKind::HandedOver => "HandedOver",
        })
    }
}
